"""Request and response models shared by several resource modules."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from shared.vocabulary import Species as Species
from shared.vocabulary import Stage as Stage

RoleName = Literal["owner", "operator", "viewer"]
# Deliberately loose (one @, a dot in the domain): the address is proven by the invitation.
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
]

_ISO_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:?\d{2})?$"
)


def _iso_datetime(value: Any) -> Any:
    """Only ISO 8601 date-time text is a time on the wire: pydantic would also read numbers and
    digit strings as Unix timestamps, which the documented ``format: date-time`` excludes."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATETIME.match(value.strip()):
        # Parsed here (not by pydantic) so the type also holds in strict mode (request bodies).
        text = value.strip()
        return datetime.fromisoformat(text[:10] + "T" + text[11:].upper())
    raise ValueError("expected an ISO 8601 date-time such as 2024-05-01T12:00:00Z")


_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _in_range(value: datetime) -> datetime:
    """Keep times where arithmetic on them (a default span, a UTC conversion) cannot overflow."""
    try:
        utc = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        utc = None
    if utc is None or not _EARLIEST <= utc < _LATEST:
        raise ValueError("time must lie between 1970 and 9000 (UTC)")
    return value


# A time in a request (query or body); an offset-less one is taken as UTC where noted.
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_datetime), AfterValidator(_in_range)]


def _naive_as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# A time in a query where an offset-less one means UTC (chart ranges, exports, histories).
UtcIsoDateTime = Annotated[
    datetime, BeforeValidator(_iso_datetime), AfterValidator(_in_range),
    AfterValidator(_naive_as_utc),
]
# A time in a request that must carry its UTC offset.
AwareIsoDateTime = Annotated[
    AwareDatetime, BeforeValidator(_iso_datetime), AfterValidator(_in_range)
]


class In(BaseModel):
    """Request bodies refuse unknown fields: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Message(Out):
    detail: str = Field(description="a short human-readable confirmation")
