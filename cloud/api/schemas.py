"""Request and response models shared by several resource modules."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.models import Id

Species = Literal["oyster", "shiitake", "lions_mane"]
Stage = Literal["spawn_run", "pinning", "fruiting"]
RoleName = Literal["owner", "operator", "viewer"]
# Deliberately loose (one @, a dot in the domain): the address is proven by the invitation.
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
]


class In(BaseModel):
    """Request bodies refuse unknown fields: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Created(Out):
    id: str


class IdPath(BaseModel):
    id: Id


class Timestamps(Out):
    created_at: datetime


class Message(Out):
    detail: str = Field(description="a short human-readable confirmation")
