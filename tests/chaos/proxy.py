"""A fault-injecting HTTP and WebSocket proxy on loopback, between an edge and its cloud(s).

Requests are spread round robin over the upstream cloud instances. A ``faults`` callable picks
what happens to each plain HTTP request (the batch uploads, the polling fallback):

- ``"5xx"``: answered 503 by the proxy; the cloud never sees the request;
- ``"timeout"``: forwarded (the cloud commits it), the answer held past the edge's request
  timeout, so the edge gives up and sends the batch again;
- ``"late"``: held past the edge's timeout *before* being forwarded, so it reaches the cloud
  after (or racing with) the edge's retry: a stale duplicate arriving late;
- ``"cut"``: forwarded (the cloud commits it), then the edge's connection is aborted before it
  sees the answer;
- ``None``: passed through.

WebSockets (the down stream) are piped both ways; ``cut_streams()`` drops them all. With
``down`` set, every new connection is dropped at once and open streams are cut (the cloud is
unreachable for the edge while it still serves its users directly). Hooks let a test act at an
exact moment, given the request path and the upstream chosen: ``on_request`` just before the
request goes upstream (kill that instance now and the request dies with it, mid-transaction
or before), ``on_answer`` once the cloud's answer is in the proxy and not yet relayed (kill the
edge now and it never hears of a batch the cloud committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.conftest import free_port

log = logging.getLogger(__name__)

Fault = str | None
Hook = Callable[[str, str], Awaitable[None]]

# Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus what aiohttp sets itself.
_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})


def _forwardable(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _HOP}


@dataclass
class ProxyStats:
    requests: int = 0
    forwarded: int = 0
    upstream_errors: int = 0  # an instance was down: answered 502
    upstream_failures: Counter[str] = field(default_factory=Counter)  # by exception type
    faults: Counter[str] = field(default_factory=Counter)
    refused: int = 0  # connections dropped while down
    streams: int = 0
    by_upstream: Counter[str] = field(default_factory=Counter)


class FaultProxy:
    def __init__(
        self,
        upstreams: list[str],
        *,
        faults: Callable[[str, str], Fault] | None = None,
        hold_s: float = 1.0,
    ) -> None:
        self.upstreams = list(upstreams)
        # (method, path) -> fault; only plain HTTP requests are asked.
        self.faults: Callable[[str, str], Fault] = faults or (lambda method, path: None)
        self.hold_s = hold_s
        self.down = False
        self.on_request: Hook | None = None
        self.on_answer: Hook | None = None
        self.stats = ProxyStats()
        self.url = ""
        self._turn = itertools.count()
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # ---- lifecycle ----
    async def start(self, port: int | None = None) -> str:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Bodies are relayed as they came (gzip stays gzip); a handler whose client gave up runs
        # on, so a "timeout" still reaches the cloud like a real slow network would.
        self._runner = web.AppRunner(app, auto_decompress=False, access_log=None,
                                     handler_cancellation=False)
        await self._runner.setup()
        port = port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60),
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
        )
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        await self.cut_streams()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def cut_streams(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)

    async def set_down(self, down: bool) -> None:
        self.down = down
        if down:
            await self.cut_streams()

    def _upstream(self) -> str:
        if not self.upstreams:
            raise LookupError("no upstream")
        return self.upstreams[next(self._turn) % len(self.upstreams)]

    # ---- requests ----
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        if self.down:
            self.stats.refused += 1
            return _abort(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._stream(request)
        fault = self.faults(request.method, request.path)
        if fault is not None:
            self.stats.faults[fault] += 1
        body = await request.read()
        if fault == "5xx":
            return web.json_response({"detail": "injected by the proxy"}, status=503)
        if fault == "late":
            await asyncio.sleep(self.hold_s)
        upstream = self._upstream()
        assert self._session is not None
        if self.on_request is not None:
            await self.on_request(request.path, upstream)
        try:
            async with self._session.request(
                request.method, upstream + request.path_qs, data=body,
                headers=_forwardable(request.headers), allow_redirects=False,
            ) as answer:
                payload = await answer.read()
                status, headers = answer.status, _forwardable(answer.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # A stopped instance behind a load balancer: 502, the edge retries elsewhere.
            self.stats.upstream_errors += 1
            self.stats.upstream_failures[type(exc).__name__] += 1
            log.debug("upstream %s failed: %r", upstream, exc)
            return web.json_response({"detail": f"upstream: {exc!r}"}, status=502)
        self.stats.forwarded += 1
        self.stats.by_upstream[upstream] += 1
        if self.on_answer is not None:
            await self.on_answer(request.path, upstream)
        if fault == "cut":
            return _abort(request)
        if fault == "timeout":
            await asyncio.sleep(self.hold_s)
        return web.Response(body=payload, status=status, headers=headers)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        upstream = self._upstream().replace("http://", "ws://", 1)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        try:
            up = await self._session.ws_connect(upstream + request.path_qs, headers=headers,
                                                autoping=True, heartbeat=None)
        except aiohttp.WSServerHandshakeError as exc:
            return web.json_response({"detail": exc.message}, status=exc.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.upstream_errors += 1
            return web.json_response({"detail": f"upstream: {exc!r}"}, status=502)
        down = web.WebSocketResponse(autoping=True)
        await down.prepare(request)
        self.stats.streams += 1
        self._sockets.add(down)

        async def pipe(src: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
                       dst: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)

        tasks = [asyncio.create_task(pipe(down, up)), asyncio.create_task(pipe(up, down))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._sockets.discard(down)
            with contextlib.suppress(Exception):
                await up.close()
            with contextlib.suppress(Exception):
                await down.close()
        return down


def _abort(request: web.Request) -> web.StreamResponse:
    """Drop the client's connection without an answer (what a crash or a cut cable looks like)."""
    if request.transport is not None:
        request.transport.abort()
    raise ConnectionResetError("dropped by the proxy")
