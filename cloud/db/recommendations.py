"""Stored AI recommendations per room, and the runs (scheduled or requested) that made them.

A recommendation is keyed while open: a run refreshes the open one with the same source and key
instead of adding a duplicate, and marks ``resolved`` the open ones it no longer makes.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from cloud.db.database import Database

COLUMNS = """id, room_id, source, key, severity, title, reason, action, status, run_id, created_at,
    updated_at, decided_by, decided_at, applied"""
UPSERT = f"""
INSERT INTO recommendations AS r
    (farm_id, room_id, source, key, severity, title, reason, action, run_id)
VALUES (%(farm_id)s, %(room_id)s, %(source)s, %(key)s, %(severity)s, %(title)s, %(reason)s,
        %(action)s, %(run_id)s)
ON CONFLICT (farm_id, room_id, source, key) WHERE status = 'open' DO UPDATE SET
    severity = excluded.severity, title = excluded.title, reason = excluded.reason,
    action = excluded.action, run_id = excluded.run_id, updated_at = now()
RETURNING {COLUMNS}"""  # noqa: S608 - COLUMNS is a constant
RESOLVE_OTHERS = """
UPDATE recommendations SET status = 'resolved', updated_at = now()
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND source = %(source)s
  AND status = 'open' AND key IS NOT NULL
  AND NOT key = ANY(%(keys)s::text[])"""
LIST = f"""
SELECT {COLUMNS} FROM recommendations
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(after)s::bigint IS NULL OR id < %(after)s)
ORDER BY id DESC LIMIT %(limit)s"""  # noqa: S608
GET = f"""
SELECT {COLUMNS} FROM recommendations
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND id = %(id)s"""  # noqa: S608
DECIDE = f"""
UPDATE recommendations SET status = %(status)s, decided_by = %(user_id)s, decided_at = now(),
    updated_at = now(), applied = %(applied)s
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND id = %(id)s AND status = 'open'
RETURNING {COLUMNS}"""  # noqa: S608

START_RUN = """
INSERT INTO ai_runs (farm_id, room_id, provider, model, trigger, requested_by)
VALUES (%(farm_id)s, %(room_id)s, %(provider)s, %(model)s, %(trigger)s, %(requested_by)s)
RETURNING id"""
FINISH_RUN = """
UPDATE ai_runs SET status = %(status)s, attempts = %(attempts)s, input_tokens = %(input_tokens)s,
    output_tokens = %(output_tokens)s, recommendations = %(recommendations)s, error = %(error)s,
    finished_at = now()
WHERE id = %(id)s"""
RUNS = """
SELECT id, room_id, provider, model, trigger, requested_by, status, attempts, input_tokens,
       output_tokens, recommendations, error, started_at, finished_at
FROM ai_runs WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
ORDER BY id DESC LIMIT %(limit)s"""


async def store(
    db: Database,
    farm_id: str,
    room_id: str,
    *, source: str, run_id: int | None, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Upsert a run's suggestions by key and resolve the source's open ones it did not repeat."""
    out = []
    async with db.transaction() as cur:
        for item in items:
            params = {
                **item,
                "farm_id": farm_id,
                "room_id": room_id,
                "source": source,
                "run_id": run_id,
                "action": Jsonb(item["action"]) if item.get("action") is not None else None,
            }
            await cur.execute(UPSERT, params)
            row = await cur.fetchone()
            assert row is not None
            out.append(row)
        keys = [item["key"] for item in items]
        params = {"farm_id": farm_id, "room_id": room_id, "source": source, "keys": keys}
        await cur.execute(RESOLVE_OTHERS, params)
    return out


async def list_recommendations(
    db: Database,
    farm_id: str,
    room_id: str, *, status: str | None, after: int | None, limit: int
) -> list[dict[str, Any]]:
    params = {
        "farm_id": farm_id,
        "room_id": room_id,
        "status": status,
        "after": after,
        "limit": limit,
    }
    return await db.fetch_all(LIST, params)


async def get(
    db: Database, farm_id: str, room_id: str, recommendation_id: int
) -> dict[str, Any] | None:
    params = {"farm_id": farm_id, "room_id": room_id, "id": recommendation_id}
    return await db.fetch_one(GET, params)


async def decide(
    db: Database,
    farm_id: str,
    room_id: str,
    recommendation_id: int,
    *,
    status: str,
    user_id: int,
    applied: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Accept or dismiss an open recommendation; None when it is not open (any more)."""
    params = {
        "farm_id": farm_id,
        "room_id": room_id,
        "id": recommendation_id,
        "status": status,
        "user_id": user_id,
        "applied": Jsonb(applied) if applied is not None else None,
    }
    return await db.fetch_one(DECIDE, params)


async def start_run(
    db: Database,
    farm_id: str,
    room_id: str,
    *,
    provider: str,
    model: str | None,
    trigger: str,
    requested_by: int | None,
) -> int:
    row = await db.fetch_one(
        START_RUN,
        {
            "farm_id": farm_id,
            "room_id": room_id,
            "provider": provider,
            "model": model,
            "trigger": trigger,
            "requested_by": requested_by,
        },
    )
    assert row is not None
    return int(row["id"])


async def finish_run(
    db: Database,
    run_id: int,
    *,
    status: str,
    attempts: int,
    input_tokens: int | None,
    output_tokens: int | None,
    recommendations: int,
    error: str | None,
) -> None:
    await db.execute(
        FINISH_RUN,
        {
            "id": run_id,
            "status": status,
            "attempts": attempts,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "recommendations": recommendations,
            "error": error,
        },
    )


async def runs(
    db: Database, farm_id: str, room_id: str, *, limit: int = 20
) -> list[dict[str, Any]]:
    return await db.fetch_all(RUNS, {"farm_id": farm_id, "room_id": room_id, "limit": limit})
