"""The cloud's composition root: ``init_app(settings)`` builds the aiohttp application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from importlib import metadata

from aiohttp import web
from aiohttp.typedefs import Middleware

from cloud import appkeys
from cloud.api import all_routes
from cloud.api.routing import register
from cloud.api.system import add_system_routes
from cloud.auth.cognito import CognitoVerifier
from cloud.auth.passwords import Passwords
from cloud.auth.ratelimit import LoginThrottle, SlidingWindow, TokenBucket
from cloud.auth.tokens import AccessTokens, load_jwt_secret
from cloud.config import CloudSettings, mask_dsn
from cloud.db.database import Database
from cloud.db.embedded import resolve_dsn
from cloud.db.migrate import migrate
from cloud.jobs.worker import jobs_ctx
from cloud.live.service import setup_live
from cloud.metrics import Metrics
from cloud.middleware import (
    OpenSockets,
    add_security_headers,
    compression_middleware,
    cors_middleware,
    metrics_middleware,
    problem_middleware,
)
from cloud.openapi import build_spec
from cloud.page import add_page_routes
from cloud.sync.service import edge_sync_ctx

log = logging.getLogger(__name__)

CONFIRMATIONS_LOGGED_PER_HOUR = 10
LOGIN_FORGET_S = 86_400  # failed logins of an account from an address count for a day


def version() -> str:
    try:
        return metadata.version("smartfarm")
    except metadata.PackageNotFoundError:
        return "0.0.0"


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    dsn, embedded = await resolve_dsn(settings)
    try:
        if settings.migrate_on_start:
            applied = await migrate(dsn)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        db = await Database.connect(
            dsn,
            min_size=settings.database.pool_min,
            max_size=settings.database.pool_max,
            connect_timeout=settings.database.connect_timeout_s,
        )
        log.info("connected to %s", mask_dsn(dsn))
        app[appkeys.DB] = db
        app[appkeys.METRICS].watch_pool(db.stats)
        try:
            yield
        finally:
            await db.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def init_app(settings: CloudSettings) -> web.Application:
    middlewares: list[Middleware] = [metrics_middleware, compression_middleware, problem_middleware]
    if settings.cors_origins:
        middlewares.insert(1, cors_middleware(settings.cors_origins))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    auth = settings.auth
    app[appkeys.SETTINGS] = settings
    app[appkeys.METRICS] = Metrics()
    app[appkeys.PASSWORDS] = Passwords(auth)
    app[appkeys.TOKENS] = AccessTokens(
        load_jwt_secret(settings), issuer=auth.issuer, ttl_s=auth.access_ttl_s
    )
    app[appkeys.LIMITS] = appkeys.Limits(
        login_ip=SlidingWindow(auth.login_per_ip, auth.login_window_s),
        login_failures=LoginThrottle(
            auth.login_per_account, max_delay_s=auth.login_window_s, forget_s=LOGIN_FORGET_S
        ),
        api_token=SlidingWindow(auth.api_per_token, 60),
        unauthenticated=TokenBucket(
            auth.unauthenticated_per_min, auth.unauthenticated_per_min / 60
        ),
        # A real destination confirmation comes once per topic rule destination: a few an hour
        # in the log is plenty, and bounds it whatever the number of addresses sending them.
        confirmations=SlidingWindow(CONFIRMATIONS_LOGGED_PER_HOUR, 3600),
    )
    if auth.cognito.enabled:
        app[appkeys.COGNITO] = CognitoVerifier(auth.cognito)
        log.info("accepting Cognito tokens from %s", auth.cognito.issuer)
    routes = all_routes()
    register(app, routes)
    add_system_routes(app, build_spec(routes, version=version()), version())
    add_page_routes(app)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(edge_sync_ctx)  # needs the database
    app.cleanup_ctx.append(jobs_ctx)  # needs the database
    setup_live(app)  # needs the database
    app.on_response_prepare.append(add_security_headers)
    sockets = OpenSockets()  # edge streams and dashboards: closed at shutdown, not waited for
    app.on_response_prepare.append(sockets.track)
    app.on_shutdown.append(sockets.close_all)
    return app
