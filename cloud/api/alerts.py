"""Alerts and how they reach people: a farm's alarms (alert episodes with their severity,
acknowledged and cleared by whom, and their history), the caller's unread count, their
notification preferences (email, webhook, severity, quiet hours, hourly cap, and how each
channel is doing) and deliveries."""

from __future__ import annotations

import secrets
from datetime import datetime, time
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloud.api.operate_query import SpanQuery
from cloud.api.pagination import Page, PageQuery, decode_cursor, paginate
from cloud.api.routing import Call, Route
from cloud.api.schemas import Email, In, Out
from cloud.db import alarms as alarms_db
from cloud.db import audit
from cloud.db import notifications as notes_db
from cloud.db import notify as notify_db
from cloud.errors import Conflict, NotFound
from cloud.notify import policy
from cloud.notify.episodes import LABELS
from cloud.notify.webhook import check_url
from shared.models import Id

Severity = Literal["info", "warning", "critical"]
HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"


AlarmStatus = Literal["active", "acknowledged", "cleared"]


class EpisodeOut(Out):
    """An alarm: ``state`` is the condition (active/resolved), ``status`` what people did about
    it: active (nobody has acknowledged it), acknowledged (someone is on it) or cleared (the
    condition ended, or an operator cleared it: ``cleared_by``)."""

    id: int
    source: str = Field(description="the edge that raised it, or 'cloud'")
    key: str
    kind: str
    kind_label: str = Field(description="the kind in words, e.g. 'Sensor silent'")
    severity: Severity
    message: str
    room_id: str | None
    room_name: str | None
    device_id: str | None
    device_name: str | None
    state: Literal["active", "resolved"]
    status: AlarmStatus
    started_at: datetime
    last_at: datetime
    resolved_at: datetime | None = Field(description="when it was cleared")
    acknowledged_at: datetime | None
    acknowledged_by: str | None = Field(description="the name or email of who acknowledged it")
    ack_note: str
    cleared_by: str | None = Field(description="who cleared it; null when its condition ended")
    cleared_by_operator: bool
    clear_note: str
    reminders: int
    notified: bool


StatusFilter = Literal["active", "acknowledged", "cleared", "open", "unacknowledged"]


class EpisodeQuery(SpanQuery):
    state: Literal["active", "resolved"] | None = Field(
        default=None, description="the condition: active or resolved"
    )
    status: StatusFilter | None = Field(
        default=None,
        description="active (not acknowledged), acknowledged, cleared; open: active or"
        " acknowledged; unacknowledged: never acknowledged, cleared or not",
    )
    severity: list[Severity] | None = Field(default=None, max_length=3, description="repeatable")
    room_id: Id | None = None
    kind: str | None = Field(default=None, max_length=64, pattern=r"^[a-z0-9_]+$")


class AlarmCountsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    room_id: Id | None = None


class AlarmCountsOut(Out):
    unacknowledged: int = Field(description="active and not acknowledged")
    critical: int = Field(description="of those, critical")
    open: int = Field(description="active, acknowledged or not")


class AlarmActionIn(In):
    note: str = Field(default="", max_length=500, description="what was done, for the history")


class UnreadOut(Out):
    unread: int


class PreferencesIn(In):
    """The whole set (PUT): omitted fields take their defaults."""

    email_enabled: bool = False
    email: Email | None = Field(default=None, description="default: the account's address")
    webhook_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://\S+$")
    webhook_secret: str | None = Field(
        default=None, min_length=16, max_length=256, description="default: kept, or generated"
    )
    rotate_webhook_secret: bool = Field(default=False, description="generate a new secret")
    min_severity: Severity = Field(
        default="warning", description="email and webhook from this severity up"
    )
    quiet_start: str | None = Field(default=None, pattern=HHMM, description="HH:MM local")
    quiet_end: str | None = Field(default=None, pattern=HHMM)
    timezone: str = Field(default="UTC", max_length=64)
    max_per_hour: int = Field(default=10, ge=1, le=1000)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone (use an IANA name such as Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _quiet(self) -> Self:
        if (self.quiet_start is None) != (self.quiet_end is None):
            raise ValueError("give both quiet_start and quiet_end, or neither")
        if self.quiet_start is not None and self.quiet_start == self.quiet_end:
            raise ValueError("quiet_start and quiet_end must differ")
        return self


class ChannelHealthOut(Out):
    failures: int = Field(description="deliveries in a row that failed after their retries")
    last_error: str | None
    last_error_at: datetime | None
    last_success_at: datetime | None


_HEALTHY = {"failures": 0, "last_error": None, "last_error_at": None, "last_success_at": None}


class PreferencesOut(Out):
    email_enabled: bool
    email: str | None
    effective_email: str
    webhook_url: str | None
    webhook_secret_set: bool
    webhook_secret: str | None = Field(
        default=None, description="shown once, when generated by this request"
    )
    min_severity: Severity
    quiet_start: str | None
    quiet_end: str | None
    timezone: str
    max_per_hour: int
    updated_at: datetime | None
    email_health: ChannelHealthOut
    webhook_health: ChannelHealthOut


class DeliveryOut(Out):
    id: int
    notification_id: int
    channel: Literal["email", "webhook"]
    status: Literal["pending", "sent", "failed", "suppressed", "skipped"]
    reason: str | None
    attempts: int
    last_error: str | None
    not_before: datetime | None
    created_at: datetime
    sent_at: datetime | None


def _hhmm(value: time | None) -> str | None:
    return None if value is None else value.strftime("%H:%M")


def _out(
    row: dict[str, object], health: dict[str, dict[str, Any]], secret: str | None = None
) -> PreferencesOut:
    prefs = policy.with_defaults(row)
    return PreferencesOut(
        email_enabled=prefs["email_enabled"],
        email=prefs["email"],
        effective_email=prefs["email"] or str(row["account_email"]),
        webhook_url=prefs["webhook_url"],
        webhook_secret_set=bool(prefs["webhook_secret"]),
        webhook_secret=secret,
        min_severity=prefs["min_severity"],
        quiet_start=_hhmm(prefs["quiet_start"]),
        quiet_end=_hhmm(prefs["quiet_end"]),
        timezone=prefs["timezone"],
        max_per_hour=prefs["max_per_hour"],
        updated_at=row.get("updated_at"),  # type: ignore[arg-type]
        email_health=ChannelHealthOut.model_validate(health.get("email", _HEALTHY)),
        webhook_health=ChannelHealthOut.model_validate(health.get("webhook", _HEALTHY)),
    )


def _alarm(row: dict[str, Any]) -> EpisodeOut:
    label = LABELS.get(row["kind"], str(row["kind"]).replace("_", " ").capitalize())
    return EpisodeOut.model_validate({**row, "kind_label": label})


def _only(call: Call) -> list[str] | None:
    assert call.access is not None
    return sorted(call.access.room_ids) if call.access.room_ids is not None else None


async def list_alerts(call: Call) -> Page[EpisodeOut]:
    """A farm's alarms (from its edges and the cloud's own checks), newest first
    Filters: `status` (what people did), `state` (the condition), `severity` (repeatable),
    `room_id`, `kind`, and a span: `from`/`to` keep the alarms that were going on in it."""
    q: EpisodeQuery = call.query
    after = decode_cursor(q.cursor, int)
    rows = await alarms_db.history(
        call.db,
        call.farm_id,
        only=_only(call),
        room_id=q.room_id,
        severity=list(q.severity) if q.severity else None,
        kind=q.kind,
        status=q.status,
        state=q.state,
        since=q.from_,
        until=q.to,
        after=after[0] if after else None,
        limit=q.limit + 1,
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["id"]])
    return Page[EpisodeOut](items=[_alarm(r) for r in rows], next_cursor=cursor)


async def alarm_counts(call: Call) -> AlarmCountsOut:
    """How many of the farm's (or a room's) alarms wait for someone"""
    q: AlarmCountsQuery = call.query
    row = await alarms_db.counts(call.db, call.farm_id, only=_only(call), room_id=q.room_id)
    return AlarmCountsOut.model_validate(row)


async def _visible_alarm(call: Call) -> dict[str, Any]:
    raw = call.param("alert_id")
    alarm_id = int(raw) if raw.isdigit() and len(raw) < 19 else 0
    row = await alarms_db.get(call.db, call.farm_id, alarm_id)
    only = _only(call)
    if row is None or (only is not None and row["room_id"] and row["room_id"] not in only):
        raise NotFound("alarm not found")
    return row


async def get_alert(call: Call) -> EpisodeOut:
    """One alarm"""
    return _alarm(await _visible_alarm(call))


async def acknowledge_alert(call: Call) -> EpisodeOut:
    """Acknowledge an alarm: someone is on it (its reminders stop; its end is still announced)
    409 when it was acknowledged already (the answer says by whom)."""
    body: AlarmActionIn = call.body
    row = await _visible_alarm(call)
    done = await alarms_db.acknowledge(
        call.db, call.farm_id, row["id"], user_id=call.user_id, note=body.note
    )
    if not done:
        current = await alarms_db.get(call.db, call.farm_id, row["id"])
        who = (current or row).get("acknowledged_by") or "someone"
        raise Conflict(f"already acknowledged by {who}")
    return await _audited(call, row, "alarm.acknowledge", body.note)


async def clear_alert(call: Call) -> EpisodeOut:
    """Clear an alarm by hand: it closes now; if its condition comes back that is a new alarm
    409 when it is cleared already."""
    body: AlarmActionIn = call.body
    row = await _visible_alarm(call)
    done = await alarms_db.clear(
        call.db, call.farm_id, row["id"], user_id=call.user_id, note=body.note
    )
    if not done:
        raise Conflict("already cleared")
    return await _audited(call, row, "alarm.clear", body.note)


async def _audited(call: Call, row: dict[str, Any], action: str, note: str | None) -> EpisodeOut:
    """Record what the caller did to the alarm in the audit log; the alarm as it is now."""
    await audit.record(
        call.db,
        user_id=call.user_id,
        farm_id=call.farm_id,
        action=action,
        target=str(row["id"]),
        detail={"kind": row["kind"], "room_id": row["room_id"], "note": note},
    )
    fresh = await alarms_db.get(call.db, call.farm_id, row["id"])
    assert fresh is not None
    return _alarm(fresh)


async def unread_count(call: Call) -> UnreadOut:
    """How many of the caller's notifications are unread"""
    return UnreadOut(unread=await notify_db.unread_count(call.db, call.user_id))


async def get_preferences(call: Call) -> PreferencesOut:
    """The caller's notification preferences"""
    row = await notify_db.preferences(call.db, call.user_id)
    assert row is not None  # the caller exists: authentication just read it
    return _out(row, await notes_db.channel_health(call.db, call.user_id))


async def set_preferences(call: Call) -> PreferencesOut:
    """Replace the caller's notification preferences
    The webhook URL must be http(s) with a host, a port from 1 to 65535 if any, and no
    credentials (422 naming body.webhook_url otherwise). A webhook gets a signing secret: the
    one given, else the one it had, else a new one (shown in this response only). Deliveries
    are signed with HMAC-SHA256 (see the webhook docs). `webhook_health` and `email_health`
    show failed deliveries in a row; a new URL or address starts afresh."""
    body: PreferencesIn = call.body
    current = await notify_db.preferences(call.db, call.user_id) or {}
    secret = body.webhook_secret or current.get("webhook_secret")
    generated = None
    if body.webhook_url and (body.rotate_webhook_secret or not secret):
        secret = generated = secrets.token_urlsafe(32)
    values = body.model_dump(exclude={"rotate_webhook_secret"})
    values.update(
        webhook_secret=secret if body.webhook_url else None,
        quiet_start=time.fromisoformat(body.quiet_start) if body.quiet_start else None,
        quiet_end=time.fromisoformat(body.quiet_end) if body.quiet_end else None,
    )
    await notify_db.set_preferences(call.db, call.user_id, values)
    # A new target starts with a clean record (the old one's failures are not its own).
    if body.webhook_url != current.get("webhook_url"):
        await notes_db.reset_channel(call.db, call.user_id, "webhook")
    if body.email != current.get("email"):
        await notes_db.reset_channel(call.db, call.user_id, "email")
    row = await notify_db.preferences(call.db, call.user_id)
    assert row is not None
    health = await notes_db.channel_health(call.db, call.user_id)
    return _out(row, health, secret=generated)


async def list_deliveries(call: Call) -> Page[DeliveryOut]:
    """The caller's email and webhook deliveries, newest first (sent, held, capped, failed)"""
    q: PageQuery = call.query
    after = decode_cursor(q.cursor, int)
    rows = await notify_db.deliveries(
        call.db, call.user_id, after=after[0] if after else None, limit=q.limit + 1
    )
    rows, cursor = paginate(rows, q.limit, lambda r: [r["id"]])
    return Page[DeliveryOut](
        items=[DeliveryOut.model_validate(r) for r in rows], next_cursor=cursor
    )


_PREFS = "/api/users/me/notification-preferences"
ROUTES = [
    Route(
        "GET",
        "/api/farms/{farm_id}/alerts",
        list_alerts,
        "farm",
        query=EpisodeQuery,
        response=Page[EpisodeOut],
        tag="notifications",
    ),
    Route(
        "GET",
        "/api/farms/{farm_id}/alerts/counts",
        alarm_counts,
        "farm",
        query=AlarmCountsQuery,
        response=AlarmCountsOut,
        tag="notifications",
    ),
    Route(
        "GET",
        "/api/farms/{farm_id}/alerts/{alert_id}",
        get_alert,
        "farm",
        response=EpisodeOut,
        tag="notifications",
    ),
    Route(
        "POST",
        "/api/farms/{farm_id}/alerts/{alert_id}/acknowledge",
        acknowledge_alert,
        "farm",
        role="operator",
        body=AlarmActionIn,
        response=EpisodeOut,
        tag="notifications",
        errors=(409, 422),
    ),
    Route(
        "POST",
        "/api/farms/{farm_id}/alerts/{alert_id}/clear",
        clear_alert,
        "farm",
        role="operator",
        body=AlarmActionIn,
        response=EpisodeOut,
        tag="notifications",
        errors=(409, 422),
    ),
    Route(
        "GET",
        "/api/notifications/unread-count",
        unread_count,
        "user",
        response=UnreadOut,
        tag="notifications",
    ),
    Route(
        "GET",
        "/api/notifications/deliveries",
        list_deliveries,
        "user",
        query=PageQuery,
        response=Page[DeliveryOut],
        tag="notifications",
    ),
    Route("GET", _PREFS, get_preferences, "user", response=PreferencesOut, tag="notifications"),
    Route(
        "PUT",
        _PREFS,
        set_preferences,
        "user",
        body=PreferencesIn,
        response=PreferencesOut,
        tag="notifications",
        errors=(422,),
    ),
]
