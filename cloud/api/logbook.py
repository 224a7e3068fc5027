"""A room's grow logbook: batches (a new batch or flush started), stage changes (recorded by a
trigger whoever made them: the cloud, the edge's local page), notes, and the room's harvests
with their weight (read from the harvests, never stored twice).

Contract (the charts draw these as markers): ``GET /api/rooms/{room_id}/logbook?from=&to=``
answers ``{"items": [{"id", "kind", "at", "title", "text", "stage", "weight_kg", "by"}, …],
"next_cursor"}`` ordered by ``at``; ``POST`` the same path adds a note or a batch.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from cloud import appkeys
from cloud.api.harvests import MAX_KG
from cloud.api.operate_query import SpanQuery
from cloud.api.pagination import Page, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import AwareIsoDateTime, In, Out
from cloud.db import audit
from cloud.db import harvests as harvests_db
from cloud.db import logbook as logbook_db
from cloud.errors import Conflict, NotFound, ValidationFailed
from shared.vocabulary import STAGE_LABELS

Kind = Literal["batch", "stage", "note", "harvest"]


class LogbookQuery(SpanQuery):
    kind: list[Kind] | None = Field(default=None, max_length=4, description="repeatable")
    order: Literal["asc", "desc"] = Field(default="asc", description="by `at`; asc by default")


class EntryOut(Out):
    id: str = Field(description="log-{n} for notes, batches and stages; harvest-{n} for harvests")
    kind: Kind
    at: datetime
    title: str = Field(description="a short line in words, e.g. 'Stage: Fruiting'")
    text: str
    stage: str | None = Field(description="stage entries: the stage the room entered")
    weight_kg: float | None = Field(description="harvest entries: the fresh weight")
    by: str | None = Field(description="who: a user's name or email, or the edge; null: unknown")
    flush: int | None = Field(default=None, description="harvest entries: the flush")
    previous_stage: str | None = Field(default=None, description="stage entries: the stage before")
    strain: str | None = None
    substrate: str | None = None
    spawn_date: date | None = None
    substrate_dry_kg: float | None = None


class LogbookIn(In):
    kind: Literal["note", "batch"]
    at: AwareIsoDateTime | None = Field(default=None, description="when it happened; default now")
    title: str = Field(default="", max_length=120)
    text: str = Field(default="", max_length=4000, description="the note, or the batch's notes")
    strain: str | None = Field(default=None, min_length=1, max_length=120, description="batch")
    substrate: str | None = Field(default=None, max_length=120, description="batch: e.g. straw")
    spawn_date: date | None = Field(default=None, description="batch")
    substrate_dry_kg: float | None = Field(
        default=None,
        gt=0,
        le=MAX_KG,
        description="batch: the dry substrate loaded; starts the yield prediction's crop",
    )

    @model_validator(mode="after")
    def _fits(self) -> Self:
        batch_only = ("strain", "substrate", "spawn_date", "substrate_dry_kg")
        if self.kind == "note":
            given = [f for f in batch_only if getattr(self, f) is not None]
            if given:
                raise ValidationFailed([_problem(f, "only a batch has this") for f in given])
            if not self.text and not self.title:
                raise ValidationFailed([_problem("text", "write the note")])
        elif self.strain is None:
            raise ValidationFailed([_problem("strain", "a batch names its strain")])
        return self


def _problem(field: str, message: str) -> dict[str, str]:
    return {"field": f"body.{field}", "message": message, "type": "value_error"}


def _stage(stage: str | None) -> str:
    return STAGE_LABELS.get(stage, (stage or "").replace("_", " ")) if stage else ""  # type: ignore[call-overload]


def _entry(row: dict[str, Any]) -> EntryOut:
    kind = row["kind"]
    details = row.get("details") or {}
    if row.get("user_name"):
        by = row["user_name"]
    elif row.get("origin"):
        by = f"On the edge ({row.get('edge_name') or row['origin']})"
    else:
        by = None
    out: dict[str, Any] = {
        "id": row["id"],
        "kind": kind,
        "at": row["at"],
        "text": row["text"],
        "stage": row["stage"],
        "weight_kg": row["weight_kg"],
        "by": by,
        "title": row["title"],
    }
    if kind == "stage":
        out["title"] = f"Stage: {_stage(row['stage'])}"
        out["previous_stage"] = row["text"] or None
        out["text"] = f"from {_stage(row['text'])}" if row["text"] else "room created"
    elif kind == "harvest":
        out["flush"] = row["flush"]
        out["title"] = f"Harvest {row['weight_kg']:g} kg (flush {row['flush']})"
    elif kind == "batch":
        out.update({k: details.get(k) for k in ("strain", "substrate", "substrate_dry_kg")})
        out["spawn_date"] = details.get("spawn_date")
        out["title"] = row["title"] or f"New batch: {details.get('strain', '')}".strip()
    else:
        out["title"] = row["title"] or "Note"
    return EntryOut.model_validate(out)


async def list_logbook(call: Call) -> Page[EntryOut]:
    """A room's logbook: batches, stage changes, notes and harvests, ordered by `at`
    `from`/`to` bound the span (either may be omitted), `kind` filters (repeatable), `order`
    is asc (the default) or desc."""
    q: LogbookQuery = call.query
    after = decode_cursor(q.cursor, datetime, str)
    rows = await logbook_db.entries(
        call.db,
        call.farm_id,
        call.param("room_id"),
        since=q.from_,
        until=q.to,
        kinds=list(q.kind) if q.kind else None,
        after=(after[0], after[1]) if after else None,
        newest_first=q.order == "desc",
        limit=q.limit + 1,
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["at"], r["id"]])
    return Page[EntryOut](items=[_entry(r) for r in rows], next_cursor=cursor)


async def add_entry(call: Call) -> EntryOut:
    """Add a note or a batch (a new batch or flush started) to a room's logbook
    A batch with `substrate_dry_kg` also records the substrate loaded, from which the yield
    prediction counts its flushes (as PUT /substrate)."""
    body: LogbookIn = call.body
    room_id = call.param("room_id")
    details: dict[str, Any] = {}
    if body.kind == "batch":
        details = body.model_dump(
            mode="json",
            include={"strain", "substrate", "spawn_date", "substrate_dry_kg"},
            exclude_none=True,
        )
    entry_id = await logbook_db.add(
        call.db,
        call.farm_id,
        room_id,
        kind=body.kind,
        at=body.at,
        title=body.title,
        text=body.text,
        details=details,
        user_id=call.user_id,
    )
    if body.kind == "batch" and body.substrate_dry_kg is not None:
        await harvests_db.set_substrate(
            call.db,
            call.farm_id,
            room_id,
            dry_mass_kg=body.substrate_dry_kg,
            wet_mass_kg=None,
            moisture_pct=None,
            loaded_at=body.at,
            user_id=call.user_id,
        )
        await call.app[appkeys.JOBS].defer("predict_yield", room_id=room_id, farm_id=call.farm_id)
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action=f"logbook.{body.kind}",
        target=room_id,
        detail={"entry": entry_id, **details},
    )
    row = await logbook_db.one(call.db, call.farm_id, room_id, entry_id)
    assert row is not None
    return _entry(row)


async def delete_entry(call: Call) -> None:
    """Remove a note, a batch or a harvest recorded by mistake (`log-{n}`, `harvest-{n}`)
    Stage changes stay: they are what the room went through (409); change the stage instead."""
    room_id = call.param("room_id")
    kind, _, number = call.param("entry_id").partition("-")
    if kind not in ("log", "harvest") or not number.isdigit() or len(number) > 18:
        raise NotFound("no such logbook entry")
    entry_id = int(number)
    if kind == "log" and await logbook_db.kind_of(call.db, call.farm_id, room_id, entry_id) == (
        "stage"
    ):
        raise Conflict("stage changes stay in the logbook; change the room's stage instead")
    removed = await logbook_db.delete(call.db, call.farm_id, room_id, kind, entry_id)
    if removed is None:
        raise NotFound("no such logbook entry")
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action="logbook.delete" if kind == "log" else "harvest.delete",
        target=call.param("entry_id"),
        detail={"room_id": room_id, **{k: v for k, v in removed.items() if k != "id"}},
    )
    if kind == "harvest":
        await call.app[appkeys.JOBS].defer("predict_yield", room_id=room_id, farm_id=call.farm_id)


_PATH = "/api/rooms/{room_id}/logbook"
ROUTES: list[Route] = [
    Route(
        "GET",
        _PATH,
        list_logbook,
        "room",
        query=LogbookQuery,
        response=Page[EntryOut],
        tag="yield",
    ),
    Route(
        "POST",
        _PATH,
        add_entry,
        "room",
        role="operator",
        body=LogbookIn,
        response=EntryOut,
        status=201,
        tag="yield",
        errors=(422,),
    ),
    Route(
        "DELETE",
        _PATH + "/{entry_id}",
        delete_entry,
        "room",
        role="operator",
        status=204,
        tag="yield",
        errors=(409,),
    ),
]
