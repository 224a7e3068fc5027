"""Typed keys for the objects ``init_app`` shares with handlers (no module-level state)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from cloud.auth.cognito import CognitoVerifier
from cloud.auth.passwords import Passwords
from cloud.auth.ratelimit import LoginThrottle, SlidingWindow, TokenBucket
from cloud.auth.tokens import AccessTokens
from cloud.config import CloudSettings
from cloud.db.database import Database
from cloud.jobs.queue import JobQueue
from cloud.metrics import Metrics


@dataclass
class Limits:
    """Login attempts per IP, failed logins per account and IP, API requests per token;
    unauthenticated requests per client address and destination confirmations logged (all
    addresses)."""

    login_ip: SlidingWindow
    login_failures: LoginThrottle
    api_token: SlidingWindow
    unauthenticated: TokenBucket
    confirmations: SlidingWindow


SETTINGS = web.AppKey("settings", CloudSettings)
DB = web.AppKey("db", Database)
PASSWORDS = web.AppKey("passwords", Passwords)
TOKENS = web.AppKey("tokens", AccessTokens)
LIMITS = web.AppKey("limits", Limits)
METRICS = web.AppKey("metrics", Metrics)
# Present only when Cognito is configured.
COGNITO = web.AppKey("cognito", CognitoVerifier)
# The job queue (defer jobs, queue state), and the in-process worker when it runs.
JOBS = web.AppKey("jobs", JobQueue)
JOB_WORKER = web.AppKey("job_worker", asyncio.Task)
