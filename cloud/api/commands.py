"""Manual commands to a room's actuators, stored ``pending`` for the edge sync to deliver."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Literal, Self

from pydantic import ConfigDict, Field, model_validator

from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import In, Out
from cloud.db import audit
from cloud.db import commands as commands_db
from cloud.db import devices as devices_db
from cloud.errors import NotFound, ValidationFailed
from shared.models import CommandAction, Id

CommandStatus = Literal["pending", "delivered", "acked", "failed", "timed_out", "expired"]


class CommandIn(In):
    device_id: Id
    action: CommandAction
    value: float | bool | None = Field(default=None, description="level 0-100 for `set`")
    command_id: Id | None = Field(default=None, description="idempotency key; generated if omitted")

    @model_validator(mode="after")
    def _value(self) -> Self:
        if self.action == "set":
            if isinstance(self.value, bool) or self.value is None:
                raise ValueError("`set` needs a numeric value 0-100")
            if not 0 <= self.value <= 100:
                raise ValueError("value must be within 0-100")
        return self


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
    device = await devices_db.get(call.db, call.farm_id, body.device_id)
    if device is None or device["room_id"] != room_id:
        raise ValidationFailed(
            [
                {
                    "field": "body.device_id",
                    "message": "no such device in this room",
                    "type": "value_error",
                }
            ]
        )
    if device["kind"] != "actuator":
        raise ValidationFailed(
            [{"field": "body.device_id", "message": "not an actuator", "type": "value_error"}]
        )
    command_id = body.command_id or f"c-{secrets.token_hex(8)}"
    row = await commands_db.create(
        call.db,
        command_id=command_id,
        farm_id=call.farm_id,
        room_id=room_id,
        device_id=body.device_id,
        action=body.action,
        value=body.value,
        user_id=call.user_id,
    )
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="command.create",
        target=command_id,
        detail={"device_id": body.device_id, "action": body.action, "value": body.value},
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
