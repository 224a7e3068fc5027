"""The embedded amqtt broker: per-device logins and the least-privilege topic ACL, over real TCP."""
from __future__ import annotations

import asyncio
import logging
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from edge.broker import EmbeddedBroker, broker_address, embedded_broker
from edge.config import ConfigError, EdgeSettings
from edge.credentials import (
    DeviceSecrets,
    device_acl_path,
    edge_login,
    hash_password,
    read_password_file,
    sync_broker_files,
    sync_password_file,
    verify_password,
    write_device_acl,
)

EDGE = "smartfarm-edge"
ROOMS = {"dev-a": "room-1", "dev-b": "room-2"}


@dataclass
class Farm:
    farm_id: str
    broker: EmbeddedBroker
    secrets: DeviceSecrets
    passwd: Path
    acl: Path
    rooms: dict[str, str]

    def topic(self, kind: str, device: str, room: str | None = None) -> str:
        return f"farm/{self.farm_id}/room/{room or self.rooms[device]}/{kind}/{device}"

    def client(self, username: str | None, password: str | None = None) -> aiomqtt.Client:
        if username is not None and password is None:
            password = self.secrets.plaintext_entries()[username]
        return aiomqtt.Client(
            "127.0.0.1", self.broker.port, username=username, password=password,
            identifier=f"{username or 'anon'}-{uuid.uuid4().hex[:8]}", timeout=5,
        )


@pytest.fixture
async def farm(tmp_path: Path, farm_id: str) -> AsyncIterator[Farm]:
    secrets = DeviceSecrets.load_or_create(tmp_path / "credentials" / "device-secrets.toml")
    for dev in ROOMS:
        secrets.add_device(dev)
    passwd = tmp_path / "credentials" / "passwd"
    acl = tmp_path / "credentials" / "device-acl.json"
    sync_password_file(passwd, secrets)
    write_device_acl(acl, ROOMS)
    broker = EmbeddedBroker(host="127.0.0.1", port=0, password_file=passwd, acl_file=acl,
                            farm_id=farm_id, edge_username=EDGE)
    await broker.start()
    try:
        yield Farm(farm_id, broker, secrets, passwd, acl, dict(ROOMS))
    finally:
        await broker.stop()


async def next_message(client: aiomqtt.Client, timeout: float = 5) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            return message
    raise AssertionError("message stream ended")


async def assert_silent(client: aiomqtt.Client, seconds: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        message = await next_message(client, seconds)
        pytest.fail(f"unexpected message on {message.topic}: {message.payload!r}")


# ---- credentials format -------------------------------------------------------------------------

def test_hash_is_the_format_amqtt_file_auth_verifies() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("$argon2id$")
    amqtt_hasher = PasswordHash((Argon2Hasher(),))  # what amqtt's FileAuthPlugin uses
    assert amqtt_hasher.verify("correct horse", hashed)
    assert not amqtt_hasher.verify("wrong horse", hashed)
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horse", "not-a-hash")


def test_secret_files_are_private_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "credentials" / "device-secrets.toml"
    secrets = DeviceSecrets.load_or_create(path, edge_username=EDGE)
    password = secrets.add_device("sensor-1")
    assert len(password) >= 24
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = DeviceSecrets.load(path)
    assert again.devices == {"sensor-1": password}
    assert again.edge_password == secrets.edge_password
    passwd = tmp_path / "credentials" / "passwd"
    sync_password_file(passwd, again)
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
    entries = read_password_file(passwd)
    assert set(entries) == {EDGE, "sensor-1"}
    assert verify_password(password, entries["sensor-1"])
    # An unchanged account keeps its hash (no re-hashing of 200 devices on every add).
    again.add_device("sensor-2")
    sync_password_file(passwd, again)
    assert read_password_file(passwd)["sensor-1"] == entries["sensor-1"]
    assert again.remove_device("sensor-1")
    sync_password_file(passwd, again)
    assert set(read_password_file(passwd)) == {EDGE, "sensor-2"}


# ---- login --------------------------------------------------------------------------------------

async def test_wrong_password_refused(farm: Farm) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with farm.client("dev-a", "not-the-password"):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with farm.client(EDGE, farm.secrets.devices["dev-a"]):  # another account's password
            pass
    async with farm.client("dev-a"):  # and the right one works, so the refusals mean something
        pass


async def test_anonymous_refused(farm: Farm) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with farm.client(None):
            pass


async def test_unknown_user_refused(farm: Farm) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with farm.client("dev-zz", farm.secrets.devices["dev-a"]):
            pass


# ---- topics -------------------------------------------------------------------------------------

async def test_device_telemetry_reaches_edge(farm: Farm) -> None:
    async with farm.client(EDGE) as edge, farm.client("dev-a") as dev:
        await edge.subscribe(f"farm/{farm.farm_id}/#", qos=1)
        for kind in ("telemetry", "status", "ack"):
            await dev.publish(farm.topic(kind, "dev-a"), b'{"n": 1}', qos=1)
            message = await next_message(edge)
            assert message.topic.value == farm.topic(kind, "dev-a")
            assert message.payload == b'{"n": 1}'


async def test_device_cannot_publish_as_another(
    farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge.broker_acl")
    spoofs = [
        farm.topic("telemetry", "dev-b"),                    # another device's topic
        farm.topic("telemetry", "dev-a", room="room-2"),     # own id, someone else's room
        farm.topic("command", "dev-b"),                      # commanding an actuator
        farm.topic("command", "dev-a"),                      # devices never publish commands
        "farm/other-farm/room/room-1/telemetry/dev-a",       # another farm
        f"farm/{farm.farm_id}/room/room-1/telemetry/dev-a/x",  # deeper than the scheme
    ]
    async with farm.client(EDGE) as edge, farm.client("dev-a") as dev:
        await edge.subscribe(f"farm/{farm.farm_id}/#", qos=1)
        fenced = await edge.subscribe("farm/other-farm/#", qos=1)
        assert [rc.value for rc in fenced] == [0x80]  # the edge is fenced to its farm too
        for topic in spoofs:
            await dev.publish(topic, b"spoof", qos=1)  # amqtt still PUBACKs, then drops it
        await dev.publish(farm.topic("telemetry", "dev-a"), b"legit", qos=1)
        message = await next_message(edge)
        # Delivery is in order: had any spoof got through, it would have arrived first.
        legit = (farm.topic("telemetry", "dev-a"), b"legit")
        assert (message.topic.value, message.payload) == legit
        await assert_silent(edge)
    denied = [r.getMessage() for r in caplog.records if "denied" in r.getMessage()]
    assert any("'dev-a'" in line and "dev-b" in line for line in denied)


async def test_device_cannot_subscribe_to_another_command_topic(farm: Farm) -> None:
    async with farm.client(EDGE) as edge, farm.client("dev-a") as dev:
        granted = await dev.subscribe(farm.topic("command", "dev-b"), qos=1)
        assert [rc.value for rc in granted] == [0x80]
        wildcard = await dev.subscribe(f"farm/{farm.farm_id}/#", qos=1)
        assert [rc.value for rc in wildcard] == [0x80]
        own = await dev.subscribe(farm.topic("command", "dev-a"), qos=1)
        assert [rc.value for rc in own] == [1]
        await edge.publish(farm.topic("command", "dev-b"), b"for-b", qos=1)
        await edge.publish(farm.topic("telemetry", "dev-b"), b"not-for-a", qos=1)
        await edge.publish(farm.topic("command", "dev-a"), b"for-a", qos=1)
        message = await next_message(dev)
        assert (message.topic.value, message.payload) == (farm.topic("command", "dev-a"), b"for-a")
        await assert_silent(dev)


async def test_device_receives_own_commands_at_qos1(farm: Farm) -> None:
    async with farm.client(EDGE) as edge, farm.client("dev-b") as dev:
        granted = await dev.subscribe(farm.topic("command", "dev-b"), qos=2)
        assert [rc.value for rc in granted] == [1]  # the broker caps QoS at 1
        await edge.publish(farm.topic("command", "dev-b"), b'{"action": "on"}', qos=1)
        message = await next_message(dev)
        assert message.payload == b'{"action": "on"}'
        assert message.qos == 1


async def test_oversized_publish_drops_the_connection(farm: Farm) -> None:
    async with farm.client(EDGE) as edge:
        await edge.subscribe(f"farm/{farm.farm_id}/#", qos=1)
        dev = farm.client("dev-a")
        with pytest.raises(aiomqtt.MqttError):
            async with dev:
                await dev.publish(farm.topic("telemetry", "dev-a"), b"x" * 70_000, qos=0)
                await asyncio.sleep(2)
                await dev.publish(farm.topic("telemetry", "dev-a"), b"after", qos=1)
        async with farm.client("dev-b") as other:
            await other.publish(farm.topic("telemetry", "dev-b"), b"small", qos=1)
        message = await next_message(edge)
        assert message.payload == b"small"


async def test_device_added_at_runtime_connects(farm: Farm) -> None:
    async with farm.client(EDGE) as edge:
        await edge.subscribe(f"farm/{farm.farm_id}/#", qos=1)
        with pytest.raises(aiomqtt.MqttError):
            async with farm.client("dev-c", "guess"):
                pass
        # What `smartfarm edge device add` does from another process: only files change.
        password = farm.secrets.add_device("dev-c")
        farm.rooms["dev-c"] = "room-1"
        sync_password_file(farm.passwd, farm.secrets)
        write_device_acl(farm.acl, farm.rooms)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        async with farm.client("dev-c", password) as dev:
            received = None
            while received is None and loop.time() < deadline:
                await dev.publish(farm.topic("telemetry", "dev-c"), b"hello", qos=1)
                try:
                    received = await next_message(edge, 0.25)
                except TimeoutError:
                    continue
        assert received is not None, "new device's telemetry never reached the edge"
        assert received.topic.value == farm.topic("telemetry", "dev-c")


async def test_removed_device_loses_access(farm: Farm) -> None:
    password = farm.secrets.devices["dev-b"]
    async with farm.client("dev-b", password):
        pass
    farm.secrets.remove_device("dev-b")
    sync_password_file(farm.passwd, farm.secrets)
    del farm.rooms["dev-b"]
    write_device_acl(farm.acl, farm.rooms)
    farm.broker.reload()  # in-process nudge instead of waiting for the poll
    with pytest.raises(aiomqtt.MqttError):
        async with farm.client("dev-b", password):
            pass


# ---- wiring from the edge settings --------------------------------------------------------------

@pytest.mark.parametrize("env_password", [None, "edge-password-from-the-environment"])
async def test_broker_from_settings(tmp_path: Path, farm_id: str, env_password: str | None) -> None:
    settings = EdgeSettings(
        farm_id=farm_id,
        broker={"port": 0, "edge_password": env_password},
        rooms=[{"id": "room-1", "species": "oyster", "stage": "fruiting"}],
        devices=[{"id": "dev-a", "room": "room-1", "kind": "sensor"}],
        config_path=tmp_path / "edge.toml",
    )
    secrets = DeviceSecrets.load_or_create(settings.device_secrets_path)
    device_password = secrets.add_device("dev-a")
    sync_broker_files(settings, secrets)
    assert device_acl_path(settings).parent == settings.password_file_path.parent
    username, password = edge_login(settings)
    assert password == (env_password or secrets.edge_password)
    async with embedded_broker(settings) as broker:
        assert broker.port > 0

        def client(user: str, pw: str) -> aiomqtt.Client:
            return aiomqtt.Client("127.0.0.1", broker.port, username=user, password=pw,
                                  identifier=f"{user}-{uuid.uuid4().hex[:8]}", timeout=5)

        async with client(username, password) as edge, client("dev-a", device_password) as dev:
            await edge.subscribe(f"farm/{farm_id}/#", qos=1)
            topic = f"farm/{farm_id}/room/room-1/telemetry/dev-a"
            await dev.publish(topic, b"{}", qos=1)
            assert (await next_message(edge)).topic.value == topic


def test_broker_address() -> None:
    embedded = EdgeSettings(broker={"host": "127.0.0.1", "port": 1999})
    assert broker_address(embedded) == ("127.0.0.1", 1999)
    external = EdgeSettings(broker={"mode": "external", "url": "mqtt://mqtt.local:1884"})
    assert broker_address(external) == ("mqtt.local", 1884)
    default_port = EdgeSettings(broker={"mode": "external", "url": "mqtt://10.0.0.5"})
    assert broker_address(default_port) == ("10.0.0.5", 1883)
    for bad in [None, "http://x:80", "mqtt://:1883"]:
        with pytest.raises(ConfigError):
            broker_address(EdgeSettings(broker={"mode": "external", "url": bad}))


async def test_rotated_password_replaces_the_old_one(farm: Farm) -> None:
    old = farm.secrets.devices["dev-a"]
    new = farm.secrets.add_device("dev-a", rotate=True)
    sync_password_file(farm.passwd, farm.secrets)
    farm.broker.reload()
    async with farm.client("dev-a", new):
        pass
    with pytest.raises(aiomqtt.MqttError):
        async with farm.client("dev-a", old):
            pass


async def test_client_id_cannot_be_hijacked(farm: Farm) -> None:
    """A bad login, or another account, reusing a device's client id leaves its session alone:
    bad logins are refused; another account gets a session of its own (client ids are per
    account), never the device's."""
    dev_pw = farm.secrets.devices["dev-a"]
    async with farm.client(EDGE) as edge, aiomqtt.Client(
        "127.0.0.1", farm.broker.port, username="dev-a", password=dev_pw,
        identifier="dev-a-node", timeout=5,
    ) as dev:
        await dev.subscribe(farm.topic("command", "dev-a"), qos=1)
        for username, password in [("dev-a", "wrong"), ("nobody", "x")]:
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", farm.broker.port, username=username,
                                          password=password, identifier="dev-a-node", timeout=5):
                    pass
        async with aiomqtt.Client("127.0.0.1", farm.broker.port, username="dev-b",
                                  password=farm.secrets.devices["dev-b"],
                                  identifier="dev-a-node", clean_session=False, timeout=5):
            pass
        await edge.publish(farm.topic("command", "dev-a"), b"still-here", qos=1)
        message = await next_message(dev)
        assert message.payload == b"still-here"


async def test_garbage_instead_of_connect_is_dropped(farm: Farm) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", farm.broker.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the broker, nothing sent back
    writer.close()
    async with farm.client("dev-a"):  # and the broker is fine
        pass



# ---- amqtt's subscription map changing during a broadcast -------------------------------------

async def test_broker_subscription_map_survives_changes_while_iterated(farm: Farm) -> None:
    """amqtt 0.12 iterates its subscription map across awaits; a client subscribing meanwhile
    raised "dictionary changed size during iteration" (seen in the SIGKILL chaos test) and lost
    the message being broadcast. The running broker's map must tolerate it."""
    subscriptions = farm.broker._broker._subscriptions  # type: ignore[union-attr]
    async with farm.client(EDGE) as edge:
        await edge.subscribe(f"farm/{farm.farm_id}/room/+/telemetry/+", qos=1)
        await edge.subscribe(f"farm/{farm.farm_id}/room/+/ack/+", qos=1)
        seen = []
        for key, _subs in subscriptions.items():
            seen.append(key)
            subscriptions[f"new/{key}"] = []  # what a concurrent SUBSCRIBE does
        for key in subscriptions:
            subscriptions.pop(f"new/{key}", None)
    assert len(seen) >= 2
