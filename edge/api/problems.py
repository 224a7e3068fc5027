"""Every error the local API answers is ``application/problem+json`` (RFC 9457) in the format
``shared.problems`` defines for the cloud too; every response carries the security headers,
including a CSP that forbids inline scripts."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from pydantic import ValidationError

from edge import automation
from shared import problems

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    # Nothing inline, nothing from another origin: the page is index.html + app.js + style.css.
    # No HSTS: the Pi serves plain HTTP on the farm's LAN, where browsers ignore it anyway.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
}


class ApiError(problems.Problem):
    """Base of the local API's errors; the format is ``shared.problems``, as the cloud's."""


class BadRequest(ApiError, problems.BadRequest):
    pass


class ValidationFailed(ApiError, problems.ValidationFailed):
    """``errors`` lists ``{"field", "message", "type"}``, one per offending field."""


class Unauthorized(ApiError, problems.Unauthorized):
    pass


class Forbidden(ApiError, problems.Forbidden):
    pass


class NotFound(ApiError, problems.NotFound):
    """What the automation engine's ``NotFound`` (a room, device or rule) answers."""


class RequestRefused(ApiError):
    """What the automation engine's ``InvalidRequest`` answers."""

    status = 422
    title = "Request refused"
    slug = "invalid-request"


class Conflict(ApiError):
    """The request clashes with the edge's current state (e.g. the device already exists)."""

    status = 409
    title = "Conflict"
    slug = "conflict"


class UnsupportedMediaType(ApiError, problems.UnsupportedMediaType):
    pass


class TooManyAttempts(ApiError):
    status = 429
    title = "Too many failed logins"
    slug = "too-many-attempts"

    def __init__(self, retry_after_s: float) -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__(
            f"too many failed logins from this address; try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
            retry_after_s=seconds,
        )


class LoginNotConfigured(ApiError):
    status = 503
    title = "Local login is not configured"
    slug = "login-not-configured"


def respond(doc: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    """A problem document (``shared.problems``) as the response."""
    return web.Response(
        status=doc["status"],
        body=problems.encode(doc),
        content_type=problems.PROBLEM_TYPE,
        headers=headers,
    )


def problem_response(exc: problems.Problem, instance: str) -> web.Response:
    return respond(exc.document(instance), exc.headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place an exception becomes an HTTP answer."""
    try:
        return await handler(request)
    except ApiError as exc:
        return problem_response(exc, request.path)
    except automation.NotFound as exc:
        return problem_response(NotFound(str(exc)), request.path)
    except automation.InvalidRequest as exc:
        return problem_response(RequestRefused(str(exc)), request.path)
    except ValidationError as exc:  # a model validated outside schemas.parse_* (still bad input)
        return problem_response(ValidationFailed.from_pydantic(exc), request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return respond(*problems.http_error(
            exc.status, exc.reason, exc.headers, instance=request.path
        ))
    except Exception:
        doc = problems.internal_error(instance=request.path, hint="it is in the edge log")
        log.exception(
            "unexpected error %s on %s %s", doc["error_id"], request.method, request.path
        )
        return respond(doc)


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, static files and errors included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/") or request.path == "/health":
        response.headers.setdefault("Cache-Control", "no-store")
    else:
        # The page and its assets are revalidated each load, so an upgrade shows at once.
        response.headers.setdefault("Cache-Control", "no-cache")
