"""Per-user notifications; every query is keyed by the user, so one never sees another's."""

from __future__ import annotations

from typing import Any

from cloud.db.database import Database

LIST = """
SELECT id, farm_id, room_id, kind, title, body, read_at, created_at FROM notifications
WHERE user_id = %(user_id)s AND (NOT %(unread)s OR read_at IS NULL)
  AND (%(after)s::bigint IS NULL OR id < %(after)s)
ORDER BY id DESC LIMIT %(limit)s"""
MARK_READ = """
UPDATE notifications SET read_at = coalesce(read_at, now())
WHERE user_id = %(user_id)s AND id = %(id)s RETURNING id, farm_id, room_id, kind, title, body,
    read_at, created_at"""
MARK_ALL = """
UPDATE notifications SET read_at = now() WHERE user_id = %(user_id)s AND read_at IS NULL"""
INSERT = """
INSERT INTO notifications (user_id, farm_id, room_id, kind, title, body)
VALUES (%(user_id)s, %(farm_id)s, %(room_id)s, %(kind)s, %(title)s, %(body)s) RETURNING id,
    farm_id, room_id, kind, title, body, read_at, created_at"""


async def list_notifications(
    db: Database, user_id: int, *, unread: bool, after: int | None, limit: int
) -> list[dict[str, Any]]:
    params = {"user_id": user_id, "unread": unread, "after": after, "limit": limit}
    return await db.fetch_all(LIST, params)


async def mark_read(db: Database, user_id: int, notification_id: int) -> dict[str, Any] | None:
    return await db.fetch_one(MARK_READ, {"user_id": user_id, "id": notification_id})


async def mark_all_read(db: Database, user_id: int) -> int:
    return await db.execute(MARK_ALL, {"user_id": user_id})


async def add(
    db: Database,
    *,
    user_id: int,
    kind: str,
    title: str,
    body: str = "",
    farm_id: str | None = None,
    room_id: str | None = None,
) -> dict[str, Any]:
    params = {
        "user_id": user_id,
        "kind": kind,
        "title": title,
        "body": body,
        "farm_id": farm_id,
        "room_id": room_id,
    }
    row = await db.fetch_one(INSERT, params)
    assert row is not None
    return row
