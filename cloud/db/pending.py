"""Devices waiting for adoption, as the farm's edges report them (``pending_device`` records)."""

from __future__ import annotations

from typing import Any

from cloud.db.database import Cursor, Database

# The edge's newer report wins; an older one (a replayed batch) changes nothing. A device the
# edge reports pending again after an adoption (removed from the config since) is shown again.
UPSERT = """
INSERT INTO pending_devices AS p (farm_id, device_id, edge_id, state, first_seen, last_seen,
    attempts, address, client_id, room_id, reported_at, claim_mode)
VALUES (%(farm_id)s, %(device_id)s, %(edge_id)s, %(state)s, %(first_seen)s, %(last_seen)s,
    %(attempts)s, %(address)s, %(client_id)s, %(room_id)s, %(at)s, %(claim_mode)s)
ON CONFLICT (farm_id, device_id) DO UPDATE SET
    edge_id = excluded.edge_id, state = excluded.state, first_seen = excluded.first_seen,
    last_seen = excluded.last_seen, attempts = excluded.attempts, address = excluded.address,
    client_id = excluded.client_id, room_id = excluded.room_id,
    claim_mode = excluded.claim_mode,
    reported_at = excluded.reported_at,
    dismissed_at = CASE WHEN p.state <> 'pending' AND excluded.state = 'pending' THEN NULL
        ELSE p.dismissed_at END,
    dismissed_by = CASE WHEN p.state <> 'pending' AND excluded.state = 'pending' THEN NULL
        ELSE p.dismissed_by END
WHERE p.reported_at <= excluded.reported_at"""
WAITING = """
SELECT device_id, farm_id, edge_id, state, first_seen, last_seen, attempts, address, client_id,
    room_id, claim_mode FROM pending_devices
WHERE farm_id = %(farm_id)s AND state = 'pending' AND dismissed_at IS NULL
ORDER BY last_seen DESC, device_id LIMIT %(limit)s"""
GET_WAITING = """
SELECT device_id, state, client_id FROM pending_devices
WHERE farm_id = %(farm_id)s AND device_id = %(device_id)s AND state <> 'adopted'
FOR UPDATE"""
ADOPTED = """
UPDATE pending_devices SET state = 'adopted', room_id = %(room_id)s
WHERE farm_id = %(farm_id)s AND device_id = %(device_id)s"""
DISMISS = """
UPDATE pending_devices SET dismissed_at = now(), dismissed_by = %(user_id)s
WHERE farm_id = %(farm_id)s AND device_id = %(device_id)s AND state = 'pending'
    AND dismissed_at IS NULL"""
# A dismissal reaches the edges with the farm's next config push (ConfigPush.dismissed): the
# edge that lists the device dismisses it too. Until that edge reports it dismissed, it is
# in every push (at most the latest 200, as many as an edge lists).
BUMP = "SELECT edge_config_bump(%(farm_id)s)"
DISMISSED = """
SELECT device_id, dismissed_at FROM pending_devices
WHERE farm_id = %(farm_id)s AND state = 'pending' AND dismissed_at IS NOT NULL
ORDER BY dismissed_at DESC, device_id LIMIT 200"""

# A device adopted on an edge's page: registered in that room unless the id is taken.
REGISTER_ADOPTED = """
INSERT INTO devices (id, farm_id, room_id, name, kind, actuator, capabilities, credentials_hash)
VALUES (%(id)s, %(farm_id)s, %(room_id)s, '', %(kind)s, %(actuator)s, '[]', %(hash)s)
ON CONFLICT DO NOTHING"""


async def register_adopted(cur: Cursor, params: dict[str, Any]) -> bool:
    """Register a device the edge adopted; False when the farm already has that id."""
    await cur.execute(REGISTER_ADOPTED, params)
    return cur.rowcount > 0


async def report(cur: Cursor, params: dict[str, Any]) -> None:
    """Store an edge's report (``pending_device`` record) of a device."""
    await cur.execute(UPSERT, params)


async def waiting(db: Database, farm_id: str, limit: int = 500) -> list[dict[str, Any]]:
    return await db.fetch_all(WAITING, {"farm_id": farm_id, "limit": limit})


async def lock_waiting(cur: Cursor, farm_id: str, device_id: str) -> dict[str, Any] | None:
    """The device's row if it is pending (or dismissed: it may still be adopted), locked."""
    await cur.execute(GET_WAITING, {"farm_id": farm_id, "device_id": device_id})
    return await cur.fetchone()


async def mark_adopted(cur: Cursor, farm_id: str, device_id: str, room_id: str) -> None:
    await cur.execute(ADOPTED, {"farm_id": farm_id, "device_id": device_id, "room_id": room_id})


async def dismiss(db: Database, farm_id: str, device_id: str, user_id: int | None) -> bool:
    """Dismiss a waiting device; the farm's config version moves so the edges hear of it."""
    params = {"farm_id": farm_id, "device_id": device_id, "user_id": user_id}
    async with db.transaction() as cur:
        await cur.execute(DISMISS, params)
        if cur.rowcount == 0:
            return False
        await cur.execute(BUMP, params)
    return True
