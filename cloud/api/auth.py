"""Login, token refresh, logout, signing out everywhere and invitation acceptance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud import appkeys
from cloud.api.routing import Call, Route, client_ip
from cloud.auth.tokens import opaque_token, token_hash
from cloud.db import users as users_db
from cloud.errors import Unauthorized

REFRESH_PREFIX = "sfr_"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_In):
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class RefreshIn(_In):
    refresh_token: str = Field(min_length=10, max_length=200)


class AcceptInviteIn(_In):
    token: str = Field(min_length=10, max_length=200)
    password: str = Field(min_length=10, max_length=1024)


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth token type
    expires_in: int = Field(description="access token lifetime in seconds")


class LogoutAllOut(BaseModel):
    signed_out: int = Field(description="sessions (live refresh tokens) revoked, this one included")


async def issue_tokens(call: Call, user_id: int) -> TokenOut:
    settings = call.app[appkeys.SETTINGS]
    tokens = call.app[appkeys.TOKENS]
    refresh = opaque_token(REFRESH_PREFIX)
    expires = datetime.now(UTC) + timedelta(seconds=settings.auth.refresh_ttl_s)
    await users_db.add_refresh(call.db, user_id, token_hash(refresh), expires)
    return TokenOut(
        access_token=tokens.issue(user_id), refresh_token=refresh, expires_in=tokens.ttl_s
    )


async def login(call: Call) -> TokenOut:
    """Log in with email and password
    Limited per IP (all attempts, any account) and per account and IP (failures: after a few,
    each further attempt waits twice as long as the last, up to minutes); over a limit answers
    429 with Retry-After. The account is never locked: its owner logs in from elsewhere."""
    body: LoginIn = call.body
    limits = call.app[appkeys.LIMITS]
    account = body.email.strip().lower()
    address = client_ip(call.request)
    limits.login_ip.take(address)
    limits.login_failures.check((account, address))
    row = await users_db.by_email(call.db, account)
    stored = row["password_hash"] if row else None
    ok = await call.app[appkeys.PASSWORDS].verify(stored, body.password)
    if not ok or row is None or not row["is_active"]:
        limits.login_failures.fail((account, address))
        raise Unauthorized("wrong email or password")
    limits.login_failures.reset((account, address))
    return await issue_tokens(call, row["id"])


async def refresh(call: Call) -> TokenOut:
    """Trade a refresh token for a new access and refresh token
    The presented refresh token is spent; replaying a spent one revokes all of the user's.
    Refused tokens take from the client address's budget of unauthenticated requests (429
    past it)."""
    body: RefreshIn = call.body
    user_id = await users_db.spend_refresh(call.db, token_hash(body.refresh_token))
    if user_id is None:
        call.app[appkeys.LIMITS].unauthenticated.take(client_ip(call.request))
        raise Unauthorized("refresh token invalid, expired or revoked")
    user = await users_db.by_id(call.db, user_id)
    if user is None or not user["is_active"]:
        raise Unauthorized("account disabled or removed")
    return await issue_tokens(call, user_id)


async def logout(call: Call) -> None:
    """Revoke a refresh token (access tokens expire on their own within minutes)"""
    body: RefreshIn = call.body
    await users_db.revoke_refresh(call.db, token_hash(body.refresh_token))


async def logout_all(call: Call) -> LogoutAllOut:
    """Sign out everywhere: end every session of the caller now
    Every refresh token is revoked and every access token issued so far is refused from now on;
    the user's open live sockets are closed (4401), on every instance. Each browser and device
    the user signed in on is signed out at once. Answers how many sessions ended."""
    count = await users_db.revoke_all_refresh(call.db, call.user_id)
    return LogoutAllOut(signed_out=count)


async def accept_invite(call: Call) -> TokenOut:
    """Set a password with an invitation token and log in"""
    body: AcceptInviteIn = call.body
    limits = call.app[appkeys.LIMITS]
    limits.login_ip.take(client_ip(call.request))
    password_hash = await call.app[appkeys.PASSWORDS].hash(body.password)
    row = await users_db.accept_invite(call.db, token_hash(body.token), password_hash)
    if row is None:
        raise Unauthorized("invitation invalid or expired")
    return await issue_tokens(call, row["id"])


ROUTES = [
    Route(
        "POST",
        "/api/auth/login",
        login,
        "public",
        body=LoginIn,
        response=TokenOut,
        tag="auth",
        errors=(401, 429),
    ),
    Route(
        "POST",
        "/api/auth/refresh",
        refresh,
        "public",
        body=RefreshIn,
        response=TokenOut,
        tag="auth",
        errors=(401, 429),
    ),
    Route("POST", "/api/auth/logout", logout, "public", body=RefreshIn, status=204, tag="auth"),
    Route(
        "POST",
        "/api/auth/logout-all",
        logout_all,
        "user",
        response=LogoutAllOut,
        tag="auth",
    ),
    Route(
        "POST",
        "/api/auth/accept-invite",
        accept_invite,
        "public",
        body=AcceptInviteIn,
        response=TokenOut,
        tag="auth",
        errors=(401, 429),
    ),
]
