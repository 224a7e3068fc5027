"""What goes down to edges: a farm's desired config (one consistent snapshot), its pending cloud
commands (stale ones expired on the way), and the edges' answers, presence and health.

With several edges per farm, each edge is sent only its slice: the rooms it serves
with their rules and devices, and the commands for those rooms. The version stays the farm's:
any change of the farm (a room moved between edges included) makes every edge re-fetch its slice,
which then differs for the edges the change concerns and is the same again for the others."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cloud.db import pending
from cloud.db.database import Database

FARM_VERSION = """
SELECT coalesce((SELECT version FROM farm_config WHERE farm_id = %(farm_id)s), 0) AS version"""
SNAPSHOT_ISOLATION = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
# The slice of edge %(edge_id)s (the whole farm when NULL): the rooms it serves (room_edge(),
# migration 0020), their rules and devices.
ROOMS = """
SELECT id, name, species, stage, stage_started, disabled_rules FROM rooms
WHERE farm_id = %(farm_id)s
  AND (%(edge_id)s::text IS NULL OR room_edge(farm_id, edge_id) = %(edge_id)s)
ORDER BY id"""
# The farm's rooms outside that slice (served by another edge, or by none).
OTHER_ROOMS = """
SELECT id FROM rooms
WHERE farm_id = %(farm_id)s AND %(edge_id)s::text IS NOT NULL
  AND room_edge(farm_id, edge_id) IS DISTINCT FROM %(edge_id)s
ORDER BY id"""
RULES = """
SELECT ar.room_id, ar.id, ar.body FROM automation_rules ar
JOIN rooms r ON r.farm_id = ar.farm_id AND r.id = ar.room_id
WHERE ar.farm_id = %(farm_id)s
  AND (%(edge_id)s::text IS NULL OR room_edge(r.farm_id, r.edge_id) = %(edge_id)s)
ORDER BY ar.room_id, ar.id"""
DEVICES = """
SELECT d.id, d.room_id, d.kind, d.actuator, d.credentials_hash, d.safety
FROM devices d
JOIN rooms r ON r.farm_id = d.farm_id AND r.id = d.room_id
WHERE d.farm_id = %(farm_id)s
  AND (%(edge_id)s::text IS NULL OR room_edge(r.farm_id, r.edge_id) = %(edge_id)s)
ORDER BY d.id"""

# Not delivered within the TTL: expired instead of sent (all farms when farm_id is NULL).
EXPIRE = """
UPDATE commands c SET status = 'expired', updated_at = now(),
    error = 'not delivered within ' || %(ttl)s::float8::text || ' s'
WHERE c.status = 'pending'
  AND c.created_at < now() - make_interval(secs => %(ttl)s)
  AND (%(farm_id)s::text IS NULL OR c.farm_id = %(farm_id)s)
RETURNING c.id"""
PENDING = """
SELECT c.id, c.room_id, c.device_id, c.action, c.value, c.hold_minutes, c.created_at,
    (SELECT coalesce(nullif(u.display_name, ''), u.email) FROM users u
     WHERE u.id = c.created_by) AS by_name
FROM commands c
JOIN rooms r ON r.farm_id = c.farm_id AND r.id = c.room_id
WHERE c.status = 'pending' AND c.farm_id = %(farm_id)s
  AND (%(id)s::text IS NULL OR c.id = %(id)s)
  AND (%(edge_id)s::text IS NULL OR room_edge(r.farm_id, r.edge_id) = %(edge_id)s)
ORDER BY c.created_at, c.id LIMIT %(limit)s"""
# The edge's answer to a command it was sent. Its id mapping is kept even when a batch already
# moved the state on (the batch may overtake the answer).
ACCEPT = """
UPDATE commands c SET
    status = CASE WHEN c.status = 'pending' THEN %(status)s ELSE c.status END,
    error = CASE WHEN c.status = 'pending' THEN coalesce(%(error)s, c.error) ELSE c.error END,
    delivered_at = CASE WHEN c.status = 'pending' AND %(status)s = 'delivered'
                        THEN now() ELSE c.delivered_at END,
    edge_id = coalesce(c.edge_id, %(edge_id)s),
    edge_command_id = coalesce(c.edge_command_id, %(edge_command_id)s),
    updated_at = now()
WHERE c.farm_id = %(farm_id)s AND c.id = %(id)s
RETURNING c.status"""
APPLIED = """
UPDATE edges SET config_version = %(version)s, last_seen = now()
WHERE farm_id = %(farm_id)s AND id = %(id)s"""
STATUS = """
UPDATE edges SET backlog = %(backlog)s, software_version = %(version)s, status_at = now(),
    last_seen = now()
WHERE farm_id = %(farm_id)s AND id = %(id)s"""
# Not when seen within ``fresh`` seconds already (a batch's commit sets last_seen too): a stream's
# heartbeat then costs no row version and no synced commit.
TOUCH = """
UPDATE edges SET last_seen = now() WHERE farm_id = %(farm_id)s AND id = %(id)s
  AND (last_seen IS NULL OR last_seen < now() - make_interval(secs => %(fresh)s))"""
PRESENCE = """
SELECT count(*) AS total,
    count(*) FILTER (WHERE last_seen > now() - make_interval(secs => %(window)s)) AS online
FROM edges"""


@dataclass(frozen=True)
class ConfigSnapshot:
    version: int
    rooms: list[dict[str, Any]]
    rules: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    other_rooms: list[str] = field(default_factory=list)
    dismissed: list[dict[str, Any]] = field(default_factory=list)  # cloud/db/pending.DISMISSED


async def farm_version(db: Database, farm_id: str) -> int:
    """The farm's desired-config version; 0 while nothing was ever configured in the cloud."""
    row = await db.fetch_one(FARM_VERSION, {"farm_id": farm_id})
    return int(row["version"]) if row else 0


async def snapshot(db: Database, farm_id: str, edge_id: str | None = None) -> ConfigSnapshot:
    """Version, rooms, rules and devices read in one snapshot, so the version matches them: the
    slice of ``edge_id`` (the whole farm when None)."""
    params = {"farm_id": farm_id, "edge_id": edge_id}
    async with db.transaction() as cur:
        await cur.execute(SNAPSHOT_ISOLATION)
        await cur.execute(FARM_VERSION, params)
        row = await cur.fetchone()
        await cur.execute(ROOMS, params)
        rooms = await cur.fetchall()
        await cur.execute(RULES, params)
        rules = await cur.fetchall()
        await cur.execute(DEVICES, params)
        devices = await cur.fetchall()
        await cur.execute(OTHER_ROOMS, params)
        others = [r["id"] for r in await cur.fetchall()]
        await cur.execute(pending.DISMISSED, params)
        dismissed = await cur.fetchall()
    version = int(row["version"]) if row else 0
    return ConfigSnapshot(
        version=version,
        rooms=rooms,
        rules=rules,
        devices=devices,
        other_rooms=others,
        dismissed=dismissed,
    )


async def pending_commands(
    db: Database,
    farm_id: str,
    *,
    ttl_s: float,
    command_id: str | None = None,
    edge_id: str | None = None,
    limit: int = 500,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The farm's pending commands (or the one named) for the rooms ``edge_id`` serves (all when
    None), oldest first, and the ids just expired."""
    async with db.transaction() as cur:
        await cur.execute(EXPIRE, {"ttl": ttl_s, "farm_id": farm_id})
        expired = [r["id"] for r in await cur.fetchall()]
        params = {"farm_id": farm_id, "id": command_id, "edge_id": edge_id, "limit": limit}
        await cur.execute(PENDING, params)
        pending = await cur.fetchall()
    return pending, expired


async def pending_command(
    db: Database, farm_id: str, command_id: str, *, edge_id: str
) -> dict[str, Any] | None:
    """One pending command, if it is for a room ``edge_id`` serves: one statement (no
    transaction, no expiry sweep), for a stream told the command was just created."""
    params = {"farm_id": farm_id, "id": command_id, "edge_id": edge_id, "limit": 1}
    return await db.fetch_one(PENDING, params)


async def expire_stale(db: Database, *, ttl_s: float) -> list[str]:
    """Expire every farm's commands older than the TTL (the periodic sweep)."""
    rows = await db.fetch_all(EXPIRE, {"ttl": ttl_s, "farm_id": None})
    return [r["id"] for r in rows]


async def accept(
    db: Database,
    *,
    farm_id: str,
    command_id: str,
    status: str,
    error: str | None,
    edge_id: str,
    edge_command_id: str | None,
) -> str | None:
    """Record an edge's answer to a command; its status afterwards, None if not this farm's."""
    params = {
        "id": command_id,
        "farm_id": farm_id,
        "status": status,
        "error": error,
        "edge_id": edge_id,
        "edge_command_id": edge_command_id,
    }
    row = await db.fetch_one(ACCEPT, params)
    return row["status"] if row else None


async def set_applied_version(db: Database, farm_id: str, edge_id: str, version: int) -> None:
    await db.execute(APPLIED, {"farm_id": farm_id, "id": edge_id, "version": version})


async def set_status(
    db: Database, farm_id: str, edge_id: str, *, backlog: int | None, software_version: str | None
) -> None:
    """Keep the health an edge reported on its stream (outbox backlog, software version)."""
    params = {"farm_id": farm_id, "id": edge_id, "backlog": backlog, "version": software_version}
    await db.execute(STATUS, params)


async def touch(db: Database, farm_id: str, edge_id: str, *, fresh_s: float = 0.0) -> bool:
    """Mark the edge seen now, unless it was within ``fresh_s``; whether the row changed."""
    return await db.execute(TOUCH, {"farm_id": farm_id, "id": edge_id, "fresh": fresh_s}) > 0


async def presence(db: Database, *, window_s: float) -> dict[str, int]:
    """``{"total", "online"}``: edges registered, and seen within ``window_s``."""
    row = await db.fetch_one(PRESENCE, {"window": window_s})
    return {"total": int(row["total"]), "online": int(row["online"])} if row else {}
