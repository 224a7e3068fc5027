"""A site's rooms, devices and broker accounts: `edge init --empty` (or `--cloud`) writes no demo
rooms or devices for a cloud-managed edge, and a device removed from the config loses its broker
account (password entry, ACL entry, secret) — it can no longer log in to the embedded broker."""
from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge.cli import edge_main
from edge.config import EdgeSettings, load_config
from edge.credentials import (
    DeviceSecrets,
    device_acl_path,
    read_password_file,
    sync_broker_files,
)
from tests.chaos.conftest import Cloud, cloud
from tests.conftest import free_port
from tests.e2e.conftest import fast_settings, make_site, wait_for

FIXTURES = (cloud,)  # the real cloud's fixture, found by pytest under this name
GONE = "room-a-fan"


def init_argv(directory: Path, *extra: str) -> list[str]:
    return ["init", str(directory), "--broker-port", str(free_port()),
            "--api-port", str(free_port()), *extra]


async def can_log_in(settings: EdgeSettings, device_id: str, password: str) -> bool:
    try:
        async with aiomqtt.Client("127.0.0.1", settings.broker.port, username=device_id,
                                  password=password, timeout=5,
                                  identifier=f"{device_id}-{uuid.uuid4().hex[:6]}"):
            return True
    except aiomqtt.MqttError:
        return False


async def test_init_empty_writes_no_demo_rooms_or_devices(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    assert edge_main(init_argv(tmp_path / "site", "--farm-id", farm_id, "--empty")) == 0
    settings = load_config(tmp_path / "site/edge.toml")
    assert (settings.farm_id, settings.rooms, settings.devices) == (farm_id, [], [])
    assert DeviceSecrets.load(settings.device_secrets_path).devices == {}
    assert set(read_password_file(settings.password_file_path)) == {
        settings.broker.edge_username}
    # It runs: broker up, no actuator to command, nothing to raise alerts about.
    app = await running_edge(fast_settings(settings.config_path))  # type: ignore[arg-type]
    await asyncio.sleep(1.0)
    assert app.commands.stats.sent == 0
    assert app.alerts.active == set()
    # The default stays the demo (`smartfarm demo` and first-time users rely on it).
    assert edge_main(init_argv(tmp_path / "demo")) == 0
    assert len(load_config(tmp_path / "demo/edge.toml").rooms) == 2


@pytest.mark.postgres
async def test_init_with_a_cloud_takes_farm_and_edge_from_the_token(
    cloud: Any, tmp_path: Path, farm_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    the_cloud: Cloud = await cloud()
    reg = await the_cloud.provision(load_config(make_site(tmp_path / "ref", farm_id)),
                                    "pi-1", devices=False)
    site = tmp_path / "site"
    argv = init_argv(site, "--cloud", the_cloud.url, "--token", reg.token)
    assert await asyncio.to_thread(edge_main, argv) == 0, capsys.readouterr().err
    settings = load_config(site / "edge.toml")
    assert (settings.farm_id, settings.cloud.edge_id, settings.cloud.url) == (
        farm_id, "pi-1", the_cloud.url)
    assert (settings.rooms, settings.devices) == ([], [])
    # Another farm id than the token's: refused, nothing written.
    other = tmp_path / "other"
    argv = init_argv(other, "--farm-id", "elsewhere", "--cloud", the_cloud.url,
                     "--token", reg.token)
    assert await asyncio.to_thread(edge_main, argv) == 2
    assert f"token belongs to edge pi-1 of farm {farm_id}" in capsys.readouterr().err
    assert not (other / "edge.toml").exists()


def without_device(config: Path, device_id: str) -> None:
    """Delete the device's [[devices]] table from the TOML, as an operator would."""
    text = config.read_text()
    block = re.compile(r'\[\[devices\]\]\nid = "' + re.escape(device_id) + r'"\n(?:[^\[\n].*\n)*'
                       r'\n?')
    assert block.search(text), device_id
    config.write_text(block.sub("", text, count=1))


async def test_a_device_removed_from_the_config_can_no_longer_log_in(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    config = make_site(tmp_path / "site", farm_id)
    settings = fast_settings(config)
    password = DeviceSecrets.load(settings.device_secrets_path).devices[GONE]
    await running_edge(settings)
    assert await can_log_in(settings, GONE, password)
    without_device(config, GONE)
    assert load_config(config).device(GONE) is None

    await wait_for(lambda: GONE not in read_password_file(settings.password_file_path), 10,
                   "the removed device's password entry gone")
    await asyncio.sleep(1.5)  # the embedded broker re-reads its files about every second
    assert not await can_log_in(settings, GONE, password)
    assert GONE not in DeviceSecrets.load(settings.device_secrets_path).devices
    assert GONE not in device_acl_path(settings).read_text()
    # The others are untouched.
    other = "room-a-sensor"
    assert await can_log_in(settings, other,
                            DeviceSecrets.load(settings.device_secrets_path).devices[other])


def test_a_device_the_cloud_config_drops_loses_its_local_account(
    tmp_path: Path, farm_id: str
) -> None:
    """What the downlink does when a pushed config no longer lists a device: the settings'
    device list shrinks, then the broker files are rebuilt from it (with the cloud's hashes)."""
    settings = load_config(make_site(tmp_path / "site", farm_id))
    secrets = DeviceSecrets.load(settings.device_secrets_path)
    assert GONE in secrets.devices
    settings.devices = [d for d in settings.devices if d.id != GONE]
    sync_broker_files(settings, extra_hashes={})
    assert GONE not in read_password_file(settings.password_file_path)
    assert GONE not in DeviceSecrets.load(settings.device_secrets_path).devices
    assert "room-a-sensor" in read_password_file(settings.password_file_path)
