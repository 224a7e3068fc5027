"""Pydantic models of the wire formats that ESP32 nodes, the edge and the cloud exchange.

Telemetry ``{"device_id","timestamp","data":{...}}``, command
``{"command_id","device_id","action","value","timestamp"}``, ack ``{"command_id","status",...}``
and status. ``parse_*`` functions turn raw MQTT payloads into models or raise PayloadError with a
one-line reason (what the edge stores in its quarantine table).
"""
from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import PayloadError
from shared.topics import ID_RE, is_valid_id
from shared.vocabulary import METRIC_NAMES, METRICS, ActuatorRole

MAX_PAYLOAD_BYTES: Final = 16 * 1024
MAX_METRICS: Final = 32
METRIC_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

# Physically possible ranges (inclusive) for the known metrics; values outside are rejected.
METRIC_LIMITS: Final[dict[str, tuple[float, float]]] = {
    m.name: (m.low, m.high) for m in METRICS.values()
}
KNOWN_METRICS: Final[tuple[str, ...]] = METRIC_NAMES
_OTHER_LIMITS: Final = (-1e9, 1e9)  # any other snake_case metric

# A device timestamp is trusted only inside this window around the edge's receive time: an ESP32
# without an RTC reports 1970, a drifting one may be minutes off; buffered ones may be a day old.
MAX_PAST: Final = timedelta(days=1)
MAX_FUTURE: Final = timedelta(minutes=5)
_ZERO: Final = timedelta(0)


def _check_id(value: str) -> str:
    if not is_valid_id(value):
        raise ValueError(f"must match {ID_RE.pattern}")
    return value


Id = Annotated[str, AfterValidator(_check_id)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class _Wire(BaseModel):
    # allow_inf_nan: Python's json accepts NaN/Infinity; no field of ours means either.
    model_config = ConfigDict(
        extra="ignore", frozen=True, str_max_length=256, allow_inf_nan=False
    )


class Telemetry(_Wire):
    """One telemetry message. ``timestamp_replaced`` is set by the edge, never sent by devices."""

    device_id: Id
    timestamp: datetime | None = None
    data: dict[str, float]
    timestamp_replaced: bool = Field(default=False, exclude=True)

    @field_validator("timestamp", mode="after")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not UTC and value.utcoffset() in (None, _ZERO):
            # pydantic's own UTC tzinfo makes every comparison with datetime.UTC times (the
            # edge's clock) call utcoffset() on both: 10x slower, and the automation compares
            # reading times a lot. Same instant, same offset.
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("data", mode="before")
    @classmethod
    def _metrics(cls, value: Any) -> dict[str, float]:
        if not isinstance(value, dict):
            raise ValueError("data must be an object of metric: number")
        if not value:
            raise ValueError("data has no metrics")
        if len(value) > MAX_METRICS:
            raise ValueError(f"data has more than {MAX_METRICS} metrics")
        out: dict[str, float] = {}
        for name, raw in value.items():
            # Per message on the ingest path: known names skip the regex, floats the conversion.
            limits = METRIC_LIMITS.get(name)
            if limits is None:
                if not isinstance(name, str) or not METRIC_RE.fullmatch(name):
                    raise ValueError(f"metric name {str(name)[:40]!r} is not snake_case")
                limits = _OTHER_LIMITS
            if type(raw) is float:
                number = raw
            else:
                # bool is an int in Python; a device sending true for a temperature is broken.
                if isinstance(raw, bool) or not isinstance(raw, int | float):
                    raise ValueError(f"{name} must be a number, got {type(raw).__name__}")
                try:
                    number = float(raw)
                except OverflowError:  # a JSON integer of hundreds of digits
                    raise ValueError(f"{name} is too large") from None
            if not math.isfinite(number):
                raise ValueError(f"{name} is not finite")
            low, high = limits
            if not low <= number <= high:
                raise ValueError(f"{name}={number:g} outside physical range [{low:g}, {high:g}]")
            out[name] = number
        return out


CommandAction = Literal["on", "off", "set", "ota"]

# The seed's (the original Flask design's) command forms: `set_<quantity>` with a value. Each
# names the quantity an actuator moves, and means the model's `set` on that actuator — a level of
# 0–100 % of its output, not a target in the quantity's unit (a target is an automation rule).
SetForm = Literal["set_humidity", "set_temperature", "set_co2", "set_light"]
SET_FORM_ROLES: Final[dict[str, ActuatorRole]] = {
    "set_humidity": "humidifier",
    "set_temperature": "heater",
    "set_co2": "exhaust_fan",
    "set_light": "light",
}
CommandForm = Literal["on", "off", "set", "set_humidity", "set_temperature", "set_co2", "set_light"]
COMMAND_FORMS_HELP: Final = (
    "on, off, set (value: level 0-100), or the seed's set_humidity, set_temperature, set_co2,"
    " set_light (value: level 0-100 of the room's humidifier, heater, exhaust_fan, light)"
)


def canonical_action(form: str) -> tuple[CommandAction, str | None]:
    """The model's action for a command form, and the actuator role a `set_<quantity>` form
    names (None for the model's own forms). ValueError for anything else."""
    if form in ("on", "off", "set"):
        return form, None  # type: ignore[return-value]
    role = SET_FORM_ROLES.get(form)
    if role is None:
        raise ValueError(f"unknown action {form[:40]!r}: use {COMMAND_FORMS_HELP}")
    return "set", role


def command_value_error(action: CommandAction, value: object) -> str | None:
    """Why ``value`` does not fit ``action`` (None when it does): `set` needs a level 0-100."""
    if action != "set":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "`set` (and set_<quantity>) needs a numeric value: a level 0-100"
    if not 0 <= value <= 100:
        return "value must be a level within 0-100"
    return None


class FirmwareOffer(_Wire):
    """What an ``ota`` command offers: an image on the edge's LAN server (``edge.firmware``).
    ``url`` and ``md5`` are what ESPHome's ``ota.http_request.flash`` takes."""

    version: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,39}$")]
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=256)]
    md5: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    md5_url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=256)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    size: int = Field(gt=0)


class Command(_Wire):
    """A command to one node: ``on``/``off``, ``set`` with a level 0–100 (actuators), or
    ``ota`` with ``firmware``, an update to download from the edge (any node)."""

    command_id: Id
    device_id: Id
    action: CommandAction
    value: float | bool | None = None
    timestamp: datetime
    firmware: FirmwareOffer | None = None

    @field_validator("timestamp", mode="after")
    @classmethod
    def _tz(cls, value: datetime) -> datetime:
        return _aware(value)

    @model_validator(mode="after")
    def _offer(self) -> Command:
        if (self.action == "ota") != (self.firmware is not None):
            raise ValueError("firmware goes with action ota, and ota needs firmware")
        return self


class Ack(_Wire):
    """A device's answer to a command, on its ``ack`` topic."""

    command_id: Id
    status: Literal["ok", "error"]
    device_id: Id | None = None
    error: str | None = None
    state: dict[str, float | bool | str | None] | None = None
    timestamp: datetime | None = None


class Status(_Wire):
    """A device's state report on its ``status`` topic (retained by convenience, not required)."""

    device_id: Id
    online: bool = True
    timestamp: datetime | None = None
    state: dict[str, float | bool | str | None] = Field(default_factory=dict)
    # The version it runs: the version itself or "name/version" (edge.firmware.running_version).
    firmware: str | None = Field(default=None, max_length=64)
    rssi_dbm: float | None = None
    uptime_s: float | None = None


def _load_json(payload: bytes | str) -> Any:
    if isinstance(payload, str):
        payload = payload.encode()
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload is {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
    try:
        doc = json.loads(payload)
    except UnicodeDecodeError:
        raise PayloadError("payload is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"malformed JSON: {exc.msg} at {exc.pos}") from None
    except RecursionError:
        raise PayloadError("JSON nested too deeply") from None
    except ValueError:  # an integer past Python's int_max_str_digits (4300)
        raise PayloadError("malformed JSON: number too long") from None
    if not isinstance(doc, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(doc).__name__}")
    return doc


def _reason(exc: ValidationError) -> PayloadError:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "payload"
    msg = str(err["msg"]).removeprefix("Value error, ")
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return PayloadError(f"{loc}: {msg}{more}", field=loc)


def _validate(model: type[_Wire], payload: bytes | str) -> Any:
    doc = _load_json(payload)
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise _reason(exc) from None


def parse_telemetry(
    payload: bytes | str,
    *,
    received_at: datetime,
    expected_device: str | None = None,
) -> Telemetry:
    """Validate a telemetry payload; stamp ``received_at`` when the device time is missing or
    implausible (and flag it); refuse a payload whose device_id differs from its topic's."""
    tel: Telemetry | None = None
    if type(payload) is bytes and len(payload) <= MAX_PAYLOAD_BYTES:
        # Fast path, per reading: pydantic's own JSON parser validates as it parses (~2 µs less
        # than json.loads + model_validate). Anything it refuses goes the usual way below, which
        # then accepts or refuses it with the usual reason.
        try:
            tel = Telemetry.model_validate_json(payload)
        except ValidationError:
            pass
    if tel is None:
        tel = _validate(Telemetry, payload)
    if expected_device is not None and tel.device_id != expected_device:
        raise PayloadError(
            f"device_id {tel.device_id!r} does not match topic device {expected_device!r}",
            field="device_id",
        )
    received_at = _aware(received_at)
    ts = tel.timestamp
    if ts is None or not (received_at - MAX_PAST <= ts <= received_at + MAX_FUTURE):
        return tel.model_copy(update={"timestamp": received_at, "timestamp_replaced": True})
    return tel


def parse_command(payload: bytes | str) -> Command:
    return _validate(Command, payload)  # type: ignore[no-any-return]


def parse_ack(payload: bytes | str, *, expected_device: str | None = None) -> Ack:
    ack: Ack = _validate(Ack, payload)
    if expected_device is not None and ack.device_id not in (None, expected_device):
        raise PayloadError("ack device_id does not match topic device", field="device_id")
    return ack


def parse_status(payload: bytes | str, *, expected_device: str | None = None) -> Status:
    status: Status = _validate(Status, payload)
    if expected_device is not None and status.device_id != expected_device:
        raise PayloadError("status device_id does not match topic device", field="device_id")
    return status


def dump(model: BaseModel) -> bytes:
    """Serialise a wire model the way devices expect it (ISO 8601 timestamps, no nulls)."""
    return model.model_dump_json(exclude_none=True).encode()
