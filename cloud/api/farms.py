"""Farms: list the caller's, create (the creator becomes owner), read, rename, delete; and where
the farm's devices reach their MQTT broker (shown with every new device's credentials)."""

from __future__ import annotations

import secrets
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import In, Out, RoleName
from cloud.db import audit
from cloud.db import farms as farms_db
from cloud.db import setup as setup_db
from cloud.errors import NotFound
from shared.models import Id


def _check_tz(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown IANA time zone") from None
    return value


class FarmIn(In):
    id: Id | None = Field(default=None, description="topic-safe id; generated when omitted")
    name: str = Field(min_length=1, max_length=100)
    timezone: str = Field(default="UTC", max_length=64)

    _tz = field_validator("timezone")(_check_tz)


class FarmPatch(In):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    timezone: str | None = Field(default=None, max_length=64)

    _tz = field_validator("timezone")(_check_tz)


class FarmOut(Out):
    id: str
    name: str
    timezone: str
    created_at: datetime
    role: RoleName | None = Field(default=None, description="the caller's role")


# A host name (RFC 1123 labels) or an IPv4/IPv6 address, as a device's firmware takes it.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST = rf"^(\[?[0-9A-Fa-f:.]+\]?|{_LABEL}(\.{_LABEL})*)$"


class DeviceNetworkIn(In):
    mqtt_host: str = Field(
        min_length=1,
        max_length=253,
        pattern=HOST,
        description="the edge's address on the farm network, as devices reach it",
    )
    mqtt_port: int = Field(default=1884, ge=1, le=65535)
    tls: bool = Field(default=False, description="devices connect with TLS (port 8883 usually)")


class DeviceNetworkOut(Out):
    mqtt_host: str | None = Field(description="null: not set yet")
    mqtt_port: int
    tls: bool
    updated_at: datetime | None


async def list_farms(call: Call) -> Page[FarmOut]:
    """List the farms the caller belongs to"""
    q: PageQuery = call.query
    after = decode_cursor(q.cursor, str)
    assert call.user is not None
    rows = await farms_db.list_for_user(
        call.db,
        call.user.id,
        is_admin=call.user.is_admin,
        after=after[0] if after else None,
        limit=q.limit + 1,
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["id"]])
    return Page[FarmOut](items=[FarmOut.model_validate(r) for r in rows], next_cursor=cursor)


async def create_farm(call: Call) -> FarmOut:
    """Create a farm; the caller becomes its owner"""
    body: FarmIn = call.body
    farm_id = body.id or f"farm-{secrets.token_hex(4)}"
    row = await farms_db.create(
        call.db, farm_id=farm_id, name=body.name, timezone=body.timezone, user_id=call.user_id
    )
    await audit.record(call.db, user_id=call.user_id, farm_id=farm_id, action="farm.create")
    return FarmOut.model_validate(row)


async def get_farm(call: Call) -> FarmOut:
    """Read one farm"""
    row = await farms_db.get(call.db, call.farm_id)
    if row is None:
        raise NotFound("farm not found")
    assert call.access is not None
    return FarmOut.model_validate({**row, "role": call.access.role})


async def update_farm(call: Call) -> FarmOut:
    """Rename a farm or change its time zone"""
    body: FarmPatch = call.body
    row = await farms_db.update(call.db, call.farm_id, name=body.name, timezone=body.timezone)
    if row is None:
        raise NotFound("farm not found")
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="farm.update",
        detail=body.model_dump(exclude_none=True),
    )
    assert call.access is not None
    return FarmOut.model_validate({**row, "role": call.access.role})


async def delete_farm(call: Call) -> None:
    """Delete a farm with its rooms, devices, data and memberships"""
    if not await farms_db.delete(call.db, call.farm_id):
        raise NotFound("farm not found")
    await audit.record(call.db, user_id=call.user_id, farm_id=call.farm_id, action="farm.delete")


async def get_device_network(call: Call) -> DeviceNetworkOut:
    """Where the farm's devices reach their MQTT broker"""
    row = await setup_db.device_network(call.db, call.farm_id)
    if row is None:
        return DeviceNetworkOut(mqtt_host=None, mqtt_port=1884, tls=False, updated_at=None)
    return DeviceNetworkOut.model_validate(row)


async def set_device_network(call: Call) -> DeviceNetworkOut:
    """Say where the farm's devices reach their MQTT broker (the edge on the farm network)
    New devices' credentials, QR code and snippets carry this address."""
    body: DeviceNetworkIn = call.body
    row = await setup_db.set_device_network(
        call.db, call.farm_id, mqtt_host=body.mqtt_host, mqtt_port=body.mqtt_port, tls=body.tls
    )
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="farm.device_network",
        detail=body.model_dump(),
    )
    return DeviceNetworkOut.model_validate(row)


ROUTES = [
    Route(
        "GET",
        "/api/farms",
        list_farms,
        "user",
        query=PageQuery,
        response=Page[FarmOut],
        tag="farms",
    ),
    Route(
        "POST",
        "/api/farms",
        create_farm,
        "user",
        body=FarmIn,
        response=FarmOut,
        status=201,
        tag="farms",
        errors=(409, 422),
    ),
    Route("GET", "/api/farms/{farm_id}", get_farm, "farm", response=FarmOut, tag="farms"),
    Route(
        "PATCH",
        "/api/farms/{farm_id}",
        update_farm,
        "farm",
        role="owner",
        body=FarmPatch,
        response=FarmOut,
        tag="farms",
        errors=(422,),
    ),
    Route(
        "DELETE", "/api/farms/{farm_id}", delete_farm, "farm", role="owner", status=204, tag="farms"
    ),
    Route(
        "GET",
        "/api/farms/{farm_id}/device-network",
        get_device_network,
        "farm",
        response=DeviceNetworkOut,
        tag="farms",
    ),
    Route(
        "PUT",
        "/api/farms/{farm_id}/device-network",
        set_device_network,
        "farm",
        role="owner",
        body=DeviceNetworkIn,
        response=DeviceNetworkOut,
        tag="farms",
        errors=(422,),
    ),
]
