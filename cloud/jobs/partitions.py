"""make_partitions (hourly): the monthly partitions of sensor_data for this month and the next
AHEAD_MONTHS, so readings never wait on a partition being made; readings that still landed in
the DEFAULT partition (a month with none: an edge back with old readings, a clock far ahead) are
moved into one of their own month. Idempotent: a run with nothing to do changes nothing.

Once a day (the first run ANALYZE_EVERY after the last ANALYZE) it also analyzes the partitioned
parent, which autovacuum never does: without it the planner's farm-wide estimates (row count,
histograms across months) stay those of the last manual ANALYZE, or of none. The cost on a few
million rows is in docs/operations.md."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from cloud.db import partitions
from cloud.db.database import Database

log = logging.getLogger(__name__)

# A quarter ahead: the job can fail for weeks before a month starts without its partition.
AHEAD_MONTHS = 3
# Daily, a little less so the hourly run (at :20) does not slip to the next hour each day.
ANALYZE_EVERY = timedelta(hours=23, minutes=30)


async def make_partitions(db: Database, *, now: datetime) -> dict[str, Any]:
    made = await partitions.ensure_partitions(db, now=now, ahead=AHEAD_MONTHS)
    if made:
        log.info("partitions made: %s", ", ".join(made))
    return {"made": made, "analyzed_s": await analyze_if_due(db, now=now)}


async def analyze_if_due(db: Database, *, now: datetime) -> float | None:
    """ANALYZE sensor_data unless that was done within ANALYZE_EVERY of ``now``; the seconds it
    took, None when it was not due (or a lock kept it from running: the next run tries)."""
    before = await partitions.parent_stats(db)
    if before.analyzed is not None and now - before.analyzed < ANALYZE_EVERY:
        return None
    took = await partitions.analyze_parent(db)
    if took is not None:
        after = await partitions.parent_stats(db)
        log.info("analyzed sensor_data in %.1f s: about %.0f rows (was %.0f)", took,
                 after.rows, before.rows)
    return took
