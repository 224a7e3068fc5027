"""The outbox on a real SQLite store: every kind of record appended in the same transaction as the
row it mirrors, seqs given per batch and kept for resends, the held ack, rewind and rebase,
retention pruning, the backlog cap policy, and bytes written per reading with sync running."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.alerts import AlertMonitor
from edge.automation import Automation
from edge.commands import CommandTracker
from edge.config import ApiConfig, CloudConfig, DeviceConfig, EdgeSettings, RoomConfig
from edge.ingest import Ingest
from edge.outbox import CAP_ALERT, FULL_ALERT, Outbox
from edge.store import commands as command_rows
from edge.store import outbox as rows
from edge.store.db import Database
from edge.store.telemetry import store_telemetry
from shared.models import Telemetry, utcnow
from shared.sync import Batch
from shared.topics import build_topic

T0 = 1_700_000_000.0


@dataclass
class RecordingPublisher:
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.sent.append((topic, json.loads(payload)))


@dataclass
class Edge:
    """The edge's components on one store, without MQTT or HTTP (tests drive them directly)."""

    settings: EdgeSettings
    db: Database
    automation: Automation
    commands: CommandTracker
    alerts: AlertMonitor
    ingest: Ingest
    publisher: RecordingPublisher
    outbox: Outbox

    async def settle(self) -> None:
        await self.db.write(_nothing, urgent=True)

    async def message(self, kind: str, device_id: str, payload: dict[str, Any] | bytes) -> None:
        device = self.settings.device(device_id)
        room = device.room if device is not None else "room-a"
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.ingest.handle(build_topic(self.settings.farm_id, room, kind, device_id), raw)

    async def telemetry(self, device_id: str, ts: datetime | None = None, **data: float) -> None:
        stamp = (ts or utcnow()).isoformat()
        await self.message("telemetry", device_id,
                           {"device_id": device_id, "timestamp": stamp, "data": data})

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.db.path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    async def records(self) -> list[dict[str, Any]]:
        """Every record not yet given a seq, as the next batch would carry it (nothing assigned)."""
        prepared = await self.db.read(rows.prepare_new, rows.SeriesCache(), 5_000, 10**8, T0)
        return [] if prepared is None else [json.loads(r) for r in prepared.records]


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def make_settings(farm_id: str, tmp_path: Path, **cloud: Any) -> EdgeSettings:
    return EdgeSettings(
        farm_id=farm_id,
        data_dir=tmp_path,
        api=ApiConfig(admin_password="not used here"),
        cloud=CloudConfig(**cloud),
        rooms=[
            RoomConfig(id="room-a", name="Oyster room", species="oyster", stage="fruiting"),
            RoomConfig(id="room-b", species="lions_mane", stage="pinning"),
        ],
        devices=[
            DeviceConfig(id="sens-a", room="room-a", kind="sensor"),
            DeviceConfig(id="hum-a", room="room-a", kind="actuator", actuator="humidifier"),
            DeviceConfig(id="fan-a", room="room-a", kind="actuator", actuator="exhaust_fan"),
            DeviceConfig(id="sens-b", room="room-b", kind="sensor"),
        ],
    )


async def build_edge(
    settings: EdgeSettings, db_path: Path, *, max_unsynced_rows: int = 10**9,
    commit_interval_ms: float = 20,
) -> Edge:
    db = Database(db_path, commit_interval_ms=commit_interval_ms)
    await db.open()
    alerts = AlertMonitor(
        db, out_of_band_after=timedelta(minutes=15), silent_after=timedelta(minutes=5)
    )
    holder: dict[str, Automation] = {}

    async def on_outcome(outcome: Any) -> None:
        await holder["automation"].on_outcome(outcome)

    commands = CommandTracker(db, farm_id=settings.farm_id, ack_timeout_s=5, retries=0,
                              on_outcome=on_outcome)
    publisher = RecordingPublisher()
    commands.attach(publisher)
    automation = Automation(settings, db, commands, alerts)
    holder["automation"] = automation
    await automation.load()
    ingest = Ingest(
        db, farm_id=settings.farm_id,
        known_devices=lambda: {d.id: d.room for d in settings.devices},
        on_reading=automation.on_reading,
        on_ack=lambda topic, ack: commands.on_ack(topic.device_id, ack),
        on_status=automation.on_status,
    )
    outbox = Outbox(db, retention_days=settings.cloud.retention_days,
                    max_unsynced_rows=max_unsynced_rows, alerts=alerts)
    return Edge(settings, db, automation, commands, alerts, ingest, publisher, outbox)


async def close_edge(edge: Edge) -> None:
    await edge.commands.close()
    if edge.db.is_open:
        await edge.db.close()


@pytest.fixture
async def edge(farm_id: str, tmp_path: Path) -> AsyncIterator[Edge]:
    built = await build_edge(make_settings(farm_id, tmp_path), tmp_path / "edge.db")
    yield built
    await close_edge(built)


def tel(device: str, ts: float, **data: float) -> Telemetry:
    return Telemetry(device_id=device, timestamp=datetime.fromtimestamp(ts, UTC), data=data)


def batch_of(prepared: rows.Prepared, farm_id: str = "farm-1") -> Batch:
    """The records as the cloud would validate them (contiguous seqs, known kinds)."""
    body = {
        "edge_id": "edge-1", "farm_id": farm_id, "first_seq": prepared.first_seq,
        "last_seq": prepared.last_seq, "sent_at": utcnow().isoformat(),
        "records": [json.loads(r) for r in prepared.records],
    }
    return Batch.model_validate(body)


# ---- schema ----
async def test_migration_2_adds_the_sync_tables_and_a_zero_cursor(edge: Edge) -> None:
    assert edge.db.schema_version >= 2
    marks = await edge.db.read(rows.marks)
    assert marks == rows.Marks(0, 0, 0, 1, 0, 0)
    assert await edge.outbox.next_batch(100, 10**6) is None  # nothing recorded yet
    assert await edge.db.read(rows.get_state, "config_version") == 0


# ---- every kind of record, in the same transaction as its row ----
async def test_each_kind_of_row_appends_its_record(edge: Edge) -> None:
    await edge.telemetry("sens-a", temperature_c=18.5, humidity_pct=91)
    await edge.message("telemetry", "sens-a", b"{not json")
    await edge.message("status", "hum-a", {"device_id": "hum-a", "online": True,
                                           "state": {"on": False}})
    # sens-a already has a device_status row (touched by its reading): the update path.
    await edge.message("status", "sens-a", {"device_id": "sens-a", "online": False})
    first = await edge.automation.manual_command("hum-a", "on", by="tester")
    second = await edge.automation.manual_command("hum-a", "off", by="tester")  # supersedes
    await edge.message("ack", "hum-a", {"command_id": second, "status": "ok"})
    await edge.alerts.raise_alert("test:1", kind="test", message="first")
    await edge.alerts.raise_alert("test:1", kind="test", message="bumped")  # no new record
    await edge.alerts.resolve("test:1")
    await edge.automation.set_stage("room-b", "fruiting")
    rule = edge.automation.rules("room-a")[0].id
    await edge.automation.set_rule_enabled(rule, False)
    await edge.automation.set_rule_enabled(rule, True)
    await asyncio.sleep(0.1)  # the ack settles the command in the background
    await edge.settle()

    records = await edge.records()
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_kind.setdefault(record["kind"], []).append(record["data"])
    reading = by_kind["reading"]
    assert len(reading) == 1
    assert reading[0]["values"] == {"humidity_pct": 91.0, "temperature_c": 18.5}
    assert reading[0]["device_id"] == "sens-a" and reading[0]["room_id"] == "room-a"
    assert reading[0]["ts_replaced"] is False
    assert len(by_kind["quarantine"]) == 1
    assert by_kind["quarantine"][0]["reason"].startswith("payload")
    assert [(s["device_id"], s["online"]) for s in by_kind["status"]] == [
        ("hum-a", True), ("sens-a", False)
    ]  # and the reading's last_seen touch made none
    commands = {c["command_id"]: c for c in by_kind["command"]}
    assert {first, second} <= commands.keys()
    assert commands[first]["source"] == "manual" and commands[first]["cloud_command_id"] is None
    states = [(s["command_id"], s["state"]) for s in by_kind["command_state"]]
    assert (first, "superseded") in states
    assert (second, "acked") in states
    assert by_kind["ack"] == [
        {"command_id": second, "device_id": "hum-a", "status": "ok",
         "at": by_kind["ack"][0]["at"]}
    ]
    alerts = [(a["key"], a["state"]) for a in by_kind["alert"] if a["key"] == "test:1"]
    assert alerts == [("test:1", "active"), ("test:1", "resolved")]
    changes = [c["change"] for c in by_kind["config_change"]]
    assert {"room_id": "room-b", "stage": "fruiting",
            "stage_started": utcnow().date().isoformat()} in changes
    assert {"rule_id": rule, "enabled": False} in changes
    assert {"rule_id": rule, "enabled": True} in changes
    assert all(c["base_version"] == 0 for c in by_kind["config_change"])
    batch_of(await edge.db.read(rows.prepare_new, rows.SeriesCache(), 5_000, 10**8, T0))


async def test_boot_expiry_records_the_state_change(edge: Edge) -> None:
    cid = await edge.automation.manual_command("fan-a", "on")
    await edge.settle()
    assert await edge.db.write(command_rows.expire_pending_on_boot, T0 + 1) == 1
    states = [r["data"] for r in await edge.records() if r["kind"] == "command_state"]
    assert states[-1]["command_id"] == cid
    assert states[-1]["state"] == "superseded" and states[-1]["error"] == "edge restarted"


async def test_a_failed_write_leaves_no_record(edge: Edge) -> None:
    def insert_then_fail(conn: sqlite3.Connection) -> None:
        command_rows.insert_command(
            conn, command_id="c-doomed", device_id="hum-a", room_id="room-a", action="on",
            value=None, source="manual", reason="", created_at=T0,
        )
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await edge.db.write(insert_then_fail)
    assert edge.query("SELECT count(*) FROM outbox")[0][0] == 0
    assert await edge.records() == []


async def test_readings_carry_their_exact_values(edge: Edge) -> None:
    rnd = random.Random(3)
    sent = []
    for i in range(300):
        data = {"temperature_c": round(rnd.gauss(18, 3), 3), "co2_ppm": rnd.randint(400, 2000),
                "battery_v": rnd.uniform(3.2, 4.2)}
        device = ("sens-a", "sens-b")[i % 2]
        room = "room-a" if device == "sens-a" else "room-b"
        sent.append((device, room, T0 + i, data))
        edge.db.write_nowait(store_telemetry, tel(device, T0 + i, **data), room, T0 + i + 0.25,
                             False)
    await edge.settle()
    prepared = await edge.outbox.next_batch(5_000, 10**8)
    assert prepared is not None
    batch = batch_of(prepared)
    assert [r.kind for r in batch.records] == ["reading"] * 300
    for record, (device, room, ts, data) in zip(batch.records, sent, strict=True):
        assert record.data["device_id"] == device and record.data["room_id"] == room
        assert record.data["ts"] == ts
        assert record.at == pytest.approx(ts + 0.25)
        assert record.data["values"] == {k: float(v) for k, v in data.items()}


# ---- seqs, resends, acks ----
async def test_seqs_are_given_per_batch_and_kept_for_resends(edge: Edge) -> None:
    for i in range(10):
        await edge.db.write(store_telemetry, tel("sens-a", T0 + i, co2_ppm=800 + i), "room-a",
                            T0 + i, False)
    await edge.alerts.raise_alert("x", kind="test", message="m")
    first = await edge.outbox.next_batch(4, 10**8)
    assert first is not None
    # Outbox rows (the alert) go before readings; the batch stops at max_records.
    assert [json.loads(r)["kind"] for r in first.records] == ["alert"] + ["reading"] * 3
    assert (first.first_seq, first.last_seq) == (1, 4)
    # Not acknowledged: asking again gives exactly the same records under the same seqs.
    again = await edge.outbox.next_batch(4, 10**8, new=False)
    assert again is not None and again.records == first.records
    # Byte bound: a batch stops before passing max_bytes (but always carries one record).
    assert await edge.outbox.confirmed(first, 4) == "ok"
    small = await edge.outbox.next_batch(100, len(first.records[1]) + 10)
    assert small is not None and len(small.records) == 1 and small.first_seq == 5
    await edge.outbox.confirmed(small, 5)
    rest = await edge.outbox.next_batch(100, 10**8)
    assert rest is not None and (rest.first_seq, rest.last_seq) == (6, 11)
    assert await edge.outbox.confirmed(rest, 11) == "ok"
    assert await edge.outbox.next_batch(100, 10**8) is None
    assert (await edge.outbox.marks()).acked_seq == 11


async def test_a_held_ack_lost_in_a_crash_only_resends_the_batch(
    farm_id: str, tmp_path: Path
) -> None:
    path = tmp_path / "edge.db"
    edge = await build_edge(make_settings(farm_id, tmp_path), path)
    for i in range(5):
        await edge.db.write(store_telemetry, tel("sens-a", T0 + i, co2_ppm=i), "room-a", T0, False)
    batch = await edge.outbox.next_batch(100, 10**8)
    assert batch is not None
    assert await edge.outbox.confirmed(batch, batch.last_seq) == "ok"
    assert edge.outbox.holding_ack
    assert (await edge.db.read(rows.marks)).acked_seq == 0  # held, not stored
    await close_edge(edge)  # "crash": the held ack is gone

    edge = await build_edge(make_settings(farm_id, tmp_path), path)
    resent = await edge.outbox.next_batch(100, 10**8)
    assert resent is not None and resent.records == batch.records
    await edge.outbox.confirmed(resent, resent.last_seq)
    await edge.outbox.flush()
    assert (await edge.db.read(rows.marks)).acked_seq == 5
    await close_edge(edge)


async def test_the_next_assignment_stores_the_held_ack(edge: Edge) -> None:
    await edge.db.write(store_telemetry, tel("sens-a", T0, co2_ppm=1), "room-a", T0, False)
    one = await edge.outbox.next_batch(100, 10**8)
    assert one is not None
    await edge.outbox.confirmed(one, one.last_seq)
    await edge.db.write(store_telemetry, tel("sens-a", T0 + 1, co2_ppm=2), "room-a", T0, False)
    two = await edge.outbox.next_batch(100, 10**8)
    assert two is not None and two.first_seq == 2
    assert not edge.outbox.holding_ack
    assert (await edge.db.read(rows.marks)).acked_seq == 1


async def test_rewind_resends_from_the_clouds_mark(edge: Edge) -> None:
    for i in range(6):
        await edge.db.write(store_telemetry, tel("sens-a", T0 + i, co2_ppm=i), "room-a", T0, False)
    batches = []
    for _ in range(3):
        batch = await edge.outbox.next_batch(2, 10**8)
        assert batch is not None
        await edge.outbox.confirmed(batch, batch.last_seq)
        batches.append(batch)
    # The cloud lost everything after seq 3 (restored from a backup): it expects 4.
    assert await edge.outbox.rewind(4)
    again = await edge.outbox.next_batch(2, 10**8)
    assert again is not None and again.first_seq == 4
    assert again.records == batches[1].records[1:]  # seq 4 is the second of batch 2
    await edge.outbox.confirmed(again, again.last_seq)
    third = await edge.outbox.next_batch(2, 10**8)
    assert third is not None and third.records == batches[2].records


async def test_rebase_when_the_cloud_is_ahead(edge: Edge) -> None:
    for i in range(3):
        await edge.db.write(store_telemetry, tel("sens-a", T0 + i, co2_ppm=i), "room-a", T0, False)
    batch = await edge.outbox.next_batch(100, 10**8)
    assert batch is not None
    # The cloud already holds seqs up to 1000 from an earlier database of this edge id.
    assert await edge.outbox.confirmed(batch, 1000) == "rebased"
    again = await edge.outbox.next_batch(100, 10**8)
    assert again is not None and (again.first_seq, again.last_seq) == (1001, 1003)
    assert [json.loads(r)["data"]["values"] for r in again.records] == [
        json.loads(r)["data"]["values"] for r in batch.records
    ]


# ---- bounded disk ----
async def test_prune_removes_only_confirmed_rows_past_retention(edge: Edge) -> None:
    old = utcnow().timestamp() - 40 * 86_400  # retention is 30 days
    for i in range(20):
        await edge.db.write(store_telemetry, tel("sens-a", old + i, co2_ppm=i), "room-a", old,
                            False)
    await edge.alerts.raise_alert("old", kind="test", message="m")
    first = await edge.outbox.next_batch(11, 10**8)  # the alert and 10 readings
    assert first is not None
    await edge.outbox.confirmed(first, first.last_seq)
    second = await edge.outbox.next_batch(5, 10**8)  # 5 more; 5 never sent
    assert second is not None
    await edge.outbox.confirmed(second, second.last_seq)
    await edge.outbox.flush()
    # Age the first segment past retention (segments are kept by when they were sent).
    await edge.db.write(lambda c: c.execute("UPDATE outbox_segments SET made_at = ?", (old,)))

    await edge.outbox.maintain()
    left = [r[0] for r in edge.query("SELECT vals FROM readings ORDER BY id")]
    assert left == [f"[{i}]" for i in range(10, 20)]  # the newest segment and the unsent 5 stay
    assert edge.query("SELECT count(*) FROM outbox")[0][0] == 0  # the alert row was confirmed
    assert [r[0] for r in edge.query("SELECT first_seq FROM outbox_segments")] == [12]
    # New readings are still numbered above every reading already sent.
    await edge.db.write(store_telemetry, tel("sens-a", old + 100, co2_ppm=1), "room-a", old,
                        False)
    rest = await edge.outbox.next_batch(100, 10**8)
    assert rest is not None and (rest.first_seq, len(rest.records)) == (17, 6)
    assert [json.loads(r)["data"]["values"]["co2_ppm"] for r in rest.records] == [
        15.0, 16.0, 17.0, 18.0, 19.0, 1.0
    ]


async def test_cap_merges_the_oldest_unsent_readings_and_alerts(farm_id: str,
                                                                tmp_path: Path) -> None:
    edge = await build_edge(make_settings(farm_id, tmp_path), tmp_path / "edge.db",
                            max_unsynced_rows=1_000)
    try:
        minute0 = 1_700_000_040.0 - 1_700_000_040.0 % 60
        # 2 sensors, one reading every 5 s for 100 minutes: 2 400 readings, 12 per minute.
        for i in range(1_200):
            for device, room in (("sens-a", "room-a"), ("sens-b", "room-b")):
                value = 800 + i % 12
                edge.db.write_nowait(store_telemetry, tel(device, minute0 + 5 * i, co2_ppm=value),
                                     room, minute0 + 5 * i, False)
        await edge.settle()
        # One batch is in flight: the merge must leave its records alone.
        inflight = await edge.outbox.next_batch(50, 10**8)
        assert inflight is not None
        await edge.outbox.maintain()

        count = edge.query("SELECT count(*) FROM readings")[0][0]
        assert count <= 900
        assert edge.outbox.stats.merged_readings == 2_400 - count
        alert = edge.query("SELECT kind, severity, message FROM alerts WHERE key = ?",
                           (CAP_ALERT,))
        assert alert and alert[0]["severity"] == "critical"
        assert "merged" in alert[0]["message"]
        # The in-flight batch resends identically; what follows is contiguous and carries the
        # minute means with their counts.
        again = await edge.outbox.next_batch(50, 10**8, new=False)
        assert again is not None and again.records == inflight.records
        await edge.outbox.confirmed(again, again.last_seq)
        rest = await edge.outbox.next_batch(5_000, 10**8)
        assert rest is not None
        batch = batch_of(rest)
        means = [r.data for r in batch.records
                 if r.kind == "reading" and "downsampled" in r.data]
        assert means
        for data in means:
            assert data["downsampled"]["period_s"] == 60
            n = data["downsampled"]["n"]
            assert 2 <= n <= 12
            if n == 12:  # a whole minute: values 800..811
                assert data["values"]["co2_ppm"] == pytest.approx(805.5)
        total = sum(r.data.get("downsampled", {}).get("n", 1) for r in batch.records
                    if r.kind == "reading") + len(inflight.records)
        assert total == 2_400  # every reading is accounted for, merged or not

        # Nothing left to merge (one reading a minute): nothing dropped, a second alert.
        await edge.outbox.confirmed(rest, rest.last_seq)
        later = minute0 + 10**6
        for i in range(1_500):
            edge.db.write_nowait(store_telemetry, tel("sens-a", later + 60 * i, co2_ppm=1),
                                 "room-a", later, False)
        await edge.settle()
        await edge.outbox.maintain()
        assert edge.query("SELECT count(*) FROM readings WHERE ts >= ?", (later,))[0][0] == 1_500
        assert edge.query("SELECT count(*) FROM alerts WHERE key = ?", (FULL_ALERT,))[0][0] == 1
    finally:
        await close_edge(edge)


# ---- bytes per reading ----
def _bytes_written() -> int | None:
    try:
        with open("/proc/self/io") as io:
            return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))
    except OSError:
        return None


async def test_bytes_per_reading_with_sync_under_300(tmp_path: Path) -> None:
    """The store test's load (20 devices, six metrics, ~100 readings per group commit), with the
    uploader's bookkeeping running beside it: a batch given seqs and acknowledged every ~80
    readings (what 2 s batches mean at 40 readings/s), time-compressed 50x."""
    n, devices_n = 10_000, 20
    rnd = random.Random(7)
    fed = asyncio.Event()
    async with Database(tmp_path / "edge.db", commit_interval_ms=50,
                        commit_max_items=100) as db:
        outbox = Outbox(db, retention_days=30, max_unsynced_rows=10**9)

        async def feed() -> None:
            for i in range(n):
                ts = T0 + i * 0.05
                data = {
                    "temperature_c": round(rnd.gauss(18, 1), 2),
                    "humidity_pct": round(rnd.gauss(88, 2), 1),
                    "co2_ppm": round(rnd.gauss(850, 60)),
                    "light_lux": round(rnd.uniform(0, 800)),
                    "substrate_moisture": round(rnd.gauss(62, 2), 1),
                    "battery_v": round(rnd.uniform(3.5, 4.1), 2),
                }
                dev = i % devices_n
                db.write_nowait(store_telemetry, tel(f"sensor-{dev:02d}", ts, **data),
                                f"room-{dev % 2}", ts + 0.05, False)
                if i % 10 == 9:
                    await asyncio.sleep(0.005)  # ~2 000 readings/s
            fed.set()

        async def upload() -> int:
            batches = 0
            while True:
                await asyncio.sleep(0.04)
                batch = await outbox.next_batch(5_000, 10**8)
                if batch is None:
                    if fed.is_set() and (await outbox.marks()).acked_seq == n:
                        return batches
                    continue
                await outbox.confirmed(batch, batch.last_seq)
                batches += 1

        await db.checkpoint("TRUNCATE")
        before = _bytes_written()
        _, batches = await asyncio.gather(feed(), upload())
        await outbox.flush()
        await db.write(_nothing, urgent=True)
        await db.checkpoint("TRUNCATE")
        after = _bytes_written()
        groups = db.stats.transactions
    if before is None or after is None:
        pytest.skip("no /proc/self/io")
    written = (after - before) / n
    print(f"\nstore + sync: {written:.1f} B/reading written ({batches} batches,"
          f" {n / groups:.0f} writes per group)")
    assert batches >= 50
    assert written < 300
