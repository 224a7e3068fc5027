"""A room's grow logbook (migration 0014): notes, batches and stage changes from
``room_logbook``, read beside the room's harvests (which stay in ``harvests``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from cloud.db.database import Database

ENTRIES = """
WITH entries AS (
    SELECT 'log-' || l.id AS id, l.kind, l.at, l.title, l.text, l.stage, NULL::float8 AS weight_kg,
        NULL::int AS flush, l.details, l.created_by AS user_id, l.origin
    FROM room_logbook l
    WHERE l.farm_id = %(farm_id)s AND l.room_id = %(room_id)s
      AND (%(from)s::timestamptz IS NULL OR l.at >= %(from)s)
      AND (%(to)s::timestamptz IS NULL OR l.at < %(to)s)
      AND (%(kinds)s::text[] IS NULL OR l.kind = ANY(%(kinds)s))
    UNION ALL
    SELECT 'harvest-' || h.id, 'harvest', h.harvested_at, '', h.note, NULL, h.weight_kg, h.flush,
        '{}'::jsonb, h.recorded_by, NULL
    FROM harvests h
    WHERE h.farm_id = %(farm_id)s AND h.room_id = %(room_id)s
      AND (%(from)s::timestamptz IS NULL OR h.harvested_at >= %(from)s)
      AND (%(to)s::timestamptz IS NULL OR h.harvested_at < %(to)s)
      AND (%(kinds)s::text[] IS NULL OR 'harvest' = ANY(%(kinds)s))
)
SELECT en.*, nullif(coalesce(nullif(u.display_name, ''), u.email), '') AS user_name,
    ed.name AS edge_name
FROM entries en
LEFT JOIN users u ON u.id = en.user_id
LEFT JOIN edges ed ON ed.farm_id = %(farm_id)s AND ed.id = en.origin
WHERE %(after_at)s::timestamptz IS NULL
   OR (%(desc)s AND (en.at, en.id) < (%(after_at)s, %(after_id)s))
   OR (NOT %(desc)s AND (en.at, en.id) > (%(after_at)s, %(after_id)s))
ORDER BY
    CASE WHEN %(desc)s THEN en.at END DESC, CASE WHEN %(desc)s THEN en.id END DESC,
    CASE WHEN NOT %(desc)s THEN en.at END ASC, CASE WHEN NOT %(desc)s THEN en.id END ASC
LIMIT %(limit)s"""
ADD = """
INSERT INTO room_logbook (farm_id, room_id, kind, at, title, text, details, created_by)
VALUES (%(farm_id)s, %(room_id)s, %(kind)s, coalesce(%(at)s, now()), %(title)s, %(text)s,
        %(details)s, %(user_id)s)
RETURNING id"""
DELETE_ENTRY = """
DELETE FROM room_logbook
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND id = %(id)s AND kind IN ('note', 'batch')
RETURNING id, kind"""
DELETE_HARVEST = """
DELETE FROM harvests WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND id = %(id)s
RETURNING id, weight_kg, flush"""
KIND_OF = """
SELECT kind FROM room_logbook
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND id = %(id)s"""


async def entries(
    db: Database,
    farm_id: str,
    room_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    kinds: list[str] | None,
    after: tuple[datetime, str] | None,
    newest_first: bool,
    limit: int,
) -> list[dict[str, Any]]:
    params = {
        "farm_id": farm_id,
        "room_id": room_id,
        "from": since,
        "to": until,
        "kinds": kinds,
        "after_at": after[0] if after else None,
        "after_id": after[1] if after else None,
        "desc": newest_first,
        "limit": limit,
    }
    return await db.fetch_all(ENTRIES, params)


async def add(
    db: Database,
    farm_id: str,
    room_id: str,
    *,
    kind: str,
    at: datetime | None,
    title: str,
    text: str,
    details: dict[str, Any],
    user_id: int,
) -> int:
    row = await db.fetch_one(
        ADD,
        {
            "farm_id": farm_id,
            "room_id": room_id,
            "kind": kind,
            "at": at,
            "title": title,
            "text": text,
            "details": Jsonb(details),
            "user_id": user_id,
        },
    )
    assert row is not None
    return int(row["id"])


async def one(db: Database, farm_id: str, room_id: str, entry_id: int) -> dict[str, Any] | None:
    """The entry ``log-{entry_id}`` as ``entries`` shows it."""
    rows = await db.fetch_all(
        ENTRIES.replace("WHERE l.farm_id", "WHERE l.id = %(id)s AND l.farm_id"),
        {
            "id": entry_id,
            "farm_id": farm_id,
            "room_id": room_id,
            "from": None,
            "to": None,
            "kinds": ["note", "batch", "stage"],
            "after_at": None,
            "after_id": None,
            "desc": False,
            "limit": 1,
        },
    )
    return rows[0] if rows else None


async def delete(
    db: Database, farm_id: str, room_id: str, kind: str, entry_id: int
) -> dict[str, Any] | None:
    """Remove a note or batch (``kind`` "log") or a harvest (``kind`` "harvest"): the removed
    row, or None when there is no such entry (or it is a stage change, which stays)."""
    params = {"farm_id": farm_id, "room_id": room_id, "id": entry_id}
    return await db.fetch_one(DELETE_HARVEST if kind == "harvest" else DELETE_ENTRY, params)


async def kind_of(db: Database, farm_id: str, room_id: str, entry_id: int) -> str | None:
    row = await db.fetch_one(KIND_OF, {"farm_id": farm_id, "room_id": room_id, "id": entry_id})
    return str(row["kind"]) if row else None
