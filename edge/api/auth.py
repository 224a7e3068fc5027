"""Local admin login for the edge API: a signed session cookie for the page, HTTP Basic for
scripts, a per-address throttle on failed attempts, and the CSRF checks for cookie sessions.

CSRF: the session cookie is ``SameSite=Strict``; on top of that every state-changing request
must send a JSON body (``Content-Type: application/json``, which a cross-site HTML form cannot
send), and one authenticated by the cookie must also carry ``X-Requested-With: smartfarm-edge``,
a custom header no other site can add without a CORS preflight this server never grants.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from datetime import UTC, datetime
from typing import Final

from aiohttp import web

from edge.api import keys
from edge.api.problems import (
    Forbidden,
    Handler,
    LoginNotConfigured,
    Unauthorized,
    UnsupportedMediaType,
)
from edge.api.schemas import LoginBody, parse_body
from edge.api.sessions import Identity

log = logging.getLogger(__name__)

COOKIE_NAME: Final = "smartfarm_edge_session"
CSRF_HEADER: Final = "X-Requested-With"
CSRF_VALUE: Final = "smartfarm-edge"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# Reachable without logging in: the page, its assets, the health probe and the login itself.
_PUBLIC_API: Final = frozenset({"/api/login", "/api/logout", "/api/session/state"})
# Routes whose body is binary (the firmware upload: edge.api.firmware).
_BINARY_BODY: Final = frozenset({("POST", "/api/firmware")})


def _same(given: str, expected: str) -> bool:
    # Digests first: compare_digest is constant-time only for equal lengths.
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


def check_credentials(request: web.Request, username: str, password: str) -> None:
    """Raise unless (username, password) is the configured admin; count failures per address."""
    settings = request.app[keys.SETTINGS]
    throttle = request.app[keys.THROTTLE]
    address = request.remote or "unknown"
    throttle.check(address)
    secret = settings.api.admin_password
    expected = secret.get_secret_value() if secret is not None else ""
    if not expected:
        raise LoginNotConfigured(
            "no admin password is set: put api.admin_password in the edge config (or set "
            "SMARTFARM_EDGE_API__ADMIN_PASSWORD) and restart the edge"
        )
    # Both comparisons always run, so timing does not tell which one failed.
    user_ok = _same(username, settings.api.admin_user)
    password_ok = _same(password, expected)
    if not (user_ok and password_ok):
        throttle.failed(address)
        log.warning("failed local API login for %r from %s", username[:64], address)
        raise Unauthorized("wrong username or password")
    throttle.succeeded(address)


def _basic(request: web.Request, header: str) -> Identity:
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        username, password = decoded.split(":", 1)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise Unauthorized("malformed Basic authorization header") from None
    check_credentials(request, username, password)
    return Identity(user=username, via="basic")


def _challenge(request: web.Request) -> dict[str, str]:
    # The page handles 401 with its own login form; a Basic challenge would make the browser
    # pop up its native dialog, so scripts get one and the page does not.
    if request.headers.get(CSRF_HEADER) == CSRF_VALUE:
        return {"WWW-Authenticate": 'Session realm="smartfarm-edge"'}
    return {"WWW-Authenticate": 'Basic realm="smartfarm-edge", charset="UTF-8"'}


def _check_unsafe(request: web.Request, identity: Identity | None) -> None:
    """CSRF defences for state-changing requests (see the module docstring)."""
    if request.method in _SAFE_METHODS:
        return
    has_body = request.can_read_body or request.method in ("POST", "PUT", "PATCH")
    # A firmware upload is the image itself; application/octet-stream is no CORS "simple"
    # type either, so a cross-site form cannot send it (the same defence as JSON's).
    binary = (request.method, request.path) in _BINARY_BODY
    if has_body and request.content_type != (
            "application/octet-stream" if binary else "application/json"):
        raise UnsupportedMediaType(
            "send the request body as Content-Type: "
            + ("application/octet-stream" if binary else "application/json"))
    if identity is not None and identity.via == "cookie":
        if request.headers.get(CSRF_HEADER) != CSRF_VALUE:
            raise Forbidden(f"a session request that changes state needs header "
                            f"{CSRF_HEADER}: {CSRF_VALUE}")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if not path.startswith("/api/"):
        return await handler(request)  # the page, static assets, /health
    if path in _PUBLIC_API:
        _check_unsafe(request, None)
        return await handler(request)
    identity: Identity | None = None
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic ":
        identity = _basic(request, header)
    elif (token := request.cookies.get(COOKIE_NAME)) is not None:
        identity = request.app[keys.SESSIONS].verify(token)
        if identity is None:
            raise Unauthorized("session expired; log in again", headers=_challenge(request))
    if identity is None:
        raise Unauthorized(
            "log in (POST /api/login) or use HTTP Basic auth", headers=_challenge(request)
        )
    _check_unsafe(request, identity)
    request[keys.IDENTITY] = identity
    return await handler(request)


# ---- handlers ----
async def login(request: web.Request) -> web.Response:
    body = await parse_body(request, LoginBody)
    check_credentials(request, body.username, body.password)
    token, expires = request.app[keys.SESSIONS].issue(body.username)
    log.info("local API login by %r from %s", body.username, request.remote)
    response = web.json_response(
        {"ok": True, "user": body.username,
         "expires_at": datetime.fromtimestamp(expires, UTC).isoformat()}
    )
    response.set_cookie(
        COOKIE_NAME, token, max_age=int(request.app[keys.SESSIONS].ttl_s), path="/",
        httponly=True, samesite="Strict", secure=request.secure,
    )
    return response


async def logout(request: web.Request) -> web.Response:
    token = request.cookies.get(COOKIE_NAME)
    if token is not None:
        request.app[keys.SESSIONS].revoke(token)
    response = web.json_response({"ok": True})
    response.del_cookie(COOKIE_NAME, path="/", samesite="Strict", secure=request.secure)
    return response


async def session(request: web.Request) -> web.Response:
    identity = request[keys.IDENTITY]
    expires = (
        datetime.fromtimestamp(identity.expires_at, UTC).isoformat()
        if identity.expires_at is not None else None
    )
    return web.json_response({"user": identity.user, "via": identity.via, "expires_at": expires})


async def session_state(request: web.Request) -> web.Response:
    """Whether this browser's cookie is a live session, answered 200 either way: the page asks
    it on load instead of provoking a 401 (which a browser logs as a console error)."""
    token = request.cookies.get(COOKIE_NAME)
    identity = request.app[keys.SESSIONS].verify(token) if token is not None else None
    if identity is None:
        return web.json_response({"logged_in": False, "user": None, "expires_at": None})
    expires = (
        datetime.fromtimestamp(identity.expires_at, UTC).isoformat()
        if identity.expires_at is not None else None
    )
    return web.json_response({"logged_in": True, "user": identity.user, "expires_at": expires})
