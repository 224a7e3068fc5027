"""Grow rooms: species, stage and when the stage started."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloud.db.database import Database

LIST = """
SELECT id, farm_id, name, species, stage, stage_started, created_at, edge_id FROM rooms
WHERE farm_id = %(farm_id)s
  AND (%(only)s::text[] IS NULL OR id = ANY(%(only)s))
  AND (%(after)s::text IS NULL OR id > %(after)s)
ORDER BY id LIMIT %(limit)s"""
GET = """
SELECT id, farm_id, name, species, stage, stage_started, created_at, edge_id FROM rooms
WHERE farm_id = %(farm_id)s AND id = %(id)s"""
CREATE = """
INSERT INTO rooms (id, farm_id, name, species, stage, stage_started)
VALUES (%(id)s, %(farm_id)s, %(name)s, %(species)s, %(stage)s, coalesce(%(stage_started)s, now()))
RETURNING id, farm_id, name, species, stage, stage_started, created_at, edge_id"""
# A stage change restarts the stage clock unless the caller says when it started.
UPDATE = """
UPDATE rooms SET
    name = coalesce(%(name)s, name),
    species = coalesce(%(species)s, species),
    stage_started = CASE
        WHEN %(stage_started)s::timestamptz IS NOT NULL THEN %(stage_started)s
        WHEN %(stage)s::text IS NOT NULL AND %(stage)s <> stage THEN now()
        ELSE stage_started END,
    stage = coalesce(%(stage)s, stage)
WHERE farm_id = %(farm_id)s AND id = %(id)s
RETURNING id, farm_id, name, species, stage, stage_started, created_at, edge_id"""
DELETE = "DELETE FROM rooms WHERE farm_id = %(farm_id)s AND id = %(id)s"


async def list_rooms(
    db: Database, farm_id: str, *, only: list[str] | None, after: str | None, limit: int
) -> list[dict[str, Any]]:
    params = {"farm_id": farm_id, "only": only, "after": after, "limit": limit}
    return await db.fetch_all(LIST, params)


async def get(db: Database, farm_id: str, room_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(GET, {"farm_id": farm_id, "id": room_id})


async def create(
    db: Database,
    *,
    room_id: str,
    farm_id: str,
    name: str,
    species: str,
    stage: str,
    stage_started: datetime | None,
) -> dict[str, Any]:
    row = await db.fetch_one(
        CREATE,
        {
            "id": room_id,
            "farm_id": farm_id,
            "name": name,
            "species": species,
            "stage": stage,
            "stage_started": stage_started,
        },
    )
    assert row is not None
    return row


async def update(
    db: Database, farm_id: str, room_id: str, **fields: Any
) -> dict[str, Any] | None:
    params = {
        "farm_id": farm_id,
        "id": room_id,
        "name": None,
        "species": None,
        "stage": None,
        "stage_started": None,
    }
    params.update(fields)
    return await db.fetch_one(UPDATE, params)


async def delete(db: Database, farm_id: str, room_id: str) -> bool:
    return await db.execute(DELETE, {"farm_id": farm_id, "id": room_id}) > 0
