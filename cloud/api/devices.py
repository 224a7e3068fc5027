"""Devices in rooms; registration returns the device's MQTT credentials once."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Literal, Self

from aiohttp import web
from pydantic import Field, model_validator

from cloud import appkeys, device_setup
from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import In, Out
from cloud.db import audit
from cloud.db import automation_state as automation_db
from cloud.db import devices as devices_db
from cloud.db import setup as setup_db
from cloud.errors import NotFound, ValidationFailed
from shared.esphome import BoardOptions
from shared.models import Id
from shared.rules import ActuatorRole, Safety

SAFETY_HELP = (
    "an actuator's safety limits (min_on_s, min_off_s, max_on_s, max_duty), applied by the edge"
    " whatever the rules or a manual hold ask; none: the edge's own or its role's default"
)


class DeviceIn(In):
    id: Id | None = Field(default=None, description="the MQTT username; generated when omitted")
    name: str = Field(default="", max_length=100)
    kind: Literal["sensor", "actuator"]
    actuator: ActuatorRole | None = Field(default=None, description="required for actuators")
    capabilities: list[str] = Field(default_factory=list, max_length=64)
    safety: Safety | None = Field(default=None, description=SAFETY_HELP)

    @model_validator(mode="after")
    def _role(self) -> Self:
        if (self.kind == "actuator") != (self.actuator is not None):
            raise ValueError("an actuator needs `actuator`; a sensor must not have one")
        if self.safety is not None and self.kind != "actuator":
            raise ValueError("only an actuator has safety limits")
        return self


class DevicePatch(In):
    name: str | None = Field(default=None, max_length=100)
    capabilities: list[str] | None = Field(default=None, max_length=64)
    safety: Safety | None = Field(
        default=None, description=SAFETY_HELP + "; null: back to the role's default"
    )


class DeviceOut(Out):
    id: str
    room_id: str
    farm_id: str
    name: str
    kind: Literal["sensor", "actuator"]
    actuator: ActuatorRole | None
    capabilities: list[str]
    last_seen: datetime | None
    created_at: datetime
    safety: Safety | None = Field(default=None, description=SAFETY_HELP)
    firmware: str | None = Field(
        default=None, description="the firmware version the device last reported in a status"
        " message (null: never); an edge serves updates to its devices (edge firmware add)")


class BrokerHintOut(Out):
    host: str | None = Field(
        description="where devices reach the edge's broker (the farm's device network);"
        " null until an owner sets it: PUT /api/farms/{farm_id}/device-network"
    )
    port: int
    tls: bool


class MqttCredentials(Out):
    username: str
    password: str = Field(description="shown once; only its argon2id hash is stored")
    client_id: str = Field(description="the MQTT client id to connect with (the device id)")
    publish_topics: list[str]
    subscribe_topics: list[str]
    broker: BrokerHintOut
    provisioning: str = Field(
        description="compact JSON with everything above: the QR code's content, and what"
        " `smartfarm sim node --provisioning FILE` reads"
    )
    qr_svg: str = Field(description="the provisioning text as a QR code: an SVG data: URI")
    esphome_yaml: str = Field(
        description="the device's complete ESPHome node file (with this password; Wi-Fi and"
        " the other secrets from secrets.yaml); later: GET /api/devices/{device_id}/esphome.yaml"
    )
    sim_command: str = Field(description="shell lines running the device as a simulated node")


class RegisteredDeviceOut(DeviceOut):
    mqtt: MqttCredentials


class Reading(Out):
    metric: str
    value: float
    time: datetime


class LatestOut(Out):
    device_id: str
    room_id: str
    time: datetime | None = Field(description="newest reading time across metrics")
    readings: list[Reading]


async def list_devices(call: Call) -> Page[DeviceOut]:
    """List a room's devices"""
    q: PageQuery = call.query
    after = decode_cursor(q.cursor, str)
    rows = await devices_db.list_devices(
        call.db,
        call.farm_id,
        call.param("room_id"),
        after=after[0] if after else None,
        limit=q.limit + 1,
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["id"]])
    return Page[DeviceOut](items=[DeviceOut.model_validate(r) for r in rows], next_cursor=cursor)


async def register_device(call: Call) -> RegisteredDeviceOut:
    """Register a device; the answer carries its MQTT password, shown this once"""
    body: DeviceIn = call.body
    room_id = call.param("room_id")
    device_id = body.id or f"{body.kind}-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24)
    pw_hash = await call.app[appkeys.PASSWORDS].hash(password)
    row = await devices_db.create(
        call.db,
        device_id=device_id,
        farm_id=call.farm_id,
        room_id=room_id,
        name=body.name,
        kind=body.kind,
        actuator=body.actuator,
        capabilities=body.capabilities,
        credentials_hash=pw_hash,
    )
    if body.safety is not None:
        row = await _set_safety(call, row, body.safety)
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="device.register",
        target=device_id,
    )
    mqtt = await _credentials(call, room_id, device_id, body, password)
    return RegisteredDeviceOut.model_validate({**row, "mqtt": mqtt})


async def _credentials(
    call: Call, room_id: str, device_id: str, body: DeviceIn, password: str
) -> MqttCredentials:
    """The credentials shown once, with the broker the farm's devices use, a QR code of them
    and snippets to paste into a node's firmware or the simulator."""
    farm_id = call.farm_id
    network = await setup_db.device_network(call.db, farm_id)
    broker = device_setup.BrokerHint(
        host=network["mqtt_host"] if network else None,
        port=network["mqtt_port"] if network else device_setup.DEFAULT_PORT,
        tls=bool(network["tls"]) if network else False,
    )
    doc = device_setup.provisioning(
        farm_id=farm_id,
        room_id=room_id,
        device_id=device_id,
        kind=body.kind,
        actuator=body.actuator,
        password=password,
        broker=broker,
    )
    text = device_setup.provisioning_text(doc)
    return MqttCredentials(
        username=device_id,
        password=password,
        client_id=device_id,
        publish_topics=list(doc["publish"].values()),
        subscribe_topics=list(doc["subscribe"].values()),
        broker=BrokerHintOut(host=broker.host, port=broker.port, tls=broker.tls),
        provisioning=text,
        qr_svg=device_setup.qr_svg_data_uri(text, f"MQTT credentials of device {device_id}"),
        esphome_yaml=device_setup.esphome_yaml(doc),
        sim_command=device_setup.sim_command(doc),
    )


async def esphome_file(call: Call) -> web.Response:
    """Download the device's ESPHome node file

    Its topics, login and the farm's device network; the password is read from the node's
    secrets.yaml (`mqtt_password`: the cloud keeps only its hash, the grower got it once at
    registration), as are the edge's address and CA when the farm has not set them. Query: the
    board's options (docs/devices.md).
    """
    row = await devices_db.get(call.db, call.farm_id, call.param("device_id"))
    if row is None:
        raise NotFound("device not found")
    query: BoardOptions = call.query
    network = await setup_db.device_network(call.db, call.farm_id)
    broker = device_setup.BrokerHint(
        host=network["mqtt_host"] if network else None,
        port=network["mqtt_port"] if network else device_setup.DEFAULT_PORT,
        tls=bool(network["tls"]) if network else False,
    )
    doc = device_setup.provisioning(
        farm_id=call.farm_id, room_id=row["room_id"], device_id=row["id"], kind=row["kind"],
        actuator=row["actuator"], password="", broker=broker,
    )
    doc["password"] = None  # not known here: secrets.yaml
    if query.host is not None:
        doc["host"] = query.host
    try:
        text = device_setup.esphome_yaml(doc, **query.node_options(row["kind"]))
    except ValueError as exc:
        raise ValidationFailed(
            [{"field": "query." + str(exc).split(" ", 1)[0], "message": str(exc),
              "type": "value_error"}]
        ) from None
    # text/plain, not application/yaml: a YAML reader without ESPHome's `!secret` tag fails on
    # it (schemathesis 4.32's crashes, ending the API fuzz run); the file name says what it is.
    return web.Response(
        text=text, content_type="text/plain",
        headers={"Content-Disposition": f'attachment; filename="{row["id"]}.yaml"'},
    )


async def get_device(call: Call) -> DeviceOut:
    """Read one device"""
    row = await devices_db.get(call.db, call.farm_id, call.param("device_id"))
    if row is None:
        raise NotFound("device not found")
    return DeviceOut.model_validate(row)


async def update_device(call: Call) -> DeviceOut:
    """Rename a device or change its capabilities"""
    body: DevicePatch = call.body
    row = await devices_db.update(
        call.db,
        call.farm_id,
        call.param("device_id"),
        name=body.name,
        capabilities=body.capabilities,
    )
    if row is None:
        raise NotFound("device not found")
    if "safety" in body.model_fields_set:
        row = await _set_safety(call, row, body.safety)
    return DeviceOut.model_validate(row)


async def _set_safety(call: Call, row: dict[str, Any], safety: Safety | None) -> dict[str, Any]:
    """Store an actuator's safety limits (the edge gets them with the next config)."""
    if safety is not None and row["kind"] != "actuator":
        raise ValidationFailed(
            [{"field": "body.safety", "message": "only an actuator has safety limits",
              "type": "value_error"}]
        )
    doc = safety.model_dump(mode="json") if safety is not None else None
    await automation_db.set_safety(call.db, call.farm_id, row["id"], doc)
    await audit.record(
        call.db, user_id=call.user_id, farm_id=call.farm_id, action="device.safety",
        target=row["id"], detail={"safety": doc},
    )
    return {**row, "safety": doc}


async def delete_device(call: Call) -> None:
    """Delete a device (its readings stay in the history)"""
    device_id = call.param("device_id")
    if not await devices_db.delete(call.db, call.farm_id, device_id):
        raise NotFound("device not found")
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="device.delete",
        target=device_id,
    )


async def latest(call: Call) -> LatestOut:
    """Latest value of every metric a device reported"""
    device_id = call.param("device_id")
    rows = await devices_db.latest(call.db, call.farm_id, device_id)
    assert call.access is not None and call.access.room_id is not None
    readings = [Reading.model_validate(r) for r in rows]
    newest = max((r.time for r in readings), default=None)
    return LatestOut(
        device_id=device_id, room_id=call.access.room_id, time=newest, readings=readings
    )


ROUTES = [
    Route(
        "GET",
        "/api/rooms/{room_id}/devices",
        list_devices,
        "room",
        query=PageQuery,
        response=Page[DeviceOut],
        tag="devices",
    ),
    Route(
        "POST",
        "/api/rooms/{room_id}/devices",
        register_device,
        "room",
        role="owner",
        body=DeviceIn,
        response=RegisteredDeviceOut,
        status=201,
        tag="devices",
        errors=(409, 422),
    ),
    Route(
        "GET", "/api/devices/{device_id}", get_device, "device", response=DeviceOut, tag="devices"
    ),
    Route(
        "PATCH",
        "/api/devices/{device_id}",
        update_device,
        "device",
        role="operator",
        body=DevicePatch,
        response=DeviceOut,
        tag="devices",
        errors=(422,),
    ),
    Route(
        "DELETE",
        "/api/devices/{device_id}",
        delete_device,
        "device",
        role="owner",
        status=204,
        tag="devices",
    ),
    Route(
        "GET",
        "/api/devices/{device_id}/esphome.yaml",
        esphome_file,
        "device",
        query=BoardOptions,
        tag="devices",
    ),
    Route(
        "GET",
        "/api/devices/{device_id}/latest",
        latest,
        "device",
        response=LatestOut,
        tag="telemetry",
    ),
]
