"""Downsampling and retention: hourly rollups folded into days, and what expires when.

Raw readings expire by whole monthly partitions (cloud/db/partitions.py): a partition is dropped
once its whole month is past the cutoff, and the rows older than the cutoff in the partition the
cutoff falls in are deleted, so ``raw_retention_days`` means what it says to the day (a daily run
deletes about one day of rows; the month they are in is dropped a month later)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloud.db import partitions
from cloud.db.database import Database

# Where folding starts: the last day already folded, or the first hour ever rolled up.
FOLD_FROM = """
SELECT coalesce((SELECT max(day) FROM sensor_daily),
                (SELECT min(hour) FROM sensor_hourly)) AS at"""
# Whole days are recomputed from their hours (not added to), so folding again is idempotent.
FOLD_DAYS = """
INSERT INTO sensor_daily AS d (farm_id, room_id, metric, day, device_id, count, sum, min, max)
SELECT farm_id, room_id, metric, date_bin('1 day', hour, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       device_id, sum(count), sum(sum), min(min), max(max)
FROM sensor_hourly WHERE hour >= %(start)s AND hour < %(end)s
GROUP BY 1, 2, 3, 4, 5
ON CONFLICT (farm_id, room_id, metric, day, device_id) DO UPDATE
SET count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max"""
DELETE_HOURLY = """
DELETE FROM sensor_hourly WHERE hour < %(cutoff)s
  AND hour < (SELECT coalesce(max(day), '-infinity') FROM sensor_daily)"""
DELETE_EVENTS = """
DELETE FROM alert_events WHERE processed_at IS NOT NULL AND processed_at < %(cutoff)s"""
DELETE_NOTIFICATIONS = "DELETE FROM notifications WHERE created_at < %(cutoff)s"
DELETE_EPISODES = """
DELETE FROM alert_episodes WHERE state = 'resolved' AND resolved_at < %(cutoff)s"""
DELETE_RUNS = "DELETE FROM ai_runs WHERE started_at < %(cutoff)s"


async def fold_days(db: Database, *, lookback_start: datetime, end: datetime) -> int:
    """Fold hourly rollups of [start, end) into days; start is the earlier of the lookback and
    the first day never folded. The number of daily rows written."""
    row = await db.fetch_one(FOLD_FROM)
    start = lookback_start
    if row and row["at"] is not None and row["at"] < start:
        start = row["at"]
    return await db.execute(FOLD_DAYS, {"start": start, "end": end})


async def expire_raw(db: Database, *, cutoff: datetime) -> dict[str, Any]:
    """Raw readings older than cutoff: the partitions dropped, and the rows deleted from the
    partition at the boundary and from the DEFAULT partition."""
    dropped = await partitions.drop_expired(db, cutoff=cutoff)
    return {
        "raw_partitions_dropped": dropped,
        "raw_deleted": await partitions.delete_older(db, cutoff=cutoff),
    }


async def delete_hourly(db: Database, *, cutoff: datetime) -> int:
    return await db.execute(DELETE_HOURLY, {"cutoff": cutoff})


async def delete_history(db: Database, *, cutoff: datetime) -> dict[str, int]:
    """Processed alert events, notifications, resolved episodes and AI runs older than cutoff."""
    out = {}
    async with db.transaction() as cur:
        for name, query in (
            ("alert_events", DELETE_EVENTS),
            ("notifications", DELETE_NOTIFICATIONS),
            ("alert_episodes", DELETE_EPISODES),
            ("ai_runs", DELETE_RUNS),
        ):
            await cur.execute(query, {"cutoff": cutoff})
            out[name] = cur.rowcount
    return out
