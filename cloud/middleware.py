"""Every error becomes ``application/problem+json`` (RFC 9457); every response gets security
headers; every request is timed for Prometheus; every WebSocket still open at shutdown is
closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.typedefs import Middleware

from cloud import appkeys
from cloud.errors import CloudError
from shared import problems

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    # Swagger UI needs its own inline styles; nothing is loaded from another origin.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
}


def respond(doc: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    """A problem document (``shared.problems``) as the response."""
    return web.Response(
        status=doc["status"],
        body=problems.encode(doc),
        content_type=problems.PROBLEM_TYPE,
        headers=headers,
    )


def problem_response(exc: problems.Problem, instance: str) -> web.Response:
    """What the middleware answers for ``exc`` (for a handler that answers one itself)."""
    return respond(exc.document(instance), exc.headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CloudError as exc:
        return problem_response(exc, request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return respond(*problems.http_error(
            exc.status, exc.reason, exc.headers, instance=request.path
        ))
    except Exception:
        doc = problems.internal_error(instance=request.path)
        log.exception(
            "unexpected error %s on %s %s", doc["error_id"], request.method, request.path
        )
        request.app[appkeys.METRICS].errors.inc()
        return respond(doc)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[appkeys.METRICS].request_seconds.labels(
            request.method, route, str(status)
        ).observe(time.perf_counter() - started)


def cors_middleware(origins: list[str]) -> Middleware:
    """Allow the listed origins (CORS is off when the list is empty)."""
    allowed = set(origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin in allowed:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return middleware


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")


class OpenSockets:
    """The app's WebSockets (edge streams, dashboards), seen as they are prepared, closed with
    1001 (going away) when the server shuts down. aiohttp waits for every handler to return
    before it stops, and a socket handler returns only when its socket closes: an edge holding
    its stream kept SIGTERM waiting half a minute. Its peer reconnects, to another instance."""

    CLOSE_TIMEOUT_S = 2.0  # for the peer's close frame; then the connection is dropped

    def __init__(self) -> None:
        self._open: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()

    async def track(self, request: web.Request, response: web.StreamResponse) -> None:
        """An ``on_response_prepare`` hook."""
        if isinstance(response, web.WebSocketResponse):
            self._open.add(response)

    async def close_all(self, app: web.Application) -> None:
        """An ``on_shutdown`` hook."""
        sockets = [ws for ws in self._open if not ws.closed]
        if sockets:
            log.info("closing %d WebSocket(s) for shutdown", len(sockets))
            await asyncio.gather(*(self._close(ws) for ws in sockets))

    async def _close(self, ws: web.WebSocketResponse) -> None:
        # A close cut short by the timeout drops the connection (aiohttp closes the transport).
        with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
            await asyncio.wait_for(
                ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down"),
                self.CLOSE_TIMEOUT_S,
            )
