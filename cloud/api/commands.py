"""Manual commands to a room's actuators, stored ``pending`` for the edge sync to deliver; and
the command audit of a room or farm: who or what switched which actuator, and the outcome."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from cloud.api.operate_query import SpanQuery
from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import In, Out
from cloud.db import audit, command_audit
from cloud.db import commands as commands_db
from cloud.db import devices as devices_db
from cloud.errors import NotFound, ValidationFailed
from shared.models import (
    COMMAND_FORMS_HELP,
    CommandForm,
    Id,
    canonical_action,
    command_value_error,
)

CommandStatus = Literal["pending", "delivered", "acked", "failed", "timed_out", "expired"]


class CommandIn(In):
    device_id: Id | None = Field(
        default=None,
        description="the actuator; with a set_<quantity> form it may be omitted: the room's"
        " actuator for that quantity",
    )
    action: CommandForm = Field(
        description=f"{COMMAND_FORMS_HELP}; stored as the model's action (`set` for the seed's"
        " forms)"
    )
    value: float | bool | None = Field(default=None, description="level 0-100 for `set`")
    command_id: Id | None = Field(default=None, description="idempotency key; generated if omitted")


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed([{"field": f"body.{field}", "message": message, "type": "value_error"}])


async def _actuator(call: Call, room_id: str, body: CommandIn, role: str | None) -> dict[str, Any]:
    """The device the command goes to: ``body.device_id`` (an actuator in this room, of the
    form's role if it names one), or the room's one actuator of the form's role."""
    if body.device_id is None:
        if role is None:
            raise _invalid("device_id", f"required with action {body.action!r}")
        rows = await devices_db.list_devices(call.db, call.farm_id, room_id, after=None, limit=500)
        fitting = [d for d in rows if d["kind"] == "actuator" and d["actuator"] == role]
        if len(fitting) != 1:
            found = "no" if not fitting else f"{len(fitting)}"
            raise _invalid(
                "action" if not fitting else "device_id",
                f"{body.action} drives a {role}: this room has {found} {role} actuator(s)"
                + ("" if not fitting else "; name one in device_id"),
            )
        return fitting[0]
    device = await devices_db.get(call.db, call.farm_id, body.device_id)
    if device is None or device["room_id"] != room_id:
        raise _invalid("device_id", "no such device in this room")
    if device["kind"] != "actuator":
        raise _invalid("device_id", "not an actuator")
    if role is not None and device["actuator"] != role:
        raise _invalid(
            "device_id",
            f"{body.action} drives a {role}; {body.device_id} is a {device['actuator']}",
        )
    return device


class CommandQuery(PageQuery):
    model_config = ConfigDict(extra="ignore")
    status: CommandStatus | None = None


class CommandOut(Out):
    id: str
    room_id: str
    device_id: str
    action: str
    value: float | bool | None
    status: CommandStatus
    error: str | None
    created_by: int | None
    created_at: datetime
    updated_at: datetime


async def create_command(call: Call) -> CommandOut:
    """Send a command to an actuator in this room (stored pending with an id)"""
    body: CommandIn = call.body
    room_id = call.param("room_id")
    action, role = canonical_action(body.action)  # the body's Literal admits only known forms
    if (problem := command_value_error(action, body.value)) is not None:
        raise _invalid("value", problem)
    device = await _actuator(call, room_id, body, role)
    device_id = str(device["id"])
    command_id = body.command_id or f"c-{secrets.token_hex(8)}"
    row = await commands_db.create(
        call.db,
        command_id=command_id,
        farm_id=call.farm_id,
        room_id=room_id,
        device_id=device_id,
        action=action,
        value=body.value,
        user_id=call.user_id,
    )
    detail = {"device_id": device_id, "action": action, "value": body.value}
    if role is not None:
        detail["form"] = body.action  # what the caller sent, e.g. set_humidity
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="command.create",
        target=command_id,
        detail=detail,
    )
    return CommandOut.model_validate(row)


async def list_commands(call: Call) -> Page[CommandOut]:
    """List a room's commands, newest first"""
    q: CommandQuery = call.query
    after = decode_cursor(q.cursor, datetime, str)
    rows = await commands_db.list_commands(
        call.db,
        call.farm_id,
        call.param("room_id"),
        status=q.status,
        after=after,
        limit=q.limit + 1,
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["created_at"], r["id"]])
    return Page[CommandOut](items=[CommandOut.model_validate(r) for r in rows], next_cursor=cursor)


async def get_command(call: Call) -> CommandOut:
    """Read one command and its delivery state"""
    row = await commands_db.get(
        call.db, call.farm_id, call.param("room_id"), call.param("command_id")
    )
    if row is None:
        raise NotFound("command not found")
    return CommandOut.model_validate(row)


AuditOrigin = Literal["user", "automation", "edge_page", "home_assistant", "edge_start", "cloud"]
AuditOutcome = Literal[
    "pending", "delivered", "acked", "failed", "timed_out", "expired", "superseded"
]
ORIGIN_WORDS = {
    "automation": "Automation",
    "edge_page": "Edge page",
    "home_assistant": "Home Assistant",
    "edge_start": "Edge start-up",
    "cloud": "Cloud",
}
_HOLD = re.compile(r"\bfor (\d+(?:\.\d+)?) min\b")
_BY = re.compile(r"^manual by (.+?) for [\d.]+ min")


class AuditQuery(SpanQuery):
    device_id: Id | None = Field(default=None, description="only this actuator")
    origin: AuditOrigin | None = Field(default=None, description="only commands made this way")
    outcome: AuditOutcome | None = None


class FarmAuditQuery(AuditQuery):
    room_id: Id | None = Field(default=None, description="only this room")


class AuditOut(Out):
    id: str = Field(description="c-{command} for cloud commands, e-{edge}-{command} for the edge's")
    command_id: str
    room_id: str
    room_name: str | None
    device_id: str
    device_name: str | None
    actuator: str | None = Field(description="the device's role, e.g. humidifier")
    action: str
    value: float | bool | None
    at: datetime
    origin: AuditOrigin
    by: str = Field(description="who, in words: a user's name or email, 'Automation', …")
    reason: str | None = Field(description="the rule's reason, or the operator's hold")
    hold_minutes: float | None = Field(description="how long a manual command holds off automation")
    outcome: AuditOutcome
    error: str | None
    acked_at: datetime | None
    ack_seconds: float | None = Field(description="from the command to the device's ack")
    edge_id: str | None
    edge_name: str | None


def _audit_row(row: dict[str, Any]) -> AuditOut:
    reason = row["reason"]
    origin = row["origin"]
    if origin == "user":
        by = row["user_name"] or "a removed user"
    elif origin == "edge_page":
        who = _BY.match(reason or "")
        by = f"Edge page ({who.group(1)})" if who else "Edge page"
    else:
        by = ORIGIN_WORDS[origin]
    hold_minutes = row["hold_minutes"]  # a cloud command's own; else the edge's reason text
    if hold_minutes is None and origin != "automation":
        hold = _HOLD.search(reason or "")
        hold_minutes = float(hold.group(1)) if hold else None
    acked = row["acked_at"]
    seconds = None
    if acked is not None and row["outcome"] == "acked":
        seconds = round(max(0.0, (acked - row["at"]).total_seconds()), 3)
    value = row["value"]
    return AuditOut.model_validate(
        {
            **row,
            "value": value if isinstance(value, int | float | bool) else None,
            "by": by,
            "hold_minutes": hold_minutes,
            "ack_seconds": seconds,
        }
    )


def _audit_only(call: Call) -> list[str] | None:
    assert call.access is not None
    return sorted(call.access.room_ids) if call.access.room_ids is not None else None


async def _audit(call: Call, q: AuditQuery, room_id: str | None) -> Page[AuditOut]:
    after = decode_cursor(q.cursor, datetime, str)
    rows = await command_audit.entries(
        call.db,
        call.farm_id,
        room_id=room_id,
        device_id=q.device_id,
        only=_audit_only(call),
        origin=q.origin,
        outcome=q.outcome,
        since=q.from_,
        until=q.to,
        after=(after[0], after[1]) if after else None,
        limit=q.limit + 1,
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["at"], r["id"]])
    return Page[AuditOut](items=[_audit_row(r) for r in rows], next_cursor=cursor)


async def room_audit(call: Call) -> Page[AuditOut]:
    """A room's command audit, newest first: who or what switched which actuator, the outcome
    Cloud users' commands with their delivery and the device's ack, and what the room's edge
    did on its own (automation, its local page, Home Assistant, start-up)."""
    return await _audit(call, call.query, call.param("room_id"))


async def farm_audit(call: Call) -> Page[AuditOut]:
    """A farm's command audit, newest first (every room the caller may see)"""
    q: FarmAuditQuery = call.query
    return await _audit(call, q, q.room_id)


_BASE = "/api/rooms/{room_id}/commands"
ROUTES = [
    Route(
        "POST",
        _BASE,
        create_command,
        "room",
        role="operator",
        body=CommandIn,
        response=CommandOut,
        status=201,
        tag="commands",
        errors=(409, 422),
    ),
    Route(
        "GET",
        _BASE,
        list_commands,
        "room",
        query=CommandQuery,
        response=Page[CommandOut],
        tag="commands",
    ),
    Route("GET", _BASE + "/{command_id}", get_command, "room", response=CommandOut, tag="commands"),
    Route(
        "GET",
        "/api/rooms/{room_id}/command-audit",
        room_audit,
        "room",
        query=AuditQuery,
        response=Page[AuditOut],
        tag="commands",
    ),
    Route(
        "GET",
        "/api/farms/{farm_id}/command-audit",
        farm_audit,
        "farm",
        query=FarmAuditQuery,
        response=Page[AuditOut],
        tag="commands",
    ),
]
