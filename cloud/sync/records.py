"""The data of each outbox record kind, checked before anything is stored.

``shared.sync.OutboxRecord.data`` is a free-form dict (its shape per kind is the kind's data type
there, ``shared.sync.RECORD_DATA``); here it becomes a typed item with the same fields, checked
further (ids, lengths, times as ISO 8601 too). A record whose data does not fit raises
``RecordError`` and is kept in the cloud's quarantine with the reason, never failing the batch:
one bad record must not stall an edge's whole outbox. Readings, by far the most numerous, are
checked by hand (no pydantic per record) to keep a 5,000-record batch cheap.

Times are unix seconds (what the edge stores) or ISO 8601 strings; an ISO time without an offset
is UTC.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from shared.models import Id
from shared.sync import MAX_METRICS, ReadingData
from shared.topics import is_valid_id
from shared.vocabulary import Stage

METRIC_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class RecordError(ValueError):
    """The record's data does not fit its kind; the message is the quarantine reason."""


def unix_seconds(value: Any) -> float:
    """Unix seconds from a number or an ISO 8601 string; RecordError when it is neither. Whether
    the time is plausible is judged later, after the edge's clock error is corrected."""
    if isinstance(value, bool):
        raise RecordError("time must be unix seconds or ISO 8601")
    if isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise RecordError(f"time {value[:40]!r} is not ISO 8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    else:
        raise RecordError("time must be unix seconds or ISO 8601")
    if not math.isfinite(ts):
        raise RecordError("time is not a finite number")
    return ts


def _seconds(value: Any) -> float:
    try:
        return unix_seconds(value)
    except RecordError as exc:
        raise ValueError(str(exc)) from None


Seconds = Annotated[float, BeforeValidator(_seconds)]
Text = Annotated[str, Field(max_length=4000)]


# One reading, as the edge encodes it and the batch decoder's fast path decodes its data (unknown
# keys, such as ``downsampled``, are ignored, as ``parse_reading`` does; msgspec refuses NaN,
# infinities and out-of-range numbers, and the decoder checks ids and metric names once per batch).
ReadingItem = ReadingData


def _reading_id(data: dict[str, Any], name: str, valid_ids: set[str]) -> str:
    ident = data.get(name)
    if not isinstance(ident, str):
        raise RecordError(f"reading: {name} missing or not a string")
    if ident not in valid_ids:
        if not is_valid_id(ident):
            raise RecordError(f"reading: {name} is not a valid id")
        valid_ids.add(ident)
    return ident


def parse_reading(
    data: dict[str, Any], valid_ids: set[str], valid_metrics: set[str]
) -> ReadingItem:
    """Check one reading by hand. ``valid_ids`` and ``valid_metrics`` remember names already
    checked in this batch: a batch has thousands of readings but only a few devices and metrics."""
    device_id = _reading_id(data, "device_id", valid_ids)
    room_id = _reading_id(data, "room_id", valid_ids)
    values = data.get("values")
    if not isinstance(values, dict) or not values:
        raise RecordError("reading: values must be a non-empty object")
    if len(values) > MAX_METRICS:
        raise RecordError(f"reading: more than {MAX_METRICS} metrics")
    clean: dict[str, float] = {}
    for metric, value in values.items():
        if metric not in valid_metrics:
            if not METRIC_RE.match(metric):
                raise RecordError(f"reading: metric name {metric[:70]!r} is invalid")
            valid_metrics.add(metric)
        if value.__class__ is float:  # the common case, first
            number = value
        elif isinstance(value, int) and not isinstance(value, bool):
            number = float(value)
        else:
            raise RecordError(f"reading: {metric} is not a number")
        if not math.isfinite(number):
            raise RecordError(f"reading: {metric} is not finite")
        clean[metric] = number
    replaced = data.get("ts_replaced", False)
    return ReadingItem(device_id=device_id, room_id=room_id, ts=unix_seconds(data.get("ts")),
                       values=clean, ts_replaced=bool(replaced))


def scrub(value: Any) -> Any:
    """``value`` with what PostgreSQL text and jsonb cannot hold made storable: NUL characters
    replaced, NaN and infinities (which JSON cannot carry either) made null."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


class _Data(BaseModel):
    # Unknown keys are ignored: a newer edge may add fields without breaking an older cloud.
    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _scrub(cls, data: Any) -> Any:
        return scrub(data)


class QuarantineItem(_Data):
    topic: Text = ""
    reason: Text
    payload_b64: str = Field(default="", max_length=2_000_000)
    original_size: int = Field(default=0, ge=0, le=2**31 - 1)
    received_at: Seconds | None = Field(default=None, description="None: use the record's at")


class CommandItem(_Data):
    command_id: Id
    device_id: Id
    room_id: Id
    action: Annotated[str, Field(max_length=32)]
    value: Any = None
    source: Annotated[str, Field(max_length=32)] | None = None
    reason: Text | None = None
    created_at: Seconds
    cloud_command_id: Id | None = None


class CommandStateItem(_Data):
    command_id: Id
    state: Annotated[str, Field(min_length=1, max_length=32)]
    at: Seconds
    error: Text | None = None
    attempts: int = Field(default=0, ge=0, le=2**31 - 1)
    cloud_command_id: Id | None = None


class AckItem(_Data):
    command_id: Id
    device_id: Id
    status: Literal["ok", "error"]
    error: Text | None = None
    at: Seconds


class AlertItem(_Data):
    key: Annotated[str, Field(min_length=1, max_length=200)]
    kind: Annotated[str, Field(min_length=1, max_length=64)]
    severity: Annotated[str, Field(min_length=1, max_length=32)]
    message: Text
    room_id: Id | None = None
    device_id: Id | None = None
    state: Literal["active", "resolved"]
    at: Seconds


class StatusItem(_Data):
    device_id: Id
    room_id: Id
    online: bool
    state: dict[str, Any] = Field(default_factory=dict)
    at: Seconds
    # What the device runs (its status message's `firmware`); absent from older edges.
    firmware: str | None = Field(default=None, max_length=64)


class PendingDeviceItem(_Data):
    """A device that knocked at the edge's broker with the farm's claim code."""

    device_id: Id
    state: Literal["pending", "adopted", "dismissed"]
    first_seen: Seconds
    last_seen: Seconds
    attempts: int = Field(ge=0, le=2**31 - 1)
    address: Annotated[str, Field(max_length=64)]
    client_id: Annotated[str, Field(max_length=64)]
    room_id: Id | None = None
    kind: Literal["sensor", "actuator"] | None = None
    actuator: Literal["humidifier", "exhaust_fan", "heater", "light"] | None = None
    at: Seconds
    # It knocked with a claim key (the edge hands it its password); absent from older edges.
    claim_mode: bool = False


class StageChange(_Data):
    """The room's grow stage was set on the edge's local page (``stage_started``, the edge's
    date, is not used: the cloud restarts the stage clock at the edit's time)."""

    type: Literal["stage"]
    room_id: Id
    stage: Stage


class RuleEnabledChange(_Data):
    """A rule was enabled or disabled on the edge's local page (``room_id`` when known)."""

    type: Literal["rule_enabled"]
    rule_id: Id
    enabled: bool
    room_id: Id | None = None


def _change_type(value: Any) -> Any:
    """The edge's changes carry no ``type``: a ``rule_id`` makes a rule switch, else a stage."""
    if isinstance(value, dict) and "type" not in value:
        return {**value, "type": "rule_enabled" if "rule_id" in value else "stage"}
    return value


Change = Annotated[
    StageChange | RuleEnabledChange, Field(discriminator="type"), BeforeValidator(_change_type)
]


class ConfigChangeItem(_Data):
    """An edit made on the edge (offline or not) on top of the config version ``base_version``."""

    version: int | None = Field(default=None, description="the edge's own counter, if any")
    base_version: int = Field(ge=0)
    change: Change
    at: Seconds


class RuleReportItem(_Data):
    id: Id
    actuator: Id
    type: Annotated[str, Field(max_length=32)]
    enabled: bool
    source: Literal["profile", "cloud", "local"]
    rule: dict[str, Any]
    overrides: bool = False


class HoldItem(_Data):
    on: bool
    until: Seconds
    by: Annotated[str, Field(max_length=200)]
    source: Annotated[str, Field(max_length=32)] | None = None


class SafetyHoldItem(_Data):
    on: bool
    reason: Literal["min_on", "min_off", "max_on", "max_duty", "rest_after_max_on"]
    until: Seconds | None = None
    detail: Annotated[str, Field(max_length=500)] = ""


class ActuatorReportItem(_Data):
    device_id: Id
    on: bool
    since: Seconds | None = None
    hold: HoldItem | None = None
    safety_hold: SafetyHoldItem | None = None
    safety: dict[str, Any] = Field(default_factory=dict)
    reason: Text | None = None


class AutomationItem(_Data):
    """A room's effective automation on its edge (``shared.sync.AutomationData``)."""

    room_id: Id
    stage: Stage
    rules: list[RuleReportItem] = Field(max_length=500)
    actuators: list[ActuatorReportItem] = Field(max_length=500)
    seen: dict[Id, Seconds] = Field(default_factory=dict, max_length=2000)
    at: Seconds


# The typed item of each kind of shared.sync (tests hold the two to the same kinds and fields).
ITEMS: dict[str, type[Any]] = {
    "reading": ReadingItem,
    "quarantine": QuarantineItem,
    "command": CommandItem,
    "command_state": CommandStateItem,
    "ack": AckItem,
    "alert": AlertItem,
    "status": StatusItem,
    "config_change": ConfigChangeItem,
    "automation": AutomationItem,
    "pending_device": PendingDeviceItem,
}
_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    kind: TypeAdapter(item) for kind, item in ITEMS.items() if kind != "reading"
}

Item = (
    ReadingItem
    | QuarantineItem
    | CommandItem
    | CommandStateItem
    | AckItem
    | AlertItem
    | StatusItem
    | ConfigChangeItem
    | AutomationItem
    | PendingDeviceItem
)


class RecordParser:
    """Parses the records of one batch (remembering the names it has already checked)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._metrics: set[str] = set()

    def parse(self, kind: str, data: dict[str, Any]) -> Item:
        """The typed item of a record; RecordError (a quarantine reason) if it is unusable."""
        if kind == "reading":
            return parse_reading(data, self._ids, self._metrics)
        return parse(kind, data)


def parse(kind: str, data: dict[str, Any]) -> Item:
    """The typed item of a record; RecordError (a quarantine reason) when the data is unusable."""
    if kind == "reading":
        return parse_reading(data, set(), set())
    try:
        item: Item = _ADAPTERS[kind].validate_python(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "data"
        raise RecordError(f"{kind}: {where}: {err['msg']}") from None
    return item
