"""AI recommendations per room: request a run (a background job, one at a time per room), list
what was recommended, accept (applies its action) or dismiss, and see the runs with their cost."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from cloud import appkeys
from cloud.ai.actions import ActionRejected, apply
from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import Out
from cloud.db import recommendations as recs_db
from cloud.errors import Conflict, NotFound, ValidationFailed

Status = Literal["open", "accepted", "dismissed", "resolved"]


class RecommendationOut(Out):
    id: int
    room_id: str
    source: str = Field(description="the provider that made it: builtin or bedrock")
    key: str | None = Field(description="stable per condition; a later run refreshes it")
    severity: Literal["info", "warning", "critical"]
    title: str
    reason: str = Field(description="why, with the figures that triggered it")
    action: dict[str, Any] | None = Field(
        description="applied on accept: a command {kind, device_id, action, value} or a rule "
        "{kind, rule}; null for inspections"
    )
    status: Status
    run_id: int | None
    created_at: datetime
    updated_at: datetime
    decided_at: datetime | None
    applied: dict[str, Any] | None = Field(description="what accepting did")


class RecommendationQuery(PageQuery):
    model_config = ConfigDict(extra="ignore")
    status: Status | None = None


class RecommendJobOut(Out):
    job_id: int
    status: Literal["queued", "running"]
    deduplicated: bool = Field(description="a run for this room was already queued or running")
    provider: str


class RunOut(Out):
    id: int
    provider: str
    model: str | None
    trigger: Literal["schedule", "request"]
    status: Literal["running", "succeeded", "failed"]
    attempts: int
    input_tokens: int | None
    output_tokens: int | None
    recommendations: int
    error: str | None
    started_at: datetime
    finished_at: datetime | None


class RunList(Out):
    items: list[RunOut]


async def recommend(call: Call) -> RecommendJobOut:
    """Queue a recommendation run for this room
    Runs in the background (built-in advisor or Bedrock, per the config); results appear in
    GET …/ai/recommendations. While a run for the room is queued or running, that run is the
    answer (deduplicated) instead of a second one."""
    room_id = call.param("room_id")
    queued = await call.app[appkeys.JOBS].defer_once(
        "generate_ai_recommendations",
        key=f"ai:{call.farm_id}:{room_id}",
        room_id=room_id,
        farm_id=call.farm_id,
        trigger="request",
        requested_by=call.user_id,
    )
    return RecommendJobOut(
        job_id=queued.job_id,
        status="running" if queued.status == "doing" else "queued",
        deduplicated=queued.duplicate,
        provider=call.app[appkeys.SETTINGS].ai.provider,
    )


async def list_recommendations(call: Call) -> Page[RecommendationOut]:
    """List a room's recommendations, newest first"""
    q: RecommendationQuery = call.query
    after = decode_cursor(q.cursor, int)
    rows = await recs_db.list_recommendations(
        call.db,
        call.farm_id,
        call.param("room_id"),
        status=q.status,
        after=after[0] if after else None,
        limit=q.limit + 1,
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["id"]])
    return Page[RecommendationOut](
        items=[RecommendationOut.model_validate(r) for r in rows], next_cursor=cursor
    )


async def _open(call: Call) -> dict[str, Any]:
    raw = call.param("recommendation_id")
    row = None
    if raw.isdigit() and len(raw) < 19:
        row = await recs_db.get(call.db, call.farm_id, call.param("room_id"), int(raw))
    if row is None:
        raise NotFound("recommendation not found")
    if row["status"] != "open":
        raise Conflict(f"the recommendation is {row['status']}, not open")
    return row


async def accept(call: Call) -> RecommendationOut:
    """Accept a recommendation: its action (a command or a rule) is applied now"""
    row = await _open(call)
    room_id = call.param("room_id")
    applied = None
    if row["action"] is not None:
        try:
            applied = await apply(
                call.db,
                room_id=room_id,
                farm_id=call.farm_id,
                action=row["action"],
                user_id=call.user_id,
                recommendation_id=row["id"],
            )
        except ActionRejected as exc:
            raise ValidationFailed(
                [{"field": "action", "message": str(exc), "type": "action_rejected"}],
                detail=f"the suggested action cannot be applied: {exc}",
            ) from None
    decided = await recs_db.decide(
        call.db,
        call.farm_id,
        room_id,
        row["id"],
        status="accepted",
        user_id=call.user_id,
        applied=applied,
    )
    if decided is None:
        raise Conflict("the recommendation was decided meanwhile")
    return RecommendationOut.model_validate(decided)


async def dismiss(call: Call) -> RecommendationOut:
    """Dismiss a recommendation"""
    row = await _open(call)
    decided = await recs_db.decide(
        call.db,
        call.farm_id,
        call.param("room_id"),
        row["id"],
        status="dismissed",
        user_id=call.user_id,
        applied=None,
    )
    if decided is None:
        raise Conflict("the recommendation was decided meanwhile")
    return RecommendationOut.model_validate(decided)


async def list_runs(call: Call) -> RunList:
    """The room's last 20 recommendation runs, with provider, attempts and token usage"""
    rows = await recs_db.runs(call.db, call.farm_id, call.param("room_id"))
    return RunList(items=[RunOut.model_validate(r) for r in rows])


_BASE = "/api/rooms/{room_id}/ai"
_ONE = _BASE + "/recommendations/{recommendation_id}"
ROUTES = [
    Route(
        "POST",
        _BASE + "/recommend",
        recommend,
        "room",
        role="operator",
        response=RecommendJobOut,
        status=202,
        tag="ai",
    ),
    Route(
        "GET",
        _BASE + "/recommendations",
        list_recommendations,
        "room",
        query=RecommendationQuery,
        response=Page[RecommendationOut],
        tag="ai",
    ),
    Route(
        "POST",
        _ONE + "/accept",
        accept,
        "room",
        role="operator",
        response=RecommendationOut,
        tag="ai",
        errors=(409, 422),
    ),
    Route(
        "POST",
        _ONE + "/dismiss",
        dismiss,
        "room",
        role="operator",
        response=RecommendationOut,
        tag="ai",
        errors=(409,),
    ),
    Route("GET", _BASE + "/runs", list_runs, "room", response=RunList, tag="ai"),
]
