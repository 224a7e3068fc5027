"""Operational endpoints: health, Prometheus metrics, the OpenAPI document and Swagger UI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field

from cloud import appkeys
from cloud.api.routing import Call, Route
from cloud.api.schemas import Out
from cloud.db import downlink as downlink_db
from cloud.errors import CloudError
from cloud.jobs.health import job_health

VERSION_KEY = web.AppKey("version", str)
SPEC_KEY = web.AppKey("openapi", bytes)

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>smartfarm API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>
"""
# A separate file, not an inline script: the Content-Security-Policy allows only 'self' scripts.
DOCS_INIT = """window.ui = SwaggerUIBundle({url: "/apispec.json", dom_id: "#swagger-ui",
  deepLinking: true, persistAuthorization: true});
"""


class EdgesHealth(Out):
    registered: int = Field(description="edge gateways registered, all farms")
    connected: int = Field(description="edges seen (stream, poll or batch) within window_s")
    window_s: float


class HealthOut(Out):
    status: Literal["ok", "degraded"]
    version: str
    database: Literal["ok", "down"]
    edges: EdgesHealth | None = Field(description="null while the database is down")
    jobs: Literal["ok", "down", "not configured"] = Field(
        default="not configured", description="the background job queue"
    )
    job_queue: dict[str, int | float | None] | None = Field(
        default=None,
        description="waiting, scheduled, running, oldest_waiting_s, workers, failed_24h, "
        "retried_24h (all workers)",
    )
    pool: dict[str, int] = Field(default_factory=dict, description="database pool statistics")


async def _edges(call: Call) -> EdgesHealth | None:
    window = call.app[appkeys.SETTINGS].sync.online_window_s
    try:
        counts = await downlink_db.presence(call.db, window_s=window)
    except CloudError:  # the database went away since the ping
        return None
    return EdgesHealth(
        registered=counts.get("total", 0), connected=counts.get("online", 0), window_s=window
    )


async def health(call: Call) -> HealthOut | web.Response:
    """Liveness and dependencies (503 when the database is down)
    Counts only, no ids: it is public, for load balancers and monitoring."""
    db_ok = await call.db.ping()
    edges = await _edges(call) if db_ok else None
    db_ok = db_ok and edges is not None
    jobs, job_queue = await job_health(call.app) if db_ok else ("down", None)
    body = HealthOut(
        status="ok" if db_ok else "degraded",
        version=call.app[VERSION_KEY],
        database="ok" if db_ok else "down",
        edges=edges,
        jobs=jobs,
        job_queue=job_queue,
        pool=call.db.stats(),
    )
    if db_ok:
        return body
    return web.Response(
        status=503, body=body.model_dump_json().encode(), content_type="application/json"
    )


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[appkeys.METRICS].registry
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def apispec(request: web.Request) -> web.Response:
    return web.Response(body=request.app[SPEC_KEY], content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html")


async def docs_init(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_INIT, content_type="application/javascript")


async def docs_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/docs/")


def swagger_ui_dir() -> Path:
    import swagger_ui_bundle

    return Path(str(swagger_ui_bundle.swagger_ui_path))


def add_system_routes(app: web.Application, spec: dict[str, object], version: str) -> None:
    app[VERSION_KEY] = version
    app[SPEC_KEY] = json.dumps(spec).encode()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/apispec.json", apispec)
    app.router.add_get("/docs", docs_redirect)
    app.router.add_get("/docs/", docs)
    app.router.add_get("/docs/init.js", docs_init)
    app.router.add_static("/docs/static/", swagger_ui_dir(), show_index=False)


ROUTES = [
    Route("GET", "/health", health, "public", response=HealthOut, tag="system", errors=(503,)),
]
