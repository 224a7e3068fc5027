"""make_partitions (hourly): the monthly partitions of sensor_data for this month and the next
AHEAD_MONTHS, so readings never wait on a partition being made; readings that still landed in
the DEFAULT partition (a month with none: an edge back with old readings, a clock far ahead) are
moved into one of their own month. Idempotent: a run with nothing to do changes nothing."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from cloud.db import partitions
from cloud.db.database import Database

log = logging.getLogger(__name__)

# A quarter ahead: the job can fail for weeks before a month starts without its partition.
AHEAD_MONTHS = 3


async def make_partitions(db: Database, *, now: datetime) -> dict[str, Any]:
    made = await partitions.ensure_partitions(db, now=now, ahead=AHEAD_MONTHS)
    if made:
        log.info("partitions made: %s", ", ".join(made))
    return {"made": made}
