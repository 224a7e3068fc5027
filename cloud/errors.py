"""The cloud's exception hierarchy; each maps to one HTTP status and an RFC 9457 problem type.

Handlers and repositories raise these; ``cloud.middleware`` turns them into
``application/problem+json``. Anything else reaching the middleware is a bug: logged with an id,
answered 500 without details.
"""

from __future__ import annotations

from typing import Any, ClassVar

from shared.errors import SmartfarmError


class CloudError(SmartfarmError):
    """Base: ``status`` and ``title`` are the HTTP answer, the message is the problem's detail."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    slug: ClassVar[str] = "bad-request"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra
        self.headers: dict[str, str] = {}


class BadRequest(CloudError):
    pass


class ValidationFailed(CloudError):
    """Input that fails validation; ``errors`` lists ``{"field", "message", "type"}``."""

    status = 422
    title = "Validation failed"
    slug = "validation-failed"

    def __init__(self, errors: list[dict[str, str]], detail: str = "") -> None:
        first = errors[0] if errors else {"field": "", "message": ""}
        super().__init__(detail or f"{first['field'] or 'body'}: {first['message']}")
        self.errors = errors


class Unauthorized(CloudError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or "missing, invalid or expired credentials")
        self.headers["WWW-Authenticate"] = 'Bearer realm="smartfarm"'


class Forbidden(CloudError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(CloudError):
    status = 404
    title = "Not found"
    slug = "not-found"


class Conflict(CloudError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class PayloadTooLarge(CloudError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class UnsupportedMediaType(CloudError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class RateLimited(CloudError):
    status = 429
    title = "Too many requests"
    slug = "rate-limited"

    def __init__(self, retry_after_s: float, detail: str = "") -> None:
        super().__init__(detail or "rate limit exceeded")
        self.retry_after_s = max(1, round(retry_after_s + 0.4999))
        self.headers["Retry-After"] = str(self.retry_after_s)


class ServiceUnavailable(CloudError):
    status = 503
    title = "Service unavailable"
    slug = "service-unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL cannot be reached or the pool is exhausted."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or "the database is unavailable; retry shortly")
        self.headers["Retry-After"] = "5"
