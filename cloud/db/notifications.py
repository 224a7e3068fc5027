"""Per-user notifications and the health of their email and webhook channels; every query is
keyed by the user, so one never sees another's."""

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
HEALTH = """
SELECT channel, failures, last_error, last_error_at, last_success_at
FROM notification_channel_health WHERE user_id = %(user_id)s"""
CHANNEL_FAILED = """
INSERT INTO notification_channel_health AS h (user_id, channel, failures, last_error,
    last_error_at)
VALUES (%(user_id)s, %(channel)s, 1, %(error)s, now())
ON CONFLICT (user_id, channel) DO UPDATE SET failures = h.failures + 1,
    last_error = excluded.last_error, last_error_at = excluded.last_error_at
RETURNING failures"""
# A write only when something changes (a success after failures, or the first of the minute).
CHANNEL_OK = """
INSERT INTO notification_channel_health AS h (user_id, channel, last_success_at)
VALUES (%(user_id)s, %(channel)s, now())
ON CONFLICT (user_id, channel) DO UPDATE SET failures = 0, last_success_at = now()
WHERE h.failures > 0 OR h.last_success_at IS NULL
   OR h.last_success_at < now() - interval '1 minute'"""
CHANNEL_RESET = """
DELETE FROM notification_channel_health WHERE user_id = %(user_id)s AND channel = %(channel)s"""
MAX_ERROR = 500


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


async def channel_health(db: Database, user_id: int) -> dict[str, dict[str, Any]]:
    """Per channel (``email``, ``webhook``) that ever delivered or failed: its health row."""
    return {r["channel"]: r for r in await db.fetch_all(HEALTH, {"user_id": user_id})}


async def channel_failed(db: Database, user_id: int, channel: str, error: str) -> int:
    """Count a delivery that failed for good; the failures in a row now."""
    params = {"user_id": user_id, "channel": channel, "error": error[:MAX_ERROR]}
    row = await db.fetch_one(CHANNEL_FAILED, params)
    assert row is not None
    return int(row["failures"])


async def channel_ok(db: Database, user_id: int, channel: str) -> None:
    await db.execute(CHANNEL_OK, {"user_id": user_id, "channel": channel})


async def reset_channel(db: Database, user_id: int, channel: str) -> None:
    """Forget a channel's failures (its target changed)."""
    await db.execute(CHANNEL_RESET, {"user_id": user_id, "channel": channel})
