"""The edge ↔ cloud sync protocol: outbox records and batches going up, commands and versioned
config coming down. Both sides validate with these models; nothing here does I/O.

Up: ``POST /api/edge/v1/batches`` (bearer: the edge's token; body: a gzip-compressed JSON
``Batch``; answer: ``BatchAck``). Records carry a per-edge ``seq`` that grows by one per record.
The cloud keeps a per-edge high-water mark: it stores records with seq > mark exactly once, in one
transaction, and answers the new mark; a batch starting past mark + 1 is refused with 409 and the
mark, so the edge resends from there. The edge advances its cursor only on a ``BatchAck``.

Down: the edge keeps a WebSocket to ``/api/edge/v1/stream`` (same token); it says ``Hello``, the
cloud pushes ``CloudCommand`` and ``ConfigPush`` messages, the edge answers ``ConfigApplied`` and
``CommandAccepted``. The same messages are available by polling ``GET /api/edge/v1/pending``.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.models import Id
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
    "status",         # {"device_id","room_id","online","state":{...},"at"}
    "config_change",  # {"version","base_version","change":{...},"at"} local edits made offline
]


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
    created_at: datetime
    expires_at: datetime


class DeviceSpec(_Msg):
    id: Id
    room: Id
    kind: Literal["sensor", "actuator"]
    actuator: ActuatorRole | None = None
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


class ConfigPush(_Msg):
    type: Literal["config"] = "config"
    version: int = Field(ge=1)
    rooms: list[RoomSpec]
    devices: list[DeviceSpec]


DownMessage = Annotated[CloudCommand | ConfigPush, Field(discriminator="type")]


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


UpMessage = Annotated[Hello | ConfigApplied | CommandAccepted, Field(discriminator="type")]
