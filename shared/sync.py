"""The edge ↔ cloud sync protocol: outbox records and batches going up, commands and versioned
config coming down. Both sides validate with these models; nothing here does I/O.

Up: ``POST /api/edge/v1/batches`` (bearer: the edge's token; body: a gzip-compressed JSON
``Batch``; answer: ``BatchAck``). Records carry a per-edge ``seq`` that grows by one per record.
The cloud keeps a per-edge high-water mark: it stores records with seq > mark exactly once, in one
transaction, and answers the new mark; a batch starting past mark + 1 is refused with 409 and the
mark, so the edge resends from there. The edge advances its cursor only on a ``BatchAck``.

Down: the edge keeps a WebSocket to ``/api/edge/v1/stream`` (same token); it says ``Hello``, the
cloud pushes ``CloudCommand`` and ``ConfigPush`` messages, the edge answers ``ConfigApplied`` and
``CommandAccepted`` (``CloudRelease``, ending a manual hold, is answered like a command). The
same messages are available by polling ``GET /api/edge/v1/pending``.

Health: a streaming edge sends ``EdgeStatus`` after ``Hello`` and every heartbeat; a polling edge
sends the same fields as query parameters of its polls (``status_query``), every heartbeat.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal, get_args

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.models import Id
from shared.rules import Safety
from shared.vocabulary import ActuatorRole, Species, Stage

PROTOCOL_VERSION = 1
MAX_BATCH_RECORDS = 5_000

RecordKind = Literal[
    "reading",        # {"device_id","room_id","ts","ts_replaced","values":{metric: number}}
    "quarantine",     # {"topic","reason","payload_b64","original_size","received_at"}
    "command",        # {"command_id","device_id","room_id","action","value","source","reason",
                      #  "created_at","cloud_command_id"?}
    "command_state",  # {"command_id","state","at","error"?,"attempts","cloud_command_id"?}
    "ack",            # {"command_id","device_id","status","error"?,"at"}
    "alert",          # {"key","kind","severity","message","room_id"?,"device_id"?,
                      #  "state":"active"|"resolved","at"}
    "status",         # {"device_id","room_id","online","state":{...},"firmware"?,"at"}
    "config_change",  # {"version","base_version","change":{...},"at"} local edits made offline
    "automation",     # {"room_id","stage","rules":[...],"actuators":[...],"seen":{...},"at"}
                      #  the room's effective automation, when it changes (and now and then)
    "pending_device", # {"device_id","state":"pending"|"adopted"|"dismissed","first_seen",
                      #  "last_seen","attempts","address","client_id","room_id"?,"kind"?,
                      #  "actuator"?,"at"}
                      #  a device that knocked with the farm's claim code (edge.onboarding)
]
RECORD_KINDS: Final[tuple[str, ...]] = get_args(RecordKind)


# ---- outbox records: one type per kind ----
# What the edge encodes and the cloud's fast path decodes (msgspec structs: encoding a reading
# this way is about twice as fast as building its JSON text by hand). The cloud checks the data of
# kinds other than readings again with its own pydantic items (cloud/sync/records.py: ids, lengths,
# quarantine reasons); their fields are these.
MAX_METRICS: Final = 64


class ReadingData(msgspec.Struct, gc=False):
    """One reading: values per metric of one device at one time. Not tracked by the garbage
    collector (``gc=False``): it holds no containers but its values dict, and a batch makes
    thousands. Unknown keys (``downsampled`` for a reader that does not care) are ignored."""

    device_id: str
    room_id: str
    ts: float
    values: Annotated[dict[str, float], msgspec.Meta(min_length=1, max_length=MAX_METRICS)]
    ts_replaced: bool = False


class Downsampled(msgspec.Struct, gc=False):
    n: int  # readings the mean stands for
    period_s: float


class MergedReadingData(ReadingData, kw_only=True, gc=False):
    """A reading that holds the means of ``downsampled.n`` readings (the edge's backlog cap)."""

    downsampled: Downsampled


class QuarantineData(msgspec.Struct):
    topic: str
    reason: str
    payload_b64: str
    original_size: int
    received_at: float | None  # None: the record's at


class CommandData(msgspec.Struct):
    command_id: str
    device_id: str
    room_id: str
    action: str
    value: Any
    source: str | None
    reason: str | None
    created_at: float
    cloud_command_id: str | None = None


class CommandStateData(msgspec.Struct):
    command_id: str
    state: str
    at: float
    error: str | None
    attempts: int
    cloud_command_id: str | None = None


class AckData(msgspec.Struct, omit_defaults=True):  # no "error" key when there is none
    command_id: str
    device_id: str
    status: Literal["ok", "error"]
    at: float
    error: str | None = None


class AlertData(msgspec.Struct):
    key: str
    kind: str
    severity: str
    message: str
    room_id: str | None
    device_id: str | None
    state: Literal["active", "resolved"]
    at: float


class StatusData(msgspec.Struct):
    device_id: str
    room_id: str
    online: bool
    state: dict[str, Any]
    at: float
    firmware: str | None = None  # the device's last reported firmware (edge migration 5 on)


class ConfigEdit(msgspec.Struct, omit_defaults=True):
    """A stage set (``room_id``, ``stage``, ``stage_started``) or a rule switched (``rule_id``,
    ``enabled``, ``room_id`` when known) on the edge's local page."""

    room_id: str | None = None
    stage: str | None = None
    stage_started: str | None = None
    rule_id: str | None = None
    enabled: bool | None = None


class ConfigChangeData(msgspec.Struct):
    version: int | None  # the edge's own counter, if any
    base_version: int
    change: ConfigEdit
    at: float


PendingState = Literal["pending", "adopted", "dismissed"]


class PendingDeviceData(msgspec.Struct, omit_defaults=True):
    """A device that tried to log in with an unknown id and the farm's claim code: ``pending``
    (nothing it sends is accepted), then ``adopted`` into ``room_id`` or ``dismissed``."""

    device_id: str
    state: PendingState
    first_seen: float
    last_seen: float
    attempts: int
    address: str
    client_id: str
    at: float
    room_id: str | None = None
    # Once adopted: what it is (the cloud registers a device adopted on the edge's page).
    kind: str | None = None
    actuator: str | None = None
    # It knocked with a claim key: once adopted, the edge hands it its password (no re-flash).
    claim_mode: bool = False


class RuleReport(msgspec.Struct, omit_defaults=True):
    """One rule a room's edge runs. ``source``: "profile" (made from the species/stage profile),
    "cloud" (a rule the cloud pushed), "local" (the edge's own config file); ``overrides`` is
    true when a cloud or local rule has a profile rule's id and so replaces it."""

    id: str
    actuator: str
    type: str
    enabled: bool
    source: Literal["profile", "cloud", "local"]
    rule: dict[str, Any]  # the whole shared.rules.Rule as JSON
    overrides: bool = False


class HoldReport(msgspec.Struct):
    """A manual hold: the actuator stays ``on`` (or off) until ``until``, whatever the rules.
    ``source``: where it was asked ("cloud", "manual": the edge's own page or API, "homeassistant"
    …; None when not known, a hold from before the edge restarted)."""

    on: bool
    until: float
    by: str
    source: str | None = None


SafetyReason = Literal["min_on", "min_off", "max_on", "max_duty", "rest_after_max_on"]


class SafetyHoldReport(msgspec.Struct):
    """A safety limit keeping the actuator ``on`` (or off) against what automation wants, until
    ``until`` (None: no fixed end, a duty budget that frees up as the hour rolls on)."""

    on: bool
    reason: SafetyReason
    until: float | None
    detail: str


class ActuatorReport(msgspec.Struct):
    device_id: str
    on: bool
    since: float | None
    hold: HoldReport | None
    safety_hold: SafetyHoldReport | None
    safety: dict[str, Any]  # the limits in force (shared.rules.Safety as JSON)
    reason: str | None = None  # why automation last switched it


class AutomationData(msgspec.Struct):
    """A room's effective automation on its edge: every rule it runs, every actuator's state,
    hold and safety hold, and when each of the room's devices was last heard from (any message
    kind, unix seconds)."""

    room_id: str
    stage: str
    rules: list[RuleReport]
    actuators: list[ActuatorReport]
    seen: dict[str, float]
    at: float


class Record(msgspec.Struct, tag_field="kind", gc=False):
    """An outbox record on the wire: ``{"kind", "seq", "at", "data"}``; ``kind`` is the tag."""

    kind: ClassVar[str]
    seq: int
    at: float  # edge clock, unix seconds, when the record was made


class ReadingRecord(Record, tag="reading", gc=False):
    kind: ClassVar[str] = "reading"
    data: ReadingData


class QuarantineRecord(Record, tag="quarantine"):
    kind: ClassVar[str] = "quarantine"
    data: QuarantineData


class CommandRecord(Record, tag="command"):
    kind: ClassVar[str] = "command"
    data: CommandData


class CommandStateRecord(Record, tag="command_state"):
    kind: ClassVar[str] = "command_state"
    data: CommandStateData


class AckRecord(Record, tag="ack"):
    kind: ClassVar[str] = "ack"
    data: AckData


class AlertRecord(Record, tag="alert"):
    kind: ClassVar[str] = "alert"
    data: AlertData


class StatusRecord(Record, tag="status"):
    kind: ClassVar[str] = "status"
    data: StatusData


class ConfigChangeRecord(Record, tag="config_change"):
    kind: ClassVar[str] = "config_change"
    data: ConfigChangeData


class AutomationRecord(Record, tag="automation"):
    kind: ClassVar[str] = "automation"
    data: AutomationData


class PendingDeviceRecord(Record, tag="pending_device"):
    kind: ClassVar[str] = "pending_device"
    data: PendingDeviceData


RECORD_TYPES: Final[dict[str, type[Record]]] = {
    "reading": ReadingRecord,
    "quarantine": QuarantineRecord,
    "command": CommandRecord,
    "command_state": CommandStateRecord,
    "ack": AckRecord,
    "alert": AlertRecord,
    "status": StatusRecord,
    "config_change": ConfigChangeRecord,
    "automation": AutomationRecord,
    "pending_device": PendingDeviceRecord,
}


def _data_type(record_type: type[Record]) -> type[msgspec.Struct]:
    found = {f.name: f.type for f in msgspec.structs.fields(record_type)}["data"]
    assert isinstance(found, type) and issubclass(found, msgspec.Struct)
    return found


# Each kind's data type (as its record type declares it).
RECORD_DATA: Final[dict[str, type[msgspec.Struct]]] = {
    kind: _data_type(record_type) for kind, record_type in RECORD_TYPES.items()
}
# The edge's ``outbox.kind`` column (readings have a table of their own, no code). The SQL
# triggers of edge/store/schema.sql write these numbers; a test holds them to this table.
KIND_CODES: Final[dict[str, int]] = {
    "quarantine": 1,
    "command": 2,
    "command_state": 3,
    "ack": 4,
    "alert": 5,
    "status": 6,
    "config_change": 7,
    "automation": 8,
    "pending_device": 9,
}
KIND_NAMES: Final[dict[int, str]] = {code: name for name, code in KIND_CODES.items()}


class BatchOut(msgspec.Struct):
    """A ``Batch`` as the edge encodes it: records already encoded (``Record`` JSON each)."""

    protocol: int
    edge_id: str
    farm_id: str
    first_seq: int
    last_seq: int
    sent_at: datetime
    records: list[msgspec.Raw]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutboxRecord(_Msg):
    seq: int = Field(ge=1)
    kind: RecordKind
    at: float = Field(description="edge clock, unix seconds, when the record was made")
    data: dict[str, Any]


class Batch(_Msg):
    protocol: int = PROTOCOL_VERSION
    edge_id: Id
    farm_id: Id
    first_seq: int = Field(ge=1)
    last_seq: int = Field(ge=1)
    sent_at: datetime = Field(description="edge clock at sending; the cloud derives the offset")
    records: list[OutboxRecord] = Field(max_length=MAX_BATCH_RECORDS)

    @model_validator(mode="after")
    def _contiguous(self) -> Batch:
        if self.last_seq < self.first_seq:
            raise ValueError("last_seq must not be less than first_seq")
        if len(self.records) != self.last_seq - self.first_seq + 1:
            raise ValueError("records must be exactly first_seq..last_seq")
        for expected, record in enumerate(self.records, start=self.first_seq):
            if record.seq != expected:
                raise ValueError(f"record seq {record.seq} out of order (expected {expected})")
        return self


class BatchAck(_Msg):
    acked_seq: int = Field(ge=0, description="every seq up to this one is stored")
    inserted: int = 0
    duplicates: int = 0
    clock_offset_s: float | None = Field(
        default=None, description="cloud minus edge clock, as measured on this batch"
    )


# The answer to a stored batch may ask the edge to let its readings gather longer before the next
# batch (the cloud is under load: cloud.sync.pace); no header means the edge's own setting.
BATCH_INTERVAL_HEADER = "X-Smartfarm-Batch-Interval"
MAX_BATCH_INTERVAL_S = 60.0  # an edge never holds its readings longer than this for the cloud


def batch_interval(value: str | None) -> float:
    """The seconds a ``BATCH_INTERVAL_HEADER`` value asks for, at most ``MAX_BATCH_INTERVAL_S``;
    0 for none, or for a value that is not a number of seconds."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        return 0.0
    if not seconds > 0:  # also NaN
        return 0.0
    return min(seconds, MAX_BATCH_INTERVAL_S)


class GapError(_Msg):
    """409 body: the batch starts past the high-water mark + 1; resend from ``expected_seq``.
    It arrives as problem+json (type, title, status, detail…), so other keys are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    detail: str
    expected_seq: int


# ---- down: cloud → edge ----

class CloudCommand(_Msg):
    type: Literal["command"] = "command"
    command_id: Id
    device_id: Id
    room_id: Id
    action: Literal["on", "off", "set"]
    value: float | bool | None = None
    hold_minutes: float | None = None
    by: str | None = Field(default=None, max_length=100, description="who asked (a user's name)")
    created_at: datetime
    expires_at: datetime


class CloudRelease(_Msg):
    """End a manual hold on an actuator ("back to auto"): the edge clears its override and lets
    the automation decide at once."""

    type: Literal["release"] = "release"
    command_id: Id
    device_id: Id
    room_id: Id
    created_at: datetime
    expires_at: datetime


class DeviceSpec(_Msg):
    id: Id
    room: Id
    kind: Literal["sensor", "actuator"]
    actuator: ActuatorRole | None = None
    safety: Safety | None = Field(
        default=None, description="limits set in the cloud; None: the edge's own or the default"
    )
    # argon2id hash in the format the edge broker verifies; the plaintext never leaves the cloud
    # except once, to the user who registered the device.
    password_hash: str | None = None


class RoomSpec(_Msg):
    id: Id
    name: str = ""
    species: Species
    stage: Stage
    stage_started: str | None = None
    rules: list[dict[str, Any]] = Field(default_factory=list, description="shared.rules.Rule")
    disabled_rules: list[str] = Field(default_factory=list)


class PendingDismissal(_Msg):
    """A device waiting for adoption that someone dismissed in the cloud (at ``at``): the edge
    dismisses its own entry too, unless the device started knocking again after that."""

    device_id: Id
    at: datetime


class ConfigPush(_Msg):
    """An edge's slice of its farm's config: the rooms it serves, their rules and devices."""

    type: Literal["config"] = "config"
    version: int = Field(ge=1)
    rooms: list[RoomSpec]
    devices: list[DeviceSpec]
    # Both lists are left out while empty (a farm with one edge, nothing dismissed), so an edge
    # that predates them (its messages refuse unknown fields) still takes such pushes.
    other_rooms: list[Id] = Field(
        default_factory=list,
        exclude_if=lambda rooms: not rooms,
        description="the farm's rooms this edge does not serve (another edge's, or unassigned):"
        " the edge drops them, with their devices, even where its own config file lists them",
    )
    dismissed: list[PendingDismissal] = Field(
        default_factory=list, max_length=1000, exclude_if=lambda dismissed: not dismissed
    )


DownMessage = Annotated[
    CloudCommand | CloudRelease | ConfigPush, Field(discriminator="type")
]


# ---- edge → cloud on the stream ----

class Hello(_Msg):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    edge_id: Id
    config_version: int = Field(ge=0)
    acked_seq: int = Field(ge=0)


class ConfigApplied(_Msg):
    type: Literal["config_applied"] = "config_applied"
    version: int = Field(ge=1)


class CommandAccepted(_Msg):
    type: Literal["command_accepted"] = "command_accepted"
    command_id: Id
    edge_command_id: str | None = None
    state: Literal["delivered", "expired", "rejected"] = "delivered"
    detail: str | None = None


class EdgeStatus(_Msg):
    """The edge's health, sent on its stream after ``Hello`` and then every heartbeat: what the
    farm page shows. (A cloud that predates it logs it as unreadable and keeps the stream.)"""

    type: Literal["status"] = "status"
    backlog: int | None = Field(default=None, ge=0, description="outbox records not yet uploaded")
    software_version: str | None = Field(default=None, max_length=64)


# A polling edge sends the same health as query parameters of ``GET /api/edge/v1/pending``,
# named as EdgeStatus's fields. A field left out is unknown, never an error: older edges send
# none (the cloud then only marks them seen) and older clouds ignore them.
STATUS_QUERY_FIELDS: Final = ("backlog", "software_version")


def status_query(status: EdgeStatus) -> dict[str, str]:
    """The poll's query parameters that carry ``status`` (its unknown fields left out)."""
    fields = status.model_dump(include=set(STATUS_QUERY_FIELDS), exclude_none=True)
    return {name: str(value) for name, value in fields.items()}


UpMessage = Annotated[
    Hello | ConfigApplied | CommandAccepted | EdgeStatus, Field(discriminator="type")
]
