"""Yield: the substrate loaded in a room, recorded harvests, and the predicted yield of the
coming flush with the error of past predictions (model in ``cloud.ai.yields``)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Self

from pydantic import Field, model_validator

from cloud import appkeys
from cloud.ai.yields import report
from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import AwareIsoDateTime, In, Out
from cloud.db import audit
from cloud.db import harvests as harvests_db

MAX_KG = 100_000.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SubstrateIn(In):
    """Either the dry mass, or the wet mass and its moisture."""

    dry_mass_kg: float | None = Field(default=None, gt=0, le=MAX_KG)
    wet_mass_kg: float | None = Field(default=None, gt=0, le=MAX_KG)
    moisture_pct: float | None = Field(default=None, ge=0, lt=100)
    loaded_at: AwareIsoDateTime | None = Field(
        default=None, description="when this load went in (default now); flushes count from it"
    )

    @model_validator(mode="after")
    def _mass(self) -> Self:
        wet = self.wet_mass_kg is not None and self.moisture_pct is not None
        if self.dry_mass_kg is None and not wet:
            raise ValueError("give dry_mass_kg, or wet_mass_kg with moisture_pct")
        return self

    @property
    def dry(self) -> float:
        if self.dry_mass_kg is not None:
            return self.dry_mass_kg
        assert self.wet_mass_kg is not None and self.moisture_pct is not None
        return self.wet_mass_kg * (1 - self.moisture_pct / 100)


class SubstrateOut(Out):
    room_id: str
    dry_mass_kg: float
    wet_mass_kg: float | None
    moisture_pct: float | None
    loaded_at: datetime
    updated_at: datetime


class HarvestIn(In):
    weight_kg: float = Field(gt=0, le=MAX_KG, description="fresh weight")
    flush: int | None = Field(default=None, ge=1, le=20, description="default: the coming one")
    harvested_at: AwareIsoDateTime | None = None
    note: str = Field(default="", max_length=500)


class HarvestOut(Out):
    id: int
    room_id: str
    flush: int
    weight_kg: float
    harvested_at: datetime
    note: str
    recorded_by: int | None
    created_at: datetime


class PredictionOut(Out):
    flush: int
    day: date
    expected_kg: float
    low_kg: float
    high_kg: float
    time_in_band: float | None = Field(description="share of the flush's time all in band")
    factor: float = Field(description="climate factor applied (0.6–1)")
    inputs: dict[str, Any]
    computed_at: datetime


class FlushOut(Out):
    flush: int
    actual_kg: float
    predicted_kg: float | None = None
    low_kg: float | None = None
    high_kg: float | None = None
    predicted_on: date | None = None
    error_kg: float | None = Field(default=None, description="actual minus predicted")
    error_pct: float | None = None
    within_range: bool | None = None


class YieldOut(Out):
    model: str
    substrate: SubstrateOut | None
    current: PredictionOut | None = Field(description="the latest prediction (updated daily)")
    flushes: list[FlushOut] = Field(description="harvested flushes against their predictions")
    mean_abs_error_pct: float | None = None


async def _predict_soon(call: Call, room_id: str) -> None:
    await call.app[appkeys.JOBS].defer(
        "predict_yield", room_id=room_id, farm_id=call.farm_id
    )


async def set_substrate(call: Call) -> SubstrateOut:
    """Record the substrate loaded in this room (starts a new crop: flushes count from it)"""
    body: SubstrateIn = call.body
    room_id = call.param("room_id")
    row = await harvests_db.set_substrate(
        call.db,
        call.farm_id,
        room_id,
        dry_mass_kg=round(body.dry, 4),
        wet_mass_kg=body.wet_mass_kg,
        moisture_pct=body.moisture_pct,
        loaded_at=body.loaded_at,
        user_id=call.user_id,
    )
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="substrate.set",
        target=room_id,
        detail={"dry_mass_kg": row["dry_mass_kg"]},
    )
    await _predict_soon(call, room_id)
    return SubstrateOut.model_validate(row)


async def add_harvest(call: Call) -> HarvestOut:
    """Record a harvest (fresh weight) of a flush"""
    body: HarvestIn = call.body
    room_id = call.param("room_id")
    flush = body.flush
    if flush is None:
        substrate = await harvests_db.substrate(call.db, call.farm_id, room_id)
        since = substrate["loaded_at"] if substrate else EPOCH
        done = await harvests_db.flushes(call.db, call.farm_id, room_id, since=since)
        flush = max((f["flush"] for f in done), default=0) + 1
    row = await harvests_db.add_harvest(
        call.db,
        call.farm_id,
        room_id,
        flush=min(flush, 20),
        weight_kg=body.weight_kg,
        harvested_at=body.harvested_at,
        note=body.note,
        user_id=call.user_id,
    )
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="harvest.create",
        target=str(row["id"]),
        detail={"room_id": room_id, "flush": row["flush"], "weight_kg": row["weight_kg"]},
    )
    await _predict_soon(call, room_id)
    return HarvestOut.model_validate(row)


async def list_harvests(call: Call) -> Page[HarvestOut]:
    """List a room's harvests, newest first"""
    q: PageQuery = call.query
    after = decode_cursor(q.cursor, int)
    rows = await harvests_db.list_harvests(
        call.db,
        call.farm_id,
        call.param("room_id"),
        after=after[0] if after else None,
        limit=q.limit + 1,
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["id"]])
    return Page[HarvestOut](items=[HarvestOut.model_validate(r) for r in rows], next_cursor=cursor)


async def get_yield(call: Call) -> YieldOut:
    """Predicted yield of the coming flush, and past predictions against the harvests"""
    return YieldOut.model_validate(await report(call.db, call.farm_id, call.param("room_id")))


_ROOM = "/api/rooms/{room_id}"
ROUTES = [
    Route(
        "PUT",
        _ROOM + "/substrate",
        set_substrate,
        "room",
        role="operator",
        body=SubstrateIn,
        response=SubstrateOut,
        tag="yield",
        errors=(422,),
    ),
    Route(
        "POST",
        _ROOM + "/harvests",
        add_harvest,
        "room",
        role="operator",
        body=HarvestIn,
        response=HarvestOut,
        status=201,
        tag="yield",
        errors=(422,),
    ),
    Route(
        "GET",
        _ROOM + "/harvests",
        list_harvests,
        "room",
        query=PageQuery,
        response=Page[HarvestOut],
        tag="yield",
    ),
    Route("GET", _ROOM + "/yield", get_yield, "room", response=YieldOut, tag="yield"),
]
