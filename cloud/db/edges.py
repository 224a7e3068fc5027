"""Edge gateways (one Raspberry Pi per site), their hashed upload tokens, their health, and which
rooms each serves (migration 0020)."""

from __future__ import annotations

from typing import Any

from cloud.db.database import Database

# Health: what the cloud measured (last_seen, clock offset of the last batch) and what the edge
# reported on its stream (backlog, software version); and the rooms it serves (migration 0020).
LIST = """
SELECT e.id, e.farm_id, e.name, e.high_water, e.last_seen, e.rotated_at, e.created_at,
    e.config_version, e.clock_offset_s, e.backlog, e.software_version, e.status_at,
    array(SELECT r.id FROM rooms r
          WHERE r.farm_id = e.farm_id AND room_edge(r.farm_id, r.edge_id) = e.id
          ORDER BY r.id) AS rooms
FROM edges e WHERE e.farm_id = %(farm_id)s
  AND (%(after)s::text IS NULL OR e.id > %(after)s) ORDER BY e.id LIMIT %(limit)s"""
GET = """
SELECT e.id, e.farm_id, e.name, e.high_water, e.last_seen, e.rotated_at, e.created_at,
    e.config_version, e.clock_offset_s, e.backlog, e.software_version, e.status_at,
    array(SELECT r.id FROM rooms r
          WHERE r.farm_id = e.farm_id AND room_edge(r.farm_id, r.edge_id) = e.id
          ORDER BY r.id) AS rooms
FROM edges e WHERE e.farm_id = %(farm_id)s AND e.id = %(id)s"""
# A farm's second edge: the rooms its first edge served unassigned are pinned to it, so adding an
# edge takes no room away from the edge running it.
PIN_UNASSIGNED = """
UPDATE rooms r SET edge_id = (SELECT e.id FROM edges e WHERE e.farm_id = %(farm_id)s)
WHERE r.farm_id = %(farm_id)s AND r.edge_id IS NULL
  AND (SELECT count(*) FROM edges e WHERE e.farm_id = %(farm_id)s) = 1"""
CREATE = """
INSERT INTO edges (id, farm_id, name, token_hash) VALUES (%(id)s, %(farm_id)s, %(name)s, %(hash)s)
RETURNING id"""
ROTATE = """
UPDATE edges SET token_hash = %(hash)s, rotated_at = now()
WHERE farm_id = %(farm_id)s AND id = %(id)s
RETURNING id"""
# Its rooms become unassigned first (the foreign key has no ON DELETE action: migration 0020).
UNASSIGN = "UPDATE rooms SET edge_id = NULL WHERE farm_id = %(farm_id)s AND edge_id = %(id)s"
DELETE = "DELETE FROM edges WHERE farm_id = %(farm_id)s AND id = %(id)s"
# Moving a room: the edge must be the farm's (NULL: unassigned). The rooms trigger bumps the farm's
# config version when the edge changes, in this transaction.
ASSIGN = """
UPDATE rooms SET edge_id = %(edge_id)s WHERE farm_id = %(farm_id)s AND id = %(room_id)s
RETURNING id, edge_id"""
EDGE_EXISTS = "SELECT 1 AS one FROM edges WHERE farm_id = %(farm_id)s AND id = %(id)s"


class UnknownEdge(LookupError):
    """A room was assigned to an edge the farm does not have."""


async def list_edges(
    db: Database, farm_id: str, *, after: str | None, limit: int
) -> list[dict[str, Any]]:
    return await db.fetch_all(LIST, {"farm_id": farm_id, "after": after, "limit": limit})


async def get(db: Database, farm_id: str, edge_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(GET, {"farm_id": farm_id, "id": edge_id})


async def create(
    db: Database, *, edge_id: str, farm_id: str, name: str, token_hash: str
) -> dict[str, Any]:
    params = {"id": edge_id, "farm_id": farm_id, "name": name, "hash": token_hash}
    async with db.transaction() as cur:
        await cur.execute(PIN_UNASSIGNED, {"farm_id": farm_id})
        await cur.execute(CREATE, params)
        await cur.execute(GET, {"farm_id": farm_id, "id": edge_id})
        row = await cur.fetchone()
    assert row is not None
    return row


async def rotate(
    db: Database, farm_id: str, edge_id: str, token_hash: str
) -> dict[str, Any] | None:
    if await db.fetch_one(ROTATE, {"farm_id": farm_id, "id": edge_id, "hash": token_hash}) is None:
        return None
    return await get(db, farm_id, edge_id)


async def delete(db: Database, farm_id: str, edge_id: str) -> bool:
    """Remove an edge; its rooms become unassigned (served by the farm's only edge, if one is
    left: see migration 0020)."""
    params = {"farm_id": farm_id, "id": edge_id}
    async with db.transaction() as cur:
        await cur.execute(UNASSIGN, params)
        await cur.execute(DELETE, params)
        return cur.rowcount > 0


async def assign_room(
    db: Database, farm_id: str, room_id: str, edge_id: str | None
) -> dict[str, Any] | None:
    """Assign a room to one of the farm's edges (None: unassign it); None if there is no such
    room. Raises UnknownEdge for an edge the farm does not have."""
    async with db.transaction() as cur:
        if edge_id is not None:
            await cur.execute(EDGE_EXISTS, {"farm_id": farm_id, "id": edge_id})
            if await cur.fetchone() is None:
                raise UnknownEdge(edge_id)
        await cur.execute(ASSIGN, {"farm_id": farm_id, "room_id": room_id, "edge_id": edge_id})
        return await cur.fetchone()
