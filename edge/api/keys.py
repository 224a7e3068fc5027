"""Typed keys for what the local API's handlers share: the edge's components and auth state."""

from __future__ import annotations

from aiohttp import web

from edge.api.sessions import Identity, LoginThrottle, SessionSigner
from edge.automation import Automation
from edge.commands import CommandTracker
from edge.config import EdgeSettings
from edge.ingest import Ingest
from edge.onboarding import Onboarding
from edge.store.db import Database

SETTINGS = web.AppKey("settings", EdgeSettings)
DB = web.AppKey("db", Database)
AUTOMATION = web.AppKey("automation", Automation)
INGEST = web.AppKey("ingest", Ingest)
COMMANDS = web.AppKey("commands", CommandTracker)
SESSIONS = web.AppKey("sessions", SessionSigner)
THROTTLE = web.AppKey("login_throttle", LoginThrottle)
ONBOARDING = web.AppKey("onboarding", Onboarding)  # set by the edge app (absent: 404)

# Who made this request (set by the auth middleware on every authenticated request).
IDENTITY = web.RequestKey("identity", Identity)
