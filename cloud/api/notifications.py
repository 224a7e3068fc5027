"""The caller's notifications: list, mark one or all read; send a test through every channel
the caller configured, and say per channel how it went."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Literal

from pydantic import ConfigDict, Field

from cloud import appkeys
from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import Out
from cloud.db import notifications as notes_db
from cloud.db import notify as notify_db
from cloud.db import setup as setup_db
from cloud.errors import NotFound, RateLimited
from cloud.notify import policy
from cloud.notify.delivery import DeliveryFailed, Notice
from cloud.notify.email import send_email
from cloud.notify.webhook import send_webhook

log = logging.getLogger(__name__)
# Tests per user and window: enough to fix a typo and try again, too few to spam a mailbox.
TESTS_PER_WINDOW = 5
TEST_WINDOW_S = 600


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


class ChannelTestOut(Out):
    channel: Literal["in_app", "email", "webhook"]
    status: Literal["sent", "failed", "off"] = Field(
        description="off: the channel is not configured (the detail says what to set)"
    )
    target: str | None = Field(description="the address or URL it went to")
    detail: str


class NotificationTestOut(Out):
    notification_id: int = Field(description="the in-app notification the test made")
    channels: list[ChannelTestOut]


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


async def send_test(call: Call) -> NotificationTestOut:
    """Send a test notification now through every channel configured (not held by quiet hours)
    The answer says per channel whether it was delivered, and why not. At most 5 tests in 10
    minutes (429 after). A successful test clears the channel's failure count."""
    if await setup_db.recent_tests(call.db, call.user_id, TEST_WINDOW_S) >= TESTS_PER_WINDOW:
        raise RateLimited(60, f"at most {TESTS_PER_WINDOW} tests in 10 minutes; try again later")
    row = await notify_db.preferences(call.db, call.user_id)
    assert row is not None  # the caller exists: authentication just read it
    prefs = policy.with_defaults(row)
    config = call.app[appkeys.SETTINGS].notify
    stored = await notes_db.add(
        call.db,
        user_id=call.user_id,
        kind="test",
        title="Test notification",
        body="This is a test from your smartfarm notification settings.",
    )
    notice = Notice(
        notification_id=stored["id"],
        delivery_id=0,
        kind="test",
        severity="info",
        title=stored["title"],
        body=stored["body"],
        farm_id=None,
        room_id=None,
        episode=None,
        created_at=stored["created_at"] or datetime.now(UTC),
        link=config.dashboard_url,
    )
    results = [
        ChannelTestOut(channel="in_app", status="sent", target=None, detail="in your notifications")
    ]
    email = prefs["email"] or str(row["account_email"])
    if not prefs["email_enabled"]:
        results.append(
            ChannelTestOut(channel="email", status="off", target=None, detail="email is off")
        )
    elif not config.smtp.enabled:
        detail = "this cloud has no mail server configured (notify.smtp.host)"
        results.append(
            ChannelTestOut(channel="email", status="failed", target=email, detail=detail)
        )
    else:
        results.append(await _try(call, "email", email, send_email(config.smtp, email, notice)))
    url = prefs["webhook_url"]
    if not url:
        detail = "no webhook URL set"
        results.append(ChannelTestOut(channel="webhook", status="off", target=None, detail=detail))
    else:
        sending = send_webhook(
            url,
            prefs["webhook_secret"] or "",
            notice,
            timeout_s=config.webhook_timeout_s,
            allow_private=config.allow_private_webhooks,
        )
        results.append(await _try(call, "webhook", url, sending))
    return NotificationTestOut(notification_id=stored["id"], channels=results)


async def _try(
    call: Call, channel: Literal["email", "webhook"], target: str, sending: Awaitable[None]
) -> ChannelTestOut:
    try:
        await sending
    except DeliveryFailed as exc:
        return ChannelTestOut(channel=channel, status="failed", target=target, detail=str(exc))
    except Exception as exc:  # a bug in a channel is a failed test, not a 500
        log.exception("test %s notification crashed", channel)
        detail = f"internal error ({type(exc).__name__})"
        return ChannelTestOut(channel=channel, status="failed", target=target, detail=detail)
    await notes_db.channel_ok(call.db, call.user_id, channel)
    return ChannelTestOut(channel=channel, status="sent", target=target, detail="delivered")


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
    Route(
        "POST",
        "/api/users/me/notification-preferences/test",
        send_test,
        "user",
        response=NotificationTestOut,
        tag="notifications",
        errors=(429,),
    ),
]
