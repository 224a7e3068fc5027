"""Devices (ESP32 nodes) in rooms, with their hashed MQTT credentials."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from cloud.db.database import Database

LIST = """
SELECT id, room_id, farm_id, name, kind, actuator, capabilities, last_seen, created_at, safety,
    (SELECT s.firmware FROM device_status s WHERE s.farm_id = d.farm_id AND s.device_id = d.id)
        AS firmware
FROM devices d
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND (%(after)s::text IS NULL OR id > %(after)s)
ORDER BY id LIMIT %(limit)s"""
GET = """
SELECT id, room_id, farm_id, name, kind, actuator, capabilities, last_seen, created_at, safety,
    (SELECT s.firmware FROM device_status s WHERE s.farm_id = d.farm_id AND s.device_id = d.id)
        AS firmware
FROM devices d WHERE farm_id = %(farm_id)s AND id = %(id)s"""
CREATE = """
INSERT INTO devices (id, farm_id, room_id, name, kind, actuator, capabilities, credentials_hash)
VALUES (%(id)s, %(farm_id)s, %(room_id)s, %(name)s, %(kind)s, %(actuator)s, %(capabilities)s,
        %(hash)s)"""
UPDATE = """
UPDATE devices SET name = coalesce(%(name)s, name),
    capabilities = coalesce(%(capabilities)s, capabilities)
WHERE farm_id = %(farm_id)s AND id = %(id)s"""
DELETE = "DELETE FROM devices WHERE farm_id = %(farm_id)s AND id = %(id)s"
LATEST = """
SELECT metric, time, value FROM sensor_latest WHERE farm_id = %(farm_id)s AND device_id = %(id)s
ORDER BY metric"""


async def list_devices(
    db: Database, farm_id: str, room_id: str, *, after: str | None, limit: int
) -> list[dict[str, Any]]:
    params = {"farm_id": farm_id, "room_id": room_id, "after": after, "limit": limit}
    return await db.fetch_all(LIST, params)


async def get(db: Database, farm_id: str, device_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(GET, {"farm_id": farm_id, "id": device_id})


async def create(
    db: Database,
    *,
    device_id: str,
    farm_id: str,
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
            "farm_id": farm_id,
            "room_id": room_id,
            "name": name,
            "kind": kind,
            "actuator": actuator,
            "capabilities": Jsonb(capabilities),
            "hash": credentials_hash,
        },
    )
    row = await get(db, farm_id, device_id)
    assert row is not None
    return row


async def update(
    db: Database,
    farm_id: str,
    device_id: str,
    *,
    name: str | None,
    capabilities: list[str] | None,
) -> dict[str, Any] | None:
    caps = Jsonb(capabilities) if capabilities is not None else None
    params = {"farm_id": farm_id, "id": device_id, "name": name, "capabilities": caps}
    await db.execute(UPDATE, params)
    return await get(db, farm_id, device_id)


async def delete(db: Database, farm_id: str, device_id: str) -> bool:
    return await db.execute(DELETE, {"farm_id": farm_id, "id": device_id}) > 0


async def latest(db: Database, farm_id: str, device_id: str) -> list[dict[str, Any]]:
    """One row per metric from ``sensor_latest`` (a primary-key range, not a scan)."""
    return await db.fetch_all(LATEST, {"farm_id": farm_id, "id": device_id})
