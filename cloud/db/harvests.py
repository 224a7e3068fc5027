"""Substrate loaded per room, harvests per flush, and the daily yield predictions."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from psycopg.types.json import Jsonb

from cloud.db.database import Database
from shared.vocabulary import CROPPING_STAGES

SUBSTRATE_COLUMNS = "room_id, dry_mass_kg, wet_mass_kg, moisture_pct, loaded_at, updated_at"
SET_SUBSTRATE = f"""
INSERT INTO room_substrate (farm_id, room_id, dry_mass_kg, wet_mass_kg, moisture_pct, loaded_at,
    updated_by)
VALUES (%(farm_id)s, %(room_id)s, %(dry)s, %(wet)s, %(moisture)s, coalesce(%(loaded_at)s, now()),
        %(user_id)s)
ON CONFLICT (farm_id, room_id) DO UPDATE SET dry_mass_kg = excluded.dry_mass_kg,
    wet_mass_kg = excluded.wet_mass_kg, moisture_pct = excluded.moisture_pct,
    loaded_at = excluded.loaded_at, updated_by = excluded.updated_by, updated_at = now()
RETURNING {SUBSTRATE_COLUMNS}"""  # noqa: S608 - constant column list
GET_SUBSTRATE = f"""
SELECT {SUBSTRATE_COLUMNS} FROM room_substrate
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s"""  # noqa: S608

HARVEST_COLUMNS = "id, room_id, flush, weight_kg, harvested_at, note, recorded_by, created_at"
ADD_HARVEST = f"""
INSERT INTO harvests (farm_id, room_id, flush, weight_kg, harvested_at, note, recorded_by)
VALUES (%(farm_id)s, %(room_id)s, %(flush)s, %(weight_kg)s, coalesce(%(harvested_at)s, now()),
        %(note)s, %(user_id)s)
RETURNING {HARVEST_COLUMNS}"""  # noqa: S608
LIST_HARVESTS = f"""
SELECT {HARVEST_COLUMNS} FROM harvests
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND (%(after)s::bigint IS NULL OR id < %(after)s)
ORDER BY id DESC LIMIT %(limit)s"""  # noqa: S608
# Per flush of the current substrate load: total weight, first and last harvest.
FLUSHES = """
SELECT flush, sum(weight_kg) AS actual_kg, min(harvested_at) AS first_at,
       max(harvested_at) AS last_at
FROM harvests
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND harvested_at >= %(since)s
GROUP BY flush ORDER BY flush"""

PREDICTION_COLUMNS = """id, room_id, flush, day, expected_kg, low_kg, high_kg, time_in_band,
    factor, inputs, computed_at"""
STORE_PREDICTION = f"""
INSERT INTO yield_predictions (farm_id, room_id, flush, day, expected_kg, low_kg, high_kg,
    time_in_band, factor, inputs)
VALUES (%(farm_id)s, %(room_id)s, %(flush)s, %(day)s, %(expected_kg)s, %(low_kg)s, %(high_kg)s,
        %(time_in_band)s, %(factor)s, %(inputs)s)
ON CONFLICT (farm_id, room_id, flush, day) DO UPDATE SET expected_kg = excluded.expected_kg,
    low_kg = excluded.low_kg, high_kg = excluded.high_kg, time_in_band = excluded.time_in_band,
    factor = excluded.factor, inputs = excluded.inputs, computed_at = now()
RETURNING {PREDICTION_COLUMNS}"""  # noqa: S608
# The prediction a flush is judged by: the last one made on or before its first harvest's day.
PREDICTION_FOR = f"""
SELECT {PREDICTION_COLUMNS} FROM yield_predictions
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND flush = %(flush)s AND day <= %(day)s
  AND computed_at >= %(since)s
ORDER BY day DESC LIMIT 1"""  # noqa: S608
LATEST_PREDICTION = f"""
SELECT {PREDICTION_COLUMNS} FROM yield_predictions
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND computed_at >= %(since)s
ORDER BY day DESC, flush DESC LIMIT 1"""  # noqa: S608
GROWING_ROOMS = """
SELECT r.farm_id, r.id, r.species, r.stage, r.stage_started FROM rooms r
JOIN room_substrate s ON s.farm_id = r.farm_id AND s.room_id = r.id
WHERE r.stage = ANY(%(stages)s) ORDER BY r.farm_id, r.id"""


async def set_substrate(
    db: Database,
    farm_id: str,
    room_id: str,
    *,
    dry_mass_kg: float,
    wet_mass_kg: float | None,
    moisture_pct: float | None,
    loaded_at: datetime | None,
    user_id: int | None,
) -> dict[str, Any]:
    row = await db.fetch_one(
        SET_SUBSTRATE,
        {
            "farm_id": farm_id,
            "room_id": room_id,
            "dry": dry_mass_kg,
            "wet": wet_mass_kg,
            "moisture": moisture_pct,
            "loaded_at": loaded_at,
            "user_id": user_id,
        },
    )
    assert row is not None
    return row


async def substrate(db: Database, farm_id: str, room_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(GET_SUBSTRATE, {"farm_id": farm_id, "room_id": room_id})


async def add_harvest(
    db: Database,
    farm_id: str,
    room_id: str,
    *,
    flush: int,
    weight_kg: float,
    harvested_at: datetime | None,
    note: str,
    user_id: int | None,
) -> dict[str, Any]:
    row = await db.fetch_one(
        ADD_HARVEST,
        {
            "farm_id": farm_id,
            "room_id": room_id,
            "flush": flush,
            "weight_kg": weight_kg,
            "harvested_at": harvested_at,
            "note": note,
            "user_id": user_id,
        },
    )
    assert row is not None
    return row


async def list_harvests(
    db: Database, farm_id: str, room_id: str, *, after: int | None, limit: int
) -> list[dict[str, Any]]:
    params = {"farm_id": farm_id, "room_id": room_id, "after": after, "limit": limit}
    return await db.fetch_all(LIST_HARVESTS, params)


async def flushes(
    db: Database, farm_id: str, room_id: str, *, since: datetime
) -> list[dict[str, Any]]:
    return await db.fetch_all(FLUSHES, {"farm_id": farm_id, "room_id": room_id, "since": since})


async def store_prediction(db: Database, row: dict[str, Any]) -> dict[str, Any]:
    stored = await db.fetch_one(STORE_PREDICTION, {**row, "inputs": Jsonb(row["inputs"])})
    assert stored is not None
    return stored


async def prediction_for(
    db: Database, farm_id: str, room_id: str, *, flush: int, day: date, since: datetime
) -> dict[str, Any] | None:
    params = {"farm_id": farm_id, "room_id": room_id, "flush": flush, "day": day, "since": since}
    return await db.fetch_one(PREDICTION_FOR, params)


async def latest_prediction(
    db: Database, farm_id: str, room_id: str, *, since: datetime
) -> dict[str, Any] | None:
    params = {"farm_id": farm_id, "room_id": room_id, "since": since}
    return await db.fetch_one(LATEST_PREDICTION, params)


async def growing_rooms(db: Database) -> list[dict[str, Any]]:
    return await db.fetch_all(GROWING_ROOMS, {"stages": list(CROPPING_STAGES)})
