"""The edge's MQTT boundary (embedded broker): every message a device sees acknowledged is on disk,
and whatever the edge refuses is a quarantine row with its reason, never a silent drop."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge.config import EdgeSettings, load_config
from edge.credentials import DeviceSecrets
from shared.topics import build_topic
from tests.e2e.conftest import make_site, wait_for

SENSOR = "room-a-sensor"
OTHER = "room-a-humidifier"


@pytest.fixture
def site(tmp_path: Path, farm_id: str) -> tuple[EdgeSettings, DeviceSecrets]:
    settings = load_config(make_site(tmp_path / "site", farm_id))
    return settings, DeviceSecrets.load(settings.device_secrets_path)


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def stored_readings(db: Path) -> int:
    return int(rows(db, "SELECT count(*) FROM readings")[0][0])


def quarantined(db: Path) -> list[tuple[str, str, int]]:
    return [(str(t), str(r), int(n))
            for t, r, n in rows(db, "SELECT topic, reason, original_size FROM quarantine")]


def device(settings: EdgeSettings, secrets: DeviceSecrets, device_id: str,
           identifier: str | None = None, **kw: Any) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", settings.broker.port, username=device_id,
                          password=secrets.devices[device_id],
                          identifier=identifier or f"{device_id}-test", timeout=10, **kw)


def reading(device_id: str, ts: datetime | None, **data: float) -> bytes:
    doc: dict[str, Any] = {"device_id": device_id, "data": data or {"humidity_pct": 85.0}}
    if ts is not None:
        doc["timestamp"] = ts.isoformat()
    return json.dumps(doc).encode()


async def test_puback_only_once_the_reading_is_committed(site, running_edge):
    """A device deletes a reading once it has its PUBACK: by then it must be on disk, even with
    the longest group-commit interval."""
    settings, secrets = site
    settings.store.commit_interval_ms = 5_000
    await running_edge(settings)
    topic = build_topic(settings.farm_id, "room-a", "telemetry", SENSOR)
    start = datetime.now(UTC) - timedelta(minutes=5)
    async with device(settings, secrets, SENSOR) as client:
        for i in range(5):
            await client.publish(topic, reading(SENSOR, start + timedelta(seconds=i)), qos=1)
            # Acknowledged: a second process (what survives a SIGKILL) already sees the row.
            assert stored_readings(settings.db_path) == i + 1


async def test_devices_publishing_as_the_port_opens_lose_nothing(site, edges):
    """No device is acknowledged before the edge can store its message: publish from the very
    moment the listener accepts connections."""
    settings, secrets = site
    topic = build_topic(settings.farm_id, "room-a", "telemetry", SENSOR)
    start = datetime.now(UTC) - timedelta(minutes=5)
    starting = asyncio.create_task(edges.start(settings))
    acked = 0
    try:
        for _ in range(400):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", settings.broker.port), 0.1).close()
                break
            await asyncio.sleep(0.01)
        async with device(settings, secrets, SENSOR) as client:
            for i in range(50):
                await client.publish(topic, reading(SENSOR, start + timedelta(seconds=i)), qos=1)
                acked += 1
        app = await starting
        await edges.stop(app)
    finally:
        if not starting.done():
            starting.cancel()
    assert acked == 50
    assert stored_readings(settings.db_path) == 50


async def test_client_id_of_another_device_cannot_lock_it_out(site, running_edge):
    settings, secrets = site
    app = await running_edge(settings)
    # The intruder logs in with its own account but the victim's client id, persistent session.
    async with device(settings, secrets, SENSOR, identifier=OTHER, clean_session=False):
        pass
    command = build_topic(settings.farm_id, "room-a", "command", OTHER)
    async with device(settings, secrets, OTHER, identifier=OTHER,
                      clean_session=False) as victim:
        await victim.subscribe(command, qos=1)
        status = build_topic(settings.farm_id, "room-a", "status", OTHER)
        await victim.publish(status, json.dumps({"device_id": OTHER, "online": True}), qos=1)
        # Its own session: commands for it reach it.
        await app.commands.send(device_id=OTHER, room_id="room-a", action="on", source="test")
        async with asyncio.timeout(10):
            message = await anext(aiter(victim.messages))
        assert json.loads(message.payload)["action"] == "on"
    assert quarantined(settings.db_path) == []


async def test_idle_connection_flood_does_not_lock_devices_out(site, running_edge, caplog):
    settings, secrets = site
    await running_edge(settings)
    caplog.set_level(logging.INFO)
    sockets: list[asyncio.StreamWriter] = []
    try:
        for _ in range(1_100):  # idle: never a byte sent
            with contextlib.suppress(OSError, TimeoutError):
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", settings.broker.port), 2)
                sockets.append(writer)
        assert len(sockets) > 1_000
        await asyncio.sleep(0.5)
        topic = build_topic(settings.farm_id, "room-a", "telemetry", SENSOR)
        async with asyncio.timeout(15), device(settings, secrets, SENSOR) as client:
            await client.publish(topic, reading(SENSOR, datetime.now(UTC)), qos=1)
    finally:
        for sock in sockets:
            sock.close()
    assert stored_readings(settings.db_path) == 1
    flood_lines = [r for r in caplog.records
                   if r.name.startswith(("edge.broker", "amqtt")) and r.levelno >= logging.INFO]
    assert len(flood_lines) < 30, [r.getMessage() for r in flood_lines[:40]]


async def test_oversize_publish_is_quarantined_and_acknowledged(site, running_edge):
    settings, secrets = site
    await running_edge(settings)
    topic = build_topic(settings.farm_id, "room-a", "telemetry", SENSOR)
    huge = b'{"device_id": "room-a-sensor", "data": {"note": "' + b"x" * 256_000 + b'"}}'
    async with device(settings, secrets, SENSOR) as client:
        async with asyncio.timeout(10):
            await client.publish(topic, huge, qos=1)  # acknowledged: the device stops retrying
        await client.publish(topic, reading(SENSOR, datetime.now(UTC)), qos=1)  # still connected
    assert stored_readings(settings.db_path) == 1
    [(where, reason, size)] = quarantined(settings.db_path)
    assert where == topic and reason.startswith("oversize") and size == len(huge)


async def test_publish_the_acl_denies_is_quarantined(site, running_edge):
    settings, secrets = site
    app = await running_edge(settings)
    # A sensor publishing as another device, and on a command topic.
    forged = build_topic(settings.farm_id, "room-a", "telemetry", OTHER)
    command = build_topic(settings.farm_id, "room-a", "command", OTHER)
    async with device(settings, secrets, SENSOR) as client:
        await client.publish(forged, reading(OTHER, datetime.now(UTC)), qos=1)
        await client.publish(command, b'{"action": "on"}', qos=1)
    assert stored_readings(settings.db_path) == 0
    found = quarantined(settings.db_path)
    assert sorted(t for t, _, _ in found) == sorted([forged, command])
    assert all(reason.startswith("acl") and SENSOR in reason for _, reason, _ in found)
    assert app.ingest.stats.quarantined_by_reason["acl"] == 2


async def test_same_timestamp_with_other_values_is_quarantined(site, running_edge):
    settings, secrets = site
    await running_edge(settings)
    topic = build_topic(settings.farm_id, "room-a", "telemetry", SENSOR)
    ts = datetime.now(UTC) - timedelta(seconds=30)
    async with device(settings, secrets, SENSOR) as client:
        await client.publish(topic, reading(SENSOR, ts, humidity_pct=85.0), qos=1)
        await client.publish(topic, reading(SENSOR, ts, humidity_pct=85.0), qos=1)  # same again
        await client.publish(topic, reading(SENSOR, ts, humidity_pct=60.0), qos=1)  # conflict
    assert stored_readings(settings.db_path) == 1
    [(_, reason, _)] = quarantined(settings.db_path)
    assert reason.startswith("conflict"), reason


async def test_readings_without_timestamp_are_stamped_not_dropped(site, running_edge):
    settings, secrets = site
    await running_edge(settings)
    topic = build_topic(settings.farm_id, "room-a", "telemetry", SENSOR)
    async with device(settings, secrets, SENSOR) as client:
        for _ in range(12):
            await client.publish(topic, reading(SENSOR, None, humidity_pct=85.0), qos=1)
            await asyncio.sleep(0.05)
    await wait_for(lambda: stored_readings(settings.db_path) == 12, 5, "12 stamped readings")
    stamped = rows(settings.db_path, "SELECT count(*) FROM readings WHERE ts_replaced = 1")
    assert stamped == [(12,)]


async def test_other_subscribers_still_get_what_devices_publish(site, running_edge):
    """The intake stores a reading before it is acknowledged; a client that subscribes to it
    (a tool logged in as the edge) still receives it, and a retained status stays retained."""
    from edge.credentials import edge_login

    settings, secrets = site
    await running_edge(settings)
    user, password = edge_login(settings)
    telemetry = build_topic(settings.farm_id, "room-a", "telemetry", SENSOR)
    status = build_topic(settings.farm_id, "room-a", "status", OTHER)
    async with device(settings, secrets, OTHER) as actuator:
        await actuator.publish(status, json.dumps({"device_id": OTHER, "online": True}),
                               qos=1, retain=True)
    async with aiomqtt.Client("127.0.0.1", settings.broker.port, username=user,
                              password=password, identifier="watcher", timeout=10) as watcher:
        await watcher.subscribe(f"farm/{settings.farm_id}/room/+/+/+", qos=1)
        async with device(settings, secrets, SENSOR) as client:
            await client.publish(telemetry, reading(SENSOR, datetime.now(UTC)), qos=1)
        got: dict[str, bool] = {}
        async with asyncio.timeout(10):
            async for message in watcher.messages:
                got[message.topic.value] = message.retain
                if telemetry in got and status in got:
                    break
    assert got == {telemetry: False, status: True}
    assert stored_readings(settings.db_path) == 1


async def test_lone_readings_share_a_commit_and_a_run_is_acknowledged_at_once(site, running_edge):
    """Durable acks without an SD-card write per reading: devices reporting now and then are
    acknowledged when the group commit's timer ends the group (several readings, one commit);
    a device sending a run (its previous message within the interval) is acknowledged as soon
    as its message is committed."""
    settings, secrets = site
    settings.store.commit_interval_ms = 1_000
    app = await running_edge(settings)
    now = datetime.now(UTC)
    devices = [d.id for d in settings.devices]
    clients = [device(settings, secrets, d) for d in devices]
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        before = app.db.stats.transactions
        started = asyncio.get_running_loop().time()
        # One reading from each device, all within a moment: one group, not one commit each.
        await asyncio.gather(*(
            client.publish(build_topic(settings.farm_id, "room-a", "telemetry", d),
                           reading(d, now), qos=1)
            for d, client in zip(devices, clients, strict=True)))
        lone = asyncio.get_running_loop().time() - started
        assert app.db.stats.transactions - before <= 2
        assert stored_readings(settings.db_path) == len(devices)
        assert lone < 2.0  # within about one commit interval
        # A run from one device: each acknowledged once committed, without the timer's wait.
        sensor = clients[devices.index(SENSOR)]
        topic = build_topic(settings.farm_id, "room-a", "telemetry", SENSOR)
        started = asyncio.get_running_loop().time()
        for i in range(1, 11):
            await sensor.publish(topic, reading(SENSOR, now + timedelta(seconds=i)), qos=1)
        run = asyncio.get_running_loop().time() - started
    assert stored_readings(settings.db_path) == len(devices) + 10
    assert run < 1.0 + 10 * 0.2, run  # not ten commit intervals
