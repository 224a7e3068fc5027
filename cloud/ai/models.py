"""What advisors read (``RoomContext``) and write (``Suggestion``), shared by every provider.

A suggestion's action is applied in one click when the user accepts it: a command to one of the
room's actuators, or an automation rule (``shared.rules``) created or replaced. Inspections
("check the humidifier's water") carry no action.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.rules import ActuatorRole

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CommandAction(_Model):
    kind: Literal["command"] = "command"
    device_id: str | None = Field(default=None, max_length=64)
    actuator_role: ActuatorRole | None = None
    action: Literal["on", "off", "set"]
    value: float | None = Field(default=None, ge=0, le=100)


class RuleAction(_Model):
    kind: Literal["rule"] = "rule"
    rule: dict[str, Any] = Field(description="a shared.rules rule, created or replacing its id")


Action = Annotated[CommandAction | RuleAction, Field(discriminator="kind")]


class Suggestion(_Model):
    key: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_.:-]{0,63}$",
        description="stable per condition: a later run refreshes the open one with this key",
    )
    severity: Severity
    title: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000, description="with the figures behind it")
    action: Action | None = None


class Band(_Model):
    min: float | None = None
    max: float | None = None


class MetricStats(_Model):
    metric: str
    mean: float
    min: float
    max: float
    count: int
    first_half_mean: float | None = None
    last_half_mean: float | None = None
    drift: float | None = Field(default=None, description="last half's mean minus the first's")
    time_in_band: float | None = Field(default=None, description="share of minutes in band")
    band: Band | None = None


class ActuatorStats(_Model):
    device_id: str
    role: ActuatorRole
    on_now: bool | None = None
    duty: float | None = Field(default=None, description="share of the window spent on")
    duty_recent: float | None = Field(default=None, description="share of the last 6 h on")
    switches: int = 0
    last_switch_at: datetime | None = None


class AlertBrief(_Model):
    kind: str
    severity: str
    message: str
    state: str
    device_id: str | None = None
    at: datetime


class ActionBrief(_Model):
    device_id: str | None
    action: str | None
    value: Any = None
    source: str | None = None
    state: str | None = None
    at: datetime


class RoomContext(_Model):
    room_id: str
    farm_id: str
    name: str = ""
    species: str
    stage: str
    stage_started: datetime
    stage_day: float = Field(description="days since the stage started")
    now: datetime
    window_hours: float
    targets: dict[str, Band]
    light_hours: float
    readings: int
    metrics: dict[str, MetricStats] = Field(default_factory=dict)
    vpd_kpa: float | None = None
    dew_point_c: float | None = None
    time_in_band_all: float | None = None
    actuators: list[ActuatorStats] = Field(default_factory=list)
    alerts: list[AlertBrief] = Field(default_factory=list)
    actions: list[ActionBrief] = Field(default_factory=list)
    rules: list[dict[str, Any]] = Field(default_factory=list)

    def actuator(self, role: str) -> ActuatorStats | None:
        return next((a for a in self.actuators if a.role == role), None)


class Advice(_Model):
    """One provider's answer for one room, with what it cost."""

    provider: str
    model: str | None = None
    suggestions: list[Suggestion]
    attempts: int = 1
    input_tokens: int | None = None
    output_tokens: int | None = None
    note: str | None = None
