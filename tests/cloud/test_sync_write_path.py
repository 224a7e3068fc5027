"""The small-batch write path (cloud/db/telemetry.py ``insert_with_latest``): times sent as Unix
seconds come back as the exact microsecond they were, over the whole plausible range; the newest
reading per series (the later one on a tie) lands in sensor_latest, and an older batch does not
overwrite it. Real PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from cloud.db.database import Database
from cloud.db.telemetry import insert_with_latest
from cloud.sync.writer import PLAUSIBLE_FROM, PLAUSIBLE_TO
from tests.cloud import world as w
from tests.cloud.test_edge_sync import rows

pytestmark = pytest.mark.postgres


async def test_times_round_trip_to_the_microsecond(world_dsn) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(15)
    low, high = int(PLAUSIBLE_FROM * 1e6), int(PLAUSIBLE_TO * 1e6)
    times = [datetime.fromtimestamp(0, UTC) + timedelta(microseconds=rng.randrange(low, high))
             for _ in range(2_000)]
    times += [datetime(2026, 12, 7, 5, 0, 0, us, tzinfo=UTC) for us in (0, 1, 499_999, 999_999)]
    shared = datetime(2031, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)
    times += [shared, shared, shared, times[0]]  # one reading's metrics share its time object
    batch = [(t, w.ROOM_B, "epoch-dev", f"m{i}", float(i)) for i, t in enumerate(times)]
    db = await Database.connect(world_dsn, min_size=1, max_size=1)
    try:
        async with db.transaction() as cur:
            await insert_with_latest(cur, w.FARM, batch)
    finally:
        await db.close()
    got = await rows(world_dsn, "SELECT time, value FROM sensor_data"
                                " WHERE device_id = 'epoch-dev' ORDER BY value")
    assert [r["time"] for r in got] == times
    latest = await rows(world_dsn, "SELECT time, value FROM sensor_latest"
                                   " WHERE device_id = 'epoch-dev' ORDER BY value")
    assert [r["time"] for r in latest] == times


async def test_the_newest_reading_per_series_is_the_latest(world_dsn) -> None:  # type: ignore[no-untyped-def]
    t0 = datetime(2026, 12, 7, 5, 0, 0, tzinfo=UTC)
    first = [(t0, w.ROOM_B, "new-dev", "co2_ppm", 1.0),
             (t0 + timedelta(seconds=2), w.ROOM_B, "new-dev", "co2_ppm", 2.0),
             (t0 + timedelta(seconds=2), w.ROOM_B, "new-dev", "co2_ppm", 3.0),  # tie: later wins
             (t0 + timedelta(seconds=1), w.ROOM_B, "new-dev", "co2_ppm", 4.0),
             (t0, w.ROOM_B, "new-dev", "temperature_c", 5.0)]
    older = [(t0 - timedelta(seconds=1), w.ROOM_B, "new-dev", "co2_ppm", 6.0),
             (t0 + timedelta(seconds=9), w.ROOM_B, "new-dev", "temperature_c", 7.0)]
    db = await Database.connect(world_dsn, min_size=1, max_size=1)
    try:
        for batch in (first, older):
            async with db.transaction() as cur:
                await insert_with_latest(cur, w.FARM, batch)
    finally:
        await db.close()
    latest = await rows(world_dsn, "SELECT metric, value FROM sensor_latest"
                                   " WHERE device_id = 'new-dev' ORDER BY metric")
    assert [(r["metric"], r["value"]) for r in latest] == [("co2_ppm", 3.0), ("temperature_c", 7.0)]
    stored = await rows(world_dsn, "SELECT count(*) AS n FROM sensor_data"
                                   " WHERE device_id = 'new-dev'")
    assert stored == [{"n": 7}]
