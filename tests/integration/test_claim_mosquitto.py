"""Claim mode with the edge on an external Mosquitto (a private ``mosquitto`` on a free port, with
the password file and ACL smartfarm generates): the simulated node logs in as the claim account,
says hello, is listed, is adopted, and takes its credentials from the topic named by its own
claim key; the ACL keeps the claim account to its hello and its own claim topic."""
from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge.config import load_config
from edge.credentials import DeviceSecrets, write_mosquitto_acl, write_mosquitto_password_file
from edge.external_claims import CLAIM_ACCOUNT, delivery_topic, hello_topic
from edge.onboarding import ensure_claim_code
from firmware_sim.claim import ClaimNode, Flash
from firmware_sim.provision import build_node, claimed_provisioning
from tests.chaos.conftest import until
from tests.e2e.conftest import fast_settings, make_site, query, wait_for
from tests.integration.test_mosquitto_acl import MOSQUITTO, private_mosquitto
from tests.integration.test_onboarding import Api
from tests.integration.test_sim_nodes import free_port

pytestmark = pytest.mark.mosquitto


def _write_files(settings: Any, passwd: Path, acl: Path) -> None:
    """What the installer runs (deploy/mosquitto/README.md): the accounts, and the ACL."""
    secrets = DeviceSecrets.load(settings.device_secrets_path)
    write_mosquitto_password_file(passwd, {**secrets.plaintext_entries(),
                                           CLAIM_ACCOUNT: ensure_claim_code(settings)})
    write_mosquitto_acl(acl, settings.farm_id, secrets.edge_username)


@pytest.fixture
async def external(tmp_path: Path, farm_id: str) -> AsyncIterator[tuple[Any, int, Any]]:
    if not MOSQUITTO.exists():
        pytest.skip(f"{MOSQUITTO} is not installed (apt-get install mosquitto)")
    port = free_port()
    config = make_site(tmp_path / "site", farm_id)
    config.write_text(config.read_text().replace(
        'mode = "embedded"', f'mode = "external"\nurl = "mqtt://127.0.0.1:{port}"'))
    settings = fast_settings(config)
    DeviceSecrets.load_or_create(settings.device_secrets_path,
                                 edge_username=settings.broker.edge_username)
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    _write_files(settings, passwd, acl)
    async with private_mosquitto(tmp_path, port, passwd, acl) as proc:

        def reload() -> None:
            _write_files(load_config(config), passwd, acl)
            proc.send_signal(signal.SIGHUP)

        yield settings, port, reload


async def test_a_claim_mode_node_through_mosquitto_is_adopted_and_gets_its_credentials(
    external: tuple[Any, int, Any], running_edge: Any, tmp_path: Path
) -> None:
    settings, port, reload = external
    app = await running_edge(settings)
    assert app.external_claims is not None
    await wait_for(lambda: app.external_claims.subscribed.is_set(), 15, "the hello listener")
    api = Api(app)
    code = app.onboarding.claim_code()
    flash = Flash(tmp_path / "flash.json")
    node = ClaimNode(farm_id=settings.farm_id, device_id="esp-m05001", claim_code=code,
                     flash=flash, port=port, retry_s=0.3, room_hint="room-a", via="mosquitto")
    claiming = asyncio.create_task(node.credentials())
    try:
        async def listed() -> Any:
            _, doc, _ = await api.call("GET", "/api/onboarding")
            return [p for p in doc["pending"] if p["device_id"] == "esp-m05001"]

        entry = (await until(listed, 15, "the node listed as pending"))[0]
        assert (entry["address"], entry["client_id"], entry["claim_mode"]) == (
            "mosquitto", "esp-m05001@room-a", True)
        _, doc, _ = await api.call("GET", "/api/onboarding")
        assert doc["enabled"] and doc["mode"] == "external"

        # The claim account: a wrong code is refused by Mosquitto; with the code it may not read
        # others' claim topics nor publish readings; a hello for the node's id with another key
        # is refused by the edge (first key wins) and gets nothing.
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, username=CLAIM_ACCOUNT,
                                      password="WRONG-CODE", timeout=5):
                pass
        other_key = uuid.uuid4().hex
        async with aiomqtt.Client("127.0.0.1", port, username=CLAIM_ACCOUNT, password=code,
                                  identifier=f"esp-m05001.{other_key}", timeout=5) as spy:
            # Mosquitto grants a wildcard subscription and checks each delivery against the
            # ACL: this one must receive nothing (checked below, after the real delivery).
            await spy.subscribe(f"farm/{settings.farm_id}/claim/+", qos=1)
            granted = await spy.subscribe(
                delivery_topic(settings.farm_id, "esp-m05001", other_key), qos=1)
            assert [getattr(g, "value", g) for g in granted] == [1]
            conflicts = app.onboarding.conflicts
            await spy.publish(hello_topic(settings.farm_id), json.dumps(
                {"device_id": "esp-m05001", "claim_key": other_key}).encode(), qos=1)
            await until(lambda: _more(app, conflicts), 10, "the other key refused")

            # A reading from the claim account goes nowhere (Mosquitto drops it, and this
            # version also drops the connection that sent it).
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", port, username=CLAIM_ACCOUNT,
                                          password=code, timeout=5) as intruder:
                    await intruder.publish(
                        f"farm/{settings.farm_id}/room/room-a/telemetry/esp-m05001",
                        b'{"device_id":"esp-m05001","data":{"temperature_c":19}}', qos=1)

            status, made, _ = await api.call("POST", "/api/onboarding/esp-m05001/adopt",
                                             {"room_id": "room-a", "kind": "sensor"})
            assert status == 201 and made["claim_mode"] is True, made
            creds = await asyncio.wait_for(claiming, 20)
            # The spy (its own key's topic, and the wildcard) got nothing.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    async for _message in spy.messages:
                        break
    finally:
        claiming.cancel()
    assert creds.password == made["password"] and creds.room_id == "room-a"
    assert not query(settings.db_path, "SELECT 1 FROM series WHERE device_id = ?",
                     ("esp-m05001",))

    # The installer brings the new account to Mosquitto (as for every device added with it);
    # the node then runs with what it was handed, and its readings are stored.
    reload()
    farm = build_node(claimed_provisioning(settings.farm_id, creds, "127.0.0.1", port),
                      telemetry_interval_s=0.5)
    stop = asyncio.Event()
    running = asyncio.create_task(farm.run(stop))
    try:
        await wait_for(lambda: query(settings.db_path,
                                     "SELECT 1 FROM series WHERE device_id = ? AND room_id = ?",
                                     ("esp-m05001", "room-a")), 20, "its telemetry stored")
    finally:
        stop.set()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def _more(app: Any, before: int) -> bool:
    return bool(app.onboarding.conflicts > before)
