"""Farms and their members (roles and room grants)."""

from __future__ import annotations

from typing import Any

from cloud.db.database import Database
from cloud.errors import Conflict, ValidationFailed

LIST_FOR_USER = """
SELECT f.id, f.name, f.timezone, f.created_at, m.role FROM farms f JOIN farm_members m ON
    m.farm_id = f.id
WHERE m.user_id = %(user_id)s AND (%(after)s::text IS NULL OR f.id > %(after)s)
ORDER BY f.id LIMIT %(limit)s"""
# Site admins see every farm, as owners.
LIST_ALL = """
SELECT f.id, f.name, f.timezone, f.created_at, 'owner' AS role FROM farms f
WHERE (%(after)s::text IS NULL OR f.id > %(after)s) ORDER BY f.id LIMIT %(limit)s"""
GET = "SELECT f.id, f.name, f.timezone, f.created_at FROM farms f WHERE f.id = %(id)s"
CREATE = """
WITH farm AS (
    INSERT INTO farms (id, name, timezone, created_by)
    VALUES (%(id)s, %(name)s, %(timezone)s, %(user_id)s)
    RETURNING id, name, timezone, created_at
), owner AS (
    INSERT INTO farm_members (farm_id, user_id, role) SELECT id, %(user_id)s, 'owner' FROM farm
)
SELECT farm.*, 'owner' AS role FROM farm"""
UPDATE = """
UPDATE farms SET name = coalesce(%(name)s, name), timezone = coalesce(%(timezone)s, timezone)
WHERE id = %(id)s RETURNING id, name, timezone, created_at"""
DELETE = "DELETE FROM farms WHERE id = %(id)s"

LIST_MEMBERS = """
SELECT
    m.user_id, u.email, u.display_name, m.role, m.all_rooms, m.created_at,
    (u.password_hash IS NOT NULL OR u.cognito_sub IS NOT NULL) AS activated,
    CASE WHEN m.all_rooms THEN NULL ELSE coalesce(
        (SELECT array_agg(g.room_id ORDER BY g.room_id) FROM member_room_grants g
         WHERE g.farm_id = m.farm_id AND g.user_id = m.user_id), '{}') END AS room_ids FROM
    farm_members m JOIN users u ON u.id = m.user_id
WHERE m.farm_id = %(farm_id)s AND (%(after)s::bigint IS NULL OR m.user_id > %(after)s)
ORDER BY m.user_id LIMIT %(limit)s"""
GET_MEMBER = """
SELECT
    m.user_id, u.email, u.display_name, m.role, m.all_rooms, m.created_at,
    (u.password_hash IS NOT NULL OR u.cognito_sub IS NOT NULL) AS activated,
    CASE WHEN m.all_rooms THEN NULL ELSE coalesce(
        (SELECT array_agg(g.room_id ORDER BY g.room_id) FROM member_room_grants g
         WHERE g.farm_id = m.farm_id AND g.user_id = m.user_id), '{}') END AS room_ids FROM
    farm_members m JOIN users u ON u.id = m.user_id
WHERE m.farm_id = %(farm_id)s AND m.user_id = %(user_id)s"""
UPSERT_MEMBER = """
INSERT INTO farm_members (farm_id, user_id, role, all_rooms)
VALUES (%(farm_id)s, %(user_id)s, %(role)s, %(all_rooms)s)
ON CONFLICT (farm_id, user_id) DO UPDATE SET role = excluded.role, all_rooms = excluded.all_rooms"""
INSERT_MEMBER = """
INSERT INTO farm_members (farm_id, user_id, role, all_rooms)
VALUES (%(farm_id)s, %(user_id)s, %(role)s, %(all_rooms)s)"""
CLEAR_GRANTS = """
DELETE FROM member_room_grants WHERE farm_id = %(farm_id)s AND user_id = %(user_id)s"""
# Only rooms of this farm can be granted; unknown ids are reported by the caller.
ADD_GRANTS = """
INSERT INTO member_room_grants (farm_id, user_id, room_id)
SELECT %(farm_id)s, %(user_id)s, r.id FROM rooms r
WHERE r.farm_id = %(farm_id)s AND r.id = ANY(%(room_ids)s)
RETURNING room_id"""
DELETE_MEMBER = "DELETE FROM farm_members WHERE farm_id = %(farm_id)s AND user_id = %(user_id)s"
# Locks the farm's owner rows so two concurrent demotions cannot leave a farm without an owner.
OWNERS = """
SELECT user_id FROM farm_members WHERE farm_id = %(farm_id)s AND role = 'owner' FOR UPDATE"""


async def list_for_user(
    db: Database, user_id: int, *, is_admin: bool, after: str | None, limit: int
) -> list[dict[str, Any]]:
    query = LIST_ALL if is_admin else LIST_FOR_USER
    return await db.fetch_all(query, {"user_id": user_id, "after": after, "limit": limit})


async def get(db: Database, farm_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(GET, {"id": farm_id})


async def create(
    db: Database, *, farm_id: str, name: str, timezone: str, user_id: int
) -> dict[str, Any]:
    row = await db.fetch_one(
        CREATE, {"id": farm_id, "name": name, "timezone": timezone, "user_id": user_id}
    )
    assert row is not None
    return row


async def update(
    db: Database, farm_id: str, *, name: str | None, timezone: str | None
) -> dict[str, Any] | None:
    return await db.fetch_one(UPDATE, {"id": farm_id, "name": name, "timezone": timezone})


async def delete(db: Database, farm_id: str) -> bool:
    return await db.execute(DELETE, {"id": farm_id}) > 0


async def list_members(
    db: Database, farm_id: str, *, after: int | None, limit: int
) -> list[dict[str, Any]]:
    return await db.fetch_all(LIST_MEMBERS, {"farm_id": farm_id, "after": after, "limit": limit})


async def get_member(db: Database, farm_id: str, user_id: int) -> dict[str, Any] | None:
    return await db.fetch_one(GET_MEMBER, {"farm_id": farm_id, "user_id": user_id})


async def set_member(
    db: Database,
    farm_id: str,
    user_id: int,
    *,
    role: str,
    room_ids: list[str] | None,
    create_only: bool = False,
) -> None:
    """Add or change a membership and its room grants, all or nothing."""
    params = {"farm_id": farm_id, "user_id": user_id, "role": role, "all_rooms": room_ids is None}
    async with db.transaction() as cur:
        await cur.execute(OWNERS, {"farm_id": farm_id})
        owners = {r["user_id"] for r in await cur.fetchall()}
        if owners == {user_id} and role != "owner":
            raise Conflict("a farm needs at least one owner")
        await cur.execute(INSERT_MEMBER if create_only else UPSERT_MEMBER, params)
        await cur.execute(CLEAR_GRANTS, params)
        if room_ids:
            await cur.execute(ADD_GRANTS, {**params, "room_ids": room_ids})
            unknown = set(room_ids) - {r["room_id"] for r in await cur.fetchall()}
            if unknown:
                # Raising inside the transaction rolls the membership change back.
                message = f"not rooms of this farm: {', '.join(sorted(unknown)[:5])}"
                raise ValidationFailed(
                    [{"field": "body.room_ids", "message": message, "type": "value_error"}]
                )


async def remove_member(db: Database, farm_id: str, user_id: int) -> bool:
    async with db.transaction() as cur:
        await cur.execute(OWNERS, {"farm_id": farm_id})
        owners = {r["user_id"] for r in await cur.fetchall()}
        if owners == {user_id}:
            raise Conflict("a farm needs at least one owner")
        await cur.execute(DELETE_MEMBER, {"farm_id": farm_id, "user_id": user_id})
        return cur.rowcount > 0
