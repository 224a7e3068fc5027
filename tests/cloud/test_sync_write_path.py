"""The sync's write paths (cloud/db/telemetry.py). Small batches (``insert_with_latest``): times
sent as Unix seconds come back as the exact microsecond they were, over the whole plausible
range; the newest reading per series (the later one on a tie) lands in sensor_latest, and an
older batch does not overwrite it. Big batches (``binary_copy``): the same rows as psycopg's
write_row would store. Real PostgreSQL."""

from __future__ import annotations

import json
import random
import struct
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cloud.db.database import Database
from cloud.db.live import reading_payloads
from cloud.db.telemetry import (
    COPY_IN,
    COPY_TYPES,
    EpochReading,
    Reading,
    binary_copy,
    copy_binary,
    insert_with_latest,
    micros_since_2000,
)
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


def test_copy_times_are_the_microsecond_fromtimestamp_gives() -> None:
    """binary_copy's times (no datetime per row) are the microsecond datetime.fromtimestamp
    rounds to, which is what psycopg sent when the rows were datetimes: half-way fractions
    included, which round to even."""
    rng = random.Random(7)
    origin = datetime(2000, 1, 1, tzinfo=UTC)
    seconds = [rng.uniform(PLAUSIBLE_FROM, PLAUSIBLE_TO) for _ in range(20_000)]
    seconds += [1_796_561_633 + k / 1e6 + 0.5e-6 for k in range(2_000)]  # near half-way
    seconds += [1_796_561_633.0000005, 1_796_561_633.0000015, 1_000_000_000.25, PLAUSIBLE_FROM]
    expected = [(datetime.fromtimestamp(ts, UTC) - origin) // timedelta(microseconds=1)
                for ts in seconds]
    assert [micros_since_2000(ts) for ts in seconds] == expected
    # binary_copy converts inline: each row is its series' head, then 8, the time, 8, the value.
    data = binary_copy("farm", [(ts, "room", "dev", {"m": 1.0}) for ts in seconds]).data
    head = len(binary_copy("farm", [(0.0, "room", "dev", {"m": 1.0})]).data) - 19 - 24 - 2
    tail = struct.Struct(">iqid")
    at = 19 + head
    copied = []
    for _ in seconds:
        copied.append(tail.unpack_from(data, at)[1])
        at += head + tail.size
    assert copied == expected


async def test_a_binary_copy_stores_what_write_row_stores(world_dsn) -> None:  # type: ignore[no-untyped-def]
    """The same rows by binary_copy and by psycopg's write_row (the format PostgreSQL
    defines, made two ways) come back identical; the newest row of each series is the later
    one on a tie, and is found per room too."""
    rng = random.Random(21)
    t0 = 1_796_561_633.123456
    readings: list[EpochReading] = []
    for i in range(3_000):
        ts = t0 + rng.randrange(0, 5_000) / 7  # repeats: ties in time
        names = ("co2_ppm", "temperature_c")[: 1 + i % 2]
        readings.append((ts, w.ROOM_B if i % 3 else w.ROOM_A, f"bin-dev-{i % 4}",
                         {name: rng.uniform(-1e6, 1e6) for name in names}))
    late = t0 + 10_000
    for value in (1.0, 2.0):  # the newest time twice: the later reading is the newest
        readings.append((late, w.ROOM_A, "bin-dev-0", {"co2_ppm": value}))
    readings.append((late - 1, w.ROOM_A, "bin-dev-0", {"co2_ppm": 3.0}))
    copied = binary_copy(w.FARM, readings)
    assert (late, w.ROOM_A, "bin-dev-0", "co2_ppm", 2.0) in copied.newest
    epoch_rows = [(ts, room, device, metric, value)
                  for ts, room, device, values in readings for metric, value in values.items()]
    async with await psycopg.AsyncConnection.connect(world_dsn) as conn:
        async with conn.cursor() as cur:
            await copy_binary(cur, copied.data)
            async with cur.copy(COPY_IN) as copy:
                copy.set_types(COPY_TYPES)
                for ts, room, device, metric, value in epoch_rows:
                    await copy.write_row((w.FARM, datetime.fromtimestamp(ts, UTC), room,
                                          device.replace("bin-", "row-"), metric, value))
        await conn.commit()
    query = ("SELECT time, room_id, replace(device_id, %s, 'dev') AS device, metric, value"
             " FROM sensor_data WHERE device_id LIKE %s ORDER BY 1, 2, 3, 4, 5")
    by_copy = await rows(world_dsn, query, ("bin-dev", "bin-dev-%"))
    by_rows = await rows(world_dsn, query, ("row-dev", "row-dev-%"))
    assert len(by_copy) == len(epoch_rows)
    assert by_copy == by_rows
    # The newest row of each series, the later one on a tie, in batch order.
    newest: dict[tuple[str, str, str], int] = {}
    for i, (ts, room, device, metric, _) in enumerate(epoch_rows):
        key = (room, device, metric)
        if key not in newest or micros_since_2000(ts) >= micros_since_2000(
                epoch_rows[newest[key]][0]):
            newest[key] = i
    assert copied.newest == [epoch_rows[i] for i in sorted(newest.values())]


def test_the_newest_rows_announce_what_all_rows_announce() -> None:
    """A batch that goes by COPY is announced to the dashboards from each series' newest row
    (binary_copy's ``newest``): the payloads say what those of all its rows say (rooms and
    devices may come in another order)."""
    rng = random.Random(5)
    readings: list[EpochReading] = []
    for i in range(4_000):
        ts = 1_796_561_633.5 + rng.randrange(0, 900) / 3  # ties in time
        names = ("co2_ppm", "temperature_c", "humidity_pct")[: 1 + i % 3]
        readings.append((ts, f"room-{i % 3}", f"dev-{i % 5}",
                         {name: rng.uniform(0, 100) for name in names}))
    for value in (1.0, 2.0):  # a series' newest time twice: the later reading is announced
        readings.append((1_796_562_000.25, "room-0", "dev-0", {"co2_ppm": value}))

    def with_datetimes(rows: list[tuple[float, str, str, str, float]]) -> list[Reading]:
        return [(datetime.fromtimestamp(ts, UTC), room, device, metric, value)
                for ts, room, device, metric, value in rows]

    every = with_datetimes([(ts, room, device, metric, value) for ts, room, device, values
                            in readings for metric, value in values.items()])
    newest = with_datetimes(binary_copy("farm", readings).newest)
    assert len(newest) < len(every) / 100

    def said(payloads: list[str]) -> list[str]:
        return sorted(json.dumps(json.loads(p), sort_keys=True) for p in payloads)

    assert said(reading_payloads("farm", newest, 1.0)) == said(reading_payloads("farm", every, 1.0))
