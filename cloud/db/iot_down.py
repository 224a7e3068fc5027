"""Which edges are on AWS IoT, and the claims that make one cloud instance publish each pending
command and each config version on their commands topics (migration 0010)."""

from __future__ import annotations

from typing import Any

from cloud.db.database import Database

MARK = """
UPDATE edges SET iot_since = now()
WHERE farm_id = %(farm_id)s AND id = %(id)s AND iot_since IS NULL"""
UNMARK = """
UPDATE edges SET iot_since = NULL
WHERE farm_id = %(farm_id)s AND id = %(id)s AND iot_since IS NOT NULL"""
IOT_EDGES = """
SELECT id, farm_id FROM edges
WHERE iot_since IS NOT NULL AND (%(farm_id)s::text IS NULL OR farm_id = %(farm_id)s)
ORDER BY farm_id, id"""

# Pending, unexpired commands of these farms not published within `again` seconds (never, for a
# new one), marked published. Row locks with SKIP LOCKED, and the condition re-checked on the
# latest row version, let only one of several instances claim a command.
CLAIM_COMMANDS = """
WITH due AS (
    SELECT c.farm_id, c.id FROM commands c
    WHERE c.farm_id = ANY(%(farms)s) AND c.status = 'pending'
      AND c.created_at >= now() - make_interval(secs => %(ttl)s)
      AND (%(id)s::text IS NULL OR c.id = %(id)s)
      AND (c.iot_published_at IS NULL
           OR c.iot_published_at < now() - make_interval(secs => %(again)s))
    ORDER BY c.created_at, c.id LIMIT %(limit)s
    FOR UPDATE OF c SKIP LOCKED
)
UPDATE commands c SET iot_published_at = now()
FROM due
WHERE c.farm_id = due.farm_id AND c.id = due.id
RETURNING c.id, c.farm_id, c.room_id, c.device_id, c.action, c.value, c.hold_minutes,
    c.created_at, (SELECT coalesce(nullif(u.display_name, ''), u.email) FROM users u
                   WHERE u.id = c.created_by) AS by_name,
    -- the edge that serves the command's room (migration 0020): the only one it goes to
    (SELECT room_edge(r.farm_id, r.edge_id) FROM rooms r
     WHERE r.farm_id = c.farm_id AND r.id = c.room_id) AS serving_edge"""

# IoT edges of a farm that have neither applied nor been sent `version` (or were sent it longer
# than `again` seconds ago without applying it), marked as sent it.
CLAIM_CONFIG = """
UPDATE edges SET iot_config_version = %(version)s, iot_config_at = now()
WHERE farm_id = %(farm_id)s AND iot_since IS NOT NULL AND config_version < %(version)s
  AND (iot_config_version < %(version)s
       OR iot_config_at < now() - make_interval(secs => %(again)s))
RETURNING id, farm_id"""
# Farms with an IoT edge that needs the farm's config (or `version` of the farm named): neither
# applied nor sent, or sent longer than `again` seconds ago and still not applied.
NEEDS_CONFIG = """
SELECT DISTINCT e.farm_id FROM edges e JOIN farm_config fc ON fc.farm_id = e.farm_id
WHERE e.iot_since IS NOT NULL
  AND (%(farm_id)s::text IS NULL OR e.farm_id = %(farm_id)s)
  AND e.config_version < coalesce(%(version)s, fc.version)
  AND (e.iot_config_version < coalesce(%(version)s, fc.version)
       OR e.iot_config_at < now() - make_interval(secs => %(again)s))
ORDER BY e.farm_id"""


async def note_transport(db: Database, farm_id: str, edge_id: str, *, iot: bool) -> bool:
    """Record that the edge's batches come through AWS IoT (or, ``iot=False``, directly over
    HTTPS); True when that changed."""
    return await db.execute(MARK if iot else UNMARK, {"farm_id": farm_id, "id": edge_id}) > 0


async def iot_edges(db: Database, farm_id: str | None = None) -> list[dict[str, Any]]:
    """The edges on AWS IoT (of one farm, or of all)."""
    return await db.fetch_all(IOT_EDGES, {"farm_id": farm_id})


async def claim_commands(
    db: Database,
    farms: list[str],
    *,
    ttl_s: float,
    again_s: float,
    command_id: str | None = None,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Claim the commands of ``farms`` (or the one named) that are due for publishing."""
    params = {"farms": farms, "ttl": ttl_s, "again": again_s, "id": command_id, "limit": limit}
    return await db.fetch_all(CLAIM_COMMANDS, params)


async def claim_config(
    db: Database, farm_id: str, version: int, *, again_s: float
) -> list[dict[str, Any]]:
    """Claim the farm's IoT edges that need config ``version`` published to them."""
    params = {"farm_id": farm_id, "version": version, "again": again_s}
    return await db.fetch_all(CLAIM_CONFIG, params)


async def farms_needing_config(
    db: Database, *, again_s: float, farm_id: str | None = None, version: int | None = None
) -> list[str]:
    """Farms with an IoT edge that needs the farm's config (or ``version`` of ``farm_id``)."""
    params = {"farm_id": farm_id, "version": version, "again": again_s}
    return [r["farm_id"] for r in await db.fetch_all(NEEDS_CONFIG, params)]
