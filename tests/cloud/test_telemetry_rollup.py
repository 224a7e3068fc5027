"""Hourly rollups (migration 0006): 1 h and 1 d buckets served from them equal the buckets
computed from the raw rows, for ranges that do and do not start on an hour."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cloud.db import telemetry
from cloud.db.database import Database
from cloud.db.migrate import load_migrations, migrate

pytestmark = pytest.mark.postgres

T0 = datetime(2024, 3, 1, 22, 0, tzinfo=UTC)


def _readings(seed: int, count: int) -> list[telemetry.Reading]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        at = T0 + timedelta(seconds=rng.uniform(0, 3 * 86_400))
        device = rng.choice(["d1", "d2"])
        metric = rng.choice(["humidity_pct", "co2_ppm"])
        rows.append((at, "r", device, metric, round(rng.uniform(-50, 2000), 3)))
    return rows


@pytest.fixture
async def db(db_dsn: str) -> AsyncIterator[Database]:
    database = await Database.connect(db_dsn, min_size=1, max_size=2)
    yield database
    await database.close()


async def _raw_buckets(db: Database, **kwargs) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    params = {
        "farm_id": "f",
        "room_id": "r",
        "start": kwargs["start"],
        "end": kwargs["end"],
        "metrics": kwargs.get("metrics") or await telemetry.room_metrics(db, "f", "r"),
        "device_id": kwargs.get("device_id"),
        "bucket": kwargs["bucket"],
    }
    return await db.fetch_all(telemetry.BUCKETS, params)


def _same(rollup: list[dict], raw: list[dict]) -> None:  # type: ignore[type-arg]
    assert [(r["bucket"], r["device_id"], r["metric"]) for r in rollup] == [
        (r["bucket"], r["device_id"], r["metric"]) for r in raw
    ]
    for a, b in zip(rollup, raw, strict=True):
        assert (a["count"], a["min"], a["max"]) == (b["count"], b["min"], b["max"])
        assert a["avg"] == pytest.approx(b["avg"], rel=1e-9, abs=1e-9)


RANGES = [
    (T0, T0 + timedelta(days=3)),  # whole hours
    (T0 + timedelta(minutes=17, seconds=3), T0 + timedelta(days=2, hours=5, minutes=41)),
    (T0 + timedelta(hours=3, minutes=10), T0 + timedelta(hours=3, minutes=50)),  # inside an hour
    (T0 + timedelta(minutes=59), T0 + timedelta(hours=1, minutes=1)),  # across one boundary
    (T0 - timedelta(days=1), T0 + timedelta(days=5)),  # beyond the data
]


@pytest.mark.parametrize(("start", "end"), RANGES)
async def test_rollup_buckets_equal_raw_buckets(db: Database, start, end) -> None:  # type: ignore[no-untyped-def]
    # Several statements, overlapping hours: the trigger must merge into existing rollup rows.
    for seed in range(4):
        await telemetry.insert_readings(db, "f", _readings(seed, 3_000))
    for bucket in (timedelta(hours=1), timedelta(days=1)):
        for filters in ({}, {"metrics": ["co2_ppm"]}, {"device_id": "d2"}):
            span = {"start": start, "end": end, "bucket": bucket, **filters}
            rollup = await telemetry.buckets(
                db,
                "f",
                "r",
                start=start,
                end=end,
                bucket=bucket,
                metrics=filters.get("metrics"),
                device_id=filters.get("device_id"),
            )
            _same(rollup, await _raw_buckets(db, **span))


async def test_whole_hours_come_from_the_rollup_and_edges_from_raw_rows(db: Database) -> None:
    await telemetry.insert_readings(db, "f", _readings(9, 6_000))
    # Mark the rollup: only answers that read it can show this maximum.
    await db.execute("UPDATE sensor_hourly SET max = 1e9")
    start, end = T0 + timedelta(minutes=30), T0 + timedelta(hours=5)
    rows = await telemetry.buckets(
        db, "f", "r", start=start, end=end, bucket=timedelta(hours=1), metrics=None, device_id=None
    )
    from_rollup = {r["bucket"] for r in rows if r["max"] == 1e9}
    assert from_rollup == {T0 + timedelta(hours=h) for h in range(1, 5)}
    assert all(r["max"] < 1e9 for r in rows if r["bucket"] == T0)  # the partial first hour
    minutes = await telemetry.buckets(
        db,
        "f",
        "r",
        start=start,
        end=end,
        bucket=timedelta(minutes=5),
        metrics=None,
        device_id=None,
    )
    assert minutes and all(r["max"] < 1e9 for r in minutes)  # sub-hour buckets: raw rows


async def test_the_migration_rolls_up_existing_readings(databases) -> None:  # type: ignore[no-untyped-def]
    dsn = databases.dsn(databases.create())
    later = [m for m in load_migrations() if m.version >= 6]
    await migrate(dsn)
    await migrate(dsn, down=len(later))  # as before 0006
    rows = _readings(3, 2_000)
    with psycopg.connect(dsn) as conn:
        # Readings of an existing room (0011 drops readings of rooms that no longer exist).
        conn.execute("INSERT INTO farms (id, name) VALUES ('f', 'f')")
        conn.execute("INSERT INTO rooms (id, farm_id, species, stage)"
                     " VALUES ('r', 'f', 'oyster', 'fruiting')")
        with conn.cursor().copy(
            "COPY sensor_data (time, room_id, device_id, metric, value) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
    await migrate(dsn)
    with psycopg.connect(dsn) as conn:
        count = conn.execute("SELECT sum(count) FROM sensor_hourly").fetchone()
    assert count == (len(rows),)


async def test_a_room_without_readings_has_no_metrics_and_no_rows(db: Database) -> None:
    assert await telemetry.room_metrics(db, "f", "empty") == []
    span = {"start": T0, "end": T0 + timedelta(days=1), "metrics": None, "device_id": None}
    assert await telemetry.buckets(db, "f", "empty", bucket=timedelta(hours=1), **span) == []
    assert await telemetry.raw(db, "f", "empty", after=None, limit=10, **span) == []
    assert await telemetry.room_stats(db, "f", "empty", start=T0, end=T0 + timedelta(days=1)) == []


async def test_room_metrics_lists_each_metric_once(db: Database) -> None:
    await telemetry.insert_readings(db, "f", _readings(1, 500))
    assert await telemetry.room_metrics(db, "f", "r") == ["co2_ppm", "humidity_pct"]
