"""Readings: bulk insert by COPY, bucketed aggregation with date_bin, keyset-paged raw rows."""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cloud.db.database import Cursor, Database

Reading = tuple[datetime, str, str, str, float]  # time, room_id, device_id, metric, value

# Rows are (farm_id, *Reading): room and device ids are per farm (migration 0011).
COPY_IN = (
    "COPY sensor_data (farm_id, time, room_id, device_id, metric, value)"
    " FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = ("text", "timestamptz", "text", "text", "text", "float8")

# A batch's readings as the sync's writer collects them, one tuple per reading (not per row: a
# row per metric), with its time as Unix seconds (the edge's float, clock-corrected).
EpochReading = tuple[float, str, str, dict[str, float]]  # time, room_id, device_id, values
EpochRow = tuple[float, str, str, str, float]  # time, room_id, device_id, metric, value

# The sync's big batches: PostgreSQL's binary COPY format made here (``binary_copy``) rather
# than by psycopg's write_row. Columns in this order so that each row starts with the same bytes
# for every row of its series (farm, room, device, metric), made once per series.
COPY_BINARY_IN = (
    "COPY sensor_data (farm_id, room_id, device_id, metric, time, value)"
    " FROM STDIN (FORMAT BINARY)"
)
_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_TRAILER: Final = b"\xff\xff"
_TAIL: Final = struct.Struct(">iqid")  # 8, time (microseconds since 2000), 8, value
_LENGTH: Final = struct.Struct(">i")
_PG_EPOCH: Final = 946_684_800  # 2000-01-01 in Unix seconds
# Fold a freshly copied batch into the latest table: newest row per (device, metric) wins.
# Times go as Unix seconds (float8, exact to the microsecond at today's magnitudes): formatting
# an aware datetime as ISO text cost ~3 µs a row, and PostgreSQL's to_timestamp() is cheaper than
# parsing that text.
UPSERT_LATEST = """
INSERT INTO sensor_latest (farm_id, device_id, metric, room_id, time, value)
SELECT DISTINCT ON (device_id, metric) %(farm_id)s, device_id, metric, room_id, to_timestamp(t),
       value
FROM unnest(%(epoch)s::float8[], %(room)s::text[], %(device)s::text[], %(metric)s::text[],
            %(value)s::float8[]) AS b(t, room_id, device_id, metric, value)
ORDER BY device_id, metric, t DESC
ON CONFLICT (farm_id, device_id, metric) DO UPDATE
SET time = excluded.time, value = excluded.value, room_id = excluded.room_id
WHERE excluded.time >= sensor_latest.time"""

# A small batch's rows by one INSERT from arrays, and the newest per series folded into
# sensor_latest by the same statement: unlike COPY, it can share a pipeline with the rest of the
# batch's statements, and the arrays are built and sent once. Ties in time: the later row wins.
INSERT_WITH_LATEST = """
WITH b AS MATERIALIZED (
    SELECT to_timestamp(t) AS time, room_id, device_id, metric, value, n
    FROM unnest(%(epoch)s::float8[], %(room)s::text[], %(device)s::text[], %(metric)s::text[],
                %(value)s::float8[]) WITH ORDINALITY AS b(t, room_id, device_id, metric, value, n)
), stored AS (
    INSERT INTO sensor_data (farm_id, time, room_id, device_id, metric, value)
    SELECT %(farm_id)s, time, room_id, device_id, metric, value FROM b
)
INSERT INTO sensor_latest (farm_id, device_id, metric, room_id, time, value)
SELECT DISTINCT ON (device_id, metric) %(farm_id)s, device_id, metric, room_id, time, value
FROM b
ORDER BY device_id, metric, time DESC, n DESC
ON CONFLICT (farm_id, device_id, metric) DO UPDATE
SET time = excluded.time, value = excluded.value, room_id = excluded.room_id
WHERE excluded.time >= sensor_latest.time"""

RAW = """
SELECT time, device_id, metric, value FROM sensor_data
WHERE
farm_id = %(farm_id)s AND room_id = %(room_id)s AND time >= %(start)s AND time < %(end)s
AND metric = ANY(%(metrics)s)
AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
  AND (%(after_time)s::timestamptz IS NULL
       OR (time, device_id, metric) > (%(after_time)s, %(after_device)s, %(after_metric)s))
ORDER BY time, device_id, metric LIMIT %(limit)s"""
RAW_ALL = """
SELECT time, device_id, metric, value FROM sensor_data WHERE
farm_id = %(farm_id)s AND room_id = %(room_id)s AND time >= %(start)s AND time < %(end)s
AND metric = ANY(%(metrics)s)
AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
ORDER BY time, device_id, metric"""
# Buckets aligned to 2000-01-01 UTC, so 1 d buckets start at UTC midnight.
BUCKETS = """
SELECT date_bin(%(bucket)s, time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       device_id, metric, avg(value) AS avg, min(value) AS min, max(value) AS max,
       count(*) AS count
FROM sensor_data WHERE
farm_id = %(farm_id)s AND room_id = %(room_id)s AND time >= %(start)s AND time < %(end)s
AND metric = ANY(%(metrics)s)
AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""

# 1 h and 1 d buckets from the hourly rollups (migration 0006) plus the raw rows of the partial
# hours at either end of the range; exact (avg = sum / count), and ~360× fewer rows to read.
ROLLUP_BUCKETS = """
WITH parts AS (
SELECT date_bin(%(bucket)s, time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, device_id,
       metric, count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM sensor_data
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND time >= %(start)s AND time < %(first_hour)s
  AND metric = ANY(%(metrics)s)
  AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
GROUP BY 1, 2, 3
UNION ALL
SELECT date_bin(%(bucket)s, hour, TIMESTAMPTZ '2000-01-01 00:00:00+00'), device_id, metric,
       sum(count), sum(sum), min(min), max(max)
FROM sensor_hourly
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND hour >= %(first_hour)s AND hour < %(last_hour)s
  AND metric = ANY(%(metrics)s)
  AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
GROUP BY 1, 2, 3
UNION ALL
SELECT date_bin(%(bucket)s, time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, device_id,
       metric, count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM sensor_data
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND time >= %(last_hour)s AND time < %(end)s
  AND metric = ANY(%(metrics)s)
  AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
GROUP BY 1, 2, 3
)
SELECT bucket, device_id, metric, sum(sum) / sum(count)::float8 AS avg, min(min) AS min,
       max(max) AS max, sum(count)::bigint AS count
FROM parts GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
# 1 h buckets: the rollup rows are the buckets, and the two partial edge hours are buckets of
# their own, so nothing needs merging (half the work of ROLLUP_BUCKETS).
HOURLY_BUCKETS = """
SELECT date_bin(%(bucket)s, time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, device_id,
       metric, avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count
FROM sensor_data
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND time >= %(start)s AND time < %(first_hour)s
  AND metric = ANY(%(metrics)s)
  AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
GROUP BY 1, 2, 3
UNION ALL
SELECT hour, device_id, metric, sum / count, min, max, count
FROM sensor_hourly
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND hour >= %(first_hour)s AND hour < %(last_hour)s
  AND metric = ANY(%(metrics)s)
  AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
UNION ALL
SELECT date_bin(%(bucket)s, time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, device_id,
       metric, avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count
FROM sensor_data
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND time >= %(last_hour)s AND time < %(end)s
  AND metric = ANY(%(metrics)s)
  AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3"""
CUSTOM_PLAN = "SET LOCAL plan_cache_mode = force_custom_plan"
HOUR = timedelta(hours=1)
_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


def _floor_hour(at: datetime) -> datetime:
    return at - (at - _ORIGIN) % HOUR


# The metrics a room ever reported, by a loose index scan of sensor_hourly's primary key (one
# descent per metric). Queries always name their metrics: `metric = ANY(…)` keeps each index
# scan on (room_id, metric, time) to the requested time range, where a room-wide scan would
# walk the room's whole history.
ROOM_METRICS = """
WITH RECURSIVE m(metric) AS (
    (SELECT metric FROM sensor_hourly WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
     ORDER BY metric LIMIT 1)
    UNION ALL
    SELECT (SELECT h.metric FROM sensor_hourly h
            WHERE h.farm_id = %(farm_id)s AND h.room_id = %(room_id)s AND h.metric > m.metric
            ORDER BY h.metric LIMIT 1)
    FROM m WHERE m.metric IS NOT NULL
)
SELECT metric FROM m WHERE metric IS NOT NULL"""


async def room_metrics(db: Database, farm_id: str, room_id: str) -> list[str]:
    """Every metric the room has readings of (any time), sorted."""
    rows = await db.fetch_all(ROOM_METRICS, {"farm_id": farm_id, "room_id": room_id})
    return [row["metric"] for row in rows]


async def _params(
    db: Database,
    farm_id: str,
    room_id: str,
    start: datetime,
    end: datetime,
    metrics: list[str] | None,
    device_id: str | None,
) -> dict[str, Any]:
    return {
        "farm_id": farm_id,
        "room_id": room_id,
        "start": start,
        "end": end,
        "metrics": metrics or await room_metrics(db, farm_id, room_id),
        "device_id": device_id,
    }


async def insert_readings(db: Database, farm_id: str, rows: Iterable[Reading]) -> int:
    """COPY a batch of one farm's readings into sensor_data and update sensor_latest, in one
    transaction."""
    batch = list(rows)
    if not batch:
        return 0
    async with db.transaction() as cur:
        await copy_readings(cur, farm_id, batch)
    return len(batch)


async def copy_readings(cur: Cursor, farm_id: str, batch: list[Reading]) -> None:
    """COPY one farm's rows and fold them into sensor_latest inside the caller's transaction
    (the edge sync stores readings together with its high-water mark)."""
    await copy_rows(cur, farm_id, batch)
    await upsert_latest(cur, farm_id, batch)


async def copy_rows(cur: Cursor, farm_id: str, batch: list[Reading]) -> None:
    """COPY one farm's rows into sensor_data (not in a pipeline: COPY cannot be pipelined)."""
    if not batch:
        return
    async with cur.copy(COPY_IN) as copy:
        copy.set_types(COPY_TYPES)
        for row in batch:
            await copy.write_row((farm_id, *row))


@dataclass(frozen=True, slots=True)
class BinaryCopy:
    """A batch's rows in PostgreSQL's binary COPY format (for ``COPY_BINARY_IN``), and the
    newest row of each (room, device, metric) (the later one on a tie), in batch order: all that
    sensor_latest and the live announcement need of the batch."""

    data: bytes
    newest: list[EpochRow]


def _text(value: str) -> bytes:
    raw = value.encode()
    return _LENGTH.pack(len(raw)) + raw


def micros_since_2000(seconds: float) -> int:
    """Unix ``seconds`` as PostgreSQL's timestamptz (microseconds since 2000-01-01 UTC), rounded
    as ``datetime.fromtimestamp`` rounds (half to even on the fraction): the exact microsecond
    psycopg would send for that datetime."""
    frac, whole = math.modf(seconds)
    return (int(whole) - _PG_EPOCH) * 1_000_000 + round(frac * 1e6)


_NEVER: Final = -(2**63)


def binary_copy(farm_id: str, readings: Sequence[EpochReading]) -> BinaryCopy:
    """``readings`` of one farm as COPY_BINARY_IN's data, a row per metric. psycopg's write_row
    adapts each value of each row in turn, and the rows needed a datetime each: a third of the
    cloud's work in a backlog drain. Here a row is its series' bytes (made once per series) and
    one struct.pack, and each reading's time is converted once."""
    farm = _text(farm_id)
    series: dict[tuple[str, str], dict[str, bytes]] = {}
    names: dict[bytes, str] = {}  # a series' bytes -> its metric
    newest_us: dict[bytes, int] = {}  # a series' bytes -> its newest time, and the reading's
    newest_at: dict[bytes, int] = {}  # index in ``readings``
    pack = _TAIL.pack
    modf = math.modf
    parts = [_SIGNATURE]
    append = parts.append
    for i, (ts, room, device, values) in enumerate(readings):
        frac, whole = modf(ts)  # micros_since_2000, inline (once per reading of a million)
        micros = (int(whole) - _PG_EPOCH) * 1_000_000 + round(frac * 1e6)
        heads = series.get((room, device))
        if heads is None:
            heads = series[room, device] = {}
        for metric, value in values.items():
            head = heads.get(metric)
            if head is None:
                head = heads[metric] = (b"\x00\x06" + farm + _text(room) + _text(device)
                                        + _text(metric))
                names[head] = metric
            append(head)
            append(pack(8, micros, 8, value))
            if micros >= newest_us.get(head, _NEVER):
                newest_us[head] = micros
                newest_at[head] = i
    append(_TRAILER)
    newest: list[EpochRow] = []
    # Readings' indexes break ties between rooms: a device's metric is once in a reading.
    for i, head in sorted((i, head) for head, i in newest_at.items()):
        ts, room, device, values = readings[i]
        metric = names[head]
        newest.append((ts, room, device, metric, values[metric]))
    return BinaryCopy(b"".join(parts), newest)


async def copy_binary(cur: Cursor, data: bytes) -> None:
    """COPY ``binary_copy``'s data into sensor_data (not in a pipeline: COPY cannot be
    pipelined)."""
    async with cur.copy(COPY_BINARY_IN) as copy:
        await copy.write(data)


async def insert_with_latest(cur: Cursor, farm_id: str, batch: list[Reading]) -> None:
    """``copy_readings`` by one statement, for small batches: it may be pipelined."""
    if not batch:
        return
    await cur.execute(INSERT_WITH_LATEST, {"farm_id": farm_id, **array_params(batch)})


def array_params(batch: list[Reading]) -> dict[str, Any]:
    """``batch`` as the five array parameters of INSERT_WITH_LATEST and UPSERT_LATEST, each one
    array literal (a str; the SQL casts it). psycopg adapts a list element by element in Python:
    for a batch's few hundred rows that was a sixth of the cloud's CPU per batch; these joins run
    in C. PostgreSQL parses the same text either way."""
    times, rooms, devices, metrics, values = zip(*batch, strict=True)
    return {
        "epoch": "{" + ",".join(_epochs(times)) + "}",
        "room": text_array(rooms),
        "device": text_array(devices),
        "metric": text_array(metrics),
        "value": "{" + ",".join(map(float.__repr__, map(float, values))) + "}",
    }


def _epochs(times: tuple[datetime, ...]) -> list[str]:
    """Each time as Unix seconds, formatted once per run of the same datetime object: the rows
    of one reading (a row per metric) share theirs, and a float of today's magnitude takes ~1 µs
    to format."""
    out: list[str] = []
    last: datetime | None = None
    text = ""
    for at in times:
        if at is not last:
            last, text = at, repr(at.timestamp())
        out.append(text)
    return out


def text_array(items: tuple[str, ...]) -> str | list[str]:
    """A text[] literal, every element quoted (so "NULL" stays a string); the list itself (for
    psycopg to escape) when an element holds a quote or backslash, which ids and metric names
    never do."""
    if not items:
        return "{}"
    joined = '","'.join(items)
    if "\\" in joined or joined.count('"') != 2 * (len(items) - 1):
        return list(items)
    return '{"' + joined + '"}'


async def upsert_latest(cur: Cursor, farm_id: str, batch: list[Reading]) -> None:
    """Fold one farm's new rows into sensor_latest."""
    if not batch:
        return
    # Newest row per (device, metric) picked here: a batch has tens of thousands of rows but only
    # a few dozen series, so the upsert gets a few dozen rows instead of sorting them all.
    newest: dict[tuple[str, str], Reading] = {}
    for row in batch:
        key = (row[2], row[3])
        seen = newest.get(key)
        if seen is None or row[0] >= seen[0]:
            newest[key] = row
    await cur.execute(UPSERT_LATEST, {"farm_id": farm_id, **array_params(list(newest.values()))})


async def raw(
    db: Database,
    farm_id: str,
    room_id: str,
    *,
    start: datetime,
    end: datetime,
    metrics: list[str] | None,
    device_id: str | None,
    after: tuple[datetime, str, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    params = await _params(db, farm_id, room_id, start, end, metrics, device_id)
    params.update(
        after_time=after[0] if after else None,
        after_device=after[1] if after else None,
        after_metric=after[2] if after else None,
        limit=limit,
    )
    return await db.fetch_all(RAW, params)


async def stream_raw(
    db: Database,
    farm_id: str,
    room_id: str,
    *,
    start: datetime,
    end: datetime,
    metrics: list[str] | None,
    device_id: str | None,
    batch: int = 5_000,
) -> AsyncIterator[list[tuple[Any, ...]]]:
    """Every raw row in range, in batches, from a server-side cursor (constant memory)."""
    params = await _params(db, farm_id, room_id, start, end, metrics, device_id)
    async with db.pool.connection() as conn, conn.transaction():
        cur = conn.cursor(name="telemetry_csv")
        try:
            await cur.execute(RAW_ALL, params)
            while rows := await cur.fetchmany(batch):
                yield rows
        finally:
            await cur.close()


async def buckets(
    db: Database,
    farm_id: str,
    room_id: str,
    *,
    start: datetime,
    end: datetime,
    bucket: timedelta,
    metrics: list[str] | None,
    device_id: str | None,
) -> list[dict[str, Any]]:
    """Per bucket, device and metric: avg, min, max and count, aligned to 2000-01-01 UTC."""
    params = await _params(db, farm_id, room_id, start, end, metrics, device_id)
    params["bucket"] = bucket
    if bucket % HOUR:
        return await db.fetch_all(BUCKETS, params)
    first_hour = _floor_hour(start)
    first_hour += HOUR if first_hour < start else timedelta(0)
    last_hour = _floor_hour(end)
    if first_hour >= last_hour:  # no whole hour inside: raw rows only
        first_hour = last_hour = end
    params.update(first_hour=first_hour, last_hour=last_hour)
    async with db.transaction() as cur:
        # sensor_data is partitioned by month (0019): a generic plan, which the plan cache may
        # pick for a statement psycopg has prepared, cannot prune partitions while planning and
        # measured ~4x slower on 100M rows (docs/operations.md).
        await cur.execute(CUSTOM_PLAN)
        await cur.execute(HOURLY_BUCKETS if bucket == HOUR else ROLLUP_BUCKETS, params)
        return await cur.fetchall()


STATS = """
SELECT metric, avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count,
       avg(value) FILTER (WHERE time < %(mid)s) AS first_avg,
       avg(value) FILTER (WHERE time >= %(mid)s) AS last_avg
FROM sensor_data
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND metric = ANY(%(metrics)s) AND time >= %(start)s AND time < %(end)s
GROUP BY metric ORDER BY metric"""


async def room_stats(
    db: Database, farm_id: str, room_id: str, *, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Per-metric statistics over a window, with the mean of each half (a crude trend)."""
    params = await _params(db, farm_id, room_id, start, end, None, None)
    params["mid"] = start + (end - start) / 2
    return await db.fetch_all(STATS, params)
