"""The command audit: every switch of an actuator, whoever made it, with its outcome.

Two sources, read as one list: commands made in the cloud (``commands``: the user who made it,
its delivery state, and the edge's record of it for the device's ack time) and commands an
edge made on its own and uploaded (``edge_commands``: its automation, its local page, Home
Assistant through it, its start-up). An edge's copy of a cloud command is shown once, as the
cloud command.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloud.db.database import Database

# Each source is read newest first and cut at the page size before the two are merged, so a
# page costs two index scans, not a sort of the farm's whole history.
AUDIT = """
WITH cloud AS (
    SELECT 'c-' || c.id AS id, c.id AS command_id, c.room_id, c.device_id, c.action, c.value,
        c.created_at AS at, 'user' AS origin, c.created_by AS user_id, c.status AS outcome,
        c.error, c.edge_id, c.edge_command_id, c.updated_at, c.hold_minutes
    FROM commands c
    WHERE c.farm_id = %(farm_id)s
      AND (%(room_id)s::text IS NULL OR c.room_id = %(room_id)s)
      AND (%(device_id)s::text IS NULL OR c.device_id = %(device_id)s)
      AND (%(only)s::text[] IS NULL OR c.room_id = ANY(%(only)s))
      AND (%(from)s::timestamptz IS NULL OR c.created_at >= %(from)s)
      AND (%(to)s::timestamptz IS NULL OR c.created_at < %(to)s)
      AND (%(origin)s::text IS NULL OR %(origin)s = 'user')
      AND (%(outcome)s::text IS NULL OR c.status = %(outcome)s)
      AND (%(after_at)s::timestamptz IS NULL
           OR (c.created_at, 'c-' || c.id) < (%(after_at)s, %(after_id)s))
    ORDER BY c.created_at DESC, c.id DESC LIMIT %(limit)s
),
cloud_done AS (
    -- The edge's record of a cloud command: why it held and when the device answered.
    SELECT cl.id, cl.command_id, cl.room_id, cl.device_id, cl.action, cl.value, cl.at, cl.origin,
        cl.user_id, coalesce(e1.reason, e2.reason) AS reason, cl.outcome,
        coalesce(cl.error, e1.error, e2.error) AS error,
        coalesce(e1.acked_at, e2.acked_at,
                 CASE WHEN cl.outcome = 'acked' THEN cl.updated_at END) AS acked_at,
        cl.edge_id, cl.hold_minutes
    FROM cloud cl
    LEFT JOIN LATERAL (
        SELECT x.reason, x.error, x.acked_at FROM edge_commands x
        WHERE x.farm_id = %(farm_id)s AND x.cloud_command_id = cl.command_id
        ORDER BY x.acked_at DESC NULLS LAST LIMIT 1
    ) e1 ON true
    LEFT JOIN LATERAL (
        SELECT x.reason, x.error, x.acked_at FROM edge_commands x
        WHERE x.farm_id = %(farm_id)s AND x.edge_id = cl.edge_id
          AND x.command_id = cl.edge_command_id
    ) e2 ON true
),
edge AS (
    SELECT * FROM (
        SELECT 'e-' || x.edge_id || '-' || x.command_id AS id, x.command_id, x.room_id,
            x.device_id, x.action, x.value, x.created_at AS at,
            CASE WHEN x.source = 'automation' THEN 'automation'
                 WHEN x.source = 'boot' THEN 'edge_start'
                 WHEN x.source = 'cloud' THEN 'cloud'
                 WHEN x.reason LIKE 'manual by home-assistant%%' THEN 'home_assistant'
                 ELSE 'edge_page' END AS origin,
            NULL::bigint AS user_id, x.reason,
            CASE WHEN x.ack_status = 'error' THEN 'failed'
                 WHEN x.ack_status = 'ok' THEN 'acked'
                 WHEN x.state IN ('acked', 'failed', 'timed_out', 'superseded', 'expired')
                     THEN x.state
                 ELSE 'pending' END AS outcome,
            x.error, x.acked_at, x.edge_id,
            NULL::float8 AS hold_minutes  -- the edge's own holds: in its reason text
        FROM edge_commands x
        WHERE x.farm_id = %(farm_id)s AND x.cloud_command_id IS NULL
          AND x.created_at IS NOT NULL AND x.room_id IS NOT NULL AND x.device_id IS NOT NULL
          AND (%(room_id)s::text IS NULL OR x.room_id = %(room_id)s)
          AND (%(device_id)s::text IS NULL OR x.device_id = %(device_id)s)
          AND (%(only)s::text[] IS NULL OR x.room_id = ANY(%(only)s))
          AND (%(from)s::timestamptz IS NULL OR x.created_at >= %(from)s)
          AND (%(to)s::timestamptz IS NULL OR x.created_at < %(to)s)
          AND (%(after_at)s::timestamptz IS NULL OR x.created_at <= %(after_at)s)
    ) y
    WHERE (%(origin)s::text IS NULL OR y.origin = %(origin)s)
      AND (%(outcome)s::text IS NULL OR y.outcome = %(outcome)s)
      AND (%(after_at)s::timestamptz IS NULL OR (y.at, y.id) < (%(after_at)s, %(after_id)s))
    ORDER BY y.at DESC, y.id DESC LIMIT %(limit)s
),
entries AS (SELECT * FROM cloud_done UNION ALL SELECT * FROM edge)
SELECT en.*, r.name AS room_name, d.name AS device_name, d.actuator,
    nullif(coalesce(nullif(u.display_name, ''), u.email), '') AS user_name,
    ed.name AS edge_name
FROM entries en
LEFT JOIN rooms r ON r.farm_id = %(farm_id)s AND r.id = en.room_id
LEFT JOIN devices d ON d.farm_id = %(farm_id)s AND d.id = en.device_id
LEFT JOIN users u ON u.id = en.user_id
LEFT JOIN edges ed ON ed.farm_id = %(farm_id)s AND ed.id = en.edge_id
ORDER BY en.at DESC, en.id DESC LIMIT %(limit)s"""


async def entries(
    db: Database,
    farm_id: str,
    *,
    room_id: str | None = None,
    device_id: str | None = None,
    only: list[str] | None = None,
    origin: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest first; ``only`` keeps the rooms a room-limited member may see."""
    params = {
        "farm_id": farm_id,
        "room_id": room_id,
        "device_id": device_id,
        "only": only,
        "origin": origin,
        "outcome": outcome,
        "from": since,
        "to": until,
        "after_at": after[0] if after else None,
        "after_id": after[1] if after else None,
        "limit": limit,
    }
    return await db.fetch_all(AUDIT, params)
