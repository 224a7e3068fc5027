"""Manual holds on actuators from the cloud: "hold on (or off) for N minutes", and "back to
auto". A hold is a command with a duration; ending one is a command with action "auto", which
the edge turns into clearing its override (``shared.sync.CloudRelease``). Both are delivered by
the edge sync like any command and show their life (pending → delivered → acked)."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from cloud.api.routing import Call, Route
from cloud.api.schemas import In, Out
from cloud.db import audit
from cloud.db import automation_state as automation_db
from cloud.db import devices as devices_db
from cloud.errors import ValidationFailed
from shared.models import Id

MAX_HOLD_MINUTES = 7 * 24 * 60


class HoldIn(In):
    device_id: Id = Field(description="an actuator in this room")
    action: Literal["on", "off"] = Field(description="hold it on, or hold it off")
    minutes: float = Field(gt=0, le=MAX_HOLD_MINUTES, description="how long the hold lasts")


class HoldCommandOut(Out):
    id: str
    room_id: str
    device_id: str
    action: Literal["on", "off", "auto"]
    hold_minutes: float | None
    status: str
    error: str | None
    created_by: int | None
    created_at: datetime
    updated_at: datetime


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed([{"field": field, "message": message, "type": "value_error"}])


async def _actuator(call: Call, room_id: str, device_id: str, field: str) -> dict[str, Any]:
    device = await devices_db.get(call.db, call.farm_id, device_id)
    if device is None or device["room_id"] != room_id:
        raise _invalid(field, "no such device in this room")
    if device["kind"] != "actuator":
        raise _invalid(field, "not an actuator")
    return device


async def start_hold(call: Call) -> HoldCommandOut:
    """Hold an actuator on or off for a chosen number of minutes (automation resumes after)"""
    body: HoldIn = call.body
    room_id = call.param("room_id")
    await _actuator(call, room_id, body.device_id, "body.device_id")
    row = await automation_db.create_hold(
        call.db, command_id=f"h-{secrets.token_hex(8)}", farm_id=call.farm_id, room_id=room_id,
        device_id=body.device_id, action=body.action, minutes=body.minutes, user_id=call.user_id,
    )
    await audit.record(
        call.db, user_id=call.user_id, farm_id=call.farm_id, action="hold.start",
        target=f"{room_id}/{body.device_id}",
        detail={"action": body.action, "minutes": body.minutes, "command_id": row["id"]},
    )
    return HoldCommandOut.model_validate(row)


async def end_hold(call: Call) -> HoldCommandOut:
    """Back to auto: end the actuator's manual hold; automation decides again at once"""
    room_id, device_id = call.param("room_id"), call.param("actuator_id")
    await _actuator(call, room_id, device_id, "path.actuator_id")
    row = await automation_db.create_hold(
        call.db, command_id=f"a-{secrets.token_hex(8)}", farm_id=call.farm_id, room_id=room_id,
        device_id=device_id, action="auto", minutes=None, user_id=call.user_id,
    )
    await audit.record(
        call.db, user_id=call.user_id, farm_id=call.farm_id, action="hold.end",
        target=f"{room_id}/{device_id}", detail={"command_id": row["id"]},
    )
    return HoldCommandOut.model_validate(row)


ROUTES: list[Route] = [
    Route(
        "POST",
        "/api/rooms/{room_id}/holds",
        start_hold,
        "room",
        role="operator",
        body=HoldIn,
        response=HoldCommandOut,
        status=201,
        tag="automation",
        errors=(422,),
    ),
    Route(
        "DELETE",
        "/api/rooms/{room_id}/holds/{actuator_id}",
        end_hold,
        "room",
        role="operator",
        response=HoldCommandOut,
        status=202,
        tag="automation",
        errors=(422,),
    ),
]
