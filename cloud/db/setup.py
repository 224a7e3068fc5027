"""Set-up data of a farm that has no other home: where its devices reach the MQTT broker."""

from __future__ import annotations

from typing import Any

from cloud.db.database import Database

GET_NETWORK = """
SELECT mqtt_host, mqtt_port, tls, updated_at FROM farm_device_network
WHERE farm_id = %(farm_id)s"""
SET_NETWORK = """
INSERT INTO farm_device_network (farm_id, mqtt_host, mqtt_port, tls)
VALUES (%(farm_id)s, %(mqtt_host)s, %(mqtt_port)s, %(tls)s)
ON CONFLICT (farm_id) DO UPDATE SET mqtt_host = excluded.mqtt_host,
    mqtt_port = excluded.mqtt_port, tls = excluded.tls, updated_at = now()
RETURNING mqtt_host, mqtt_port, tls, updated_at"""
CLEAR_NETWORK = "DELETE FROM farm_device_network WHERE farm_id = %(farm_id)s"
# An invitation still open for a member of this farm (new tokens replace the old one).
INVITE_STATE = """
SELECT u.id, u.email, u.invite_expires_at,
    (u.password_hash IS NOT NULL OR u.cognito_sub IS NOT NULL) AS activated
FROM farm_members m JOIN users u ON u.id = m.user_id
WHERE m.farm_id = %(farm_id)s AND m.user_id = %(user_id)s"""
# Members who have not set a password yet: the farm's open invitations.
LIST_INVITES = """
SELECT m.user_id, u.email, m.role, m.created_at, u.invite_expires_at,
    CASE WHEN m.all_rooms THEN NULL ELSE coalesce(
        (SELECT array_agg(g.room_id ORDER BY g.room_id) FROM member_room_grants g
         WHERE g.farm_id = m.farm_id AND g.user_id = m.user_id), '{}') END AS room_ids
FROM farm_members m JOIN users u ON u.id = m.user_id
WHERE m.farm_id = %(farm_id)s AND u.password_hash IS NULL AND u.cognito_sub IS NULL
ORDER BY m.user_id"""
# A revoked invitation stops working unless the account belongs to another farm too.
FORGET_INVITE = """
UPDATE users u SET invite_hash = NULL, invite_expires_at = NULL
WHERE u.id = %(user_id)s AND u.password_hash IS NULL AND u.cognito_sub IS NULL
  AND NOT EXISTS (SELECT 1 FROM farm_members m WHERE m.user_id = u.id)"""
RECENT_TESTS = """
SELECT count(*) AS n FROM notifications
WHERE user_id = %(user_id)s AND kind = 'test' AND created_at > now() - %(window)s::interval"""


async def device_network(db: Database, farm_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(GET_NETWORK, {"farm_id": farm_id})


async def set_device_network(
    db: Database, farm_id: str, *, mqtt_host: str, mqtt_port: int, tls: bool
) -> dict[str, Any]:
    params = {"farm_id": farm_id, "mqtt_host": mqtt_host, "mqtt_port": mqtt_port, "tls": tls}
    row = await db.fetch_one(SET_NETWORK, params)
    assert row is not None
    return row


async def clear_device_network(db: Database, farm_id: str) -> None:
    await db.execute(CLEAR_NETWORK, {"farm_id": farm_id})


async def member_account(db: Database, farm_id: str, user_id: int) -> dict[str, Any] | None:
    """The account of a member of this farm, with whether it was activated."""
    return await db.fetch_one(INVITE_STATE, {"farm_id": farm_id, "user_id": user_id})


async def list_invites(db: Database, farm_id: str) -> list[dict[str, Any]]:
    return await db.fetch_all(LIST_INVITES, {"farm_id": farm_id})


async def forget_invite(db: Database, user_id: int) -> None:
    await db.execute(FORGET_INVITE, {"user_id": user_id})


async def recent_tests(db: Database, user_id: int, window_s: int) -> int:
    """Test notifications the user sent within the last ``window_s`` seconds."""
    row = await db.fetch_one(RECENT_TESTS, {"user_id": user_id, "window": f"{window_s} seconds"})
    return int(row["n"]) if row else 0
