"""Alert events (every start and end of an alert, from edges or cloud checks) and the episodes
they fold into. Functions taking a cursor run inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloud.db.database import Cursor, Database

EPISODE_COLUMNS = """id, farm_id, source, key, kind, severity, message, room_id, device_id, state,
    started_at, last_at, resolved_at, reminders, notified, next_notice_at"""
ADD_EVENT = """
INSERT INTO alert_events (farm_id, source, key, kind, severity, message, room_id, device_id,
    state, at)
VALUES (%(farm_id)s, %(source)s, %(key)s, %(kind)s, %(severity)s, %(message)s, %(room_id)s,
        %(device_id)s, %(state)s, coalesce(%(at)s, now()))
RETURNING id"""
# Several workers may sweep at once: each takes events no other holds, in order.
CLAIM = """
SELECT id, farm_id, source, key, kind, severity, message, room_id, device_id, state, at
FROM alert_events WHERE processed_at IS NULL ORDER BY id LIMIT %(limit)s
FOR UPDATE SKIP LOCKED"""
PROCESSED = "UPDATE alert_events SET processed_at = now() WHERE id = %(id)s"
ACTIVE = f"""
SELECT {EPISODE_COLUMNS} FROM alert_episodes
WHERE farm_id = %(farm_id)s AND source = %(source)s AND key = %(key)s AND state = 'active'
FOR UPDATE"""  # noqa: S608 - constant column list
# A resolved episode whose "resolved" was not sent yet (or never needed): it may reopen. One an
# operator cleared stays closed: the condition coming back is a new alarm.
RECENT = f"""
SELECT {EPISODE_COLUMNS} FROM alert_episodes
WHERE farm_id = %(farm_id)s AND source = %(source)s AND key = %(key)s AND state = 'resolved'
  AND resolved_at >= %(since)s AND (next_notice_at IS NOT NULL OR NOT notified)
  AND cleared_by IS NULL
ORDER BY resolved_at DESC LIMIT 1 FOR UPDATE"""  # noqa: S608
CREATE = f"""
INSERT INTO alert_episodes (farm_id, source, key, kind, severity, message, room_id, device_id,
    state, started_at, last_at)
VALUES (%(farm_id)s, %(source)s, %(key)s, %(kind)s, %(severity)s, %(message)s, %(room_id)s,
        %(device_id)s, 'active', %(at)s, %(at)s)
RETURNING {EPISODE_COLUMNS}"""  # noqa: S608
TOUCH = f"""
UPDATE alert_episodes SET message = %(message)s, severity = %(severity)s,
    last_at = greatest(last_at, %(at)s)
WHERE id = %(id)s RETURNING {EPISODE_COLUMNS}"""  # noqa: S608
REOPEN = f"""
UPDATE alert_episodes SET state = 'active', resolved_at = NULL, message = %(message)s,
    severity = %(severity)s, last_at = greatest(last_at, %(at)s)
WHERE id = %(id)s RETURNING {EPISODE_COLUMNS}"""  # noqa: S608
RESOLVE = f"""
UPDATE alert_episodes SET state = 'resolved', resolved_at = %(at)s,
    last_at = greatest(last_at, %(at)s)
WHERE id = %(id)s RETURNING {EPISODE_COLUMNS}"""  # noqa: S608
SCHEDULE = """
UPDATE alert_episodes SET notified = notified OR %(notified)s, next_notice_at = %(next)s,
    reminders = reminders + %(reminded)s
WHERE id = %(id)s"""
DUE = f"""
SELECT {EPISODE_COLUMNS} FROM alert_episodes
WHERE next_notice_at <= %(now)s ORDER BY next_notice_at
LIMIT %(limit)s FOR UPDATE SKIP LOCKED"""  # noqa: S608
LIST = f"""
SELECT {EPISODE_COLUMNS} FROM alert_episodes
WHERE farm_id = %(farm_id)s AND (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(only)s::text[] IS NULL OR room_id IS NULL OR room_id = ANY(%(only)s))
  AND (%(after)s::bigint IS NULL OR id < %(after)s)
ORDER BY id DESC LIMIT %(limit)s"""  # noqa: S608
ACTIVE_KEYS = """
SELECT farm_id, key FROM alert_episodes WHERE source = %(source)s AND state = 'active'
UNION
SELECT DISTINCT ON (farm_id, key) farm_id, key FROM alert_events
WHERE source = %(source)s AND processed_at IS NULL AND state = 'active'"""


async def add_event(
    db: Database | Cursor,
    *,
    farm_id: str,
    source: str,
    key: str,
    kind: str,
    severity: str,
    message: str,
    state: str,
    room_id: str | None = None,
    device_id: str | None = None,
    at: datetime | None = None,
) -> int:
    params = {
        "farm_id": farm_id,
        "source": source,
        "key": key,
        "kind": kind,
        "severity": severity,
        "message": message,
        "room_id": room_id,
        "device_id": device_id,
        "state": state,
        "at": at,
    }
    if isinstance(db, Database):
        row = await db.fetch_one(ADD_EVENT, params)
    else:
        await db.execute(ADD_EVENT, params)
        row = await db.fetchone()
    assert row is not None
    return int(row["id"])


async def claim_events(cur: Cursor, *, limit: int) -> list[dict[str, Any]]:
    await cur.execute(CLAIM, {"limit": limit})
    return await cur.fetchall()


async def processed(cur: Cursor, event_id: int) -> None:
    await cur.execute(PROCESSED, {"id": event_id})


async def _one(cur: Cursor, query: str, params: dict[str, Any]) -> dict[str, Any] | None:
    await cur.execute(query, params)
    return await cur.fetchone()


async def active(cur: Cursor, farm_id: str, source: str, key: str) -> dict[str, Any] | None:
    return await _one(cur, ACTIVE, {"farm_id": farm_id, "source": source, "key": key})


async def recently_resolved(
    cur: Cursor, farm_id: str, source: str, key: str, *, since: datetime
) -> dict[str, Any] | None:
    params = {"farm_id": farm_id, "source": source, "key": key, "since": since}
    return await _one(cur, RECENT, params)


async def create(cur: Cursor, event: dict[str, Any], **fields: Any) -> dict[str, Any]:
    row = await _one(cur, CREATE, {**event, **fields})
    assert row is not None
    return row


async def touch(cur: Cursor, episode_id: int, event: dict[str, Any]) -> dict[str, Any]:
    row = await _one(cur, TOUCH, {**event, "id": episode_id})
    assert row is not None
    return row


async def reopen(cur: Cursor, episode_id: int, event: dict[str, Any]) -> dict[str, Any]:
    row = await _one(cur, REOPEN, {**event, "id": episode_id})
    assert row is not None
    return row


async def resolve(cur: Cursor, episode_id: int, at: datetime) -> dict[str, Any]:
    row = await _one(cur, RESOLVE, {"id": episode_id, "at": at})
    assert row is not None
    return row


async def due(cur: Cursor, *, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Episodes with a notice due (reminder or "resolved"), locked for this transaction."""
    await cur.execute(DUE, {"now": now, "limit": limit})
    return await cur.fetchall()


async def schedule(
    cur: Cursor,
    episode_id: int,
    *,
    next_at: datetime | None,
    notified: bool = False,
    reminded: bool = False,
) -> None:
    params = {"id": episode_id, "next": next_at, "notified": notified, "reminded": int(reminded)}
    await cur.execute(SCHEDULE, params)


async def list_episodes(
    db: Database,
    farm_id: str,
    *,
    state: str | None,
    only: list[str] | None,
    after: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """``only``: the rooms a room-limited member may see (farm-wide alerts are always shown)."""
    params = {"farm_id": farm_id, "state": state, "only": only, "after": after, "limit": limit}
    return await db.fetch_all(LIST, params)


async def active_keys(db: Database, source: str) -> set[tuple[str, str]]:
    """(farm, key) of the source's alerts that are active or about to be."""
    return {(r["farm_id"], r["key"]) for r in await db.fetch_all(ACTIVE_KEYS, {"source": source})}
