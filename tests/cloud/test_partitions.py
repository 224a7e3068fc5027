"""sensor_data partitioned by UTC month (migration 0019): the migration moves existing rows in
place, the make_partitions job makes months ahead and rehomes readings that landed in the DEFAULT
partition (nothing is lost, whatever its time), and retention drops whole months while keeping
every newer reading and every rollup."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from cloud.db import partitions
from cloud.db import telemetry as telemetry_db
from cloud.db.database import Database
from cloud.db.migrate import MIGRATIONS_DIR, migrate
from tests.cloud import world as w
from tests.cloud.jobs_env import jobs_env_fixture  # noqa: F401
from tests.conftest import Databases

pytestmark = pytest.mark.postgres

PARTITIONED = 19
# Where each row is stored, by the partition's name.
PLACEMENT = """
SELECT tableoid::regclass::text AS part, to_char(time AT TIME ZONE 'UTC', 'YYYYMM') AS month,
       count(*) AS n
FROM sensor_data GROUP BY 1, 2 ORDER BY 2"""
DIGEST = "SELECT count(*), sum(value), min(time), max(time) FROM sensor_data"
HOURLY = "SELECT sum(count) AS n FROM sensor_hourly"


@pytest.fixture
def empty_dsn(databases: Databases) -> Iterator[str]:
    name = databases.create()
    yield databases.dsn(name)
    databases.drop(name)


def _month(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m")


def _in_own_month(rows: list[tuple[str, str, int]]) -> bool:
    return all(part == f"telemetry.sensor_data_{month}" for part, month, _ in rows)


async def test_migration_moves_existing_rows_into_monthly_partitions(
    empty_dsn: str, tmp_path: Path
) -> None:
    for path in MIGRATIONS_DIR.glob("00*.sql"):
        if int(path.name[:4]) < PARTITIONED:
            (tmp_path / path.name).write_text(path.read_text())
    await migrate(empty_dsn, folder=tmp_path)
    now = datetime.now(UTC)
    times = [datetime(2001, 2, 3, 4, 5, tzinfo=UTC), now - timedelta(days=70), now]
    times += [now - timedelta(days=40, minutes=i) for i in range(100)]
    with psycopg.connect(empty_dsn) as conn:
        with conn.cursor() as cur, cur.copy(
            "COPY sensor_data (farm_id, time, room_id, device_id, metric, value) FROM STDIN"
        ) as copy:
            for i, at in enumerate(times):
                copy.write_row(("f", at, "r", "d", "co2_ppm", float(i)))
        conn.commit()
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'sensor_data'")
        assert kind.fetchone() == ("r",)
        before = conn.execute(DIGEST).fetchone()
        hourly = conn.execute(HOURLY).fetchone()
    assert before is not None and before[0] == len(times)

    # The later migrations come along; 0019 is the one that moves the rows.
    applied = await migrate(empty_dsn)
    assert applied[0] == "0019_partitioned_telemetry"
    with psycopg.connect(empty_dsn) as conn:
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'sensor_data'")
        assert kind.fetchone() == ("p",)
        assert conn.execute(DIGEST).fetchone() == before
        placement = conn.execute(PLACEMENT).fetchall()
        # Moving rows between tables does not fold them into the rollups a second time.
        assert conn.execute(HOURLY).fetchone() == hourly
    assert _in_own_month(placement)
    assert [month for _, month, _ in placement] == sorted({_month(t) for t in times})
    assert placement[0] == ("telemetry.sensor_data_200102", "200102", 1)  # one month, not 300

    db = await Database.connect(empty_dsn, min_size=1, max_size=1)
    try:
        names = {p.name for p in await partitions.partitions(db)}
        this_month = partitions.month_start(now)
        ahead = {f"sensor_data_{_month(partitions.add_months(this_month, k))}" for k in range(4)}
        assert ahead <= names
        # New readings go through the same trigger into the rollups.
        await telemetry_db.insert_readings(db, "f", [(now, "r", "d", "co2_ppm", 1.0)])
        row = await db.fetch_one(HOURLY)
        assert row == {"n": hourly[0] + 1}  # type: ignore[index]
    finally:
        await db.close()

    # And back (the later migrations first): one plain table with every row.
    await migrate(empty_dsn, down=len(applied))
    with psycopg.connect(empty_dsn) as conn:
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'sensor_data'")
        assert kind.fetchone() == ("r",)
        count = conn.execute("SELECT count(*) FROM sensor_data").fetchone()
        schema = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'telemetry'")
        assert schema.fetchone() is None
    assert count == (len(times) + 1,)


async def test_the_job_makes_months_ahead_and_once(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    at = datetime(2031, 11, 15, 12, 0, tzinfo=UTC)
    before = {p.name for p in await partitions.partitions(env.db)}
    assert "sensor_data_203111" not in before
    await env.queue.defer("make_partitions", timestamp=int(at.timestamp()))
    await env.work()
    done = await env.jobs("make_partitions", status="succeeded")
    assert len(done) == 1
    after = {p.name for p in await partitions.partitions(env.db)}
    made = {"sensor_data_203111", "sensor_data_203112", "sensor_data_203201",
            "sensor_data_203202"}
    assert after - before == made
    bounds = {p.name: (p.lo, p.hi) for p in await partitions.partitions(env.db)}
    assert bounds["sensor_data_203112"] == (
        datetime(2031, 12, 1, tzinfo=UTC), datetime(2032, 1, 1, tzinfo=UTC)
    )
    # The parent's two indexes, attached (not a second, unattached copy made by LIKE).
    indexes = await env.db.fetch_all(
        "SELECT i.indexrelid::regclass::text AS name, i.indexrelid IN ("
        "  SELECT inhrelid FROM pg_inherits WHERE inhparent IN ("
        "    'sensor_data_room_metric_time_idx'::regclass, 'sensor_data_time_brin'::regclass)"
        ") AS attached FROM pg_index i WHERE i.indrelid = 'telemetry.sensor_data_203112'::regclass"
    )
    assert len(indexes) == 2 and all(r["attached"] for r in indexes)
    # A second run (another worker's tick) makes nothing and fails nothing.
    assert await partitions.ensure_partitions(env.db, now=at, ahead=3) == []
    # A reading in a month made ahead lands in that month's partition, not the default.
    await telemetry_db.insert_readings(
        env.db, w.FARM, [(datetime(2032, 1, 31, 23, 59, tzinfo=UTC), w.ROOM_B, w.SENSOR_B,
                          "temperature_c", 17.0)]
    )
    row = await env.db.fetch_one(
        "SELECT tableoid::regclass::text AS part FROM sensor_data WHERE time >= '2032-01-01'"
    )
    assert row == {"part": "telemetry.sensor_data_203201"}


async def test_a_reading_far_in_the_past_or_future_is_kept(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    odd = [
        (datetime(2003, 5, 10, 8, 0, tzinfo=UTC), w.ROOM_B, w.SENSOR_B, "temperature_c", 11.0),
        (datetime(2090, 1, 1, 0, 0, tzinfo=UTC), w.ROOM_B, w.SENSOR_B, "temperature_c", 12.0),
        (datetime(2090, 1, 31, 23, 0, tzinfo=UTC), w.ROOM_B, w.SENSOR_B, "humidity_pct", 90.0),
    ]
    hourly = await env.db.fetch_one(HOURLY)
    assert await telemetry_db.insert_readings(env.db, w.FARM, odd) == 3
    stored = await env.db.fetch_all(
        "SELECT tableoid::regclass::text AS part, time, value FROM sensor_data "
        "WHERE time < '2010-01-01' OR time > '2080-01-01' ORDER BY time"
    )
    assert [(r["time"], r["value"]) for r in stored] == [(r[0], r[4]) for r in odd]
    assert {r["part"] for r in stored} == {"telemetry.sensor_data_default"}
    after_insert = await env.db.fetch_one(HOURLY)
    assert after_insert == {"n": hourly["n"] + 3}  # type: ignore[index]

    await env.queue.defer("make_partitions")
    await env.work()
    moved = await env.db.fetch_all(
        "SELECT tableoid::regclass::text AS part, time, value FROM sensor_data "
        "WHERE time < '2010-01-01' OR time > '2080-01-01' ORDER BY time"
    )
    assert [(r["time"], r["value"]) for r in moved] == [(r[0], r[4]) for r in odd]
    assert [r["part"] for r in moved] == [
        "telemetry.sensor_data_200305", "telemetry.sensor_data_209001",
        "telemetry.sensor_data_209001",
    ]
    left = await env.db.fetch_one("SELECT count(*) AS n FROM telemetry.sensor_data_default")
    assert left == {"n": 0}
    assert await env.db.fetch_one(HOURLY) == after_insert  # moved, not folded again
    # The chart of that old day still answers from the partition made for it.
    buckets = await telemetry_db.buckets(
        env.db, w.FARM, w.ROOM_B, start=datetime(2003, 5, 10, tzinfo=UTC),
        end=datetime(2003, 5, 11, tzinfo=UTC), bucket=timedelta(hours=1),
        metrics=["temperature_c"], device_id=None,
    )
    assert [(b["bucket"], b["avg"]) for b in buckets] == [(odd[0][0], 11.0)]


async def test_retention_drops_whole_months_and_keeps_newer_readings(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env(jobs={"raw_retention_days": 90})
    now = datetime.now(UTC)
    cutoff = now - timedelta(days=90)
    # One reading a day for 200 days back, plus the world's own (recent) readings.
    old = [
        (now - timedelta(days=d, hours=1), w.ROOM_B, w.SENSOR_B, "co2_ppm", float(d))
        for d in range(200)
    ]
    await telemetry_db.insert_readings(env.db, w.FARM, old)
    await partitions.ensure_partitions(env.db, now=now, ahead=3)  # old months get partitions
    total = await env.db.fetch_one("SELECT count(*) AS n FROM sensor_data")
    expected_kept = total["n"] - sum(1 for r in old if r[0] < cutoff)  # type: ignore[index]
    hourly = await env.db.fetch_one(HOURLY)
    months_before = await partitions.partitions(env.db)
    expired = [p.name for p in months_before if p.hi <= cutoff]
    assert len(expired) >= 2  # 200 days back: at least the oldest few months are whole

    await env.queue.defer("cleanup_old_data")
    await env.work()
    job = (await env.jobs("cleanup_old_data", status="succeeded"))[0]
    assert job.status == "succeeded"

    months_after = {p.name for p in await partitions.partitions(env.db)}
    assert months_after == {p.name for p in months_before} - set(expired)
    kept = await env.db.fetch_one(
        "SELECT count(*) AS n, min(time) AS oldest FROM sensor_data"
    )
    assert kept["n"] == expected_kept  # type: ignore[index]
    assert kept["oldest"] >= cutoff - timedelta(minutes=5)  # type: ignore[index]
    # The boundary month lost only its rows older than the cutoff: the rest are all there.
    newer = [r for r in old if r[0] >= cutoff + timedelta(minutes=5)]
    rows = await env.db.fetch_all(
        "SELECT time FROM sensor_data WHERE metric = 'co2_ppm' AND room_id = %s AND time >= %s",
        (w.ROOM_B, cutoff + timedelta(minutes=5)),
    )
    assert {r["time"] for r in rows} >= {r[0] for r in newer}
    assert await env.db.fetch_one(HOURLY) == hourly  # rollups outlive the raw rows

    # A second run has nothing left to drop or delete.
    again = await env.queue.defer("cleanup_old_data")
    assert again is not None
    await env.work()
    assert len(await env.jobs("cleanup_old_data", status="succeeded")) == 2
    assert await env.db.fetch_one("SELECT count(*) AS n FROM sensor_data") == {"n": kept["n"]}  # type: ignore[index]
