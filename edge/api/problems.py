"""Every error the local API answers is ``application/problem+json`` (RFC 9457); every response
carries the security headers, including a CSP that forbids inline scripts."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final

from aiohttp import web
from pydantic import ValidationError

from edge.automation import InvalidRequest, NotFound

log = logging.getLogger(__name__)

PROBLEM_TYPE: Final = "application/problem+json"
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
# aiohttp's own HTTP errors (unknown path, wrong method, body too large) → titles and slugs.
_HTTP_SLUGS: Final = {
    404: ("Not found", "not-found"),
    405: ("Method not allowed", "method-not-allowed"),
    413: ("Payload too large", "payload-too-large"),
}


class ApiError(Exception):
    """An answer other than success: ``status``/``title``/``slug`` say which, the message why."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    slug: ClassVar[str] = "bad-request"

    def __init__(
        self, detail: str = "", *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra


class BadRequest(ApiError):
    pass


class ValidationFailed(ApiError):
    """``errors`` lists ``{"field", "message", "type"}``, one per offending field."""

    status = 422
    title = "Validation failed"
    slug = "validation-failed"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        super().__init__(f"{first['field']}: {first['message']}", errors=errors)

    @classmethod
    def from_pydantic(cls, exc: ValidationError, *, where: str = "") -> ValidationFailed:
        errors = []
        for err in exc.errors(include_url=False, include_input=False, include_context=False):
            loc = ".".join(str(p) for p in err["loc"]) or where or "body"
            errors.append({"field": loc, "message": err["msg"], "type": err["type"]})
        return cls(errors)


class Unauthorized(ApiError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class UnsupportedMediaType(ApiError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


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


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    instance: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body = {
        "type": f"/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        **extra,
    }
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type=PROBLEM_TYPE, headers=headers
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place an exception becomes an HTTP answer."""
    try:
        return await handler(request)
    except ApiError as exc:
        return problem(
            exc.status, exc.title, exc.detail, slug=exc.slug, instance=request.path,
            headers=exc.headers, **exc.extra,
        )
    except NotFound as exc:
        return problem(404, "Not found", str(exc), slug="not-found", instance=request.path)
    except InvalidRequest as exc:
        return problem(
            422, "Request refused", str(exc), slug="invalid-request", instance=request.path
        )
    except ValidationError as exc:  # a model validated outside schemas.parse_* (still bad input)
        failed = ValidationFailed.from_pydantic(exc)
        return problem(
            failed.status, failed.title, failed.detail, slug=failed.slug,
            instance=request.path, **failed.extra,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        title, slug = _HTTP_SLUGS.get(exc.status, (exc.reason, "http-error"))
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem(
            exc.status, title, exc.reason, slug=slug, instance=request.path, headers=headers
        )
    except Exception:
        error_id = uuid.uuid4().hex[:12]
        log.exception("unexpected error %s on %s %s", error_id, request.method, request.path)
        return problem(
            500,
            "Internal server error",
            f"an unexpected error occurred; quote error id {error_id} (it is in the edge log)",
            slug="internal",
            instance=request.path,
            error_id=error_id,
        )


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, static files and errors included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/") or request.path == "/health":
        response.headers.setdefault("Cache-Control", "no-store")
    else:
        # The page and its assets are revalidated each load, so an upgrade shows at once.
        response.headers.setdefault("Cache-Control", "no-cache")
