"""Membership lookups: which farm a farm/room/device/edge id belongs to and the caller's role.

Room, device and edge ids are per farm, so one id may name a resource in several farms; only the
farms the caller belongs to (every farm for an admin) are ever looked at, so nothing here tells a
caller about another tenant's ids."""

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
WHERE r.id = %(id)s AND (%(farm_id)s::text IS NULL OR r.farm_id = %(farm_id)s)
  AND (m.user_id IS NOT NULL OR %(admin)s)
ORDER BY r.farm_id"""
DEVICE = """
SELECT d.farm_id, d.room_id,
    m.role, coalesce(m.all_rooms, true) AS all_rooms,
    coalesce((SELECT array_agg(g.room_id) FROM member_room_grants g
              WHERE g.farm_id = m.farm_id AND g.user_id = m.user_id), '{}') AS granted

FROM devices d LEFT JOIN farm_members m ON m.farm_id = d.farm_id AND m.user_id = %(user_id)s
WHERE d.id = %(id)s AND (%(farm_id)s::text IS NULL OR d.farm_id = %(farm_id)s)
  AND (m.user_id IS NOT NULL OR %(admin)s)
ORDER BY d.farm_id"""
EDGE = """
SELECT e.farm_id, NULL::text AS room_id,
    m.role, coalesce(m.all_rooms, true) AS all_rooms,
    coalesce((SELECT array_agg(g.room_id) FROM member_room_grants g
              WHERE g.farm_id = m.farm_id AND g.user_id = m.user_id), '{}') AS granted

FROM edges e LEFT JOIN farm_members m ON m.farm_id = e.farm_id AND m.user_id = %(user_id)s
WHERE e.id = %(id)s AND (%(farm_id)s::text IS NULL OR e.farm_id = %(farm_id)s)
  AND (m.user_id IS NOT NULL OR %(admin)s)
ORDER BY e.farm_id"""

QUERIES = {"farm": FARM, "room": ROOM, "device": DEVICE, "edge": EDGE}


async def locate(db: Database, kind: str, resource_id: str, user_id: int) -> dict[str, Any] | None:
    """The owning farm (and room) of a resource with the user's membership, None if unknown.
    For a per-farm kind: the first of the user's farms that has it (see ``locate_all``)."""
    rows = await locate_all(db, kind, resource_id, user_id)
    return rows[0] if rows else None


async def locate_all(
    db: Database,
    kind: str,
    resource_id: str,
    user_id: int,
    *,
    farm_id: str | None = None,
    is_admin: bool = False,
) -> list[dict[str, Any]]:
    """Each farm, among the user's (any for an admin), that has a resource of this id, with the
    user's membership there; ``farm_id`` narrows to that farm. A farm: at most one row, also
    when the user is not a member (its membership columns are then NULL)."""
    params = {"id": resource_id, "user_id": user_id, "farm_id": farm_id, "admin": is_admin}
    return await db.fetch_all(QUERIES[kind], params)
