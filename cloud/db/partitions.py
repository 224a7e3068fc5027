"""The monthly partitions of ``sensor_data`` (migration 0019): made ahead of time, and dropped
whole once every row in them is past retention.

Partitions are UTC months named ``telemetry.sensor_data_YYYYMM``; ``sensor_data_add_month``
(in SQL, so the migration and the job share it) makes one and moves that month's rows out of the
DEFAULT partition, which holds any reading whose month had no partition yet.

Autovacuum analyzes each partition but never the partitioned parent, whose statistics (row count,
the histograms of the whole table) are what the planner uses for a query across months:
``analyze_parent`` runs ANALYZE on it when it is due.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg import errors as pgerr
from psycopg import sql

from cloud.db.database import Database
from cloud.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

SCHEMA = "telemetry"
DEFAULT = "sensor_data_default"
ADD_MONTH = "SELECT sensor_data_add_month(%(at)s) AS made"
# The bounds as PostgreSQL prints them, read back as timestamptz in the same session (so the
# session's TimeZone and DateStyle cannot skew them). The DEFAULT partition has no bounds.
PARTITIONS = r"""
SELECT c.relname AS name, b[1]::timestamptz AS lo, b[2]::timestamptz AS hi
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS b
WHERE i.inhparent = 'sensor_data'::regclass AND b IS NOT NULL
ORDER BY lo"""
# Months that have rows waiting in the DEFAULT partition (few rows, normally none).
DEFAULT_MONTHS = """
SELECT DISTINCT date_trunc('month', time, 'UTC') AS month
FROM telemetry.sensor_data_default ORDER BY 1"""
# The same key as sensor_data_add_month: never drop while a partition is being made.
LOCK = "SELECT pg_advisory_xact_lock(hashtext('smartfarm.sensor_data_partitions'))"
# Dropping a partition needs a moment's exclusive lock on sensor_data: rather than queue behind
# a long query (and make every reader and writer queue behind the drop), give up and try again
# at the next run.
LOCK_TIMEOUT = "SET LOCAL lock_timeout = '2s'"
# Batched by ctid (one table, so ctids are unique) to keep each statement and its WAL small.
DELETE_OLDER = """
DELETE FROM {table} WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {table} WHERE time < %(cutoff)s LIMIT %(batch)s))"""


# When the parent was last analyzed (NULL: never, or since the statistics were reset) and what
# the planner believes it holds (-1: never analyzed).
PARENT_STATS = """
SELECT s.last_analyze, c.reltuples FROM pg_class c
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = 'sensor_data'::regclass"""
# ANALYZE of the parent samples the whole table and, before PostgreSQL 18 (ANALYZE ONLY), each
# partition again: minutes on a large table, past the pool's 30 s statement timeout. It takes
# only a SHARE UPDATE EXCLUSIVE lock (readers and writers go on); rather than queue behind a
# partition being dropped or attached, it gives up and runs at the next run.
ANALYZE_TIMEOUTS = """
SELECT set_config('statement_timeout', '30min', true),
    set_config('lock_timeout', %(lock_timeout)s, true)"""
ANALYZE_PARENT = "ANALYZE sensor_data"


@dataclass(frozen=True)
class ParentStats:
    analyzed: datetime | None  # last ANALYZE (manual or by this job); None: unknown
    rows: float  # the planner's row count of the whole table (-1: never analyzed)


@dataclass(frozen=True)
class Partition:
    name: str
    lo: datetime
    hi: datetime


def _lock_busy(exc: DatabaseUnavailable) -> bool:
    """Whether the database error is a lock wait past lock_timeout (the Database maps every
    OperationalError, LockNotAvailable included, to DatabaseUnavailable)."""
    return isinstance(exc.__cause__, pgerr.LockNotAvailable)


def month_start(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def add_months(month: datetime, n: int) -> datetime:
    index = month.year * 12 + month.month - 1 + n
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


async def partitions(db: Database) -> list[Partition]:
    """The monthly partitions, oldest first (the DEFAULT partition is not one of them)."""
    rows = await db.fetch_all(PARTITIONS)
    return [Partition(r["name"], r["lo"], r["hi"]) for r in rows]


async def add_month(db: Database, at: datetime) -> str | None:
    """Make the partition of ``at``'s UTC month; its name, or None if it was there."""
    row = await db.fetch_one(ADD_MONTH, {"at": at})
    return row["made"] if row else None


async def ensure_partitions(db: Database, *, now: datetime, ahead: int) -> list[str]:
    """The partitions of this month and the next ``ahead`` months, and of every month with
    readings waiting in the DEFAULT partition (which moves them in); the names made."""
    this_month = month_start(now)
    months = {add_months(this_month, k) for k in range(ahead + 1)}
    months |= {row["month"] for row in await db.fetch_all(DEFAULT_MONTHS)}
    made = []
    for month in sorted(months):
        name = await add_month(db, month)
        if name is not None:
            log.info("made partition %s.%s", SCHEMA, name)
            made.append(name)
    return made


async def drop_expired(db: Database, *, cutoff: datetime) -> list[str]:
    """Drop every partition whose whole month is older than ``cutoff``; the names dropped. One
    that stays locked by a long query is left for the next run (logged)."""
    dropped = []
    for part in await partitions(db):
        if part.hi > cutoff:
            break
        table = sql.Identifier(SCHEMA, part.name)
        try:
            async with db.transaction() as cur:
                await cur.execute(LOCK_TIMEOUT)
                await cur.execute(LOCK)
                await cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        except DatabaseUnavailable as exc:
            if not _lock_busy(exc):
                raise
            log.warning("partition %s.%s is busy: dropped at the next run", SCHEMA, part.name)
            continue
        log.info("dropped partition %s.%s (readings before %s)", SCHEMA, part.name, part.hi)
        dropped.append(part.name)
    return dropped


async def delete_older(db: Database, *, cutoff: datetime, batch: int = 50_000) -> int:
    """Delete the rows older than ``cutoff`` left after ``drop_expired``: those of the partition
    the cutoff falls in (at most a day's worth on a daily run) and of the DEFAULT partition."""
    tables = [p.name for p in await partitions(db) if p.lo < cutoff < p.hi] + [DEFAULT]
    deleted = 0
    for name in tables:
        query = sql.SQL(DELETE_OLDER).format(table=sql.Identifier(SCHEMA, name))
        while True:
            async with db.transaction() as cur:
                await cur.execute(query, {"cutoff": cutoff, "batch": batch})
                n = cur.rowcount
            deleted += n
            if n < batch:
                break
    return deleted


async def parent_stats(db: Database) -> ParentStats:
    row = await db.fetch_one(PARENT_STATS)
    assert row is not None  # the table is made by migration 0019
    return ParentStats(row["last_analyze"], float(row["reltuples"]))


async def analyze_parent(db: Database, *, lock_timeout_s: float = 10.0) -> float | None:
    """ANALYZE the partitioned parent; the seconds it took, or None when a lock kept it waiting
    past ``lock_timeout_s`` (logged: the next run tries again)."""
    started = time.monotonic()
    try:
        async with db.transaction() as cur:
            await cur.execute(ANALYZE_TIMEOUTS, {"lock_timeout": f"{lock_timeout_s * 1000:.0f}"})
            await cur.execute(ANALYZE_PARENT)
    except DatabaseUnavailable as exc:
        if not _lock_busy(exc):
            raise
        log.warning("sensor_data is busy (a partition being made or dropped): analyzed at the"
                    " next run")
        return None
    return time.monotonic() - started
