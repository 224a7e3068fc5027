"""Build a room's ``RoomContext`` from the database: the last window's statistics and trends,
time in band against the species × stage profile, actuator duty cycles, alerts and actions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from cloud.ai.models import (
    ActionBrief,
    ActuatorStats,
    AlertBrief,
    Band,
    MetricStats,
    RoomContext,
)
from cloud.climate import by_minute, summarize
from cloud.db import derived as derived_db
from cloud.db import room_context as context_db
from cloud.db.database import Database
from shared.profiles import BANDED_METRICS, profile_for

RECENT = timedelta(hours=6)


def _is_on(action: str, value: Any) -> bool:
    if action == "set":
        try:
            return float(value) > 0
        except (TypeError, ValueError):
            return False
    return action == "on"


def switching(
    rows: Iterable[Mapping[str, Any]], *, start: datetime, end: datetime
) -> dict[str, dict[str, Any]]:
    """Per device, from its acknowledged commands (time-ordered, some before ``start``): the share
    of [start, end) and of its last 6 h spent on, the switches inside the window, the state at
    ``end``. A device with no command before or inside the window has unknown duty (None)."""
    history: dict[str, list[tuple[datetime, bool]]] = {}
    for row in rows:
        history.setdefault(row["device_id"], []).append(
            (row["at"], _is_on(row["action"], row["value"]))
        )
    recent_start = max(start, end - RECENT)
    out: dict[str, dict[str, Any]] = {}
    for device, events in history.items():
        before = [on for at, on in events if at < start]
        state = before[-1] if before else None
        on_s = {"window": 0.0, "recent": 0.0}
        known_from = start if state is not None else None
        cursor, switches, last_switch = start, 0, None
        for at, on in [(at, on) for at, on in events if at >= start] + [(end, None)]:
            if state:
                on_s["window"] += (at - cursor).total_seconds()
                overlap = (at - max(cursor, recent_start)).total_seconds()
                on_s["recent"] += max(0.0, overlap)
            if on is None:
                break
            if known_from is None:
                known_from = at
            if state is not None and on != state:
                switches += 1
                last_switch = at
            elif state is None:
                last_switch = at
            state, cursor = on, at
        if known_from is None:
            continue
        span = (end - known_from).total_seconds()
        recent_span = (end - max(known_from, recent_start)).total_seconds()
        out[device] = {
            "on_now": state,
            "duty": on_s["window"] / span if span > 0 else None,
            "duty_recent": on_s["recent"] / recent_span if recent_span > 0 else None,
            "switches": switches,
            "last_switch_at": last_switch,
        }
    return out


def _status_on(state: Any) -> bool | None:
    if isinstance(state, Mapping):
        for key in ("on", "state", "power"):
            value = state.get(key)
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("on", "off"):
                return value.lower() == "on"
    return None


async def build_context(
    db: Database, farm_id: str, room_id: str, *, now: datetime, window_hours: float
) -> RoomContext | None:
    """None when the room does not exist."""
    start = now - timedelta(hours=window_hours)
    data = await context_db.read(db, farm_id, room_id, start=start, end=now)
    if not data:
        return None
    room = data["room"]
    profile = profile_for(room["species"], room["stage"])
    means = await derived_db.minute_means(db, farm_id, room_id, start=start, end=now)
    minutes, _ = by_minute(means)
    summary = summarize(minutes, profile)
    metrics: dict[str, MetricStats] = {}
    for row in data["stats"]:
        metric = row["metric"]
        band = profile.band(metric)
        first, last = row["first_half_mean"], row["last_half_mean"]
        metrics[metric] = MetricStats(
            metric=metric,
            mean=float(row["mean"]),
            min=float(row["min"]),
            max=float(row["max"]),
            count=int(row["count"]),
            first_half_mean=None if first is None else float(first),
            last_half_mean=None if last is None else float(last),
            drift=None if first is None or last is None else float(last) - float(first),
            time_in_band=summary.in_band.get(metric),
            band=Band(min=band.min, max=band.max) if band else None,
        )
    duty = switching(data["switches"], start=start, end=now)
    actuators = []
    for row in data["actuators"]:
        seen = duty.get(row["id"], {})
        on_now, switched = seen.get("on_now"), seen.get("last_switch_at")
        # The device's own status report wins when it is newer than the last command.
        reported = _status_on(row["state"]) if row["status_at"] is not None else None
        if reported is not None and (switched is None or row["status_at"] >= switched):
            on_now = reported
        actuators.append(
            ActuatorStats(
                device_id=row["id"],
                role=row["actuator"],
                on_now=on_now,
                duty=seen.get("duty"),
                duty_recent=seen.get("duty_recent"),
                switches=seen.get("switches", 0),
                last_switch_at=seen.get("last_switch_at"),
            )
        )
    alerts = [AlertBrief(**row) for row in [*data["edge_alerts"], *data["cloud_alerts"]]]
    return RoomContext(
        room_id=room["id"],
        farm_id=room["farm_id"],
        name=room["name"],
        species=room["species"],
        stage=room["stage"],
        stage_started=room["stage_started"],
        stage_day=(now - room["stage_started"]).total_seconds() / 86_400,
        now=now,
        window_hours=window_hours,
        targets={
            m: Band(min=b.min, max=b.max)
            for m in BANDED_METRICS
            if (b := profile.band(m)) is not None
        },
        light_hours=profile.light_hours,
        readings=sum(m.count for m in metrics.values()),
        metrics=metrics,
        vpd_kpa=summary.vpd_kpa,
        dew_point_c=summary.dew_point_c,
        time_in_band_all=summary.in_band_all,
        actuators=actuators,
        alerts=alerts,
        actions=[ActionBrief(**row) for row in data["actions"]],
        rules=[row["body"] for row in data["rules"]],
    )
