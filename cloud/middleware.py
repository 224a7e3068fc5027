"""Every error becomes ``application/problem+json`` (RFC 9457); every response gets security
headers; every request is timed for Prometheus; every WebSocket still open at shutdown is
closed; every JSON or text answer of a kilobyte or more is gzipped for a client that accepts it."""

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
from aiohttp.web_response import ContentCoding

from cloud import appkeys
from cloud.errors import CloudError
from cloud.page import accepts_gzip
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


COMPRESS_MIN_BYTES = 1024  # below this the gzip header and the CPU cost more than they save
_COMPRESSIBLE = ("application/json", "application/problem+json", "application/x-ndjson",
                 "application/geo+json", "text/")


def compressible(response: web.StreamResponse) -> bool:
    """A body worth gzipping: text or JSON (``+json`` types too), not already encoded. Parquet,
    images and the like are compressed already and left alone."""
    if response.headers.get("Content-Encoding") or response.status in (204, 304):
        return False
    ctype = response.content_type
    return ctype.startswith(_COMPRESSIBLE) or ctype.endswith("+json")


def _vary(response: web.StreamResponse, header: str) -> None:
    present = [v.strip().lower() for v in response.headers.get("Vary", "").split(",") if v.strip()]
    if header.lower() not in present and "*" not in present:
        response.headers["Vary"] = ", ".join([*filter(None, [response.headers.get("Vary")]),
                                               header])


def compress_stream(request: web.Request, response: web.StreamResponse) -> None:
    """For a handler that streams (``StreamResponse`` it prepares itself, e.g. a CSV export):
    call before ``prepare()`` to gzip the stream chunk by chunk when the client accepts it."""
    if accepts_gzip(request) and compressible(response):
        response.enable_compression(ContentCoding.gzip)
        _vary(response, "Accept-Encoding")


@web.middleware
async def compression_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Gzip a whole JSON or text answer of ``COMPRESS_MIN_BYTES`` or more (aiohttp compresses it
    in its executor when it is large). Left as they are: WebSockets and other responses the
    handler has already prepared (streams), file responses, HEAD requests, bodies already
    encoded, and clients that do not send ``Accept-Encoding: gzip``. Every compressible answer
    says ``Vary: Accept-Encoding`` so a cache keeps both forms apart."""
    response = await handler(request)
    if (
        type(response) is not web.Response
        or response.prepared
        or not compressible(response)
        or not isinstance(response.body, bytes | bytearray)
    ):
        return response
    if len(response.body) < COMPRESS_MIN_BYTES:
        return response
    _vary(response, "Accept-Encoding")
    if request.method != "HEAD" and accepts_gzip(request):
        response.enable_compression(ContentCoding.gzip)
    return response


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
