"""Devices (ESP32 nodes) in rooms, with their hashed MQTT credentials."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from cloud.db.database import Database

LIST = """
SELECT d.id, d.room_id, r.farm_id, d.name, d.kind, d.actuator, d.capabilities, d.last_seen,
    d.created_at FROM devices d JOIN rooms r ON r.id = d.room_id
WHERE d.room_id = %(room_id)s AND (%(after)s::text IS NULL OR d.id > %(after)s)
ORDER BY d.id LIMIT %(limit)s"""
GET = """
SELECT d.id, d.room_id, r.farm_id, d.name, d.kind, d.actuator, d.capabilities, d.last_seen,
    d.created_at FROM devices d JOIN rooms r ON r.id = d.room_id WHERE d.id = %(id)s"""
CREATE = """
INSERT INTO devices (id, room_id, name, kind, actuator, capabilities, credentials_hash)
VALUES (%(id)s, %(room_id)s, %(name)s, %(kind)s, %(actuator)s, %(capabilities)s, %(hash)s)"""
UPDATE = """
UPDATE devices SET name = coalesce(%(name)s, name),
    capabilities = coalesce(%(capabilities)s, capabilities)
WHERE id = %(id)s"""
DELETE = "DELETE FROM devices WHERE id = %(id)s"
LATEST = """
SELECT metric, time, value FROM sensor_latest WHERE device_id = %(id)s ORDER BY metric"""


async def list_devices(
    db: Database, room_id: str, *, after: str | None, limit: int
) -> list[dict[str, Any]]:
    return await db.fetch_all(LIST, {"room_id": room_id, "after": after, "limit": limit})


async def get(db: Database, device_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(GET, {"id": device_id})


async def create(
    db: Database,
    *,
    device_id: str,
    room_id: str,
    name: str,
    kind: str,
    actuator: str | None,
    capabilities: list[str],
    credentials_hash: str,
) -> dict[str, Any]:
    await db.execute(
        CREATE,
        {
            "id": device_id,
            "room_id": room_id,
            "name": name,
            "kind": kind,
            "actuator": actuator,
            "capabilities": Jsonb(capabilities),
            "hash": credentials_hash,
        },
    )
    row = await get(db, device_id)
    assert row is not None
    return row


async def update(
    db: Database, device_id: str, *, name: str | None, capabilities: list[str] | None
) -> dict[str, Any] | None:
    caps = Jsonb(capabilities) if capabilities is not None else None
    await db.execute(UPDATE, {"id": device_id, "name": name, "capabilities": caps})
    return await get(db, device_id)


async def delete(db: Database, device_id: str) -> bool:
    return await db.execute(DELETE, {"id": device_id}) > 0


async def latest(db: Database, device_id: str) -> list[dict[str, Any]]:
    """One row per metric from ``sensor_latest`` (a primary-key range, not a scan)."""
    return await db.fetch_all(LATEST, {"id": device_id})
