"""Each room's effective automation as its edge last reported it (migration 0013), and what the
grower's "why" view reads with it: device names, last-seen times, holds started in the cloud."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from cloud.db.database import Cursor, Database

# Newest report wins: a resent or reordered older one leaves the row alone.
UPSERT = """
INSERT INTO room_automation (farm_id, room_id, edge_id, seq, reported_at, state)
VALUES (%(farm_id)s, %(room_id)s, %(edge_id)s, %(seq)s, %(at)s, %(state)s)
ON CONFLICT (farm_id, room_id) DO UPDATE SET edge_id = excluded.edge_id, seq = excluded.seq,
    reported_at = excluded.reported_at, received_at = now(), state = excluded.state
WHERE excluded.reported_at >= room_automation.reported_at"""
# Last message of any kind, as the edge saw it: only ever moves forward.
SEEN = """
UPDATE devices d SET last_seen = s.at
FROM unnest(%(ids)s::text[], %(ats)s::timestamptz[]) AS s(id, at)
WHERE d.farm_id = %(farm_id)s AND d.room_id = %(room_id)s AND d.id = s.id
  AND (d.last_seen IS NULL OR d.last_seen < s.at)"""
GET = """
SELECT edge_id, seq, reported_at, received_at, state FROM room_automation
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s"""
DEVICES = """
SELECT id, name, kind, actuator, last_seen, safety FROM devices
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s ORDER BY id"""
# The newest hold or release sent from the cloud per actuator of the room, with its sender.
LAST_HOLDS = """
SELECT DISTINCT ON (c.device_id) c.device_id, c.id, c.action, c.hold_minutes, c.status, c.error,
    c.created_at, c.created_by, coalesce(nullif(u.display_name, ''), u.email) AS by_name
FROM commands c LEFT JOIN users u ON u.id = c.created_by
WHERE c.farm_id = %(farm_id)s AND c.room_id = %(room_id)s
  AND (c.hold_minutes IS NOT NULL OR c.action = 'auto')
ORDER BY c.device_id, c.created_at DESC, c.id DESC"""
CREATE_HOLD = """
INSERT INTO commands (id, farm_id, room_id, device_id, action, hold_minutes, created_by)
VALUES (%(id)s, %(farm_id)s, %(room_id)s, %(device_id)s, %(action)s, %(minutes)s, %(user_id)s)
RETURNING id, room_id, device_id, action, hold_minutes, status, error, created_by, created_at,
    updated_at"""
SET_SAFETY = """
UPDATE devices SET safety = %(safety)s WHERE farm_id = %(farm_id)s AND id = %(id)s"""
USER_NAME = """
SELECT coalesce(nullif(display_name, ''), email) AS name FROM users WHERE id = %(id)s"""


async def store(
    cur: Cursor,
    *,
    farm_id: str,
    edge_id: str,
    room_id: str,
    seq: int,
    at: datetime,
    state: dict[str, Any],
    seen: dict[str, datetime],
) -> None:
    """Keep a room's report (if it is the newest) and move its devices' last-seen forward."""
    params = {"farm_id": farm_id, "room_id": room_id, "edge_id": edge_id, "seq": seq, "at": at,
              "state": Jsonb(state)}
    await cur.execute(UPSERT, params)
    if seen:
        await cur.execute(SEEN, {"farm_id": farm_id, "room_id": room_id, "ids": list(seen),
                                 "ats": list(seen.values())})


async def get(db: Database, farm_id: str, room_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(GET, {"farm_id": farm_id, "room_id": room_id})


async def devices(db: Database, farm_id: str, room_id: str) -> list[dict[str, Any]]:
    return await db.fetch_all(DEVICES, {"farm_id": farm_id, "room_id": room_id})


async def last_holds(db: Database, farm_id: str, room_id: str) -> dict[str, dict[str, Any]]:
    rows = await db.fetch_all(LAST_HOLDS, {"farm_id": farm_id, "room_id": room_id})
    return {r["device_id"]: r for r in rows}


async def create_hold(
    db: Database,
    *,
    command_id: str,
    farm_id: str,
    room_id: str,
    device_id: str,
    action: str,
    minutes: float | None,
    user_id: int | None,
) -> dict[str, Any]:
    """A hold (action on/off for ``minutes``) or its end (action 'auto'), pending for the edge."""
    row = await db.fetch_one(CREATE_HOLD, {
        "id": command_id, "farm_id": farm_id, "room_id": room_id, "device_id": device_id,
        "action": action, "minutes": minutes, "user_id": user_id,
    })
    assert row is not None
    return row


async def set_safety(
    db: Database, farm_id: str, device_id: str, safety: dict[str, Any] | None
) -> None:
    await db.execute(SET_SAFETY, {"farm_id": farm_id, "id": device_id,
                                  "safety": Jsonb(safety) if safety is not None else None})


async def user_name(db: Database, user_id: int | None) -> str | None:
    if user_id is None:
        return None
    row = await db.fetch_one(USER_NAME, {"id": user_id})
    return str(row["name"]) if row else None
