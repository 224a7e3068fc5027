"""Derived metrics per room and hour (``room_hourly``) and the minute means they are made from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloud.db.database import Database
from shared.vocabulary import BANDED_METRICS

BANDED = list(BANDED_METRICS)

ROOMS = "SELECT id, farm_id, species, stage, stage_started FROM rooms ORDER BY farm_id, id"
# Readings per hour from the hourly rollups (0006), compared with what room_hourly was built
# from: an hour whose count moved (an edge uploading after an outage) is computed again.
COUNTS = """
SELECT hour, sum(count)::bigint AS samples FROM sensor_hourly
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND metric = ANY(%(metrics)s)
  AND hour >= %(start)s AND hour < %(end)s
GROUP BY hour"""
STORED = """
SELECT hour, samples FROM room_hourly
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND hour >= %(start)s AND hour < %(end)s"""
MINUTES = """
SELECT date_bin('1 minute', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS minute, metric,
       avg(value) AS value, count(*) AS n
FROM sensor_data
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND metric = ANY(%(metrics)s)
  AND time >= %(start)s AND time < %(end)s
GROUP BY 1, 2 ORDER BY 1"""
UPSERT = """
INSERT INTO room_hourly (farm_id, room_id, hour, species, stage, samples, minutes, temperature_c,
    humidity_pct, co2_ppm, vpd_kpa, dew_point_c, in_band_temperature, in_band_humidity,
    in_band_co2, in_band_all)
VALUES (%(farm_id)s, %(room_id)s, %(hour)s, %(species)s, %(stage)s, %(samples)s, %(minutes)s,
    %(temperature_c)s, %(humidity_pct)s, %(co2_ppm)s, %(vpd_kpa)s, %(dew_point_c)s,
    %(in_band_temperature)s, %(in_band_humidity)s, %(in_band_co2)s, %(in_band_all)s)
ON CONFLICT (farm_id, room_id, hour) DO UPDATE SET
    species = excluded.species, stage = excluded.stage, samples = excluded.samples,
    minutes = excluded.minutes, temperature_c = excluded.temperature_c,
    humidity_pct = excluded.humidity_pct, co2_ppm = excluded.co2_ppm,
    vpd_kpa = excluded.vpd_kpa, dew_point_c = excluded.dew_point_c,
    in_band_temperature = excluded.in_band_temperature,
    in_band_humidity = excluded.in_band_humidity, in_band_co2 = excluded.in_band_co2,
    in_band_all = excluded.in_band_all, computed_at = now()"""
HOURS = """
SELECT hour, species, stage, samples, minutes, temperature_c, humidity_pct, co2_ppm, vpd_kpa,
       dew_point_c, in_band_temperature, in_band_humidity, in_band_co2, in_band_all
FROM room_hourly WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND hour >= %(start)s
  AND hour < %(end)s
ORDER BY hour"""
# Minute-weighted time in band over a span (the yield model's input).
IN_BAND = """
SELECT sum(in_band_all * minutes) / nullif(sum(minutes), 0) AS in_band, sum(minutes) AS minutes
FROM room_hourly
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND hour >= %(start)s AND hour < %(end)s
  AND in_band_all IS NOT NULL"""


async def rooms(db: Database) -> list[dict[str, Any]]:
    return await db.fetch_all(ROOMS)


async def hour_counts(
    db: Database, farm_id: str, room_id: str, *, start: datetime, end: datetime
) -> tuple[dict[datetime, int], dict[datetime, int]]:
    """(readings per hour now, readings per hour when room_hourly was computed)."""
    params = {
        "farm_id": farm_id,
        "room_id": room_id,
        "metrics": BANDED,
        "start": start,
        "end": end,
    }
    async with db.transaction() as cur:
        await cur.execute(COUNTS, params)
        now = {r["hour"]: int(r["samples"]) for r in await cur.fetchall()}
        await cur.execute(STORED, params)
        stored = {r["hour"]: int(r["samples"]) for r in await cur.fetchall()}
    return now, stored


async def minute_means(
    db: Database, farm_id: str, room_id: str, *, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Per minute and banded metric: the mean of the room's readings and how many there were."""
    params = {
        "farm_id": farm_id,
        "room_id": room_id,
        "metrics": BANDED,
        "start": start,
        "end": end,
    }
    return await db.fetch_all(MINUTES, params)


async def store_hour(db: Database, row: dict[str, Any]) -> None:
    await db.execute(UPSERT, row)


async def hours(
    db: Database, farm_id: str, room_id: str, *, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    params = {"farm_id": farm_id, "room_id": room_id, "start": start, "end": end}
    return await db.fetch_all(HOURS, params)


async def time_in_band(
    db: Database, farm_id: str, room_id: str, *, start: datetime, end: datetime
) -> tuple[float | None, int]:
    """Share of the span's measured minutes with every metric in band, and those minutes."""
    params = {"farm_id": farm_id, "room_id": room_id, "start": start, "end": end}
    row = await db.fetch_one(IN_BAND, params)
    if row is None or row["in_band"] is None:
        return None, 0
    return float(row["in_band"]), int(row["minutes"] or 0)
