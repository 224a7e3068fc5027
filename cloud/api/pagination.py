"""Keyset pagination: opaque cursors (base64url JSON of the last row's sort key) and Page[T]."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from cloud.errors import ValidationFailed

T = TypeVar("T")
MAX_LIMIT = 500
CURSOR_PATTERN = r"^[A-Za-z0-9_-]*$"  # base64url without padding


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=50, ge=1, le=MAX_LIMIT, description="items per page")
    cursor: str | None = Field(
        default=None,
        max_length=512,
        pattern=CURSOR_PATTERN,
        description="next_cursor of the previous page (opaque)",
    )


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        default=None, description="pass as ?cursor= for the next page; null on the last page"
    )


def encode_cursor(key: Sequence[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    raw = json.dumps(plain, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad_cursor() -> ValidationFailed:
    return ValidationFailed(
        [{"field": "query.cursor", "message": "invalid cursor", "type": "cursor_invalid"}]
    )


def decode_cursor(cursor: str | None, *types: type) -> tuple[Any, ...] | None:
    """The sort key a cursor carries, converted to ``types``; 422 when it was tampered with."""
    if not cursor:  # absent, or ?cursor= (the first page)
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad_cursor() from None
    if not isinstance(values, list) or len(values) != len(types):
        raise _bad_cursor()
    out: list[Any] = []
    for value, kind in zip(values, types, strict=True):
        try:
            if kind is datetime:
                out.append(datetime.fromisoformat(value))
            elif kind is int and isinstance(value, int) and not isinstance(value, bool):
                if not -(2**63) <= value < 2**63:  # a bigint key
                    raise _bad_cursor()
                out.append(value)
            elif kind is str and isinstance(value, str) and "\x00" not in value:
                out.append(value)
            else:
                raise _bad_cursor()
        except (TypeError, ValueError):
            raise _bad_cursor() from None
    return tuple(out)


def paginate(
    rows: list[dict[str, Any]], limit: int, key: Callable[[dict[str, Any]], Sequence[Any]]
) -> tuple[list[dict[str, Any]], str | None]:
    """Rows were fetched with ``limit + 1``: trim and build the next cursor when there is more."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(key(rows[-1]))
