"""Edge gateways (one Raspberry Pi per site) and their hashed upload tokens."""

from __future__ import annotations

from typing import Any

from cloud.db.database import Database

LIST = """
SELECT id, farm_id, name, high_water, last_seen, rotated_at, created_at FROM edges WHERE farm_id
    = %(farm_id)s
  AND (%(after)s::text IS NULL OR id > %(after)s) ORDER BY id LIMIT %(limit)s"""
GET = """
SELECT id, farm_id, name, high_water, last_seen, rotated_at, created_at FROM edges
WHERE farm_id = %(farm_id)s AND id = %(id)s"""
CREATE = """
INSERT INTO edges (id, farm_id, name, token_hash) VALUES (%(id)s, %(farm_id)s, %(name)s, %(hash)s)
RETURNING id, farm_id, name, high_water, last_seen, rotated_at, created_at"""
ROTATE = """
UPDATE edges SET token_hash = %(hash)s, rotated_at = now()
WHERE farm_id = %(farm_id)s AND id = %(id)s
RETURNING id, farm_id, name, high_water, last_seen, rotated_at, created_at"""
DELETE = "DELETE FROM edges WHERE farm_id = %(farm_id)s AND id = %(id)s"


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
    row = await db.fetch_one(CREATE, params)
    assert row is not None
    return row


async def rotate(
    db: Database, farm_id: str, edge_id: str, token_hash: str
) -> dict[str, Any] | None:
    return await db.fetch_one(ROTATE, {"farm_id": farm_id, "id": edge_id, "hash": token_hash})


async def delete(db: Database, farm_id: str, edge_id: str) -> bool:
    return await db.execute(DELETE, {"farm_id": farm_id, "id": edge_id}) > 0

