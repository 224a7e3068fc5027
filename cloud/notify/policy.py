"""Who gets what, where and when: severity thresholds, quiet hours (in the user's time zone,
crossing midnight when the end is before the start) and the hourly cap. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

RANK = {"info": 0, "warning": 1, "critical": 2}
DEFAULTS: dict[str, Any] = {
    "email_enabled": False,
    "email": None,
    "webhook_url": None,
    "webhook_secret": None,
    "min_severity": "warning",
    "quiet_start": None,
    "quiet_end": None,
    "timezone": "UTC",
    "max_per_hour": 10,
}
# Edges may report severities of their own; anything unknown counts as a warning.
ALIASES = {"error": "critical", "fatal": "critical", "warn": "warning", "notice": "info"}


def severity(value: str) -> str:
    value = value.lower()
    value = ALIASES.get(value, value)
    return value if value in RANK else "warning"


def with_defaults(prefs: Mapping[str, Any]) -> dict[str, Any]:
    """A user's preferences with the defaults filled in (a user who never set any has none)."""
    return {k: (prefs.get(k) if prefs.get(k) is not None else v) for k, v in DEFAULTS.items()}


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def quiet_until(
    now: datetime, start: time | None, end: time | None, timezone: str
) -> datetime | None:
    """When the quiet period ``now`` falls in ends (UTC); None outside quiet hours."""
    if start is None or end is None or start == end:
        return None
    local = now.astimezone(zone(timezone))
    today = local.date()
    at = local.timetz().replace(tzinfo=None)
    if start < end:
        if not start <= at < end:
            return None
        ends = datetime.combine(today, end, tzinfo=local.tzinfo)
    elif at >= start:
        ends = datetime.combine(today + timedelta(days=1), end, tzinfo=local.tzinfo)
    elif at < end:
        ends = datetime.combine(today, end, tzinfo=local.tzinfo)
    else:
        return None
    return ends.astimezone(UTC)


def channels(prefs: Mapping[str, Any], level: str, *, email_possible: bool) -> list[str]:
    """The outside channels a notification of this severity goes to (in-app is always)."""
    if RANK[level] < RANK[prefs["min_severity"]]:
        return []
    out = []
    if prefs["email_enabled"] and email_possible:
        out.append("email")
    if prefs["webhook_url"]:
        out.append("webhook")
    return out


def hold(prefs: Mapping[str, Any], level: str, now: datetime) -> datetime | None:
    """Until when quiet hours hold a delivery back; critical ones are never held."""
    if level == "critical":
        return None
    return quiet_until(now, prefs["quiet_start"], prefs["quiet_end"], prefs["timezone"])
