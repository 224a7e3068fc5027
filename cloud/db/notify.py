"""Notification preferences, recipients, stored notifications and their deliveries by email or
webhook. Functions taking a cursor run inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloud.db.database import Cursor, Database

PREF_FIELDS = (
    "email_enabled",
    "email",
    "webhook_url",
    "webhook_secret",
    "min_severity",
    "quiet_start",
    "quiet_end",
    "timezone",
    "max_per_hour",
)
PREF_COLUMNS = ", ".join(PREF_FIELDS)
GET_PREFS = f"""
SELECT u.id AS user_id, u.email AS account_email, {", ".join("p." + f for f in PREF_FIELDS)},
       p.updated_at
FROM users u LEFT JOIN notification_preferences p ON p.user_id = u.id WHERE u.id = %(user_id)s"""  # noqa: S608 - constant column list
SET_PREFS = f"""
INSERT INTO notification_preferences (user_id, {PREF_COLUMNS})
VALUES (%(user_id)s, {", ".join(f"%({f})s" for f in PREF_FIELDS)})
ON CONFLICT (user_id) DO UPDATE SET
    {", ".join(f"{f} = excluded.{f}" for f in PREF_FIELDS)}, updated_at = now()"""  # noqa: S608
# Members who may see the room (an owner or an all-rooms member, or a grant for it).
RECIPIENTS = f"""
SELECT u.id AS user_id, u.email AS account_email, {", ".join("p." + f for f in PREF_FIELDS)}
FROM farm_members m
JOIN users u ON u.id = m.user_id AND u.is_active
LEFT JOIN notification_preferences p ON p.user_id = u.id
WHERE m.farm_id = %(farm_id)s
  AND (%(room_id)s::text IS NULL OR m.all_rooms OR EXISTS (
      SELECT 1 FROM member_room_grants g
      WHERE g.farm_id = m.farm_id AND g.user_id = m.user_id AND g.room_id = %(room_id)s))
ORDER BY u.id"""  # noqa: S608
ADD_NOTIFICATION = """
INSERT INTO notifications (user_id, farm_id, room_id, kind, title, body, severity, episode_id)
SELECT %(user_id)s, f.id, r.id, %(kind)s, %(title)s, %(body)s, %(severity)s, %(episode_id)s
FROM farms f LEFT JOIN rooms r ON r.id = %(room_id)s AND r.farm_id = f.id
WHERE f.id = %(farm_id)s
RETURNING id, created_at"""
# What counts against the hourly cap: deliveries sent or about to be.
SENT_SINCE = """
SELECT count(*) AS n FROM notification_deliveries
WHERE user_id = %(user_id)s AND created_at >= %(since)s AND status IN ('pending', 'sent')"""
ADD_DELIVERY = """
INSERT INTO notification_deliveries (notification_id, user_id, channel, status, reason,
    not_before)
VALUES (%(notification_id)s, %(user_id)s, %(channel)s, %(status)s, %(reason)s, %(not_before)s)
RETURNING id"""
SET_JOB = "UPDATE notification_deliveries SET job_id = %(job_id)s WHERE id = %(id)s"
FOR_SEND = f"""
SELECT d.id, d.channel, d.status, d.attempts, d.not_before, d.user_id, n.id AS notification_id,
       n.kind, n.title, n.body, n.severity, n.farm_id, n.room_id, n.created_at,
       e.state AS episode_state, e.key AS episode_key, e.id AS episode_id,
       u.email AS account_email, {", ".join("p." + f for f in PREF_FIELDS)}
FROM notification_deliveries d
JOIN notifications n ON n.id = d.notification_id
JOIN users u ON u.id = d.user_id
LEFT JOIN notification_preferences p ON p.user_id = d.user_id
LEFT JOIN alert_episodes e ON e.id = n.episode_id
WHERE d.id = %(id)s"""  # noqa: S608
FINISH = """
UPDATE notification_deliveries SET status = %(status)s, reason = coalesce(%(reason)s, reason),
    last_error = %(error)s, attempts = attempts + %(tried)s,
    sent_at = CASE WHEN %(status)s = 'sent' THEN now() ELSE sent_at END
WHERE id = %(id)s AND status = 'pending'"""
TRIED = """
UPDATE notification_deliveries SET attempts = attempts + 1, last_error = %(error)s
WHERE id = %(id)s"""
# Pending deliveries whose job is gone (deleted, or never queued): queued again by the sweep.
ORPHANS = """
SELECT d.id, d.not_before FROM notification_deliveries d
WHERE d.status = 'pending' AND d.created_at < %(before)s
  AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j
                  WHERE j.id = d.job_id AND j.status IN ('todo', 'doing'))
ORDER BY d.id LIMIT 100"""
UNREAD = "SELECT count(*) AS n FROM notifications WHERE user_id = %(user_id)s AND read_at IS NULL"
DELIVERIES = """
SELECT id, notification_id, channel, status, reason, attempts, last_error, not_before, created_at,
       sent_at
FROM notification_deliveries WHERE user_id = %(user_id)s
  AND (%(after)s::bigint IS NULL OR id < %(after)s)
ORDER BY id DESC LIMIT %(limit)s"""


async def preferences(db: Database, user_id: int) -> dict[str, Any] | None:
    return await db.fetch_one(GET_PREFS, {"user_id": user_id})


async def set_preferences(db: Database, user_id: int, values: dict[str, Any]) -> None:
    await db.execute(SET_PREFS, {"user_id": user_id, **{f: values.get(f) for f in PREF_FIELDS}})


async def recipients(cur: Cursor, farm_id: str, room_id: str | None) -> list[dict[str, Any]]:
    await cur.execute(RECIPIENTS, {"farm_id": farm_id, "room_id": room_id})
    return await cur.fetchall()


async def add_notification(cur: Cursor, **fields: Any) -> dict[str, Any] | None:
    """None when the farm is gone."""
    await cur.execute(ADD_NOTIFICATION, fields)
    return await cur.fetchone()


async def sent_since(cur: Cursor, user_id: int, since: datetime) -> int:
    await cur.execute(SENT_SINCE, {"user_id": user_id, "since": since})
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def add_delivery(cur: Cursor, **fields: Any) -> int:
    await cur.execute(ADD_DELIVERY, fields)
    row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


async def set_job(cur: Cursor, delivery_id: int, job_id: int | None) -> None:
    await cur.execute(SET_JOB, {"id": delivery_id, "job_id": job_id})


async def for_send(db: Database, delivery_id: int) -> dict[str, Any] | None:
    return await db.fetch_one(FOR_SEND, {"id": delivery_id})


async def finish(
    db: Database,
    delivery_id: int,
    *,
    status: str,
    error: str | None = None,
    reason: str | None = None,
    tried: int = 1,
) -> bool:
    params = {
        "id": delivery_id,
        "status": status,
        "error": error,
        "reason": reason,
        "tried": tried,
    }
    return await db.execute(FINISH, params) > 0


async def tried(db: Database, delivery_id: int, error: str) -> None:
    await db.execute(TRIED, {"id": delivery_id, "error": error})


async def orphans(db: Database, *, before: datetime) -> list[dict[str, Any]]:
    return await db.fetch_all(ORPHANS, {"before": before})


async def unread_count(db: Database, user_id: int) -> int:
    row = await db.fetch_one(UNREAD, {"user_id": user_id})
    return int(row["n"]) if row else 0


async def deliveries(
    db: Database, user_id: int, *, after: int | None, limit: int
) -> list[dict[str, Any]]:
    return await db.fetch_all(DELIVERIES, {"user_id": user_id, "after": after, "limit": limit})
