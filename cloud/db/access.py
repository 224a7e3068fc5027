"""Membership lookups: which farm a farm/room/device/edge id belongs to and the caller's role."""

from __future__ import annotations

from typing import Any

from cloud.db.database import Database

FARM = """
SELECT f.id AS farm_id, NULL::text AS room_id,
    m.role, coalesce(m.all_rooms, true) AS all_rooms,
    coalesce((SELECT array_agg(g.room_id) FROM member_room_grants g
              WHERE g.farm_id = m.farm_id AND g.user_id = m.user_id), '{}') AS granted

FROM farms f LEFT JOIN farm_members m ON m.farm_id = f.id AND m.user_id = %(user_id)s
WHERE f.id = %(id)s"""
ROOM = """
SELECT r.farm_id, r.id AS room_id,
    m.role, coalesce(m.all_rooms, true) AS all_rooms,
    coalesce((SELECT array_agg(g.room_id) FROM member_room_grants g
              WHERE g.farm_id = m.farm_id AND g.user_id = m.user_id), '{}') AS granted

FROM rooms r LEFT JOIN farm_members m ON m.farm_id = r.farm_id AND m.user_id = %(user_id)s
WHERE r.id = %(id)s"""
DEVICE = """
SELECT r.farm_id, r.id AS room_id,
    m.role, coalesce(m.all_rooms, true) AS all_rooms,
    coalesce((SELECT array_agg(g.room_id) FROM member_room_grants g
              WHERE g.farm_id = m.farm_id AND g.user_id = m.user_id), '{}') AS granted

FROM devices d JOIN rooms r ON r.id = d.room_id
LEFT JOIN farm_members m ON m.farm_id = r.farm_id AND m.user_id = %(user_id)s
WHERE d.id = %(id)s"""
EDGE = """
SELECT e.farm_id, NULL::text AS room_id,
    m.role, coalesce(m.all_rooms, true) AS all_rooms,
    coalesce((SELECT array_agg(g.room_id) FROM member_room_grants g
              WHERE g.farm_id = m.farm_id AND g.user_id = m.user_id), '{}') AS granted

FROM edges e LEFT JOIN farm_members m ON m.farm_id = e.farm_id AND m.user_id = %(user_id)s
WHERE e.id = %(id)s"""

QUERIES = {"farm": FARM, "room": ROOM, "device": DEVICE, "edge": EDGE}


async def locate(db: Database, kind: str, resource_id: str, user_id: int) -> dict[str, Any] | None:
    """The owning farm (and room) of a resource with the user's membership, None if unknown."""
    return await db.fetch_one(QUERIES[kind], {"id": resource_id, "user_id": user_id})
