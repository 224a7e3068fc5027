"""Grow rooms of a farm: species, stage and stage start."""

from __future__ import annotations

import secrets
from datetime import datetime

from pydantic import Field

from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import AwareIsoDateTime, In, Out, Species, Stage
from cloud.db import audit
from cloud.db import edges as edges_db
from cloud.db import rooms as rooms_db
from cloud.errors import NotFound, ValidationFailed
from shared.models import Id


class RoomIn(In):
    id: Id | None = Field(default=None, description="topic-safe id; generated when omitted")
    name: str = Field(default="", max_length=100)
    species: Species
    stage: Stage
    stage_started: AwareIsoDateTime | None = Field(default=None, description="default: now")
    edge_id: Id | None = Field(
        default=None,
        description="the edge to run it (default: none; a farm with one edge needs none)",
    )


class RoomPatch(In):
    name: str | None = Field(default=None, max_length=100)
    species: Species | None = None
    stage: Stage | None = Field(default=None, description="a new stage restarts stage_started")
    stage_started: AwareIsoDateTime | None = None


class RoomOut(Out):
    id: str
    farm_id: str
    name: str
    species: Species
    stage: Stage
    stage_started: datetime
    created_at: datetime
    edge_id: str | None = Field(
        default=None,
        description="the edge that serves this room (null: unassigned, then served by the"
        " farm's only edge if it has exactly one)",
    )


class RoomEdgeIn(In):
    edge_id: Id | None = Field(description="one of the farm's edges; null unassigns the room")


class RoomEdgeOut(Out):
    room_id: str
    edge_id: str | None


async def list_rooms(call: Call) -> Page[RoomOut]:
    """List a farm's rooms (only the granted ones for a room-limited member)"""
    q: PageQuery = call.query
    after = decode_cursor(q.cursor, str)
    assert call.access is not None
    only = sorted(call.access.room_ids) if call.access.room_ids is not None else None
    rows = await rooms_db.list_rooms(
        call.db, call.farm_id, only=only, after=after[0] if after else None, limit=q.limit + 1
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["id"]])
    return Page[RoomOut](items=[RoomOut.model_validate(r) for r in rows], next_cursor=cursor)


async def create_room(call: Call) -> RoomOut:
    """Add a room to a farm"""
    body: RoomIn = call.body
    room_id = body.id or f"room-{secrets.token_hex(4)}"
    if body.edge_id is not None and await edges_db.get(call.db, call.farm_id, body.edge_id) is None:
        raise _unknown_edge()
    row = await rooms_db.create(
        call.db,
        room_id=room_id,
        farm_id=call.farm_id,
        name=body.name,
        species=body.species,
        stage=body.stage,
        stage_started=body.stage_started,
    )
    if body.edge_id is not None:
        try:
            assigned = await edges_db.assign_room(call.db, call.farm_id, room_id, body.edge_id)
        except edges_db.UnknownEdge:  # removed meanwhile: the room stays unassigned
            assigned = None
        row = {**row, "edge_id": assigned["edge_id"] if assigned else None}
    await audit.record(
        call.db, user_id=call.user_id, farm_id=call.farm_id, action="room.create", target=room_id
    )
    return RoomOut.model_validate(row)


async def get_room(call: Call) -> RoomOut:
    """Read one room"""
    row = await rooms_db.get(call.db, call.farm_id, call.param("room_id"))
    if row is None:
        raise NotFound("room not found")
    return RoomOut.model_validate(row)


async def update_room(call: Call) -> RoomOut:
    """Rename a room or change its species or grow stage"""
    body: RoomPatch = call.body
    room_id = call.param("room_id")
    fields = body.model_dump(exclude_none=True)
    row = await rooms_db.update(call.db, call.farm_id, room_id, **fields)
    if row is None:
        raise NotFound("room not found")
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="room.update",
        target=room_id,
        detail=body.model_dump(mode="json", exclude_none=True),
    )
    return RoomOut.model_validate(row)


def _unknown_edge() -> ValidationFailed:
    return ValidationFailed(
        [{"field": "body.edge_id", "message": "not an edge of this farm", "type": "value_error"}]
    )


async def assign_edge(call: Call) -> RoomEdgeOut:
    """Assign a room to one of the farm's edges, or move it to another

    Only the owning edge is sent the room's config (rules, devices and their credentials) and its
    commands. The edge losing the room stops automating it and accepting its devices after the
    config change; what it recorded for the room before still uploads.
    """
    body: RoomEdgeIn = call.body
    room_id = call.param("room_id")
    try:
        row = await edges_db.assign_room(call.db, call.farm_id, room_id, body.edge_id)
    except edges_db.UnknownEdge:
        raise _unknown_edge() from None
    if row is None:
        raise NotFound("room not found")
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="room.edge",
        target=room_id,
        detail={"edge_id": body.edge_id},
    )
    return RoomEdgeOut(room_id=row["id"], edge_id=row["edge_id"])


async def delete_room(call: Call) -> None:
    """Delete a room with its devices, rules and commands"""
    room_id = call.param("room_id")
    if not await rooms_db.delete(call.db, call.farm_id, room_id):
        raise NotFound("room not found")
    await audit.record(
        call.db, user_id=call.user_id, farm_id=call.farm_id, action="room.delete", target=room_id
    )


ROUTES = [
    Route(
        "GET",
        "/api/farms/{farm_id}/rooms",
        list_rooms,
        "farm",
        query=PageQuery,
        response=Page[RoomOut],
        tag="rooms",
    ),
    Route(
        "POST",
        "/api/farms/{farm_id}/rooms",
        create_room,
        "farm",
        role="owner",
        body=RoomIn,
        response=RoomOut,
        status=201,
        tag="rooms",
        errors=(409, 422),
    ),
    Route("GET", "/api/rooms/{room_id}", get_room, "room", response=RoomOut, tag="rooms"),
    Route(
        "PATCH",
        "/api/rooms/{room_id}",
        update_room,
        "room",
        role="operator",
        body=RoomPatch,
        response=RoomOut,
        tag="rooms",
        errors=(422,),
    ),
    Route(
        "PUT",
        "/api/rooms/{room_id}/edge",
        assign_edge,
        "room",
        role="owner",
        body=RoomEdgeIn,
        response=RoomEdgeOut,
        tag="rooms",
        errors=(422,),
    ),
    Route(
        "DELETE", "/api/rooms/{room_id}", delete_room, "room", role="owner", status=204, tag="rooms"
    ),
]
