"""Automation rules per room; the body is a validated ``shared.rules.Rule`` as JSON."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from cloud.db.database import Database

LIST = """
SELECT room_id, id, body, version, created_at, updated_at FROM automation_rules
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND (%(after)s::text IS NULL OR id > %(after)s)
ORDER BY id LIMIT %(limit)s"""
GET = """
SELECT room_id, id, body, version, created_at, updated_at FROM automation_rules
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND id = %(id)s"""
CREATE = """
INSERT INTO automation_rules (farm_id, room_id, id, body, updated_by)
VALUES (%(farm_id)s, %(room_id)s, %(id)s, %(body)s, %(user_id)s)
RETURNING room_id, id, body, version, created_at, updated_at"""
# Optimistic concurrency: an update names the version it read (or none to overwrite).
UPDATE = """
UPDATE automation_rules SET body = %(body)s, version = version + 1, updated_by = %(user_id)s,
    updated_at = now()
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND id = %(id)s
  AND (%(version)s::integer IS NULL OR version = %(version)s)
RETURNING room_id, id, body, version, created_at, updated_at"""
DELETE = """
DELETE FROM automation_rules
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND id = %(id)s"""
UPSERT = """
INSERT INTO automation_rules (farm_id, room_id, id, body)
VALUES (%(farm_id)s, %(room_id)s, %(id)s, %(body)s)
ON CONFLICT (farm_id, room_id, id) DO NOTHING
RETURNING room_id, id, body, version, created_at, updated_at"""


async def list_rules(
    db: Database, farm_id: str, room_id: str, *, after: str | None, limit: int
) -> list[dict[str, Any]]:
    params = {"farm_id": farm_id, "room_id": room_id, "after": after, "limit": limit}
    return await db.fetch_all(LIST, params)


async def get(db: Database, farm_id: str, room_id: str, rule_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(GET, {"farm_id": farm_id, "room_id": room_id, "id": rule_id})


async def create(
    db: Database,
    farm_id: str,
    room_id: str,
    rule_id: str,
    body: dict[str, Any],
    user_id: int | None,
) -> dict[str, Any]:
    params = {
        "farm_id": farm_id,
        "room_id": room_id,
        "id": rule_id,
        "body": Jsonb(body),
        "user_id": user_id,
    }
    row = await db.fetch_one(CREATE, params)
    assert row is not None
    return row


async def ensure(
    db: Database, farm_id: str, room_id: str, rule_id: str, body: dict[str, Any]
) -> bool:
    """Insert unless present (seeding); True when inserted."""
    params = {"farm_id": farm_id, "room_id": room_id, "id": rule_id, "body": Jsonb(body)}
    return await db.fetch_one(UPSERT, params) is not None


async def update(
    db: Database,
    farm_id: str,
    room_id: str,
    rule_id: str,
    body: dict[str, Any],
    *,
    version: int | None,
    user_id: int | None,
) -> dict[str, Any] | None:
    params = {
        "farm_id": farm_id,
        "room_id": room_id,
        "id": rule_id,
        "body": Jsonb(body),
        "version": version,
        "user_id": user_id,
    }
    return await db.fetch_one(UPDATE, params)


async def delete(db: Database, farm_id: str, room_id: str, rule_id: str) -> bool:
    params = {"farm_id": farm_id, "room_id": room_id, "id": rule_id}
    return await db.execute(DELETE, params) > 0
