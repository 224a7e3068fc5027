"""The same accounts and least-privilege rules on a private Mosquitto, from the files we generate.

Each test starts ``mosquitto -c`` on a free port with the shipped example config (paths and
listener rewritten), a password file and ACL from edge.credentials, and stops it afterwards.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from edge.credentials import (
    DeviceSecrets,
    render_mosquitto_acl,
    write_mosquitto_acl,
    write_mosquitto_password_file,
)
from tests.integration.test_broker import assert_silent, next_message

MOSQUITTO = Path("/usr/sbin/mosquitto")
EXAMPLE_CONF = Path(__file__).parents[2] / "deploy" / "mosquitto" / "mosquitto.conf"
EXAMPLE_ACL = Path(__file__).parents[2] / "deploy" / "mosquitto" / "acl.example"
EDGE = "smartfarm-edge"
ROOMS = {"dev-a": "room-1", "dev-b": "room-2"}


def test_acl_example_matches_generator() -> None:
    assert EXAMPLE_ACL.read_text() == render_mosquitto_acl("farm-1", EDGE)


def private_config(port: int, passwd: Path, acl: Path) -> str:
    """The shipped example with this test's listener, files and a throwaway store."""
    keep = []
    for line in EXAMPLE_CONF.read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() else ""
        if key in {"listener", "password_file", "acl_file", "persistence",
                   "persistence_location", "log_dest", "log_type"}:
            continue
        keep.append(line)
    assert "max_queued_messages 0" in keep
    keep += [
        f"listener {port} 127.0.0.1",
        f"password_file {passwd}",
        f"acl_file {acl}",
        "persistence false",
        "log_dest stderr",
    ]
    if os.geteuid() == 0:
        # Run as root, Mosquitto drops to user `mosquitto` before reading the 0600 files in a
        # root-only pytest tmp dir; a private test broker may stay root instead.
        keep.append("user root")
    return "\n".join(keep) + "\n"


@dataclass
class Mosq:
    farm_id: str
    port: int
    secrets: DeviceSecrets
    passwd: Path
    proc: asyncio.subprocess.Process

    def topic(self, kind: str, device: str) -> str:
        return f"farm/{self.farm_id}/room/{ROOMS.get(device, 'room-1')}/{kind}/{device}"

    def client(self, username: str | None, password: str | None = None) -> aiomqtt.Client:
        if username is not None and password is None:
            password = self.secrets.plaintext_entries()[username]
        return aiomqtt.Client(
            "127.0.0.1", self.port, username=username, password=password,
            identifier=f"{username or 'anon'}-{uuid.uuid4().hex[:8]}", timeout=5,
        )


async def _wait_listening(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        if proc.returncode is not None:
            pytest.fail(f"mosquitto exited ({proc.returncode}):\n{log.read_text()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    pytest.fail(f"mosquitto did not listen on {port}:\n{log.read_text()}")


@contextlib.asynccontextmanager
async def private_mosquitto(
    directory: Path, port: int, passwd: Path, acl: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``mosquitto -c`` with ``private_config`` (written to ``directory``, its log beside it),
    listening on ``port``, until the block ends; skips the test if Mosquitto is not installed."""
    if not MOSQUITTO.exists():
        pytest.skip(f"{MOSQUITTO} is not installed (apt-get install mosquitto)")
    conf, log = directory / "mosquitto.conf", directory / "mosquitto.log"
    conf.write_text(private_config(port, passwd, acl))
    with log.open("wb") as log_fh:
        proc = await asyncio.create_subprocess_exec(
            str(MOSQUITTO), "-c", str(conf), stdout=log_fh, stderr=log_fh
        )
    try:
        await _wait_listening(port, proc, log)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def mosq(tmp_path: Path, farm_id: str, port: int) -> AsyncIterator[Mosq]:
    if not MOSQUITTO.exists():
        pytest.skip(f"{MOSQUITTO} is not installed (apt-get install mosquitto)")
    secrets = DeviceSecrets.load_or_create(tmp_path / "device-secrets.toml", edge_username=EDGE)
    for dev in ROOMS:
        secrets.add_device(dev)
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    write_mosquitto_password_file(passwd, secrets.plaintext_entries())
    write_mosquitto_acl(acl, farm_id, EDGE)
    async with private_mosquitto(tmp_path, port, passwd, acl) as proc:
        yield Mosq(farm_id, port, secrets, passwd, proc)


pytestmark = pytest.mark.mosquitto


async def test_logins(mosq: Mosq) -> None:
    for username, password in [("dev-a", "wrong"), (EDGE, mosq.secrets.devices["dev-a"]),
                               ("dev-zz", mosq.secrets.devices["dev-a"]), (None, None)]:
        with pytest.raises(aiomqtt.MqttError):
            async with mosq.client(username, password):
                pass
    async with mosq.client("dev-a"), mosq.client(EDGE):
        pass


async def test_own_publish_delivered_spoof_not(mosq: Mosq) -> None:
    spoofs = [
        mosq.topic("telemetry", "dev-b"),
        mosq.topic("status", "dev-b"),
        mosq.topic("command", "dev-b"),
        mosq.topic("command", "dev-a"),
        f"farm/{mosq.farm_id}/room/room-1/telemetry/dev-a/x",
    ]
    async with mosq.client(EDGE) as edge:
        await edge.subscribe(f"farm/{mosq.farm_id}/#", qos=1)
        for topic in spoofs:
            # Unlike amqtt (silent drop), Mosquitto 2.0 disconnects a v3.1.1 client on a denied
            # publish, so each attempt gets its own connection.
            with contextlib.suppress(aiomqtt.MqttError):
                async with mosq.client("dev-a") as dev:
                    await dev.publish(topic, b"spoof", qos=0)
        async with mosq.client("dev-a") as dev:
            await dev.publish(mosq.topic("telemetry", "dev-a"), b"legit", qos=1)
        message = await next_message(edge)
        # In order: had a spoof been accepted, it would have reached the edge first.
        assert (message.topic.value, message.payload) == (mosq.topic("telemetry", "dev-a"),
                                                          b"legit")
        await assert_silent(edge)


async def test_device_reads_only_its_commands(mosq: Mosq) -> None:
    async with mosq.client(EDGE) as edge, mosq.client("dev-a") as dev:
        await dev.subscribe(mosq.topic("command", "dev-b"), qos=1)
        await dev.subscribe(f"farm/{mosq.farm_id}/room/+/telemetry/+", qos=1)
        await dev.subscribe(mosq.topic("command", "dev-a"), qos=1)
        await edge.publish(mosq.topic("command", "dev-b"), b"for-b", qos=1)
        await edge.publish(mosq.topic("telemetry", "dev-b"), b"not-for-a", qos=1)
        await edge.publish(mosq.topic("command", "dev-a"), b"for-a", qos=1)
        message = await next_message(dev)
        assert (message.topic.value, message.payload) == (mosq.topic("command", "dev-a"),
                                                          b"for-a")
        await assert_silent(dev)


async def test_device_added_then_sighup(mosq: Mosq) -> None:
    password = mosq.secrets.add_device("dev-c")
    write_mosquitto_password_file(mosq.passwd, mosq.secrets.plaintext_entries())
    mosq.proc.send_signal(signal.SIGHUP)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        try:
            async with mosq.client("dev-c", password) as dev, mosq.client(EDGE) as edge:
                await edge.subscribe(f"farm/{mosq.farm_id}/#", qos=1)
                await dev.publish(mosq.topic("telemetry", "dev-c"), b"hello", qos=1)
                message = await next_message(edge)
                assert message.topic.value == mosq.topic("telemetry", "dev-c")
                return
        except aiomqtt.MqttError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


def test_acl_grants_the_edge_the_home_assistant_prefix_only_when_asked() -> None:
    plain = render_mosquitto_acl("farm-1", EDGE)
    with_ha = render_mosquitto_acl("farm-1", EDGE, ha_discovery_prefix="homeassistant")
    assert "homeassistant" not in plain
    assert with_ha.splitlines()[-1] == "topic readwrite homeassistant/#"
    assert with_ha.replace("topic readwrite homeassistant/#\n", "") == plain
