"""The route table's machinery: each ``Route`` declares its scope, minimum role and models.

One wrapper authenticates, resolves the resource's farm and the caller's role (404 for
strangers, 403 for a too-low role), validates path, query and body with pydantic, and serialises
the response. The same declarations generate the OpenAPI document and the authorization-matrix
tests, so no endpoint can skip a check or the docs.
"""

from __future__ import annotations

import json
import logging
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from cloud import appkeys
from cloud.auth.access import Access, Role, User, decide
from cloud.db import access as access_db
from cloud.db import users as users_db
from cloud.db.database import Database
from cloud.errors import (
    BadRequest,
    Conflict,
    NotFound,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.topics import is_valid_id

log = logging.getLogger(__name__)

Scope = Literal["public", "user", "farm", "room", "device", "edge"]
# Room, device and edge ids are per farm: when one names a resource in more than one of the
# caller's farms, the query parameter ``farm_id`` says which (otherwise a 409 asks for it).
FARM_PARAM = "farm_id"
# The path parameter that names the resource a scope is checked against.
SCOPE_PARAM: dict[str, str] = {
    "farm": "farm_id",
    "room": "room_id",
    "device": "device_id",
    "edge": "edge_id",
}
JSON_TYPE = "application/json"
Handler = Callable[["Call"], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    scope: Scope
    role: Role = "viewer"
    body: Any = None
    query: type[BaseModel] | None = None
    response: Any = None
    status: int = 200
    tag: str = ""
    csv: bool = False
    errors: tuple[int, ...] = field(default=())

    @property
    def summary(self) -> str:
        doc = (self.handler.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else self.handler.__name__.replace("_", " ")

    @property
    def description(self) -> str:
        doc = (self.handler.__doc__ or "").strip()
        return "\n".join(line.strip() for line in doc.splitlines()[1:]).strip()

    @cached_property
    def body_adapter(self) -> TypeAdapter[Any] | None:
        return None if self.body is None else TypeAdapter(self.body)

    @cached_property
    def response_adapter(self) -> TypeAdapter[Any] | None:
        return None if self.response is None else TypeAdapter(self.response)

    @cached_property
    def list_params(self) -> frozenset[str]:
        """Query fields typed as lists (``?metric=a&metric=b``)."""
        if self.query is None:
            return frozenset()
        return frozenset(
            name for name, info in self.query.model_fields.items() if _is_list(info.annotation)
        )


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(_is_list(arg) for arg in typing.get_args(annotation))


@dataclass
class Call:
    """What a handler gets: the validated inputs, the caller and the app's services."""

    request: web.Request
    route: Route
    user: User | None = None
    access: Access | None = None
    body: Any = None
    query: Any = None

    @property
    def db(self) -> Database:
        return self.request.app[appkeys.DB]

    @property
    def app(self) -> web.Application:
        return self.request.app

    def param(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def user_id(self) -> int:
        assert self.user is not None, "route is not public"
        return self.user.id

    @property
    def farm_id(self) -> str:
        assert self.access is not None, "route is not farm-scoped"
        return self.access.farm_id


def client_ip(request: web.Request) -> str:
    if request.app[appkeys.SETTINGS].trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            return forwarded.split(",")[0].strip()
    return request.remote or "unknown"


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(request: web.Request) -> User:
    """The caller of the request's bearer token."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("a bearer token is required")
    return await user_for_token(request.app, token)


async def user_for_token(app: web.Application, token: str) -> User:
    """The caller of a token: one of ours (HS256), or a Cognito pool's when configured.
    Also what the dashboard's WebSocket checks, whichever way the token arrives."""
    db = app[appkeys.DB]
    cognito = app.get(appkeys.COGNITO)
    if cognito is not None and cognito.claims(token):
        identity = await cognito.verify(token)
        app[appkeys.LIMITS].api_token.take(identity.token_id)
        row = await users_db.for_cognito(
            db, identity.sub, identity.email, create=cognito.config.create_users
        )
        if row is None:
            raise Unauthorized(
                "no account for this Cognito user; present an ID token with a verified email once"
            )
    else:
        claims = app[appkeys.TOKENS].verify(token)
        app[appkeys.LIMITS].api_token.take(claims.token_id or token[-16:])
        row = await users_db.by_id(db, claims.user_id)
        revoked = row and row["sessions_revoked_at"]
        if revoked and claims.issued_at <= revoked.timestamp():
            # "Sign out everywhere" ends this session now, not when the token expires.
            raise Unauthorized("signed out everywhere; sign in again")
    if row is None or not row["is_active"]:
        raise Unauthorized("account disabled or removed")
    return User(id=row["id"], email=row["email"], is_admin=row["is_admin"])


async def authorize(request: web.Request, route: Route, user: User) -> Access | None:
    if route.scope in ("public", "user"):
        return None
    param = SCOPE_PARAM[route.scope]
    resource_id = request.match_info[param]
    what = route.scope
    farm_id = None if route.scope == "farm" else request.query.get(FARM_PARAM)
    if farm_id is not None and not is_valid_id(farm_id):
        raise NotFound(f"{what} not found")
    rows = await access_db.locate_all(
        request.app[appkeys.DB],
        route.scope,
        resource_id,
        user.id,
        farm_id=farm_id,
        is_admin=user.is_admin,
    )
    if len(rows) > 1:
        # Ids are per farm: this one is in several of the caller's farms. Only those where the
        # caller may see it count; more than one of those, and the caller must say which.
        rows = [row for row in rows if _visible(what, row, user)]
        if len(rows) > 1:
            farms = ", ".join(row["farm_id"] for row in rows)
            raise Conflict(
                f"{what} {resource_id} is in more than one of your farms ({farms}):"
                f" add ?{FARM_PARAM}= to say which"
            )
    return _decide(what, rows[0] if rows else None, user, route.role)


def _decide(what: str, row: dict[str, Any] | None, user: User, needed: Role) -> Access:
    return decide(
        what=what,
        farm_id=row["farm_id"] if row else None,
        role=row["role"] if row else None,
        is_admin=user.is_admin,
        needed=needed,
        room_id=row["room_id"] if row else None,
        all_rooms=bool(row["all_rooms"]) if row else True,
        granted_rooms=frozenset(row["granted"] or ()) if row else frozenset(),
    )


def _visible(what: str, row: dict[str, Any], user: User) -> bool:
    try:
        _decide(what, row, user, "viewer")
    except NotFound:
        return False
    return True


def _parse_query(request: web.Request, route: Route) -> Any:
    assert route.query is not None
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        data[key] = values if key in route.list_params else values[-1]
    try:
        return route.query.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed.from_pydantic(exc, "query") from None


async def _parse_body(request: web.Request, route: Route) -> Any:
    assert route.body_adapter is not None
    if request.content_type != JSON_TYPE:
        raise UnsupportedMediaType(f"send the body as {JSON_TYPE}")
    raw = await request.read()
    try:
        doc = json.loads(raw, parse_constant=_not_json) if raw else None
    except (ValueError, RecursionError):
        raise BadRequest("malformed JSON body") from None
    if _has_nul(doc):
        # PostgreSQL text cannot hold U+0000; no field of ours has a use for it.
        raise BadRequest("strings must not contain U+0000")
    if doc is None:
        raise ValidationFailed([{"field": "body", "message": "body required", "type": "missing"}])
    try:
        # Strict: JSON types must be the documented ones ("true" is not a boolean, 1.5 not an
        # integer); JSON strings still become times, dates and enums.
        return route.body_adapter.validate_json(raw, strict=True)
    except ValidationError as exc:
        raise ValidationFailed.from_pydantic(exc, "body") from None


def _not_json(constant: str) -> Any:
    # Python's json reads NaN and ±Infinity, which JSON (and PostgreSQL's jsonb) does not have.
    raise ValueError(f"{constant} is not JSON")


def _has_nul(doc: Any) -> bool:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def _check_path(request: web.Request) -> None:
    """Path ids follow the topic-scheme charset; anything else cannot exist (404, not 500)."""
    for name, value in request.match_info.items():
        if name.endswith("_id") and not (is_valid_id(value) or value.isdigit()):
            raise NotFound(f"{name.removesuffix('_id')} not found")


def make_view(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def view(request: web.Request) -> web.StreamResponse:
        _check_path(request)
        call = Call(request=request, route=route)
        if route.scope != "public":
            call.user = await authenticate(request)
            call.access = await authorize(request, route, call.user)
        if route.query is not None:
            call.query = _parse_query(request, route)
        if route.body is not None:
            call.body = await _parse_body(request, route)
        result = await route.handler(call)
        if isinstance(result, web.StreamResponse):
            return result
        if result is None:
            return web.Response(status=204 if route.status in (200, 204) else route.status)
        assert route.response_adapter is not None, f"{route.path} returns a body but has no model"
        payload = route.response_adapter.dump_json(result, by_alias=True)
        return web.Response(body=payload, status=route.status, content_type=JSON_TYPE)

    view.__name__ = route.handler.__name__
    return view


def register(app: web.Application, routes: list[Route]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, make_view(route), name=None)
