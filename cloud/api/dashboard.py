"""Snapshots the live dashboard starts from (then keeps current over ``/api/ws``): a farm's rooms
at a glance with their target bands, and one room's devices with status, newest values and the
last command of each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field

from cloud import appkeys
from cloud.api.routing import Call, Route
from cloud.api.schemas import Out, RoleName, Species, Stage
from cloud.db import live as live_db
from cloud.errors import NotFound
from shared.profiles import BANDED_METRICS, in_band, profile_for

# A value older than this says nothing about the room now: shown, but not judged in or out.
STALE_AFTER = timedelta(minutes=10)


class BandOut(Out):
    min: float | None
    max: float | None


class MetricNow(Out):
    value: float
    time: datetime
    device_id: str
    in_band: bool | None = Field(description="null: the metric has no band, or the value is stale")
    stale: bool


class RoomNow(Out):
    id: str
    name: str
    species: Species
    stage: Stage
    stage_started: datetime
    bands: dict[str, BandOut] = Field(description="the stage profile's target band per metric")
    latest: dict[str, MetricNow] = Field(description="the newest value per metric in the room")
    in_band: bool | None = Field(description="every banded metric fresh and in band (null: none)")
    out_of_band: list[str] = Field(description="banded metrics outside their band now")


class EdgeNow(Out):
    id: str
    name: str
    online: bool
    last_seen: datetime | None
    backlog: int | None = Field(default=None, description="records not yet uploaded (reported)")
    software_version: str | None = None
    clock_offset_s: float | None = Field(
        default=None, description="cloud minus edge clock, seconds, on its last batch"
    )
    status_at: datetime | None = Field(default=None, description="when it last reported")
    rooms: list[str] = Field(default_factory=list, description="the rooms it serves")


class OverviewOut(Out):
    farm_id: str
    role: RoleName
    rooms: list[RoomNow]
    edges: list[EdgeNow]


class LastCommand(Out):
    id: str
    action: str
    value: Any = None
    status: Literal["pending", "delivered", "acked", "failed", "timed_out", "expired"]
    error: str | None
    created_at: datetime
    updated_at: datetime


class ValueAt(Out):
    value: float
    time: datetime


class DeviceNow(Out):
    id: str
    name: str
    kind: Literal["sensor", "actuator"]
    actuator: str | None
    last_seen: datetime | None
    online: bool | None = Field(description="as last reported by the device (null: never)")
    state: dict[str, Any] | None = Field(description="the device's reported state, e.g. on/level")
    status_at: datetime | None
    firmware: str | None = Field(
        default=None, description="the firmware version the device last reported (null: never)")
    latest: dict[str, ValueAt]
    last_command: LastCommand | None


class RoomLiveOut(Out):
    role: RoleName
    room: RoomNow
    devices: list[DeviceNow]


def room_now(row: dict[str, Any], latest: list[dict[str, Any]], now: datetime) -> RoomNow:
    profile = profile_for(row["species"], row["stage"])
    bands = {}
    for metric in BANDED_METRICS:
        band = profile.band(metric)
        if band is not None:
            bands[metric] = BandOut(min=band.min, max=band.max)
    values: dict[str, MetricNow] = {}
    out: list[str] = []
    judged = 0
    for item in latest:
        metric = item["metric"]
        stale = now - item["time"] > STALE_AFTER
        verdict = None if stale or metric not in bands else in_band(profile, metric, item["value"])
        values[metric] = MetricNow(
            value=item["value"], time=item["time"], device_id=item["device_id"],
            in_band=verdict, stale=stale,
        )
        if verdict is not None:
            judged += 1
            if not verdict:
                out.append(metric)
    return RoomNow(
        id=row["id"], name=row["name"], species=row["species"], stage=row["stage"],
        stage_started=row["stage_started"], bands=bands, latest=values,
        in_band=None if judged == 0 else not out, out_of_band=sorted(out),
    )


async def farm_overview(call: Call) -> OverviewOut:
    """A farm at a glance: each room's newest temperature, RH, CO₂…, stage and band state
    Rooms outside a member's room grants are left out. Edges with their online state."""
    access = call.access
    assert access is not None
    only = sorted(access.room_ids) if access.room_ids is not None else None
    rooms = await live_db.rooms(call.db, call.farm_id, only)
    latest = await live_db.room_latest(call.db, call.farm_id, [r["id"] for r in rooms])
    by_room: dict[str, list[dict[str, Any]]] = {}
    for item in latest:
        by_room.setdefault(item["room_id"], []).append(item)
    now = datetime.now(UTC)
    window = call.app[appkeys.SETTINGS].sync.online_window_s
    edges = await live_db.edges(call.db, [call.farm_id], window_s=window)
    return OverviewOut(
        farm_id=call.farm_id,
        role=access.role,
        rooms=[room_now(r, by_room.get(r["id"], []), now) for r in rooms],
        edges=[EdgeNow.model_validate(e) for e in edges],
    )


def _device(row: dict[str, Any]) -> DeviceNow:
    command = None
    if row["command_id"] is not None:
        command = LastCommand(
            id=row["command_id"], action=row["command_action"], value=row["command_value"],
            status=row["command_status"], error=row["command_error"],
            created_at=row["command_created_at"], updated_at=row["command_updated_at"],
        )
    return DeviceNow(
        id=row["id"], name=row["name"], kind=row["kind"], actuator=row["actuator"],
        last_seen=row["last_seen"], online=row["online"], state=row["state"],
        status_at=row["status_at"], firmware=row.get("firmware"),
        latest={m: ValueAt.model_validate(v) for m, v in (row["latest"] or {}).items()},
        last_command=command,
    )


async def room_live(call: Call) -> RoomLiveOut:
    """A room now: its bands and newest values, and each device's status, values and last command"""
    access = call.access
    assert access is not None
    room_id = call.param("room_id")
    rooms = await live_db.rooms(call.db, call.farm_id, [room_id])
    if not rooms:
        raise NotFound("room not found")
    latest = await live_db.room_latest(call.db, call.farm_id, [room_id])
    devices = await live_db.room_devices(call.db, call.farm_id, room_id)
    return RoomLiveOut(
        role=access.role,
        room=room_now(rooms[0], latest, datetime.now(UTC)),
        devices=[_device(d) for d in devices],
    )


ROUTES = [
    Route(
        "GET",
        "/api/farms/{farm_id}/overview",
        farm_overview,
        "farm",
        response=OverviewOut,
        tag="dashboard",
    ),
    Route(
        "GET",
        "/api/rooms/{room_id}/live",
        room_live,
        "room",
        response=RoomLiveOut,
        tag="dashboard",
    ),
]
