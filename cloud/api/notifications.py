"""The caller's notifications: list, mark one or all read."""

from __future__ import annotations

from datetime import datetime

from pydantic import ConfigDict, Field

from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import Out
from cloud.db import notifications as notes_db
from cloud.errors import NotFound


class NotificationQuery(PageQuery):
    model_config = ConfigDict(extra="ignore")
    unread: bool = Field(default=False, description="only unread ones")


class NotificationOut(Out):
    id: int
    farm_id: str | None
    room_id: str | None
    kind: str
    title: str
    body: str
    read_at: datetime | None
    created_at: datetime


class MarkedOut(Out):
    marked: int


async def list_notifications(call: Call) -> Page[NotificationOut]:
    """List the caller's notifications, newest first"""
    q: NotificationQuery = call.query
    after = decode_cursor(q.cursor, int)
    rows = await notes_db.list_notifications(
        call.db, call.user_id, unread=q.unread, after=after[0] if after else None, limit=q.limit + 1
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["id"]])
    return Page[NotificationOut](
        items=[NotificationOut.model_validate(r) for r in rows], next_cursor=cursor
    )


async def mark_read(call: Call) -> NotificationOut:
    """Mark one notification read"""
    raw = call.param("notification_id")
    row = None
    if raw.isdigit() and len(raw) < 19:
        row = await notes_db.mark_read(call.db, call.user_id, int(raw))
    if row is None:
        raise NotFound("notification not found")
    return NotificationOut.model_validate(row)


async def mark_all_read(call: Call) -> MarkedOut:
    """Mark every notification of the caller read"""
    return MarkedOut(marked=await notes_db.mark_all_read(call.db, call.user_id))


ROUTES = [
    Route(
        "GET",
        "/api/notifications",
        list_notifications,
        "user",
        query=NotificationQuery,
        response=Page[NotificationOut],
        tag="notifications",
    ),
    Route(
        "POST",
        "/api/notifications/{notification_id}/read",
        mark_read,
        "user",
        response=NotificationOut,
        tag="notifications",
    ),
    Route(
        "POST",
        "/api/notifications/read-all",
        mark_all_read,
        "user",
        response=MarkedOut,
        tag="notifications",
    ),
]
