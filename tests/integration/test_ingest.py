"""Ingest into SQLite: direct ``handle`` checks (with hypothesis garbage), then the real thing over
an embedded amqtt broker and the machine's Mosquitto — valid readings stored, every bad message
quarantined with a reason (counts match exactly), redeliveries stored once, callbacks reached."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from amqtt.broker import Broker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.burst_log import BurstLog
from edge.ingest import Ingest
from edge.store import Database, quarantine, readings
from shared.models import Ack, Status, Telemetry
from shared.topics import Topic

DEVICES = {"s1": "room-a", "s2": "room-b", "a1": "room-a"}


def topic(farm: str, room: str, kind: str, device: str) -> str:
    return f"farm/{farm}/room/{room}/{kind}/{device}"


def telemetry(device: str, ts: datetime | None, **data: Any) -> bytes:
    doc: dict[str, Any] = {"device_id": device, "data": data}
    if ts is not None:
        doc["timestamp"] = ts.isoformat()
    return json.dumps(doc).encode()


def everything(conn: sqlite3.Connection) -> list[readings.StoredReading]:
    out = []
    for room in sorted(set(DEVICES.values())):
        out += readings.readings_between(conn, room, 0, 1e12, limit=1_000_000)
    return out


async def settle(db: Database) -> None:
    """Commit whatever is queued (FIFO) and let the ingest's done-callbacks run."""
    await db.write(lambda conn: None, urgent=True)
    await asyncio.sleep(0)


class Calls:
    def __init__(self) -> None:
        self.readings: list[tuple[str, Telemetry]] = []
        self.acks: list[tuple[Topic, Ack]] = []
        self.statuses: list[tuple[Topic, Status]] = []

    def on_reading(self, room: str, tel: Telemetry) -> None:
        self.readings.append((room, tel))

    async def on_ack(self, t: Topic, ack: Ack) -> None:
        self.acks.append((t, ack))

    def on_status(self, t: Topic, status: Status) -> None:
        self.statuses.append((t, status))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "edge.db", commit_interval_ms=20)
    await database.open()
    yield database
    await database.close()


def make_ingest(db: Database, farm_id: str, calls: Calls, **kw: Any) -> Ingest:
    return Ingest(
        db,
        farm_id=farm_id,
        known_devices=lambda: DEVICES,
        on_reading=calls.on_reading,
        on_ack=calls.on_ack,
        on_status=calls.on_status,
        quarantine_max_payload=256,
        **kw,
    )


# ---- handle(), no broker ----
async def test_handle_routes_each_kind(db: Database, farm_id: str) -> None:
    calls = Calls()
    ingest = make_ingest(db, farm_id, calls)
    now = datetime.now(UTC)
    await ingest.handle(
        topic(farm_id, "room-a", "telemetry", "s1"),
        telemetry("s1", now, temperature_c=18.5, ph=6.1),
    )
    await ingest.handle(
        topic(farm_id, "room-a", "status", "a1"),
        b'{"device_id":"a1","online":true,"state":{"on":true}}',
    )
    await ingest.handle(topic(farm_id, "room-a", "ack", "a1"), b'{"command_id":"c1","status":"ok"}')
    bad = [
        (topic("other-farm", "room-a", "telemetry", "s1"), telemetry("s1", now, ph=1), "farm"),
        (topic(farm_id, "room-b", "telemetry", "s1"), telemetry("s1", now, ph=1), "wrong_room"),
        (
            topic(farm_id, "room-a", "telemetry", "ghost"),
            telemetry("ghost", now, ph=1),
            "unknown_device",
        ),
        (topic(farm_id, "room-a", "command", "a1"), b"{}", "kind"),
        ("farm/x/room", b"{}", "topic"),
        (topic(farm_id, "room-a", "telemetry", "s1"), b"{", "payload"),
        (topic(farm_id, "room-a", "telemetry", "s1"), b"x" * 20_000, "oversize"),
    ]
    for t, payload, _ in bad:
        await ingest.handle(t, payload)
    await settle(db)

    assert ingest.stats.received == 10
    assert (ingest.stats.stored, ingest.stats.statuses, ingest.stats.acks) == (1, 1, 1)
    assert ingest.stats.quarantined_by_reason == Counter(reason for *_, reason in bad)
    assert [(r, t.data) for r, t in calls.readings] == [
        ("room-a", {"temperature_c": 18.5, "ph": 6.1})
    ]
    assert calls.acks[0][1].command_id == "c1" and calls.acks[0][0].device_id == "a1"
    assert calls.statuses[0][1].state == {"on": True}
    rows = await db.read(quarantine.recent, 100)
    assert sorted(r.reason.split(":")[0] for r in rows) == sorted(reason for *_, reason in bad)
    oversize = next(r for r in rows if r.reason.startswith("oversize"))
    assert oversize.original_size == 20_000 and len(oversize.payload) == 256


async def test_redeliveries_are_stored_once(db: Database, farm_id: str) -> None:
    calls = Calls()
    ingest = make_ingest(db, farm_id, calls)
    t = topic(farm_id, "room-a", "telemetry", "s1")
    stamped = telemetry("s1", datetime.now(UTC) - timedelta(minutes=1), humidity_pct=91.5)
    unstamped = telemetry("s1", None, humidity_pct=90.25)
    for payload in (stamped, unstamped):
        await ingest.handle(t, payload)
    for payload in (stamped, unstamped):  # the broker's resends (MQTT DUP flag)
        await ingest.handle(t, payload, redelivery=True)
    await settle(db)
    # A fresh ingest (an edge restart) has no memory: the database refuses the stamped one again.
    restarted = make_ingest(db, farm_id, Calls())
    await restarted.handle(t, stamped)
    await settle(db)

    assert (ingest.stats.stored, ingest.stats.duplicates) == (2, 2)
    assert (restarted.stats.stored, restarted.stats.duplicates) == (0, 1)
    assert len(calls.readings) == 2
    stored = await db.read(everything)
    assert sorted(r.data["humidity_pct"] for r in stored) == [90.25, 91.5]
    assert [r.ts_replaced for r in sorted(stored, key=lambda r: r.data["humidity_pct"])] == [
        True,
        False,
    ]
    # Without the DUP flag the same values again, unstamped, are a new reading (a sensor with
    # no clock in a steady room): stamped with their own receive time, not dropped.
    await ingest.handle(t, unstamped)
    await settle(db)
    assert ingest.stats.stored == 3


async def test_failing_callback_loses_nothing(db: Database, farm_id: str, caplog) -> None:
    def explode(room: str, tel: Telemetry) -> None:
        raise RuntimeError("automation bug")

    ingest = Ingest(db, farm_id=farm_id, known_devices=lambda: DEVICES, on_reading=explode)
    with caplog.at_level(logging.ERROR, logger="edge.ingest"):
        for i in range(3):
            await ingest.handle(
                topic(farm_id, "room-b", "telemetry", "s2"), telemetry("s2", None, co2_ppm=800 + i)
            )
    await settle(db)
    assert ingest.stats.stored == 3 and ingest.stats.callback_errors == 3
    assert await db.read(readings.count) == 3
    assert "automation bug" in caplog.text


async def test_known_devices_are_looked_up_per_message(db: Database, farm_id: str) -> None:
    known: dict[str, str] = {}
    ingest = Ingest(db, farm_id=farm_id, known_devices=lambda: known)
    t = topic(farm_id, "room-a", "telemetry", "new1")
    await ingest.handle(t, telemetry("new1", None, ph=6.0))
    known["new1"] = "room-a"  # the device was registered after the ingest started
    await ingest.handle(t, telemetry("new1", None, ph=6.1))
    await settle(db)
    assert (ingest.stats.quarantined, ingest.stats.stored) == (1, 1)


def test_burst_log_warns_once_then_summarises(caplog) -> None:
    burst = BurstLog(window_s=10)
    with caplog.at_level(logging.WARNING, logger="edge.ingest"):
        for i in range(50):
            burst.note(100.0 + i * 0.1, "payload" if i % 2 else "topic", "farm/x", f"bad {i}")
        burst.flush(105.0)  # window still open: nothing yet
        assert len(caplog.records) == 1 and "bad 0" in caplog.records[0].getMessage()
        burst.flush(111.0)
        burst.note(112.0, "payload", "farm/x", "next burst")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert messages[1].startswith("49 more messages quarantined") and "payload: 25" in messages[1]
    assert "next burst" in messages[2]


def test_handle_survives_hypothesis_garbage(tmp_path: Path, farm_id: str) -> None:
    """Whatever arrives, handle() returns and exactly one outcome counter moves."""
    loop = asyncio.new_event_loop()
    db = Database(tmp_path / "fuzz.db", commit_interval_ms=0)
    loop.run_until_complete(db.open())
    ingest = make_ingest(db, farm_id, Calls())

    ids = st.sampled_from(["s1", "s2", "a1", "ghost", "bad.id", "", "x" * 70, "é", "room-a"])
    topics = st.one_of(
        st.text(max_size=80),
        st.builds(
            topic,
            st.sampled_from([farm_id, "other"]),
            ids,
            st.sampled_from(["telemetry", "status", "ack", "command", "nope"]),
            ids,
        ),
    )
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
    json_docs = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
    messages = st.fixed_dictionaries(
        {"device_id": ids},
        optional={
            "data": st.dictionaries(
                st.sampled_from(
                    ["temperature_c", "humidity_pct", "co2_ppm", "ph", "Bad Name", "x"]
                ),
                scalars,
                max_size=4,
            ),
            "timestamp": st.one_of(
                st.text(max_size=30), st.datetimes().map(lambda d: d.isoformat())
            ),
            "command_id": ids,
            "status": st.sampled_from(["ok", "error", "maybe"]),
            "online": scalars,
            "state": json_docs,
        },
    )
    payloads = st.one_of(
        st.binary(max_size=300),
        json_docs.map(lambda d: json.dumps(d).encode()),
        messages.map(lambda d: json.dumps(d).encode()),
    )

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(t=topics, payload=payloads)
    def check(t: str, payload: bytes) -> None:
        s = ingest.stats
        before = (s.received, s.readings, s.quarantined, s.statuses, s.acks, s.duplicates)
        loop.run_until_complete(ingest.handle(t, payload))
        after = (s.received, s.readings, s.quarantined, s.statuses, s.acks, s.duplicates)
        moved = [b - a for a, b in zip(before, after, strict=True)]
        assert moved[0] == 1 and sum(moved[1:]) == 1, (t, payload, moved)

    try:
        check()
        loop.run_until_complete(settle(db))
        s = ingest.stats
        assert s.write_errors == 0 and s.callback_errors == 0
        assert s.quarantined == loop.run_until_complete(db.read(quarantine.count))
        assert s.stored == loop.run_until_complete(db.read(readings.count))
        assert s.quarantined_by_reason.get("internal", 0) == 0
    finally:
        loop.run_until_complete(db.close())
        loop.close()


# ---- over a real broker ----
async def start_amqtt(port: int) -> Broker:
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            # Anonymous access and nothing else: no $SYS publisher, no packet/event logging.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    return broker


@pytest.fixture
async def amqtt_broker(port: int) -> AsyncIterator[tuple[str, int]]:
    broker = await start_amqtt(port)
    yield "127.0.0.1", port
    await broker.shutdown()


@pytest.fixture(params=["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def broker(request: pytest.FixtureRequest) -> tuple[str, int]:
    if request.param == "amqtt":
        return request.getfixturevalue("amqtt_broker")
    return "127.0.0.1", 1883


def build_traffic(farm: str, rnd: random.Random) -> tuple[list[tuple[str, bytes, str]], int]:
    """(topic, payload, expected outcome) for valid, duplicate and bad messages, shuffled; and
    the number of valid readings. Every topic matches the ingest's subscriptions."""
    now = datetime.now(UTC)
    out: list[tuple[str, bytes, str]] = []
    valid: list[tuple[str, bytes]] = []
    for i in range(300):
        device = rnd.choice(["s1", "s2"])
        t = topic(farm, DEVICES[device], "telemetry", device)
        stamp = [
            now - timedelta(seconds=i, milliseconds=rnd.randrange(1000)),
            None,
            datetime(1970, 1, 1, tzinfo=UTC),
        ][i % 3]  # device time, none, no RTC
        data = {
            "temperature_c": round(rnd.uniform(10, 30), 2),
            "humidity_pct": round(rnd.uniform(70, 99), 1),
            "co2_ppm": 400 + i,
            "battery_v": 3.7,
        }
        if i % 7 == 0:
            data["ph"] = 6.5  # unknown metrics are kept
        valid.append((t, telemetry(device, stamp, **data)))
    out += [(t, p, "stored") for t, p in valid]
    # Resent with its device timestamp: a duplicate. (The same values again without a usable
    # timestamp are a new reading unless the broker flags a resend: see test_edge_boundary.)
    out += [(t, p, "duplicate") for t, p in rnd.sample(valid[::3], 40)]
    for i in range(20):
        out.append(
            (
                topic(farm, "room-a", "status", "a1"),
                json.dumps(
                    {"device_id": "a1", "online": True, "state": {"on": i % 2 == 0}}
                ).encode(),
                "status",
            )
        )
        out.append(
            (
                topic(farm, "room-a", "ack", "a1"),
                json.dumps({"command_id": f"c{i}", "status": "ok"}).encode(),
                "ack",
            )
        )

    good = telemetry("s1", now, temperature_c=20)
    tel_a = topic(farm, "room-a", "telemetry", "s1")
    makers = [
        lambda: (tel_a, rnd.randbytes(rnd.randrange(0, 200))),  # random bytes
        lambda: (tel_a, good[: rnd.randrange(1, len(good) - 1)]),  # truncated JSON
        lambda: (tel_a, b"\xff\xfe" + good),  # not UTF-8
        lambda: (tel_a, b"[" * 5_000),  # deeply nested
        lambda: (tel_a, json.dumps(rnd.choice([[], "x", 3, None])).encode()),  # not an object
        lambda: (tel_a, json.dumps({"device_id": "s1", "data": [1, 2]}).encode()),  # wrong types
        lambda: (tel_a, json.dumps({"device_id": "s1", "data": {"co2_ppm": "high"}}).encode()),
        lambda: (tel_a, json.dumps({"device_id": "s1", "data": {"humidity_pct": True}}).encode()),
        lambda: (tel_a, json.dumps({"device_id": 7, "data": {"ph": 7}}).encode()),
        lambda: (tel_a, json.dumps({"device_id": "s1", "data": {}}).encode()),
        lambda: (
            tel_a,
            json.dumps({"device_id": "s1", "timestamp": "yesterday", "data": {"ph": 7}}).encode(),
        ),
        lambda: (tel_a, telemetry("s1", now, humidity_pct=rnd.uniform(100.5, 1e6))),  # impossible
        lambda: (tel_a, telemetry("s1", now, co2_ppm=-rnd.uniform(1, 100))),
        lambda: (tel_a, b'{"device_id":"s1","data":{"temperature_c":NaN}}'),
        lambda: (tel_a, telemetry("s1", now, **{f"m{i}": i for i in range(40)})),  # too many
        lambda: (tel_a, telemetry("s2", now, ph=7)),  # payload device differs from topic
        lambda: (topic(farm, "room-b", "telemetry", "s1"), good),  # wrong room
        lambda: (topic(farm, "room-a", "telemetry", "ghost"), telemetry("ghost", now, ph=7)),
        lambda: (topic(farm, "room-a", "telemetry", "bad.id"), good),  # unsafe id
        lambda: (topic(farm, "room-a", "telemetry", "x" * 80), good),
        lambda: (topic(farm, "", "telemetry", "s1"), good),  # empty level
        lambda: (tel_a, b'{"device_id":"s1","data":{"ph":7},"pad":"' + b"x" * 20_000 + b'"}'),
        lambda: (topic(farm, "room-a", "status", "a1"), b'{"online":"maybe"}'),
        lambda: (topic(farm, "room-a", "ack", "a1"), b'{"command_id":"c1","status":"meh"}'),
    ]
    for _ in range(1_100):
        t, payload = rnd.choice(makers)()
        out.append((t, payload, "quarantined"))
    rnd.shuffle(out)
    # A duplicate must come after its original.
    seen: set[bytes] = set()
    for i, (t, payload, outcome) in enumerate(out):
        if outcome == "duplicate" and payload not in seen:
            j = next(k for k in range(i + 1, len(out)) if out[k][1] == payload)
            out[i], out[j] = out[j], out[i]
            t, payload, outcome = out[i]
        if outcome == "stored":
            seen.add(payload)
    return out, len(valid)


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_ingest_over_broker(broker: tuple[str, int], tmp_path: Path, farm_id: str) -> None:
    host, port = broker
    db = Database(tmp_path / "edge.db")  # default 200 ms groups, as on the Pi
    await db.open()
    calls = Calls()
    ingest = make_ingest(db, farm_id, calls)
    runner = asyncio.create_task(
        ingest.run_forever(host, port, identifier=f"ingest-{farm_id}"), name="ingest"
    )
    try:
        await asyncio.wait_for(ingest.subscribed.wait(), 10)
        traffic, n_valid = build_traffic(farm_id, random.Random(farm_id))
        expected = Counter(outcome for *_, outcome in traffic)
        assert expected["quarantined"] >= 1_000

        async with aiomqtt.Client(host, port, identifier=f"pub-{farm_id}") as pub:
            for i in range(0, len(traffic), 50):
                await asyncio.gather(*(pub.publish(t, p, qos=1) for t, p, _ in traffic[i : i + 50]))
        await wait_for(lambda: ingest.stats.received == len(traffic), 20, "every message")
        await settle(db)

        s = ingest.stats
        assert s.received == len(traffic)
        assert s.quarantined == expected["quarantined"]
        assert s.stored == n_valid
        assert s.duplicates == expected["duplicate"]
        assert (s.statuses, s.acks) == (expected["status"], expected["ack"])
        assert s.quarantined_by_reason.get("internal", 0) == 0
        assert s.write_errors == 0 and s.callback_errors == 0

        # Every valid reading is stored exactly once, with its values.
        stored = await db.read(everything)
        want = sorted(json.loads(p)["data"]["co2_ppm"] for _, p, o in traffic if o == "stored")
        assert sorted(int(r.data["co2_ppm"]) for r in stored) == want
        assert len(calls.readings) == n_valid
        # Every bad message is in quarantine with a reason: same topics and (bounded) payloads.
        rows = await db.read(quarantine.recent, 10_000)
        assert all(r.reason for r in rows)
        assert Counter((r.topic, r.payload) for r in rows) == Counter(
            (t, p[:256]) for t, p, o in traffic if o == "quarantined"
        )
        assert {a.command_id for _, a in calls.acks} == {f"c{i}" for i in range(20)}
        assert len(calls.statuses) == 20 and all(t.device_id == "a1" for t, _ in calls.statuses)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        await db.close()


async def test_run_forever_reconnects(port: int, tmp_path: Path, farm_id: str, caplog) -> None:
    """The broker goes away and comes back on the same port: the ingest resubscribes by itself."""
    first = await start_amqtt(port)
    db = Database(tmp_path / "edge.db", commit_interval_ms=20)
    await db.open()
    ingest = make_ingest(db, farm_id, Calls())
    runner = asyncio.create_task(ingest.run_forever("127.0.0.1", port, backoff_max_s=0.5))
    second: Broker | None = None
    try:
        await asyncio.wait_for(ingest.subscribed.wait(), 10)
        await first.shutdown()
        await wait_for(lambda: not ingest.subscribed.is_set(), 10, "the disconnect")
        await asyncio.sleep(0.5)  # let at least one reconnect attempt fail
        second = await start_amqtt(port)
        await asyncio.wait_for(ingest.subscribed.wait(), 15)
        async with aiomqtt.Client("127.0.0.1", port) as pub:
            await pub.publish(
                topic(farm_id, "room-a", "telemetry", "s1"), telemetry("s1", None, ph=6.0), qos=1
            )
        await wait_for(lambda: ingest.stats.received == 1, 10, "a message after reconnecting")
        await settle(db)
        assert ingest.stats.stored == 1
        assert "retrying in" in caplog.text
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        await db.close()
        if second is not None:
            await second.shutdown()
