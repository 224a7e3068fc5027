"""Stored AI recommendations per room."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from cloud.db.database import Database

INSERT = """
INSERT INTO recommendations (room_id, source, severity, title, reason, action)
VALUES (%(room_id)s, %(source)s, %(severity)s, %(title)s, %(reason)s, %(action)s)
RETURNING id, room_id, source, severity, title, reason, action, status, created_at"""
LIST = """
SELECT id, room_id, source, severity, title, reason, action, status, created_at FROM recommendations
WHERE room_id = %(room_id)s AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(after)s::bigint IS NULL OR id < %(after)s)
ORDER BY id DESC LIMIT %(limit)s"""


async def add(db: Database, room_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    async with db.transaction() as cur:
        for item in items:
            params = {**item, "room_id": room_id, "action": Jsonb(item.get("action"))}
            await cur.execute(INSERT, params)
            row = await cur.fetchone()
            assert row is not None
            out.append(row)
    return out


async def list_recommendations(
    db: Database, room_id: str, *, status: str | None, after: int | None, limit: int
) -> list[dict[str, Any]]:
    params = {"room_id": room_id, "status": status, "after": after, "limit": limit}
    return await db.fetch_all(LIST, params)
