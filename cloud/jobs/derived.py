"""process_sensor_data: per room and UTC hour, the means, vapour-pressure deficit, dew point and
time in band (``room_hourly``), from minute means of the raw readings (the arithmetic is in
``cloud.climate``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from cloud.climate import HOUR, by_minute, floor_hour, summarize
from cloud.db import derived as derived_db
from cloud.db.database import Database
from shared.profiles import profile_for

log = logging.getLogger(__name__)


async def process_sensor_data(
    db: Database, *, now: datetime, lookback_hours: int
) -> dict[str, int]:
    """Compute every complete hour of the lookback whose readings changed since it was last
    computed (or never was); idempotent. Returns how many rooms and hours were (re)computed."""
    end = floor_hour(now)
    start = end - lookback_hours * HOUR
    rooms = hours = 0
    for room in await derived_db.rooms(db):
        profile = profile_for(room["species"], room["stage"])
        current, stored = await derived_db.hour_counts(
            db, room["farm_id"], room["id"], start=start, end=end
        )
        changed = sorted(h for h, n in current.items() if stored.get(h) != n)
        if not changed:
            continue
        rooms += 1
        # One read for the changed span, then split by hour.
        rows = await derived_db.minute_means(
            db, room["farm_id"], room["id"], start=changed[0], end=changed[-1] + HOUR
        )
        per_hour: dict[datetime, list[dict[str, Any]]] = {}
        for row in rows:
            per_hour.setdefault(floor_hour(row["minute"]), []).append(row)
        for hour in changed:
            minutes, samples = by_minute(per_hour.get(hour, []))
            summary = summarize(minutes, profile)
            # Stored with the rollup's count (not the minute rows'), the figure compared next
            # time; both count the same readings.
            summary.samples = current[hour] if minutes else samples
            row = summary.as_row()
            row.update(farm_id=room["farm_id"], room_id=room["id"], hour=hour)
            row.update(species=room["species"], stage=room["stage"])
            await derived_db.store_hour(db, row)
            hours += 1
    if hours:
        log.info("derived metrics: %d hours in %d rooms", hours, rooms)
    return {"rooms": rooms, "hours": hours}
