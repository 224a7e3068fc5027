"""Manual commands to a room's actuators, stored ``pending`` for the edge sync to deliver."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import In, Out
from cloud.db import audit
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
]
