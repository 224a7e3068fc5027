"""RFC 9457 problem documents, one format for the cloud's API and the edge's local API: the errors
both raise and the JSON body answered for each. No I/O and no web framework: each side keeps a
thin middleware that sends ``Problem.document(path)`` (or one of the builders below) as
``application/problem+json``, and subclasses ``Problem`` for its own errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Self

from pydantic import ValidationError

from shared.errors import SmartfarmError

PROBLEM_TYPE: Final = "application/problem+json"

# The web framework's own HTTP errors (unknown path, wrong method, body too large) → title, slug;
# any other gets its reason phrase and "http-error".
HTTP_SLUGS: Final[Mapping[int, tuple[str, str]]] = {
    404: ("Not found", "not-found"),
    405: ("Method not allowed", "method-not-allowed"),
    413: ("Payload too large", "payload-too-large"),
}
# Of such an error's own headers only these reach the client (405 must say what is allowed).
_HTTP_HEADERS_KEPT: Final = frozenset({"allow"})


def document(
    status: int, title: str, detail: str, *, slug: str, instance: str, **extra: Any
) -> dict[str, Any]:
    """The problem document: the RFC's members (``type`` is ``/problems/{slug}``), then extras."""
    return {
        "type": f"/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        **extra,
    }


def encode(doc: Mapping[str, Any]) -> bytes:
    """The response body for ``doc``."""
    return json.dumps(doc).encode()


def http_error(
    status: int, reason: str, headers: Mapping[str, str], *, instance: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The document and the headers to answer for one of the framework's own HTTP errors."""
    title, slug = HTTP_SLUGS.get(status, (reason, "http-error"))
    kept = {k: v for k, v in headers.items() if k.lower() in _HTTP_HEADERS_KEPT}
    return document(status, title, reason, slug=slug, instance=instance), kept


def internal_error(*, instance: str, hint: str = "") -> dict[str, Any]:
    """The answer to a bug: no details, only an ``error_id`` to find the logged traceback by."""
    error_id = uuid.uuid4().hex[:12]
    detail = f"an unexpected error occurred; quote error id {error_id}"
    return document(
        500,
        "Internal server error",
        f"{detail} ({hint})" if hint else detail,
        slug="internal",
        instance=instance,
        error_id=error_id,
    )


def field_errors(
    exc: ValidationError, prefix: str = "", *, where: str = "body"
) -> list[dict[str, str]]:
    """pydantic's errors as ``{"field", "message", "type"}``: ``field`` is the dotted location
    under ``prefix`` (the cloud says ``body.name``), or, with no prefix, the bare location (the
    edge says ``name``) and ``where`` for an error about the whole input."""
    errors = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = [str(p) for p in err["loc"]]
        field = ".".join([prefix, *loc] if prefix else loc) or where
        errors.append({"field": field, "message": str(err["msg"]), "type": str(err["type"])})
    return errors


class Problem(SmartfarmError):
    """An answer other than success: ``status``/``title``/``slug`` say which, the detail why;
    ``extra`` become members of the document, ``headers`` go on the response."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    slug: ClassVar[str] = "bad-request"

    def __init__(
        self, detail: str = "", *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers: dict[str, str] = dict(headers or {})
        self.extra = extra

    def document(self, instance: str) -> dict[str, Any]:
        return document(
            self.status, self.title, self.detail, slug=self.slug, instance=instance, **self.extra
        )


class BadRequest(Problem):
    pass


class ValidationFailed(Problem):
    """Input that fails validation; ``errors`` lists ``{"field", "message", "type"}``, one per
    offending field, and the detail names the first."""

    status = 422
    title = "Validation failed"
    slug = "validation-failed"

    def __init__(self, errors: list[dict[str, str]], detail: str = "") -> None:
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        super().__init__(
            detail or f"{first['field'] or 'body'}: {first['message']}", errors=errors
        )
        self.errors = errors

    @classmethod
    def from_pydantic(
        cls, exc: ValidationError, prefix: str = "", *, where: str = "body"
    ) -> Self:
        """``cls`` made of pydantic's errors (see ``field_errors``)."""
        return cls(field_errors(exc, prefix, where=where))


class Unauthorized(Problem):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(Problem):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(Problem):
    status = 404
    title = "Not found"
    slug = "not-found"


class UnsupportedMediaType(Problem):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"
