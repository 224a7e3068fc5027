"""Simulated ESP32 nodes against a real broker (the machine's Mosquitto, or one started here),
plus the fault generators every ingest test leans on."""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import pytest

from edge.config import EdgeSettings, load_config
from firmware_sim.clock import AcceleratedClock
from firmware_sim.farm import (
    broker_address,
    build_farm,
    read_device_secrets,
    run_farm,
    sim_main,
)
from firmware_sim.faults import INVALID_KINDS, FaultPlan, garbage_messages
from firmware_sim.nodes import ActuatorNode, SensorNode
from firmware_sim.physics import ActuatorBank, Room, RoomParams
from shared.errors import PayloadError, TopicError
from shared.models import (
    KNOWN_METRICS,
    Command,
    dump,
    parse_ack,
    parse_status,
    parse_telemetry,
    utcnow,
)
from shared.topics import parse_topic
from tests.conftest import free_port

HOST, PORT = "127.0.0.1", 1883
Message = tuple[str, bytes]


class Observer:
    """A plain MQTT client watching one farm's topics (and sending its commands)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[Message] = []

    async def collect(self) -> None:
        async for message in self.client.messages:
            self.messages.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]

    async def wait_for(
        self, predicate: Callable[[str, bytes], bool], count: int = 1, timeout: float = 10.0
    ) -> list[Message]:
        deadline = time.monotonic() + timeout
        while True:
            hits = [(t, p) for t, p in self.messages if predicate(t, p)]
            if len(hits) >= count:
                return hits
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(hits)}/{count} matching messages: {self.messages}")
            await asyncio.sleep(0.02)

    async def command(self, topic: str, cmd: Command | bytes) -> None:
        await self.client.publish(topic, cmd if isinstance(cmd, bytes) else dump(cmd), qos=1)


@contextlib.asynccontextmanager
async def observing(farm_id: str, port: int = PORT) -> AsyncIterator[Observer]:
    async with aiomqtt.Client(HOST, port, identifier=f"observer-{farm_id}") as client:
        await client.subscribe(f"farm/{farm_id}/#", qos=1)
        observer = Observer(client)
        task = asyncio.create_task(observer.collect())
        try:
            yield observer
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


@contextlib.asynccontextmanager
async def running(*nodes: SensorNode | ActuatorNode) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(node.run()) for node in nodes]
    try:
        for node in nodes:
            await asyncio.wait_for(node.connected.wait(), 10)
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def kind_is(kind: str, device_id: str) -> Callable[[str, bytes], bool]:
    return lambda topic, _payload: topic.endswith(f"/{kind}/{device_id}")


def command(device_id: str, cid: str, action: str = "on", value: float | None = None) -> Command:
    return Command(
        command_id=cid, device_id=device_id, action=action, value=value, timestamp=utcnow()
    )


# ---------------------------------------------------------------- nodes on the machine's Mosquitto


@pytest.mark.mosquitto
async def test_sensor_node_publishes_valid_telemetry_and_status(farm_id: str) -> None:
    node = SensorNode(
        farm_id=farm_id, room_id="r1", device_id="s-1", room=Room("oyster", "fruiting"),
        interval_s=0.1, port=PORT,
    )
    async with observing(farm_id) as obs, running(node):
        tel = await obs.wait_for(kind_is("telemetry", "s-1"), count=3)
        status = await obs.wait_for(kind_is("status", "s-1"))
    for topic, payload in tel:
        parsed_topic = parse_topic(topic)
        assert (parsed_topic.farm_id, parsed_topic.room_id) == (farm_id, "r1")
        reading = parse_telemetry(payload, received_at=utcnow(), expected_device="s-1")
        assert not reading.timestamp_replaced
        assert set(reading.data) == set(KNOWN_METRICS)
        assert 3.3 <= reading.data["battery_v"] <= 4.2
        assert set(json.loads(payload)) == {"device_id", "timestamp", "data"}
    assert parse_status(status[0][1], expected_device="s-1").online


@pytest.mark.mosquitto
async def test_actuator_acks_a_command_changes_state_and_reports_status(farm_id: str) -> None:
    bank = ActuatorBank()
    node = ActuatorNode(
        farm_id=farm_id, room_id="r1", device_id="hum-1", role="humidifier", bank=bank, port=PORT,
    )
    topic = f"farm/{farm_id}/room/r1/command/hum-1"
    async with observing(farm_id) as obs, running(node):
        await obs.wait_for(kind_is("status", "hum-1"))  # the status it sends on connect
        await obs.command(topic, command("hum-1", "c-on"))
        (_, ack_payload), = await obs.wait_for(kind_is("ack", "hum-1"))
        ack = parse_ack(ack_payload, expected_device="hum-1")
        assert (ack.command_id, ack.status) == ("c-on", "ok")
        assert ack.state is not None and ack.state["on"] is True
        assert bank.by_role()["humidifier"] == 1.0
        statuses = await obs.wait_for(kind_is("status", "hum-1"), count=2)
        assert parse_status(statuses[-1][1]).state["on"] is True

        await obs.command(topic, command("hum-1", "c-set", "set", 40))
        acks = await obs.wait_for(kind_is("ack", "hum-1"), count=2)
        assert parse_ack(acks[1][1]).state == {"on": True, "level": 40.0, "role": "humidifier"}
        assert bank.level("hum-1") == pytest.approx(0.4)

        # A redelivered command is acked again but not applied twice.
        await obs.command(topic, command("hum-1", "c-off", "off"))
        await obs.command(topic, command("hum-1", "c-set", "set", 40))
        acks = await obs.wait_for(kind_is("ack", "hum-1"), count=4)
        assert [parse_ack(p).command_id for _, p in acks[2:]] == ["c-off", "c-set"]
        assert bank.level("hum-1") == 0.0


@pytest.mark.mosquitto
async def test_invalid_commands_get_an_error_ack_and_change_nothing(farm_id: str) -> None:
    bank = ActuatorBank()
    node = ActuatorNode(
        farm_id=farm_id, room_id="r1", device_id="fan-1", role="exhaust_fan", bank=bank, port=PORT,
    )
    topic = f"farm/{farm_id}/room/r1/command/fan-1"
    bad = [
        json.dumps({"command_id": "c-1", "device_id": "fan-1", "action": "explode",
                    "timestamp": utcnow().isoformat()}).encode(),
        dump(command("fan-1", "c-2", "set", 250)),
        dump(command("fan-9", "c-3")),
        b"{not json",
    ]
    async with observing(farm_id) as obs, running(node):
        await obs.wait_for(kind_is("status", "fan-1"))
        for payload in bad:
            await obs.command(topic, payload)
        acks = [parse_ack(p) for _, p in await obs.wait_for(kind_is("ack", "fan-1"), count=4)]
    assert [a.command_id for a in acks] == ["c-1", "c-2", "c-3", "unknown"]
    assert all(a.status == "error" and a.error for a in acks)
    assert "action" in (acks[0].error or "")
    assert bank.level("fan-1") == 0.0


@pytest.mark.mosquitto
@pytest.mark.parametrize("options", [{"ack": False}, {"fail_mode": "ignore"}])
async def test_a_node_that_never_acks_stays_silent(farm_id: str, options: dict) -> None:
    bank = ActuatorBank()
    node = ActuatorNode(
        farm_id=farm_id, room_id="r1", device_id="heat-1", role="heater", bank=bank, port=PORT,
        **options,
    )
    async with observing(farm_id) as obs, running(node):
        await obs.wait_for(kind_is("status", "heat-1"))
        await obs.command(f"farm/{farm_id}/room/r1/command/heat-1", command("heat-1", "c-1"))
        deadline = time.monotonic() + 5
        while not node.received and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert node.received, "the command never reached the node"
        await asyncio.sleep(0.5)
        assert not [m for m in obs.messages if kind_is("ack", "heat-1")(*m)]
    # `ack=False` still switches (the ack is what is lost); `ignore` does nothing at all.
    assert bank.level("heat-1") == (1.0 if options.get("ack") is False else 0.0)


@pytest.mark.mosquitto
async def test_faulty_sensor_sends_garbage_between_its_valid_readings(farm_id: str) -> None:
    plan = FaultPlan(malformed_json=0.5, impossible_values=0.5, duplicate=0.5, seed=3)
    node = SensorNode(
        farm_id=farm_id, room_id="r1", device_id="s-2", room=Room("shiitake", "pinning"),
        interval_s=0.05, port=PORT, faults=plan,
    )
    def valid(topic: str, payload: bytes) -> bool:
        try:
            parse_telemetry(payload, received_at=utcnow(), expected_device="s-2")
        except PayloadError:
            return False
        return kind_is("telemetry", "s-2")(topic, payload)

    async with observing(farm_id) as obs:
        async with running(node):
            await obs.wait_for(kind_is("telemetry", "s-2"), count=40)
        sent = node.published
        # Every reading the node sent arrives intact (duplicates on top), the garbage with it.
        good = await obs.wait_for(valid, count=sent)
    telemetry = [m for m in obs.messages if kind_is("telemetry", "s-2")(*m)]
    assert node.faults is not None
    counts = node.faults.counts
    assert counts["malformed_json"] > 0 and counts["impossible_values"] > 0
    assert counts["duplicate"] > 0
    assert len(good) == sent + counts["duplicate"]
    assert len(telemetry) - len(good) == counts["malformed_json"] + counts["impossible_values"]


# ---------------------------------------------------------------- a broker of our own


@contextlib.asynccontextmanager
async def mosquitto(port: int) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        "/usr/sbin/mosquitto", "-p", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                break
            assert proc.returncode is None, "mosquitto exited"
            assert time.monotonic() < deadline, "mosquitto did not start"
            await asyncio.sleep(0.05)
        yield
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.mosquitto
async def test_node_reconnects_when_the_broker_comes_back(farm_id: str) -> None:
    port = free_port()
    node = SensorNode(
        farm_id=farm_id, room_id="r1", device_id="s-3", room=Room("oyster", "pinning"),
        interval_s=0.1, port=port, backoff_max_s=0.5,
    )
    task = asyncio.create_task(node.run())
    try:
        async with mosquitto(port):
            await asyncio.wait_for(node.connected.wait(), 10)
        # Broker gone: the node notices (at worst when a QoS 1 publish times out), backs off
        # and retries.
        deadline = time.monotonic() + 10
        while node.connected.is_set():
            assert time.monotonic() < deadline, "the node never noticed the broker went away"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        async with mosquitto(port), observing(farm_id, port) as obs:
            await obs.wait_for(kind_is("telemetry", "s-3"), count=2)
        assert node.connects == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------- the runner


def settings_for(farm_id: str, tmp_path: Path, **broker: object) -> EdgeSettings:
    secrets = tmp_path / "device-secrets.toml"
    secrets.write_text(
        '[edge]\nusername = "smartfarm-edge"\npassword = "e"\n'
        '[devices.s-1]\npassword = "pw-s1"\n[devices.hum-1]\npassword = "pw-h1"\n'
    )
    return EdgeSettings(
        farm_id=farm_id,
        device_secrets_file=secrets,
        broker=broker or {"mode": "external", "url": f"mqtt://{HOST}:{PORT}"},
        rooms=[{"id": "r1", "species": "oyster", "stage": "fruiting"},
               {"id": "r2", "species": "lions_mane", "stage": "pinning"}],
        devices=[{"id": "s-1", "room": "r1", "kind": "sensor"},
                 {"id": "hum-1", "room": "r1", "kind": "actuator", "actuator": "humidifier"},
                 {"id": "s-2", "room": "r2", "kind": "sensor"}],
    )


def test_runner_reads_secrets_and_broker_address(farm_id: str, tmp_path: Path) -> None:
    settings = settings_for(farm_id, tmp_path)
    assert read_device_secrets(settings.device_secrets_path) == {"s-1": "pw-s1", "hum-1": "pw-h1"}
    assert read_device_secrets(tmp_path / "missing.toml") == {}
    assert broker_address(settings) == (HOST, PORT)
    embedded = settings_for(farm_id, tmp_path, host="0.0.0.0", port=1884)
    assert broker_address(embedded) == ("127.0.0.1", 1884)
    assert broker_address(embedded, port=2000) == ("127.0.0.1", 2000)
    farm = build_farm(settings, speed=60, seed=2)
    assert set(farm.rooms) == {"r1", "r2"} and set(farm.sensors) == {"s-1", "s-2"}
    assert farm.actuators["hum-1"].password == "pw-h1"
    assert farm.sensors["s-1"].room is farm.rooms["r1"]
    assert farm.clock.speed == 60


def test_sim_main_refuses_a_missing_config(tmp_path: Path, capsys) -> None:
    assert sim_main(["--config", str(tmp_path / "nope.toml")], load_config) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.mosquitto
async def test_run_farm_drives_rooms_on_an_accelerated_clock(farm_id: str, tmp_path: Path) -> None:
    settings = settings_for(farm_id, tmp_path)
    farm = build_farm(settings, telemetry_interval_s=30, clock=AcceleratedClock(120), seed=4,
                      room_params=RoomParams())
    stop = asyncio.Event()
    async with observing(farm_id) as obs:
        runner = asyncio.create_task(farm.run(stop))
        await obs.wait_for(kind_is("status", "hum-1"))
        await obs.command(f"farm/{farm_id}/room/r1/command/hum-1", command("hum-1", "c-1"))
        await obs.wait_for(kind_is("ack", "hum-1"))
        rh_at_ack = {room_id: room.state.humidity_pct for room_id, room in farm.rooms.items()}
        seen = len(await obs.wait_for(kind_is("telemetry", "s-1")))
        tel = await obs.wait_for(kind_is("telemetry", "s-1"), count=seen + 4)
        await obs.wait_for(kind_is("telemetry", "s-2"), count=2)
        stop.set()
        await asyncio.wait_for(runner, 5)
    # Readings come every 30 simulated seconds, a quarter of a real second at 120x; their
    # timestamps are wall-clock time (an ESP32 keeps NTP time), so the edge accepts them as is.
    for _, payload in tel:
        assert not parse_telemetry(payload, received_at=utcnow()).timestamp_replaced
    assert farm.clock.elapsed() >= 4 * 30
    assert farm.rooms["r1"].elapsed_s >= 4 * 30 - 5
    # The humidifier is on in r1 only, so r1 gains moisture while r2 dries.
    assert farm.rooms["r1"].state.humidity_pct > rh_at_ack["r1"] + 2.0
    assert farm.rooms["r2"].state.humidity_pct < rh_at_ack["r2"]


@pytest.mark.mosquitto
async def test_run_farm_runs_until_stopped(farm_id: str, tmp_path: Path) -> None:
    stop = asyncio.Event()
    async with observing(farm_id) as obs:
        runner = asyncio.create_task(
            run_farm(settings_for(farm_id, tmp_path), speed=60, telemetry_interval_s=10, stop=stop)
        )
        await obs.wait_for(kind_is("telemetry", "s-1"), count=2)
        await obs.wait_for(kind_is("telemetry", "s-2"), count=2)
        stop.set()
        await asyncio.wait_for(runner, 5)


@pytest.mark.mosquitto
async def test_sim_command_line_runs_and_stops_on_sigterm(farm_id: str, tmp_path: Path) -> None:
    settings_for(farm_id, tmp_path)  # writes the secrets file
    config = tmp_path / "edge.toml"
    config.write_text(
        f'farm_id = "{farm_id}"\n'
        'device_secrets_file = "device-secrets.toml"\n'
        f'[broker]\nmode = "external"\nurl = "mqtt://{HOST}:{PORT}"\n'
        '[[rooms]]\nid = "r1"\nspecies = "oyster"\nstage = "fruiting"\n'
        '[[devices]]\nid = "s-1"\nroom = "r1"\nkind = "sensor"\n'
    )
    async with observing(farm_id) as obs:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smartfarm_cli", "sim", "--config", str(config), "--speed", "60",
            "--interval", "5", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            await obs.wait_for(kind_is("telemetry", "s-1"), count=2, timeout=20)
        finally:
            proc.terminate()
            _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()


# ---------------------------------------------------------------- fault generators (no broker)


def test_every_garbage_message_is_rejected_and_the_list_is_reproducible() -> None:
    now = utcnow()
    messages = garbage_messages("f1", "r1", "s-1", 400, seed=9, now=now)
    assert messages == garbage_messages("f1", "r1", "s-1", 400, seed=9, now=now)
    assert messages != garbage_messages("f1", "r1", "s-1", 400, seed=10, now=now)
    assert len(set(messages)) > 200
    for topic, payload in messages:
        assert "+" not in topic and "#" not in topic
        try:
            parsed = parse_topic(topic)
            parse_telemetry(payload, received_at=utcnow(), expected_device=parsed.device_id)
        except (TopicError, PayloadError):
            continue
        raise AssertionError(f"accepted: {topic} {payload[:200]!r}")


def test_garbage_of_one_kind_and_bad_kinds() -> None:
    for kind in INVALID_KINDS:
        assert len(garbage_messages("f1", "r1", "s-1", 5, kinds=(kind,))) == 5
    with pytest.raises(ValueError, match="not invalid"):
        garbage_messages("f1", "r1", "s-1", 5, kinds=("duplicate",))
    with pytest.raises(ValueError, match="probability"):
        FaultPlan(duplicate=1.5)


def test_fault_injector_keeps_the_real_reading_and_skews_clocks() -> None:
    doc = {"device_id": "s-1", "timestamp": utcnow().isoformat(), "data": {"co2_ppm": 900.0}}
    injector = FaultPlan(clock_skew=1.0, duplicate=1.0, seed=1).injector("s-1")
    for _ in range(20):
        out = injector.outgoing("f1", "r1", "s-1", doc)
        assert len(out) == 2 and out[0] == out[1]  # duplicated
        reading = parse_telemetry(out[0][1], received_at=utcnow(), expected_device="s-1")
        assert reading.timestamp_replaced  # 1970, years off, hours ahead or missing
        assert reading.data == {"co2_ppm": 900.0}
    assert injector.counts == {"clock_skew": 20, "duplicate": 20}
    same = FaultPlan.everything(0.3, seed=5)
    a, b = same.injector("s-1"), same.injector("s-1")
    assert [a.outgoing("f1", "r1", "s-1", doc) for _ in range(30)] == [
        b.outgoing("f1", "r1", "s-1", doc) for _ in range(30)
    ]
