"""The edge store on a temp file: group commit, per-item savepoints, drain on close, readings
(dedup, latest, ranges), quarantine and device status, and bytes on disk per reading."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.store import Database, StoreError, devices, load_migrations, quarantine, readings
from edge.store.telemetry import store_telemetry
from shared.models import Status, Telemetry

T0 = 1_700_000_000.0


def tel(device: str, ts: float | None, replaced: bool = False, **data: float) -> Telemetry:
    stamp = None if ts is None else datetime.fromtimestamp(ts, UTC)
    return Telemetry(device_id=device, timestamp=stamp, data=data, timestamp_replaced=replaced)


def put(conn: sqlite3.Connection, key: str, value: str) -> int:
    conn.execute(
        "INSERT INTO automation_state (key, value, updated_at) VALUES (?, ?, 0)", (key, value)
    )
    return 1


def keys(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT key FROM automation_state ORDER BY key")]


@pytest.fixture
async def db(tmp_path: Path):
    database = Database(tmp_path / "edge.db", commit_interval_ms=50)
    await database.open()
    yield database
    await database.close()


# ---- schema ----
async def test_open_applies_every_migration_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "edge.db"
    async with Database(path) as database:
        assert database.schema_version == len(load_migrations())
        tables = await database.read(
            lambda c: {r[0] for r in c.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
        )
        mode = await database.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    assert {
        "readings",
        "series",
        "quarantine",
        "device_status",
        "commands",
        "alerts",
        "automation_state",
    } <= tables
    assert mode == "wal"
    async with Database(path) as again:  # reopening applies nothing and keeps the version
        assert again.schema_version == len(load_migrations())


def test_migrations_must_be_numbered_without_gaps() -> None:
    with pytest.raises(StoreError, match="migration 3 found where 2"):
        load_migrations("-- migration 1: a\nCREATE TABLE a (x);\n-- migration 3: c\nSELECT 1;\n")
    with pytest.raises(StoreError, match="no `-- migration"):
        load_migrations("CREATE TABLE a (x);")


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(StoreError, match="newer than this code"):
        await Database(path).open()


# ---- writer ----
async def test_concurrent_writes_share_few_transactions(db: Database) -> None:
    results = await asyncio.gather(*(db.write(put, f"k{i:04d}", "1") for i in range(500)))
    assert results == [1] * 500
    stats = db.stats
    assert stats.items == 500
    # 500 writes queued at once: one group (or a couple if the writer woke up mid-way).
    assert stats.transactions <= 3, stats
    assert stats.max_batch >= 200
    assert len(await db.read(keys)) == 500


async def test_group_is_bounded_by_max_items(tmp_path: Path) -> None:
    async with Database(tmp_path / "e.db", commit_interval_ms=5_000, commit_max_items=100) as d:
        started = time.monotonic()
        await asyncio.gather(*(d.write(put, f"k{i}", "1") for i in range(300)))
        # Full groups commit at once instead of waiting out the 5 s interval.
        assert time.monotonic() - started < 3
        assert d.stats.transactions == 3
        assert d.stats.max_batch == 100


async def test_failing_write_rolls_back_alone(db: Database) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        put(conn, "bad-1", "1")
        raise ValueError("boom")

    outcomes = await asyncio.gather(
        db.write(put, "a", "1"),
        db.write(half_then_fail),
        db.write(put, "b", "1"),
        db.write(put, "a", "dup"),  # a UNIQUE violation fails this item only
        return_exceptions=True,
    )
    assert outcomes[0] == 1 and outcomes[2] == 1
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "boom"
    assert isinstance(outcomes[3], sqlite3.IntegrityError)
    assert await db.read(keys) == ["a", "b"]
    assert db.stats.transactions == 1  # all four were in the same group
    assert db.stats.failed_items == 2


async def test_close_drains_nowait_writes(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    database = Database(path, commit_interval_ms=10_000)  # nothing would commit on its own
    await database.open()
    for i in range(2_000):
        database.write_nowait(put, f"k{i:05d}", "1")
    database.write_nowait(put, "k00000", "again")  # fails: logged and counted, not raised
    started = time.monotonic()
    await database.close()
    assert time.monotonic() - started < 5
    assert database.stats.failed_items == 1
    with pytest.raises(StoreError):
        database.write_nowait(put, "late", "1")
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM automation_state").fetchone()[0] == 2_000
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


async def test_urgent_write_does_not_wait_for_the_interval(tmp_path: Path) -> None:
    async with Database(tmp_path / "e.db", commit_interval_ms=5_000) as d:
        d.write_nowait(put, "queued-before", "1")
        started = time.monotonic()
        await d.write(put, "now", "1", urgent=True)
        assert time.monotonic() - started < 1
        assert await d.read(keys) == ["now", "queued-before"]


async def test_write_nowait_reports_the_outcome_once_committed(db: Database) -> None:
    done: asyncio.Future[tuple[bool, object]] = asyncio.get_running_loop().create_future()
    db.write_nowait(put, "x", "1", on_done=lambda ok, value: done.set_result((ok, value)))
    assert not done.done()
    assert await done == (True, 1)


async def test_reads_are_read_only_and_off_the_loop(db: Database) -> None:
    with pytest.raises(sqlite3.OperationalError):
        await db.read(put, "x", "1")

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await db.read(lambda c: time.sleep(0.3))
    task.cancel()
    assert ticks >= 10  # the loop kept running while the reader thread slept


async def test_checkpoint_truncates_the_wal(db: Database) -> None:
    await db.write(put, "a", "1", urgent=True)
    busy, _, _ = await db.checkpoint("TRUNCATE")
    assert busy == 0
    assert (db.path.parent / (db.path.name + "-wal")).stat().st_size == 0


# ---- readings ----
async def test_duplicate_readings_are_stored_once(db: Database) -> None:
    first = tel("s1", T0, temperature_c=18.5, humidity_pct=90.0)
    again = tel("s1", T0, humidity_pct=90.0, temperature_c=18.5)  # same message, keys reordered
    ids = [await db.write(readings.insert_reading, t, "r1", T0 + 0.2) for t in (first, again)]
    assert ids[0] is not None and ids[1] is None
    other = await db.write(readings.insert_reading, tel("s2", T0, temperature_c=18.5), "r1", T0)
    assert other is not None  # same time, other device: a different reading
    assert await db.read(readings.count) == 2


async def test_redeliveries_are_refused_across_a_restart_and_below_the_memory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "edge.db"
    async with Database(path, commit_interval_ms=10) as d:
        assert await d.write(readings.insert_reading, tel("s1", T0, ph=6.1), "r1", T0) is not None
        old = tel("s1", T0 - 7200, ph=6.0)  # buffered: two hours before the writer's memory
        assert await d.write(readings.insert_reading, old, "r1", T0 + 1) is not None
        assert await d.write(readings.insert_reading, old, "r1", T0 + 2) is None  # via blocks
        for i in range(1, readings.SEEN_PER_SERIES + 5):  # push T0 out of the series' memory
            await d.write(readings.insert_reading, tel("s1", T0 + i, ph=6.2), "r1", T0 + i)
        assert await d.write(readings.insert_reading, tel("s1", T0, ph=6.1), "r1", T0 + 200) is None
    async with Database(path, commit_interval_ms=10) as d:  # a fresh memory, seeded from disk
        again = tel("s1", T0 + 3, ph=6.2)
        assert await d.write(readings.insert_reading, again, "r1", T0 + 300) is None
        assert await d.write(readings.insert_reading, old, "r1", T0 + 300) is None
        assert await d.read(readings.count) == readings.SEEN_PER_SERIES + 6
        blocks = await d.read(lambda c: c.execute("SELECT * FROM reading_blocks").fetchall())
        assert len(blocks) == 1 and blocks[0][0] == 0  # ids 1… are in block 0
        assert blocks[0][1] <= T0 - 7200 and blocks[0][2] > T0 + readings.SEEN_PER_SERIES + 4


async def test_a_rolled_back_reading_is_not_remembered(db: Database) -> None:
    def insert_then_fail(conn: sqlite3.Connection) -> None:
        readings.insert_reading(conn, tel("s1", T0, ph=6.1), "r1", T0)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await db.write(insert_then_fail)
    assert await db.write(readings.insert_reading, tel("s1", T0, ph=6.1), "r1", T0) is not None
    assert await db.read(readings.count) == 1


async def test_a_failing_item_neither_undoes_nor_repeats_its_group(db: Database) -> None:
    # Groups run optimistically without per-item savepoints, then again with them on a failure.
    def fail(conn: sqlite3.Connection) -> None:
        put(conn, "bad", "1")
        raise ValueError("boom")

    first, failed, second = await asyncio.gather(
        db.write(readings.insert_reading, tel("s1", T0, ph=6.1), "r1", T0),
        db.write(fail),
        db.write(readings.insert_reading, tel("s1", T0 + 1, ph=6.2), "r1", T0 + 1),
        return_exceptions=True,
    )
    assert isinstance(first, int) and isinstance(second, int) and second == first + 1
    assert isinstance(failed, ValueError)
    assert db.stats.transactions == 1
    assert await db.read(keys) == []
    assert await db.read(readings.count) == 2
    # The writer's memory of the group survived the retry: a redelivery is refused.
    assert await db.write(readings.insert_reading, tel("s1", T0, ph=6.1), "r1", T0) is None


async def test_consecutive_readings_of_a_group_go_in_together_in_order(db: Database) -> None:
    # store_telemetry has a batch form (multi-row INSERTs): same outcomes, same ids, same rows.
    batch = [
        (tel("s1", T0 + i, ph=6.0 + i / 100), "r1", T0 + i, i == 0) for i in range(1200)
    ]
    batch.insert(700, batch[3])  # a redelivery within the group
    # …and a reading contradicting one of the group (same time, other value): quarantined.
    batch.insert(900, (tel("s1", T0 + 5, ph=9.9), "r1", T0 + 5, False, "t/s1", b"{}"))
    outcomes = await asyncio.gather(*(db.write(store_telemetry, *args) for args in batch))
    assert db.stats.transactions == 1
    assert outcomes.count("duplicate") == 1 and outcomes[700] == "duplicate"
    assert outcomes.count("conflict") == 1 and outcomes[900] == "conflict"
    [(topic, reason)] = await db.read(
        lambda c: c.execute("SELECT topic, reason FROM quarantine").fetchall())
    assert topic == "t/s1" and reason.startswith("conflict: a reading at")
    rows = await db.read(lambda c: c.execute("SELECT id, ts, vals FROM readings ORDER BY id")
                         .fetchall())
    assert [r["ts"] for r in rows] == [T0 + i for i in range(1200)]
    assert [r["id"] for r in rows] == list(range(rows[0]["id"], rows[0]["id"] + 1200))
    assert rows[5]["vals"] == "[6.05]"
    assert await db.write(store_telemetry, *batch[0]) == "duplicate"  # remembered after it


async def test_a_failing_item_amid_batched_readings_fails_alone(db: Database) -> None:
    def fail(conn: sqlite3.Connection) -> None:
        raise ValueError("boom")

    writes = [db.write(store_telemetry, tel("s1", T0 + i, ph=6.1), "r1", T0 + i, False)
              for i in range(10)]
    writes.insert(5, db.write(fail))
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(outcomes.pop(5), ValueError)
    assert outcomes == ["new"] * 10
    assert await db.read(readings.count) == 10


async def test_migration_4_indexes_existing_readings_by_block(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    conn = sqlite3.connect(path, isolation_level=None)
    from edge.store.db import migrate

    migrate(conn, load_migrations()[:3])
    conn.execute("INSERT INTO series VALUES (1, 's1', 'r1', '[\"ph\"]', 0)")
    conn.executemany(
        "INSERT INTO readings (id, series, ts, recv_ms, ts_replaced, vals) VALUES (?, 1, ?, 0, 0,"
        " '[6]')",
        [(i, T0 + i) for i in range(1, 1500)],
    )
    conn.close()
    async with Database(path) as d:
        blocks = await d.read(lambda c: c.execute("SELECT * FROM reading_blocks").fetchall())
        assert [b[0] for b in blocks] == [0, 1]
        rows = await d.read(readings.readings_between, "r1", T0 + 1000, T0 + 1100)
        assert [r.id for r in rows] == list(range(1000, 1100))
        assert await d.write(readings.insert_reading, tel("s1", T0 + 5, ph=6.0), "r1", T0) is None


async def test_submit_callback_reports_on_the_loop(db: Database) -> None:
    outcomes: list[tuple[bool, object]] = []
    db.write_nowait(put, "x", "1", on_done=lambda ok, value: outcomes.append((ok, value)))
    db.write_nowait(put, "x", "2", on_done=lambda ok, value: outcomes.append((ok, value)))
    await db.write(put, "y", "1", urgent=True)
    assert outcomes[0] == (True, 1)
    assert not outcomes[1][0] and isinstance(outcomes[1][1], sqlite3.IntegrityError)


async def test_latest_by_room_and_device(db: Database) -> None:
    await db.write(
        readings.insert_reading, tel("s1", T0, temperature_c=18.0, co2_ppm=900), "r1", T0
    )
    await db.write(readings.insert_reading, tel("s2", T0 + 5, temperature_c=19.5), "r1", T0 + 5)
    # A buffered older reading arriving late must not move "latest" back.
    await db.write(
        readings.insert_reading, tel("s1", T0 - 60, co2_ppm=700, temperature_c=1), "r1", T0 + 6
    )
    await db.write(readings.insert_reading, tel("s3", T0 + 9, temperature_c=30.0), "r2", T0 + 9)

    room = await db.read(readings.latest_by_room, "r1")
    assert room == {
        "temperature_c": (19.5, T0 + 5, "s2"),
        "co2_ppm": (900.0, T0, "s1"),
    }
    value, ts, device = room["co2_ppm"]
    assert isinstance(value, float) and ts == T0 and device == "s1"
    s1 = await db.read(readings.latest_by_device, "s1")
    assert s1 == {"temperature_c": (18.0, T0, "s1"), "co2_ppm": (900.0, T0, "s1")}
    assert await db.read(readings.latest_by_room, "nowhere") == {}


async def test_readings_between_filters_and_round_trips_values(db: Database) -> None:
    values = [0.1, 21.53, 850.0, -3.25, 1e-7, 123456.789]
    for i, v in enumerate(values):
        await db.write(
            readings.insert_reading, tel("s1", T0 + i, light_lux=abs(v), ph=v), "r1", T0 + i + 0.123
        )
    await db.write(readings.insert_reading, tel("s1", T0 + 1.5, temperature_c=20), "r1", T0 + 2)
    await db.write(readings.insert_reading, tel("s9", T0 + 2, ph=7.0), "r2", T0 + 2)
    replaced = tel("s1", T0 + 50, replaced=True, ph=6.5)
    await db.write(readings.insert_reading, replaced, "r1", T0 + 50)

    rows = await db.read(readings.readings_between, "r1", T0, T0 + 100)
    assert [r.ts for r in rows] == [T0, T0 + 1, T0 + 1.5, T0 + 2, T0 + 3, T0 + 4, T0 + 5, T0 + 50]
    assert [r.data.get("ph") for r in rows if "ph" in r.data] == [*values, 6.5]  # exact floats
    assert rows[0].received_at == pytest.approx(T0 + 0.123, abs=1e-3)
    assert rows[0].device_id == "s1" and rows[0].room_id == "r1" and not rows[0].ts_replaced
    assert rows[-1].ts_replaced and rows[-1].received_at == T0 + 50

    only_temp = await db.read(readings.readings_between, "r1", T0, T0 + 100, "temperature_c")
    assert [(r.ts, r.data) for r in only_temp] == [(T0 + 1.5, {"temperature_c": 20.0})]
    window = await db.read(readings.readings_between, "r1", T0 + 1, T0 + 3)  # until exclusive
    assert [r.ts for r in window] == [T0 + 1, T0 + 1.5, T0 + 2]
    limited = await db.read(readings.readings_between, "r1", T0, T0 + 100, None, 2)
    assert len(limited) == 2
    assert await db.read(readings.count, "r2") == 1
    assert await db.read(readings.count) == 9


# ---- quarantine and devices ----
async def test_quarantine_bounds_what_it_keeps(db: Database) -> None:
    big = bytes(range(256)) * 40  # 10 240 bytes
    await db.write(
        quarantine.insert, "farm/f/room/r/telemetry/" + "x" * 900, big, "too big", T0, 1024
    )
    await db.write(quarantine.insert, "t/\udcff", b"{", "malformed JSON", T0 + 1)
    rows = await db.read(quarantine.recent, 10)
    assert [r.reason for r in rows] == ["malformed JSON", "too big"]
    assert rows[0].topic == "t/\\udcff"  # a lone surrogate cannot go to SQLite as-is
    assert rows[1].payload == big[:1024] and rows[1].original_size == 10_240
    assert len(rows[1].topic) == quarantine.TOPIC_MAX_CHARS
    assert await db.read(quarantine.count) == 2
    assert await db.read(quarantine.count, T0 + 0.5) == 1


async def test_device_status_keeps_last_known_state(db: Database) -> None:
    up = Status(device_id="a1", state={"on": True, "level": 40}, firmware="1.2.0", rssi_dbm=-60)
    await db.write(devices.upsert_status, up, "r1", T0)
    await db.write(devices.touch, "a1", "r1", T0 + 30)
    await db.write(devices.touch, "a1", "r1", T0 + 10)  # late: last_seen never moves back
    will = Status(device_id="a1", online=False)  # a last-will message: no state
    await db.write(devices.upsert_status, will, "r1", T0 + 40)
    got = await db.read(devices.get, "a1")
    assert got is not None
    assert not got.online and got.state == {"on": True, "level": 40}
    assert got.firmware == "1.2.0" and got.rssi_dbm == -60
    assert got.status_at == T0 + 40 and got.last_seen == T0 + 40
    await db.write(devices.touch, "s1", "r2", T0 + 50)  # first heard through telemetry
    assert [d.device_id for d in await db.read(devices.all_status)] == ["a1", "s1"]
    assert [d.device_id for d in await db.read(devices.all_status, "r2")] == ["s1"]
    assert await db.read(devices.get, "nobody") is None


# ---- bytes per reading ----
def _bytes_written() -> int | None:
    try:
        with open("/proc/self/io") as io:  # write() bytes of this process, all threads
            return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))
    except OSError:
        return None


def _files_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


async def test_bytes_per_reading_under_300(tmp_path: Path) -> None:
    """20k six-metric readings from 20 devices in groups of 100 (500 readings/s at the default
    200 ms interval): the file grows < 300 B per reading, and so do the bytes written."""
    n, devices_n = 20_000, 20
    rnd = random.Random(7)
    messages = []
    for i in range(n):
        ts = T0 + i * 0.05 + rnd.random() * 0.01
        data = {
            "temperature_c": round(rnd.gauss(18, 1), 2),
            "humidity_pct": round(rnd.gauss(88, 2), 1),
            "co2_ppm": round(rnd.gauss(850, 60)),
            "light_lux": round(rnd.uniform(0, 800)),
            "substrate_moisture": round(rnd.gauss(62, 2), 1),
            "battery_v": round(rnd.uniform(3.5, 4.1), 2),
        }
        dev = i % devices_n
        messages.append((tel(f"sensor-{dev:02d}", ts, **data), f"room-{dev % 2}", ts + 0.05))

    folder = tmp_path / "db"
    async with Database(folder / "edge.db", commit_interval_ms=10_000, commit_max_items=100) as d:
        await d.checkpoint("TRUNCATE")
        size_before, written_before = _files_size(folder), _bytes_written()
        for message in messages:
            d.write_nowait(readings.insert_reading, *message)
        await d.write(readings.count, urgent=True)
        await d.checkpoint("TRUNCATE")
        size_after, written_after = _files_size(folder), _bytes_written()
        assert await d.read(readings.count) == n
        assert d.stats.transactions == n // 100 + 1

    on_disk = (size_after - size_before) / n
    print(f"\nstore: {on_disk:.1f} B/reading on disk", end="")
    assert on_disk < 300
    if written_before is not None and written_after is not None:
        written = (written_after - written_before) / n
        print(f", {written:.1f} B/reading written (WAL + checkpoint)")
        assert written < 300


def test_outbox_kind_codes_in_the_schema_come_from_shared() -> None:
    """schema.sql's triggers name their kind ({kind:NAME}); the code is shared.sync's."""
    import re
    from importlib import resources

    from edge.store.migrations import render_kinds
    from shared.sync import KIND_CODES

    text = resources.files("edge.store").joinpath("schema.sql").read_text(encoding="utf-8")
    assert not re.search(r"INSERT INTO outbox \([^)]*\) VALUES \(\d", text)
    assert set(re.findall(r"\{kind:([a-z_]+)\}", text)) <= set(KIND_CODES)
    assert render_kinds("VALUES ({kind:alert}, 1)") == f"VALUES ({KIND_CODES['alert']}, 1)"
    with pytest.raises(StoreError, match="unknown outbox kind 'nope'"):
        render_kinds("VALUES ({kind:nope}, 1)")
