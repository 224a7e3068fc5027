"""Readings: bulk insert by COPY, bucketed aggregation with date_bin, keyset-paged raw rows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from typing import Any

from cloud.db.database import Database

Reading = tuple[datetime, str, str, str, float]  # time, room_id, device_id, metric, value

COPY_IN = "COPY sensor_data (time, room_id, device_id, metric, value) FROM STDIN (FORMAT BINARY)"
COPY_TYPES = ("timestamptz", "text", "text", "text", "float8")
# Fold a freshly copied batch into the latest table: newest row per (device, metric) wins.
UPSERT_LATEST = """
INSERT INTO sensor_latest (device_id, metric, room_id, time, value)
SELECT DISTINCT ON (device_id, metric) device_id, metric, room_id, time, value
FROM unnest(%(time)s::timestamptz[], %(room)s::text[], %(device)s::text[], %(metric)s::text[],
            %(value)s::float8[]) AS b(time, room_id, device_id, metric, value)
ORDER BY device_id, metric, time DESC
ON CONFLICT (device_id, metric) DO UPDATE
SET time = excluded.time, value = excluded.value, room_id = excluded.room_id
WHERE excluded.time >= sensor_latest.time"""

RAW = """
SELECT time, device_id, metric, value FROM sensor_data
WHERE
room_id = %(room_id)s AND time >= %(start)s AND time < %(end)s
AND (%(metrics)s::text[] IS NULL OR metric = ANY(%(metrics)s))
AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
  AND (%(after_time)s::timestamptz IS NULL
       OR (time, device_id, metric) > (%(after_time)s, %(after_device)s, %(after_metric)s))
ORDER BY time, device_id, metric LIMIT %(limit)s"""
RAW_ALL = """
SELECT time, device_id, metric, value FROM sensor_data WHERE
room_id = %(room_id)s AND time >= %(start)s AND time < %(end)s
AND (%(metrics)s::text[] IS NULL OR metric = ANY(%(metrics)s))
AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
ORDER BY time, device_id, metric"""
# Buckets aligned to 2000-01-01 UTC, so 1 d buckets start at UTC midnight.
BUCKETS = """
SELECT date_bin(%(bucket)s, time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       device_id, metric, avg(value) AS avg, min(value) AS min, max(value) AS max,
       count(*) AS count
FROM sensor_data WHERE
room_id = %(room_id)s AND time >= %(start)s AND time < %(end)s
AND (%(metrics)s::text[] IS NULL OR metric = ANY(%(metrics)s))
AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""


def _params(
    room_id: str,
    start: datetime,
    end: datetime,
    metrics: list[str] | None,
    device_id: str | None,
) -> dict[str, Any]:
    return {
        "room_id": room_id,
        "start": start,
        "end": end,
        "metrics": metrics or None,
        "device_id": device_id,
    }


async def insert_readings(db: Database, rows: Iterable[Reading]) -> int:
    """COPY a batch into sensor_data and update sensor_latest, in one transaction."""
    batch = list(rows)
    if not batch:
        return 0
    async with db.transaction() as cur:
        async with cur.copy(COPY_IN) as copy:
            copy.set_types(COPY_TYPES)
            for row in batch:
                await copy.write_row(row)
        cols = [list(col) for col in zip(*batch, strict=True)]  # lists adapt as arrays
        await cur.execute(
            UPSERT_LATEST,
            {
                "time": cols[0],
                "room": cols[1],
                "device": cols[2],
                "metric": cols[3],
                "value": cols[4],
            },
        )
    return len(batch)


async def raw(
    db: Database,
    room_id: str,
    *,
    start: datetime,
    end: datetime,
    metrics: list[str] | None,
    device_id: str | None,
    after: tuple[datetime, str, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    params = _params(room_id, start, end, metrics, device_id)
    params.update(
        after_time=after[0] if after else None,
        after_device=after[1] if after else None,
        after_metric=after[2] if after else None,
        limit=limit,
    )
    return await db.fetch_all(RAW, params)


async def stream_raw(
    db: Database,
    room_id: str,
    *,
    start: datetime,
    end: datetime,
    metrics: list[str] | None,
    device_id: str | None,
    batch: int = 5_000,
) -> AsyncIterator[list[tuple[Any, ...]]]:
    """Every raw row in range, in batches, from a server-side cursor (constant memory)."""
    params = _params(room_id, start, end, metrics, device_id)
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
    room_id: str,
    *,
    start: datetime,
    end: datetime,
    bucket: timedelta,
    metrics: list[str] | None,
    device_id: str | None,
) -> list[dict[str, Any]]:
    params = _params(room_id, start, end, metrics, device_id)
    params["bucket"] = bucket
    return await db.fetch_all(BUCKETS, params)


STATS = """
SELECT metric, avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count,
       avg(value) FILTER (WHERE time < %(mid)s) AS first_avg,
       avg(value) FILTER (WHERE time >= %(mid)s) AS last_avg
FROM sensor_data
WHERE room_id = %(room_id)s AND time >= %(start)s AND time < %(end)s
GROUP BY metric ORDER BY metric"""


async def room_stats(
    db: Database, room_id: str, *, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Per-metric statistics over a window, with the mean of each half (a crude trend)."""
    mid = start + (end - start) / 2
    return await db.fetch_all(STATS, {"room_id": room_id, "start": start, "end": end, "mid": mid})
