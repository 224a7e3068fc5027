"""The cloud's exception hierarchy; each maps to one HTTP status and an RFC 9457 problem type.

Handlers and repositories raise these; ``cloud.middleware`` answers them with the document
``shared.problems`` builds (the edge's local API answers the same format). The classes both
sides have come from there, made ``CloudError``s here so ``except CloudError`` sees them all.
Anything else reaching the middleware is a bug: logged with an id, answered 500 without details.
"""

from __future__ import annotations

from shared import problems


class CloudError(problems.Problem):
    """Base: ``status`` and ``title`` are the HTTP answer, the message is the problem's detail."""


class BadRequest(CloudError, problems.BadRequest):
    pass


class ValidationFailed(CloudError, problems.ValidationFailed):
    """Input that fails validation; ``errors`` lists ``{"field", "message", "type"}``."""


class Unauthorized(CloudError, problems.Unauthorized):
    def __init__(self, detail: str = "") -> None:
        super().__init__(
            detail or "missing, invalid or expired credentials",
            headers={"WWW-Authenticate": 'Bearer realm="smartfarm"'},
        )


class Forbidden(CloudError, problems.Forbidden):
    pass


class NotFound(CloudError, problems.NotFound):
    pass


class Conflict(CloudError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class PayloadTooLarge(CloudError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class UnsupportedMediaType(CloudError, problems.UnsupportedMediaType):
    pass


class RateLimited(CloudError):
    status = 429
    title = "Too many requests"
    slug = "rate-limited"

    def __init__(self, retry_after_s: float, detail: str = "") -> None:
        self.retry_after_s = max(1, round(retry_after_s + 0.4999))
        super().__init__(
            detail or "rate limit exceeded", headers={"Retry-After": str(self.retry_after_s)}
        )


class ServiceUnavailable(CloudError):
    status = 503
    title = "Service unavailable"
    slug = "service-unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL cannot be reached or the pool is exhausted."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            detail or "the database is unavailable; retry shortly", headers={"Retry-After": "5"}
        )
