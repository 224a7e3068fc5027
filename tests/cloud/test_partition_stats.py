"""The partitioned parent's statistics: autovacuum analyzes each month's partition but never
sensor_data itself, so the make_partitions job does, once a day, and logs it; a lock held on a
partition delays that (and a partition's drop) to the next run instead of failing the job.
Real PostgreSQL, the job run by a real procrastinate worker."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from cloud.db import partitions
from cloud.db import telemetry as telemetry_db
from cloud.jobs.partitions import make_partitions
from tests.cloud import world as w
from tests.cloud.jobs_env import jobs_env_fixture  # noqa: F401

pytestmark = pytest.mark.postgres

COUNT = "SELECT count(*) AS n FROM sensor_data"


async def add_readings(db, n: int, at: datetime) -> None:  # type: ignore[no-untyped-def]
    """``n`` readings a minute apart, back from ``at`` (this month and the one before)."""
    await telemetry_db.insert_readings(db, w.FARM, [
        (at - timedelta(minutes=i), w.ROOM_B, w.SENSOR_B, "temperature_c", 17.0 + i % 10)
        for i in range(n)
    ])


async def test_the_job_analyzes_the_parent_once_a_day_and_logs_it(  # type: ignore[no-untyped-def]
    jobs_env, caplog
) -> None:
    env = await jobs_env()
    now = datetime.now(UTC).replace(microsecond=0)
    await add_readings(env.db, 3000, now - timedelta(minutes=1))
    total = (await env.db.fetch_one(COUNT))["n"]  # type: ignore[index]
    assert (await partitions.parent_stats(env.db)).rows != total  # stale before the job

    caplog.set_level(logging.INFO, logger="cloud.jobs.partitions")
    await env.queue.defer("make_partitions", timestamp=int(now.timestamp()))
    await env.work()
    assert len(await env.jobs("make_partitions", status="succeeded")) == 1
    stats = await partitions.parent_stats(env.db)
    assert stats.rows == total and stats.analyzed is not None
    seen = await env.db.fetch_one(
        "SELECT last_analyze FROM pg_stat_user_tables WHERE relid = 'sensor_data'::regclass")
    assert seen is not None and seen["last_analyze"] == stats.analyzed
    assert any(r.getMessage().startswith("analyzed sensor_data in ") for r in caplog.records)

    # The hourly runs after it leave the parent alone until a day has passed.
    await add_readings(env.db, 500, now - timedelta(days=1))
    assert (await make_partitions(env.db, now=now + timedelta(hours=23)))["analyzed_s"] is None
    assert (await partitions.parent_stats(env.db)).rows == total
    result = await make_partitions(env.db, now=stats.analyzed + timedelta(hours=24))
    assert result["analyzed_s"] is not None and result["analyzed_s"] >= 0
    assert (await partitions.parent_stats(env.db)).rows == total + 500


async def test_a_held_lock_puts_analyze_and_drop_off_to_the_next_run(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    oldest = (await partitions.partitions(env.db))[0]
    # A long query on the oldest month: its drop and the parent's ANALYZE would queue behind it.
    with psycopg.connect(env.db.dsn) as reader:
        table = sql.Identifier(partitions.SCHEMA, oldest.name)
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
        before = await partitions.parent_stats(env.db)
        assert await partitions.drop_expired(env.db, cutoff=oldest.hi) == []
        reader.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        assert await partitions.analyze_parent(env.db, lock_timeout_s=0.2) is None
        assert await partitions.parent_stats(env.db) == before
        reader.rollback()
    assert oldest.name in {p.name for p in await partitions.partitions(env.db)}
    # Let go of, both go ahead.
    assert await partitions.analyze_parent(env.db, lock_timeout_s=0.2) is not None
    assert await partitions.drop_expired(env.db, cutoff=oldest.hi) == [oldest.name]
