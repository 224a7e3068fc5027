"""``GET /api/ws``: the dashboard's live socket (WebSocket, JSON text frames).

Authentication is the API's own (``user_for_token``): the access token in ``?token=`` (checked
before the upgrade: a bad one is a plain 401) or in the first message, ``{"type": "auth",
"token": …}``, within ``live.auth_timeout_s``. The socket closes with 4401 when the token expires
unless a fresh one is sent the same way. Subscriptions are authorized one by one like API calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Literal

import jwt
from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from cloud import appkeys
from cloud.api.routing import Call, Route, user_for_token
from cloud.auth.access import User
from cloud.errors import BadRequest, CloudError
from cloud.live.client import LiveClient
from cloud.live.events import CLOSE_UNAUTHORIZED, message
from cloud.live.hub import LiveHub
from cloud.live.service import LIVE
from shared.models import Id

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthMsg(_Msg):
    type: Literal["auth"]
    token: str = Field(min_length=10, max_length=8192)


class SubscribeMsg(_Msg):
    type: Literal["subscribe", "unsubscribe"]
    farm_id: Id | None = None
    room_id: Id | None = None


class PingMsg(_Msg):
    type: Literal["ping"]
    id: int | str | None = None


ClientMsg = Annotated[AuthMsg | SubscribeMsg | PingMsg, Field(discriminator="type")]
# mypy 1.20 loses the TypeForm of an Annotated union alias read from its cache (arg-type
# there, none without a cache): ignore it either way.
CLIENT_MSG: TypeAdapter[AuthMsg | SubscribeMsg | PingMsg] = TypeAdapter(ClientMsg)  # type: ignore[arg-type,unused-ignore]


class WsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str | None = Field(
        default=None, max_length=8192, description="access token (or send it in the first message)"
    )


async def _authenticate(app: web.Application, token: str) -> tuple[User, float | None]:
    """The token's user and its expiry (unix seconds) — read after the signature checked out."""
    user = await user_for_token(app, token)
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.InvalidTokenError:
        exp = None
    return user, float(exp) if isinstance(exp, int | float) else None


async def _first_auth(
    ws: web.WebSocketResponse, app: web.Application, wait_s: float
) -> tuple[User, float | None] | None:
    try:
        msg = await ws.receive(timeout=wait_s)
        if msg.type != WSMsgType.TEXT:
            raise ValueError("not text")
        auth = CLIENT_MSG.validate_json(msg.data)
        if not isinstance(auth, AuthMsg):
            raise ValueError("not auth")
        return await _authenticate(app, auth.token)
    except (TimeoutError, ValueError, ValidationError):
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"send {type: auth, token} first")
    except CloudError as exc:
        await ws.close(code=CLOSE_UNAUTHORIZED, message=exc.detail.encode()[:120])
    return None


class Session:
    """One socket's conversation: the client, its token's expiry, its requests."""

    def __init__(self, hub: LiveHub, client: LiveClient, app: web.Application) -> None:
        self.hub = hub
        self.client = client
        self.app = app
        self._expiry: asyncio.TimerHandle | None = None

    def expire_at(self, exp: float | None) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if exp is None:
            return
        delay = max(0.0, exp - time.time())
        self._expiry = asyncio.get_running_loop().call_later(
            delay, self.client.drop, CLOSE_UNAUTHORIZED, "token expired"
        )

    def stop(self) -> None:
        self.expire_at(None)

    async def handle(self, raw: str) -> None:
        try:
            msg = CLIENT_MSG.validate_json(raw)
        except ValidationError as exc:
            err = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or "message"
            self.client.push(message("error", status=422, detail=f"{where}: {err['msg']}"))
            return
        if isinstance(msg, PingMsg):
            self.client.push(message("pong", id=msg.id, time=time.time()))
            return
        try:
            if isinstance(msg, AuthMsg) or msg.type == "subscribe":
                # Each costs database work: counted against the caller's API budget.
                self.app[appkeys.LIMITS].api_token.take(f"ws-user-{self.client.user.id}")
            if isinstance(msg, AuthMsg):
                await self._reauth(msg.token)
            elif msg.type == "subscribe":
                answer = await self.hub.subscribe(self.client, msg.farm_id, msg.room_id)
                self.client.push(message("subscribed", **answer))
            else:
                found = self.hub.unsubscribe(self.client, msg.farm_id, msg.room_id)
                self.client.push(message("unsubscribed", farm_id=msg.farm_id,
                                         room_id=msg.room_id, reason="requested" if found
                                         else "was not subscribed"))
        except CloudError as exc:
            request: dict[str, Any] = msg.model_dump(exclude={"token"})
            self.client.push(message("error", status=exc.status, detail=exc.detail,
                                     request=request, **_fields(exc)))

    async def _reauth(self, token: str) -> None:
        """A fresh token for the same user extends the socket's life."""
        user, exp = await _authenticate(self.app, token)
        if user.id != self.client.user.id:
            raise BadRequest("the token is another user's; open a new socket")
        self.expire_at(exp)
        self.client.push(message("authenticated", expires_at=exp))


def _fields(exc: CloudError) -> dict[str, Any]:
    errors = getattr(exc, "errors", None)
    return {"errors": errors} if errors else {}


async def live_socket(call: Call) -> web.StreamResponse:
    """Open the dashboard's live socket (WebSocket; access token in ?token= or a first message)

    Send `{"type": "subscribe", "farm_id": …}` or `{"type": "subscribe", "room_id": …}`; each is
    authorized like an API call (a farm or room you may not see answers an `error` with status
    404). The server then pushes `reading` (per device at most `live.reading_rate_hz` a second),
    `status`, `command` (every state: pending → delivered → acked/failed), `alert`,
    `recommendation`, `notification` and `edge` (online/offline) messages, `resync` when updates
    may have been missed, and `unsubscribed` when your access is revoked. `{"type": "ping"}` is
    answered with `pong`; `subscribe` and `auth` count against the per-token API rate limit (an
    `error` with status 429 past it). Close codes: 4401 authentication failed or token expired,
    4403 account disabled, 4408 too slow (the client fell too far behind).
    """
    hub = call.app[LIVE]
    config = hub.config
    # Uncompressed: messages are small JSON, and deflate per socket would cost CPU per client.
    ws = web.WebSocketResponse(
        heartbeat=config.heartbeat_s, max_msg_size=MAX_MESSAGE, compress=False
    )
    if not ws.can_prepare(call.request).ok:
        raise BadRequest("this endpoint is a WebSocket; send an Upgrade request")
    query: WsQuery = call.query
    found = await _authenticate(call.app, query.token) if query.token else None
    await ws.prepare(call.request)
    if found is None:
        found = await _first_auth(ws, call.app, config.auth_timeout_s)
        if found is None:
            return ws
    user, exp = found
    client = LiveClient(ws, call.request, user, queue_size=config.queue_size)
    session = Session(hub, client, call.app)
    hub.add(client)
    client.start()
    session.expire_at(exp)
    client.push(message("hello", user={"id": user.id, "email": user.email},
                        reading_rate_hz=config.reading_rate_hz, heartbeat_s=config.heartbeat_s,
                        expires_at=exp))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and not client.closed:
                await session.handle(msg.data)
    except ConnectionError:
        pass
    except Exception:
        # From here on the answer is the socket: an error closes it (the page reconnects).
        log.exception("live socket of user %d failed", user.id)
        client.drop(WSCloseCode.INTERNAL_ERROR, "internal error")
    finally:
        session.stop()
        hub.remove(client)
        await client.finish()
        if not ws.closed:
            await ws.close()
    return ws


ROUTES = [
    Route(
        "GET",
        "/api/ws",
        live_socket,
        "public",
        query=WsQuery,
        tag="live",
        errors=(400, 401, 422),
    ),
]
