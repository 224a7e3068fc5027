"""Request bodies and query strings of the local API, validated once with pydantic.

``parse_body`` / ``parse_query`` turn bad input into a 400/415/422 problem naming each field.
"""

from __future__ import annotations

import json
from typing import Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from edge.api.problems import BadRequest, UnsupportedMediaType, ValidationFailed
from shared.models import CommandForm, Id
from shared.vocabulary import ActuatorRole, Stage

M = TypeVar("M", bound=BaseModel)

METRIC_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=1024)


class _Query(BaseModel):
    # Unknown query parameters are ignored (cache busters, future clients).
    model_config = ConfigDict(extra="ignore", str_max_length=256)


class LoginBody(_Body):
    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class CommandBody(_Body):
    """``on`` / ``off`` (an override of the automation), ``set`` with a level 0-100, or the seed's
    ``set_<quantity>`` forms: ``set`` on that quantity's actuator (``device_id`` may then be
    omitted: the one of that role, in ``room_id`` if given)."""

    device_id: Id | None = None
    room_id: Id | None = None
    action: CommandForm
    hold_minutes: float | None = Field(
        default=None, gt=0, le=24 * 60, description="how long the override holds (default: config)"
    )
    value: float | bool | None = None


class RuleBody(_Body):
    enabled: StrictBool


class StageBody(_Body):
    stage: Stage


class ReadingsQuery(_Query):
    hours: float = Field(default=6, gt=0, le=72)
    metric: str | None = Field(default=None, pattern=METRIC_PATTERN)
    points: int = Field(default=500, ge=2, le=500, description="max points per metric")


class CommandsQuery(_Query):
    limit: int = Field(default=50, ge=1, le=500)
    device_id: Id | None = None
    room_id: Id | None = None


class AlertsQuery(_Query):
    active: bool = False
    limit: int = Field(default=100, ge=1, le=500)


class QuarantineQuery(_Query):
    limit: int = Field(default=50, ge=1, le=500)


class EmptyBody(_Body):
    """No fields: a JSON ``{}`` (state changes send a JSON body, see ``edge.api.auth``)."""


class AdoptBody(_Body):
    """Adopt a pending device: into which room, as a sensor or an actuator of which role."""

    room_id: Id
    kind: Literal["sensor", "actuator"]
    actuator: ActuatorRole | None = None


class RulesQuery(_Query):
    room_id: Id | None = None


async def parse_body(request: web.Request, model: type[M]) -> M:
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the request body as Content-Type: application/json")
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed.from_pydantic(exc, where="body") from None


def parse_query(request: web.Request, model: type[M]) -> M:
    # Empty values mean "not given" (the page sends ?room_id= for "all rooms").
    data = {k: v for k, v in request.query.items() if v != ""}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed.from_pydantic(exc, where="query") from None
