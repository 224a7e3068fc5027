"""Commands to actuators, stored ``pending`` until the sync layer delivers them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from cloud.db.database import Database

CREATE = """
INSERT INTO commands (id, farm_id, room_id, device_id, action, value, created_by)
VALUES (%(id)s, %(farm_id)s, %(room_id)s, %(device_id)s, %(action)s, %(value)s, %(user_id)s)
RETURNING id, room_id, device_id, action, value, status, error, created_by, created_at,
    updated_at"""
LIST = """
SELECT id, room_id, device_id, action, value, status, error, created_by, created_at, updated_at
    FROM commands
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(after_at)s::timestamptz IS NULL OR (created_at, id) < (%(after_at)s, %(after_id)s))
ORDER BY created_at DESC, id DESC LIMIT %(limit)s"""
GET = """
SELECT id, room_id, device_id, action, value, status, error, created_by, created_at, updated_at
    FROM commands WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND id = %(id)s"""


async def create(
    db: Database,
    *,
    command_id: str,
    farm_id: str,
    room_id: str,
    device_id: str,
    action: str,
    value: Any,
    user_id: int | None,
) -> dict[str, Any]:
    row = await db.fetch_one(
        CREATE,
        {
            "id": command_id,
            "farm_id": farm_id,
            "room_id": room_id,
            "device_id": device_id,
            "action": action,
            "value": Jsonb(value) if value is not None else None,
            "user_id": user_id,
        },
    )
    assert row is not None
    return row


async def list_commands(
    db: Database,
    farm_id: str,
    room_id: str,
    *,
    status: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    params = {
        "farm_id": farm_id,
        "room_id": room_id,
        "status": status,
        "after_at": after[0] if after else None,
        "after_id": after[1] if after else None,
        "limit": limit,
    }
    return await db.fetch_all(LIST, params)


async def get(
    db: Database, farm_id: str, room_id: str, command_id: str
) -> dict[str, Any] | None:
    return await db.fetch_one(GET, {"farm_id": farm_id, "room_id": room_id, "id": command_id})
