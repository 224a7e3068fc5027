"""Users, refresh tokens and invitations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cloud.db.database import Database

BY_EMAIL = """
SELECT password_hash, id, email, display_name, is_admin, is_active, created_at,
    (password_hash IS NOT NULL OR cognito_sub IS NOT NULL) AS activated
FROM users WHERE lower(email) = lower(%(email)s)"""
BY_ID = """
SELECT id, email, display_name, is_admin, is_active, created_at, sessions_revoked_at,
    (password_hash IS NOT NULL OR cognito_sub IS NOT NULL) AS activated
FROM users WHERE id = %(id)s"""
CREATE = """
INSERT INTO users (email, display_name, password_hash, is_admin)
VALUES (%(email)s, %(display_name)s, %(password_hash)s, %(is_admin)s)
RETURNING id, email, display_name, is_admin, is_active, created_at, (password_hash IS NOT NULL
    OR cognito_sub IS NOT NULL) AS activated"""
UPSERT = """
INSERT INTO users (email, display_name, password_hash, is_admin)
VALUES (%(email)s, %(display_name)s, %(password_hash)s, %(is_admin)s)
ON CONFLICT (lower(email)) DO UPDATE
SET password_hash = excluded.password_hash, is_admin = excluded.is_admin
RETURNING id, email, display_name, is_admin, is_active, created_at, (password_hash IS NOT NULL
    OR cognito_sub IS NOT NULL) AS activated"""
SET_PASSWORD = "UPDATE users SET password_hash = %(hash)s WHERE id = %(id)s"  # noqa: S105
SET_INVITE = """
UPDATE users SET invite_hash = %(hash)s, invite_expires_at = %(expires_at)s WHERE id = %(id)s"""
ACCEPT_INVITE = """
UPDATE users SET password_hash = %(password_hash)s, invite_hash = NULL, invite_expires_at = NULL
WHERE invite_hash = %(hash)s AND invite_expires_at > now() AND is_active
RETURNING id, email, display_name, is_admin, is_active, created_at, (password_hash IS NOT NULL
    OR cognito_sub IS NOT NULL) AS activated"""
# Cognito: by the pool's sub; else claim the account with that (verified) email once; else
# create one. ON CONFLICT DO NOTHING covers both a concurrent first request (same sub) and an
# email already linked to another identity (no row: refused by the caller).
BY_COGNITO = """
SELECT id, email, display_name, is_admin, is_active, created_at, true AS activated
FROM users WHERE cognito_sub = %(sub)s"""
LINK_COGNITO = """
UPDATE users SET cognito_sub = %(sub)s, invite_hash = NULL, invite_expires_at = NULL
WHERE lower(email) = lower(%(email)s) AND cognito_sub IS NULL
RETURNING id, email, display_name, is_admin, is_active, created_at, true AS activated"""
CREATE_COGNITO = """
INSERT INTO users (email, cognito_sub) VALUES (%(email)s, %(sub)s) ON CONFLICT DO NOTHING
RETURNING id, email, display_name, is_admin, is_active, created_at, true AS activated"""

ADD_REFRESH = """
INSERT INTO refresh_tokens (user_id, token_hash, expires_at)
VALUES (%(user_id)s, %(hash)s, %(expires_at)s)"""
# Rotation: the presented token is spent in the same statement that reads it, so a refresh token
# is usable once even under concurrent requests.
SPEND_REFRESH = """
UPDATE refresh_tokens SET revoked_at = now()
WHERE token_hash = %(hash)s AND revoked_at IS NULL AND expires_at > now()
RETURNING user_id"""
FIND_REFRESH = "SELECT user_id, revoked_at FROM refresh_tokens WHERE token_hash = %(hash)s"
REVOKE_REFRESH = """
UPDATE refresh_tokens SET revoked_at = now()
WHERE token_hash = %(hash)s AND revoked_at IS NULL RETURNING user_id"""
REVOKE_LIVE = """
UPDATE refresh_tokens SET revoked_at = now()
WHERE user_id = %(user_id)s AND revoked_at IS NULL AND expires_at > now()"""
# Access tokens issued up to now stop working too (migration 0021), and open sockets close.
# The app's clock, not the database's: tokens are stamped by the app (cloud.auth.tokens).
SIGN_OUT_EVERYWHERE = "UPDATE users SET sessions_revoked_at = %(at)s WHERE id = %(user_id)s"
REVOKE_ALL = """
UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = %(user_id)s AND revoked_at IS NULL"""


async def by_email(db: Database, email: str) -> dict[str, Any] | None:
    return await db.fetch_one(BY_EMAIL, {"email": email})


async def by_id(db: Database, user_id: int) -> dict[str, Any] | None:
    return await db.fetch_one(BY_ID, {"id": user_id})


async def create(
    db: Database,
    *,
    email: str,
    password_hash: str | None,
    display_name: str = "",
    is_admin: bool = False,
    replace: bool = False,
) -> dict[str, Any]:
    params = {
        "email": email,
        "display_name": display_name,
        "password_hash": password_hash,
        "is_admin": is_admin,
    }
    row = await db.fetch_one(UPSERT if replace else CREATE, params)
    assert row is not None
    return row


async def for_cognito(
    db: Database, sub: str, email: str | None, *, create: bool
) -> dict[str, Any] | None:
    """The local user of a Cognito identity: linked by ``sub``, else by verified ``email`` (an
    invited or local account is claimed once), else created when ``create``; None otherwise."""
    params = {"sub": sub, "email": email}
    row = await db.fetch_one(BY_COGNITO, params)
    if row is not None or email is None:
        return row
    row = await db.fetch_one(LINK_COGNITO, params)
    if row is not None or not create:
        return row
    return await db.fetch_one(CREATE_COGNITO, params) or await db.fetch_one(BY_COGNITO, params)


async def set_invite(db: Database, user_id: int, token_hash: str, expires_at: datetime) -> None:
    await db.execute(SET_INVITE, {"id": user_id, "hash": token_hash, "expires_at": expires_at})


async def accept_invite(db: Database, token_hash: str, password_hash: str) -> dict[str, Any] | None:
    return await db.fetch_one(ACCEPT_INVITE, {"hash": token_hash, "password_hash": password_hash})


async def add_refresh(db: Database, user_id: int, token_hash: str, expires_at: datetime) -> None:
    params = {"user_id": user_id, "hash": token_hash, "expires_at": expires_at}
    await db.execute(ADD_REFRESH, params)


async def spend_refresh(db: Database, token_hash: str) -> int | None:
    """The token's user when it was live (and is now spent); None otherwise. Presenting an
    already-revoked token revokes every token of its user: it was stolen or replayed."""
    row = await db.fetch_one(SPEND_REFRESH, {"hash": token_hash})
    if row is not None:
        return int(row["user_id"])
    old = await db.fetch_one(FIND_REFRESH, {"hash": token_hash})
    if old is not None and old["revoked_at"] is not None:
        await db.execute(REVOKE_ALL, {"user_id": old["user_id"]})
    return None


async def revoke_all_refresh(db: Database, user_id: int) -> int:
    """Sign out everywhere: revoke every live refresh token of the user and every access token
    issued so far (one transaction); how many refresh tokens were live."""
    async with db.transaction() as cur:
        await cur.execute(REVOKE_LIVE, {"user_id": user_id})
        count = cur.rowcount
        await cur.execute(SIGN_OUT_EVERYWHERE, {"user_id": user_id, "at": datetime.now(UTC)})
    return count


async def revoke_refresh(db: Database, token_hash: str) -> bool:
    return await db.fetch_one(REVOKE_REFRESH, {"hash": token_hash}) is not None
