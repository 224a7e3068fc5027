"""Devices waiting for adoption: listed as the farm's edges report them (a device that knocked at
an edge's broker with the farm's claim code, refused until adopted); an operator adopts one into a
room — it becomes a registered device, its MQTT password shown once, and the farm's config push
brings it (and its password hash) to the edges — or dismisses it from the list."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Literal, Self

from psycopg.types.json import Jsonb
from pydantic import Field, model_validator

from cloud import appkeys
from cloud.api.devices import DeviceIn, RegisteredDeviceOut, _credentials
from cloud.api.routing import Call, Route
from cloud.api.schemas import In, Out
from cloud.db import audit
from cloud.db import devices as devices_db
from cloud.db import pending as pending_db
from cloud.errors import Conflict, NotFound, ValidationFailed
from shared.rules import ActuatorRole
from shared.topics import is_valid_id

MAX_LISTED = 500


class PendingDeviceOut(Out):
    device_id: str = Field(description="the id it logged in with: its MQTT username once adopted")
    farm_id: str
    edge_id: str = Field(description="the edge whose broker it knocked at")
    state: Literal["pending", "adopted", "dismissed"]
    first_seen: datetime
    last_seen: datetime
    attempts: int = Field(description="claim logins the edge counted (refused, all of them)")
    address: str = Field(description="its IP address on the farm's network at its last try")
    client_id: str = Field(description="the MQTT client id it sent")
    room_id: str | None
    claim_mode: bool = Field(description="it knocked with a claim key: once adopted, the edge"
                                         " hands it a password of its own (no re-flash)")


class PendingListOut(Out):
    items: list[PendingDeviceOut]


class AdoptIn(In):
    name: str = Field(default="", max_length=100)
    kind: Literal["sensor", "actuator"]
    actuator: ActuatorRole | None = Field(default=None, description="required for actuators")

    @model_validator(mode="after")
    def _role(self) -> Self:
        if (self.kind == "actuator") != (self.actuator is not None):
            raise ValueError("an actuator needs `actuator`; a sensor must not have one")
        return self


def _pending_id(call: Call) -> str:
    device_id = call.param("pending_device_id")
    if not is_valid_id(device_id):
        raise NotFound("no such device is waiting for adoption")
    return device_id


async def list_pending(call: Call) -> PendingListOut:
    """List the devices waiting for adoption"""
    rows = await pending_db.waiting(call.db, call.farm_id, MAX_LISTED)
    return PendingListOut(items=[PendingDeviceOut.model_validate(r) for r in rows])


async def adopt_device(call: Call) -> RegisteredDeviceOut:
    """Adopt a waiting device into this room; the answer carries its MQTT password, shown once

    The device becomes a registered device of the room under the id it knocked with; the farm's
    config push brings it to the edges, whose brokers then let it log in with that password."""
    body: AdoptIn = call.body
    room_id = call.param("room_id")
    device_id = _pending_id(call)
    farm_id = call.farm_id
    password = secrets.token_urlsafe(24)
    pw_hash = await call.app[appkeys.PASSWORDS].hash(password)
    async with call.db.transaction() as cur:
        waiting = await pending_db.lock_waiting(cur, farm_id, device_id)
        if waiting is None:
            raise NotFound(f"no device {device_id} is waiting for adoption in this farm")
        # A claim-mode node file names the room it was made for (client id <id>@<room>); its
        # firmware takes credentials for that room only (docs/onboarding.md).
        _, made_for, hint = str(waiting["client_id"]).partition("@")
        if made_for and is_valid_id(hint) and hint != room_id:
            raise ValidationFailed([{
                "field": "room_id", "type": "value_error",
                "message": f"this node's firmware was made for room {hint}: adopt it into that"
                           " room (or flash it with a node file for this one)"}])
        await cur.execute(devices_db.GET, {"farm_id": farm_id, "id": device_id})
        if await cur.fetchone() is not None:
            raise Conflict(f"device {device_id} is already registered in this farm")
        await cur.execute(devices_db.CREATE, {
            "id": device_id, "farm_id": farm_id, "room_id": room_id, "name": body.name,
            "kind": body.kind, "actuator": body.actuator, "capabilities": Jsonb([]),
            "hash": pw_hash,
        })
        await pending_db.mark_adopted(cur, farm_id, device_id, room_id)
    row = await devices_db.get(call.db, farm_id, device_id)
    assert row is not None
    await audit.record(call.db, user_id=call.user_id, farm_id=farm_id, action="device.adopt",
                       target=device_id)
    spec = DeviceIn(id=device_id, name=body.name, kind=body.kind, actuator=body.actuator)
    mqtt = await _credentials(call, room_id, device_id, spec, password)
    return RegisteredDeviceOut.model_validate({**row, "mqtt": mqtt})


async def dismiss_pending(call: Call) -> None:
    """Dismiss a waiting device from the list (it stays refused; the edge may still list it)"""
    device_id = _pending_id(call)
    if not await pending_db.dismiss(call.db, call.farm_id, device_id, call.user_id):
        raise NotFound(f"no device {device_id} is waiting for adoption in this farm")
    await audit.record(call.db, user_id=call.user_id, farm_id=call.farm_id,
                       action="device.dismiss", target=device_id)


ROUTES = [
    Route(
        "GET",
        "/api/farms/{farm_id}/pending-devices",
        list_pending,
        "farm",
        response=PendingListOut,
        tag="devices",
    ),
    Route(
        "POST",
        "/api/rooms/{room_id}/pending-devices/{pending_device_id}/adopt",
        adopt_device,
        "room",
        role="operator",
        body=AdoptIn,
        response=RegisteredDeviceOut,
        status=201,
        tag="devices",
        errors=(404, 409, 422),
    ),
    Route(
        "DELETE",
        "/api/farms/{farm_id}/pending-devices/{pending_device_id}",
        dismiss_pending,
        "farm",
        role="operator",
        status=204,
        tag="devices",
        errors=(404,),
    ),
]
