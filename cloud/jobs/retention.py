"""cleanup_old_data (daily): fold hourly rollups into days, expire raw readings past retention
(their hourly and daily rollups stay, so charts of old months keep working and stay fast) by
dropping whole monthly partitions of sensor_data (cloud/db/retention.py says how the boundary
month is handled), and trim finished jobs, old notifications and processed alert events.

``sensor_hourly`` is kept current by a trigger on every insert (migration 0006), so deleting raw
rows never loses a rollup; the daily fold re-reads its lookback each run, picking up late
uploads from an edge that was offline.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from cloud.db import retention as retention_db
from cloud.db.database import Database
from cloud.jobs.queue import JobQueue
from cloud.jobs.settings import JobsConfig

log = logging.getLogger(__name__)

DAY = timedelta(days=1)
_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


def floor_day(at: datetime) -> datetime:
    return at - (at - _ORIGIN) % DAY


async def cleanup_old_data(
    db: Database, queue: JobQueue, config: JobsConfig, *, now: datetime, history_days: int
) -> dict[str, Any]:
    today = floor_day(now)
    out: dict[str, Any] = {
        "daily_rows": await retention_db.fold_days(
            db, lookback_start=today - config.rollup_lookback_days * DAY, end=today
        )
    }
    if config.raw_retention_days:
        cutoff = now - config.raw_retention_days * DAY
        out.update(await retention_db.expire_raw(db, cutoff=cutoff))
    if config.hourly_retention_days:
        # Never inside the fold's lookback: those hours may still be folded again.
        days = max(config.hourly_retention_days, config.rollup_lookback_days + 1)
        out["hourly_deleted"] = await retention_db.delete_hourly(db, cutoff=today - days * DAY)
    out.update(await retention_db.delete_history(db, cutoff=now - history_days * DAY))
    keep_h = max(1, round(config.keep_finished_days * 24))
    manager = queue.app.job_manager
    await manager.delete_old_jobs(nb_hours=keep_h, include_cancelled=True, include_aborted=True)
    await manager.delete_old_jobs(nb_hours=2 * keep_h, include_failed=True)
    log.info("cleanup: %s", out)
    return out
