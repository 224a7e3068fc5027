"""Alarms as people handle them: alert episodes with who acknowledged or cleared them, the
history with its filters, and the acknowledge and clear writes (migration 0014)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloud.db.database import Database

ALARM_COLUMNS = """e.id, e.farm_id, e.source, e.key, e.kind, e.severity, e.message, e.room_id,
    e.device_id, e.state, e.started_at, e.last_at, e.resolved_at, e.reminders, e.notified,
    e.acknowledged_at, e.ack_note, e.clear_note, e.cleared_by IS NOT NULL AS cleared_by_operator,
    CASE WHEN e.state = 'resolved' THEN 'cleared'
         WHEN e.acknowledged_at IS NOT NULL THEN 'acknowledged' ELSE 'active' END AS status,
    r.name AS room_name, d.name AS device_name,
    nullif(coalesce(nullif(ua.display_name, ''), ua.email), '') AS acknowledged_by,
    nullif(coalesce(nullif(uc.display_name, ''), uc.email), '') AS cleared_by"""
FROM = """
FROM alert_episodes e
LEFT JOIN rooms r ON r.farm_id = e.farm_id AND r.id = e.room_id
LEFT JOIN devices d ON d.farm_id = e.farm_id AND d.id = e.device_id
LEFT JOIN users ua ON ua.id = e.acknowledged_by
LEFT JOIN users uc ON uc.id = e.cleared_by"""
LIST = f"""
SELECT {ALARM_COLUMNS} {FROM}
WHERE e.farm_id = %(farm_id)s
  AND (%(only)s::text[] IS NULL OR e.room_id IS NULL OR e.room_id = ANY(%(only)s))
  AND (%(room_id)s::text IS NULL OR e.room_id = %(room_id)s)
  AND (%(severity)s::text[] IS NULL OR e.severity = ANY(%(severity)s))
  AND (%(kind)s::text IS NULL OR e.kind = %(kind)s)
  AND (%(status)s::text IS NULL
       OR (%(status)s = 'open' AND e.state = 'active')
       OR (%(status)s = 'active' AND e.state = 'active' AND e.acknowledged_at IS NULL)
       OR (%(status)s = 'acknowledged' AND e.state = 'active' AND e.acknowledged_at IS NOT NULL)
       OR (%(status)s = 'unacknowledged' AND e.acknowledged_at IS NULL)
       OR (%(status)s = 'cleared' AND e.state = 'resolved'))
  AND (%(state)s::text IS NULL OR e.state = %(state)s)
  AND (%(to)s::timestamptz IS NULL OR e.started_at < %(to)s)
  AND (%(from)s::timestamptz IS NULL OR e.resolved_at IS NULL OR e.resolved_at >= %(from)s)
  AND (%(after)s::bigint IS NULL OR e.id < %(after)s)
ORDER BY e.id DESC LIMIT %(limit)s"""
GET = f"""
SELECT {ALARM_COLUMNS} {FROM}
WHERE e.farm_id = %(farm_id)s AND e.id = %(id)s"""
COUNTS = """
SELECT count(*) FILTER (WHERE state = 'active' AND acknowledged_at IS NULL) AS unacknowledged,
       count(*) FILTER (WHERE state = 'active' AND acknowledged_at IS NULL
                          AND severity = 'critical') AS critical,
       count(*) FILTER (WHERE state = 'active') AS open
FROM alert_episodes
WHERE farm_id = %(farm_id)s
  AND (%(only)s::text[] IS NULL OR room_id IS NULL OR room_id = ANY(%(only)s))
  AND (%(room_id)s::text IS NULL OR room_id = %(room_id)s)"""
# Acknowledging stops the reminders: someone is on it. Its end is still announced.
ACKNOWLEDGE = """
UPDATE alert_episodes SET acknowledged_at = now(), acknowledged_by = %(user_id)s,
    ack_note = %(note)s,
    next_notice_at = CASE WHEN state = 'active' THEN NULL ELSE next_notice_at END
WHERE farm_id = %(farm_id)s AND id = %(id)s AND acknowledged_at IS NULL"""
# Cleared by hand: closed now, without a "resolved" notice; if the condition comes back it is a
# new alarm (alerts.RECENT never reopens an episode an operator cleared).
CLEAR = """
UPDATE alert_episodes SET state = 'resolved', resolved_at = now(),
    last_at = greatest(last_at, now()), cleared_by = %(user_id)s, clear_note = %(note)s,
    next_notice_at = NULL
WHERE farm_id = %(farm_id)s AND id = %(id)s AND state = 'active'"""


async def history(
    db: Database,
    farm_id: str,
    *,
    only: list[str] | None,
    room_id: str | None = None,
    severity: list[str] | None = None,
    kind: str | None = None,
    status: str | None = None,
    state: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Episodes newest first; ``since``/``until`` keep those that overlap the span, ``only`` the
    rooms a room-limited member may see (farm-wide alarms are always shown)."""
    params = {
        "farm_id": farm_id,
        "only": only,
        "room_id": room_id,
        "severity": severity or None,
        "kind": kind,
        "status": status,
        "state": state,
        "from": since,
        "to": until,
        "after": after,
        "limit": limit,
    }
    return await db.fetch_all(LIST, params)


async def get(db: Database, farm_id: str, alarm_id: int) -> dict[str, Any] | None:
    return await db.fetch_one(GET, {"farm_id": farm_id, "id": alarm_id})


async def counts(
    db: Database, farm_id: str, *, only: list[str] | None, room_id: str | None
) -> dict[str, Any]:
    row = await db.fetch_one(COUNTS, {"farm_id": farm_id, "only": only, "room_id": room_id})
    assert row is not None
    return row


async def acknowledge(
    db: Database, farm_id: str, alarm_id: int, *, user_id: int, note: str
) -> bool:
    params = {"farm_id": farm_id, "id": alarm_id, "user_id": user_id, "note": note}
    return await db.execute(ACKNOWLEDGE, params) > 0


async def clear(db: Database, farm_id: str, alarm_id: int, *, user_id: int, note: str) -> bool:
    params = {"farm_id": farm_id, "id": alarm_id, "user_id": user_id, "note": note}
    return await db.execute(CLEAR, params) > 0
