"""AI recommendations per room, answered by the built-in advisor until the AI issue lands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ConfigDict

from cloud.ai.advisor import advise
from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import Out
from cloud.db import recommendations as recs_db
from cloud.db import rooms as rooms_db
from cloud.db import telemetry as telemetry_db
from cloud.errors import NotFound

WINDOW = timedelta(hours=24)


class RecommendationOut(Out):
    id: int
    room_id: str
    source: str
    severity: Literal["info", "warning", "critical"]
    title: str
    reason: str
    action: dict[str, Any] | None
    status: Literal["open", "accepted", "dismissed"]
    created_at: datetime


class RecommendationList(Out):
    items: list[RecommendationOut]


class RecommendationQuery(PageQuery):
    model_config = ConfigDict(extra="ignore")
    status: Literal["open", "accepted", "dismissed"] | None = None


async def recommend(call: Call) -> RecommendationList:
    """Generate recommendations for a room now (built-in advisor) and store them
    Compares the last 24 h of readings with the species × stage target band and reports what
    is out of band or drifting, each with the figures that triggered it."""
    room_id = call.param("room_id")
    room = await rooms_db.get(call.db, room_id)
    if room is None:
        raise NotFound("room not found")
    end = datetime.now(UTC)
    stats = await telemetry_db.room_stats(call.db, room_id, start=end - WINDOW, end=end)
    advice = advise(room["species"], room["stage"], stats)
    rows = await recs_db.add(call.db, room_id, [a.as_row() for a in advice])
    return RecommendationList(items=[RecommendationOut.model_validate(r) for r in rows])


async def list_recommendations(call: Call) -> Page[RecommendationOut]:
    """List a room's stored recommendations, newest first"""
    q: RecommendationQuery = call.query
    after = decode_cursor(q.cursor, int)
    rows = await recs_db.list_recommendations(
        call.db,
        call.param("room_id"),
        status=q.status,
        after=after[0] if after else None,
        limit=q.limit + 1,
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["id"]])
    return Page[RecommendationOut](
        items=[RecommendationOut.model_validate(r) for r in rows], next_cursor=cursor
    )


ROUTES = [
    Route(
        "POST",
        "/api/rooms/{room_id}/ai/recommend",
        recommend,
        "room",
        role="operator",
        response=RecommendationList,
        status=201,
        tag="ai",
    ),
    Route(
        "GET",
        "/api/rooms/{room_id}/ai/recommendations",
        list_recommendations,
        "room",
        query=RecommendationQuery,
        response=Page[RecommendationOut],
        tag="ai",
    ),
]
