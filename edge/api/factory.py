"""The local API's app factory: the edge's components on typed keys, middlewares, routes."""

from __future__ import annotations

from aiohttp import web

from edge.api import keys
from edge.api.auth import auth_middleware
from edge.api.problems import add_security_headers, problem_middleware
from edge.api.routes import add_routes
from edge.api.sessions import LoginThrottle, SessionSigner
from edge.automation import Automation
from edge.commands import CommandTracker
from edge.config import EdgeSettings
from edge.ingest import Ingest
from edge.store.db import Database

# Every body the API takes is a few hundred bytes of JSON.
MAX_BODY_BYTES = 64 * 1024


def create_api_app(
    *,
    settings: EdgeSettings,
    db: Database,
    automation: Automation,
    ingest: Ingest,
    commands: CommandTracker,
) -> web.Application:
    """The local API + page. The caller owns (opens, closes) every component passed in."""
    # problem_middleware is outermost so auth failures become problems too.
    app = web.Application(
        middlewares=[problem_middleware, auth_middleware], client_max_size=MAX_BODY_BYTES
    )
    app[keys.SETTINGS] = settings
    app[keys.DB] = db
    app[keys.AUTOMATION] = automation
    app[keys.INGEST] = ingest
    app[keys.COMMANDS] = commands
    app[keys.SESSIONS] = SessionSigner()
    app[keys.THROTTLE] = LoginThrottle()
    app.on_response_prepare.append(add_security_headers)
    add_routes(app)
    return app
