"""The automation rule model and the state the evaluator carries between evaluations.

A rule says when one actuator should be on. Rules are validated once here; the pure evaluator in
``shared.automation`` turns (rules, readings, states, now) into decisions. All state types are
pydantic models so the edge can persist them as JSON and resume "for" timers after a restart.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime, time
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from shared.models import Id
from shared.vocabulary import ACTUATOR_ROLES as ACTUATOR_ROLES
from shared.vocabulary import ActuatorRole as ActuatorRole

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _utc_if_naive(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# State is persisted by the edge (JSON, SQLite); a naive time read back is UTC, never local, and
# must compare with the evaluator's aware ``now`` instead of raising TypeError.
UtcDatetime = Annotated[datetime, AfterValidator(_utc_if_naive)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Safety(_Model):
    """Limits that protect an actuator and the crop whatever the rules ask for."""

    min_on_s: float = Field(default=0, ge=0)
    min_off_s: float = Field(default=0, ge=0)
    max_on_s: float | None = Field(default=None, gt=0, description="max continuous runtime")
    max_duty: float | None = Field(
        default=None, gt=0, le=1, description="max fraction of any rolling hour spent on"
    )


class _RuleBase(_Model):
    id: Id
    room_id: Id
    actuator: Id = Field(description="device id of the actuator node this rule drives")
    enabled: bool = True
    source: Literal["profile", "user"] = "user"
    description: str = Field(default="", max_length=200)


class ThresholdRule(_RuleBase):
    """Hysteresis on one metric. Raise mode (humidifier, heater): on below ``on_below``, off above
    ``off_above``. Lower mode (exhaust fan on CO₂): on above ``on_above``, off below ``off_below``.
    The switching condition must hold ``for_s`` seconds before it takes effect."""

    type: Literal["threshold"] = "threshold"
    metric: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    on_below: float | None = None
    off_above: float | None = None
    on_above: float | None = None
    off_below: float | None = None
    for_s: float = Field(default=0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _one_pair(self) -> Self:
        raising = self.on_below is not None or self.off_above is not None
        lowering = self.on_above is not None or self.off_below is not None
        if raising == lowering:
            raise ValueError("give either on_below+off_above (raise) or on_above+off_below (lower)")
        if raising:
            if self.on_below is None or self.off_above is None:
                raise ValueError("raise mode needs both on_below and off_above")
            if not self.on_below < self.off_above:
                raise ValueError("on_below must be less than off_above")
        else:
            if self.on_above is None or self.off_below is None:
                raise ValueError("lower mode needs both on_above and off_below")
            if not self.off_below < self.on_above:
                raise ValueError("off_below must be less than on_above")
        return self

    @property
    def raises(self) -> bool:
        return self.on_below is not None


class TimeWindow(_Model):
    """Daily window in the farm's local time, HH:MM; an end before the start crosses midnight."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.fullmatch(value):
            raise ValueError("use HH:MM, 00:00-23:59")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self

    def parsed(self) -> tuple[time, time]:
        return time.fromisoformat(self.start), time.fromisoformat(self.end)


class Cycle(_Model):
    """On for ``on_s`` at the start of every ``every_s`` period (counted from local midnight
    plus ``offset_s``): fresh-air fan 5 min every 30 min is on_s=300, every_s=1800."""

    on_s: float = Field(gt=0)
    every_s: float = Field(gt=0, le=86_400)
    offset_s: float = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if self.on_s >= self.every_s:
            raise ValueError("on_s must be shorter than every_s")
        return self


class ScheduleRule(_RuleBase):
    """On inside any of ``windows`` or during each ``cycle``'s on-phase (exactly one of them)."""

    type: Literal["schedule"] = "schedule"
    windows: list[TimeWindow] | None = None
    cycle: Cycle | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.windows is None) == (self.cycle is None):
            raise ValueError("give exactly one of windows or cycle")
        if self.windows is not None and not self.windows:
            raise ValueError("windows must not be empty")
        return self


class PidRule(_RuleBase):
    """Proportional/PID control of one metric toward ``setpoint`` for an on/off actuator, by time
    proportioning: the controller output 0..1 is the on-fraction of each ``period_s`` cycle."""

    type: Literal["pid"] = "pid"
    metric: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    setpoint: float
    kp: float = Field(ge=0)
    ki: float = Field(default=0, ge=0)
    kd: float = Field(default=0, ge=0)
    period_s: float = Field(default=600, ge=10, le=7_200)
    output_min: float = Field(default=0, ge=0, le=1)
    output_max: float = Field(default=1, ge=0, le=1)
    reverse: bool = Field(
        default=False, description="True when the actuator lowers the metric (fan on CO₂)"
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.output_min > self.output_max:
            raise ValueError("output_min must not exceed output_max")
        return self


Rule = Annotated[ThresholdRule | ScheduleRule | PidRule, Field(discriminator="type")]


# ---- state carried between evaluations (persisted by the edge) ----


class Reading(_Model):
    value: float
    at: UtcDatetime


class Override(_Model):
    """A manual command that wins over automation on one actuator until ``until``."""

    on: bool
    until: UtcDatetime
    by: str = "operator"


class ActuatorState(_Model):
    """What the edge last made of an actuator: on/off since when, recent on-intervals for duty."""

    on: bool = False
    since: UtcDatetime | None = None
    on_intervals: tuple[tuple[UtcDatetime, UtcDatetime | None], ...] = ()
    override: Override | None = None


class RuleState(_Model):
    """Per-rule memory: when the pending condition started (for "for" timers), the latched
    hysteresis output, and the PID integrator."""

    active: bool = False
    pending_since: UtcDatetime | None = None
    integral: float = 0.0
    last_error: float | None = None
    last_at: UtcDatetime | None = None
    output: float = 0.0
    cycle_start: UtcDatetime | None = None


class Decision(_Model):
    actuator: Id
    on: bool
    reason: str
    rule_ids: tuple[str, ...] = ()


class Blocked(_Model):
    """A change a rule wanted that a safety limit held back (reported, not an error)."""

    actuator: Id
    wanted_on: bool
    reason: str


class Evaluation(_Model):
    decisions: tuple[Decision, ...] = ()
    desired: dict[str, bool] = Field(default_factory=dict)
    rule_states: dict[str, RuleState] = Field(default_factory=dict)
    blocked: tuple[Blocked, ...] = ()
