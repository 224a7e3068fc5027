"""JSON shapes of the local API, built from the automation's live state and the store's rows."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from edge.automation import Automation
from edge.config import DeviceConfig
from edge.store import readings as reading_rows
from edge.store.devices import DeviceStatus
from edge.store.quarantine import QuarantinedMessage
from shared.rules import ActuatorState, Safety

log = logging.getLogger(__name__)

# Time series are read an hour at a time and folded into buckets as they come, so a long window
# never holds more than one slice of rows in memory.
SLICE_S: Final = 3600.0
SLICE_LIMIT: Final = 20_000
PREVIEW_BYTES: Final = 256


def iso(value: float | datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return datetime.fromtimestamp(value, UTC).isoformat()


def _band(low: float | None, high: float | None) -> dict[str, float | None]:
    return {"low": low, "high": high}


def actuator_view(
    automation: Automation,
    device: DeviceConfig,
    *,
    safety_hold: dict[str, Any] | None = None,
    last_command: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    state = automation.actuators.get(device.id, ActuatorState())
    override = state.override
    return {
        "id": device.id,
        "name": device.name or device.id,
        "role": device.actuator,
        "room_id": device.room,
        "on": state.on,
        "since": iso(state.since),
        "override": None if override is None else {
            "on": override.on, "until": iso(override.until), "by": override.by,
        },
        "reported": automation.reported.get(device.id),
        # A change the rules (or a manual command) want that a safety limit holds back, with
        # when the limit lets go if it is a timer (min on/off, rest after a long run).
        "safety_hold": safety_hold,
        # Why it is in its state: the last command the edge sent it.
        "last_command": None if last_command is None else {
            "source": last_command.get("source"),
            "reason": last_command.get("reason"),
            "action": last_command.get("action"),
            "state": last_command.get("state"),
            "at": iso(last_command.get("created_at")),
        },
    }


def _hold_until(state: ActuatorState, safety: Safety, reason: str,
                now: datetime) -> datetime | None:
    """When a timer limit (min on, min off, rest after max runtime) lets go; None otherwise."""
    if reason.startswith("resting") and state.on_intervals:
        end = state.on_intervals[-1][1]
        return end + timedelta(seconds=safety.min_off_s) if end is not None else None
    if state.since is None:
        return None
    if reason.startswith("min on"):
        return state.since + timedelta(seconds=safety.min_on_s)
    if reason.startswith("min off"):
        return state.since + timedelta(seconds=safety.min_off_s)
    return None


def safety_holds(automation: Automation, room_id: str, now: datetime) -> dict[str, dict[str, Any]]:
    """Per actuator of the room, what a safety limit holds back right now: the engine's pure
    evaluation of the room (nothing is switched or stored), its ``blocked`` list."""
    evaluate = getattr(automation, "_evaluate", None)
    if evaluate is None:
        return {}
    try:
        evaluation = evaluate(room_id)
    except Exception:  # a view must not fail because of it
        log.warning("evaluating room %s for its safety holds failed", room_id, exc_info=True)
        return {}
    holds: dict[str, dict[str, Any]] = {}
    for blocked in getattr(evaluation, "blocked", ()):
        device = automation.device(blocked.actuator)
        if device is None:
            continue
        state = automation.actuators.get(device.id, ActuatorState())
        until = _hold_until(state, automation.safety_of(device), blocked.reason, now)
        holds[blocked.actuator] = {
            "wanted_on": blocked.wanted_on,
            "reason": blocked.reason,
            "until": iso(until) if until is not None and until > now else None,
        }
    return holds


def last_commands(conn: sqlite3.Connection, device_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The newest command of each device (runs inside one Database.read)."""
    out: dict[str, dict[str, Any]] = {}
    for device_id in device_ids:
        row = conn.execute(
            "SELECT action, source, reason, state, created_at FROM commands WHERE device_id = ?"
            " ORDER BY created_at DESC LIMIT 1", (device_id,),
        ).fetchone()
        if row is not None:
            out[device_id] = dict(zip(("action", "source", "reason", "state", "created_at"),
                                      tuple(row), strict=True))
    return out


def room_view(
    automation: Automation, room_id: str, now: datetime, stale_after_s: float,
    commands: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    room = automation.rooms[room_id]
    bands = automation.bands(room_id)
    in_band = automation.in_band(room_id)
    readings = {}
    for metric, reading in sorted(automation.latest(room_id).items()):
        readings[metric] = {
            "value": reading.value,
            "at": iso(reading.at),
            "stale": (now - reading.at).total_seconds() > stale_after_s,
            "in_band": in_band.get(metric),
        }
    holds = safety_holds(automation, room_id, now)
    last = commands or {}
    return {
        "id": room_id,
        "name": room.config.name or room_id,
        "species": room.config.species,
        "stage": room.stage,
        "stage_started": room.stage_started,
        "readings": readings,
        "bands": {m: _band(b.low, b.high) for m, b in bands.items()},
        "in_band": in_band,
        "actuators": [
            actuator_view(automation, d, safety_hold=holds.get(d.id), last_command=last.get(d.id))
            for d in automation.actuators_in(room_id)
        ],
        "rules": [{"id": r.id, "enabled": r.enabled} for r in room.rules],
    }


def device_view(
    automation: Automation,
    device: DeviceConfig,
    status: DeviceStatus | None,
    seen: Mapping[str, datetime],
) -> dict[str, Any]:
    last_seen = status.last_seen if status is not None else None
    telemetry_at = seen.get(device.id)
    if telemetry_at is not None:
        last_seen = max(last_seen or 0.0, telemetry_at.timestamp())
    out: dict[str, Any] = {
        "id": device.id,
        "name": device.name or device.id,
        "kind": device.kind,
        "role": device.actuator,
        "room_id": device.room,
        "status": {
            "online": status.online if status is not None else False,
            "last_seen": iso(last_seen),
            "state": status.state if status is not None else {},
            "firmware": status.firmware if status is not None else None,
            "rssi_dbm": status.rssi_dbm if status is not None else None,
            "uptime_s": status.uptime_s if status is not None else None,
        },
    }
    if device.kind == "actuator":
        out["actuator"] = actuator_view(automation, device)
    return out


def command_view(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in ("created_at", "updated_at", "acked_at"):
        out[name] = iso(out.get(name))
    return out


def alert_view(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in ("first_at", "last_at", "resolved_at"):
        out[name] = iso(out.get(name))
    return out


def quarantine_view(item: QuarantinedMessage) -> dict[str, Any]:
    # Raw device bytes shown as text: undecodable bytes become U+FFFD, never an error.
    preview = item.payload[:PREVIEW_BYTES].decode("utf-8", errors="replace")
    return {
        "id": item.id,
        "received_at": iso(item.received_at),
        "topic": item.topic,
        "reason": item.reason,
        "size": item.original_size,
        "preview": preview,
        "preview_truncated": item.original_size > PREVIEW_BYTES,
    }


def stats_view(obj: Any) -> dict[str, Any]:
    # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs and so mangles it.
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = dict(value) if isinstance(value, Mapping) else value
    return out


# ---- time series for the page's sparklines ----
@dataclass(slots=True)
class _Bucket:
    sum_t: float = 0.0
    sum_v: float = 0.0
    n: int = 0


@dataclass(slots=True)
class Series:
    points: dict[str, list[list[float]]] = field(default_factory=dict)
    readings: int = 0
    truncated: bool = False


def downsampled_series(
    conn: sqlite3.Connection,
    room_id: str,
    since: float,
    until: float,
    metric: str | None,
    points: int,
) -> Series:
    """Each metric of the room averaged into at most ``points`` equal time buckets:
    ``[[unix_time, value], …]`` oldest first (runs inside one Database.read snapshot)."""
    width = (until - since) / points
    buckets: dict[str, dict[int, _Bucket]] = {}
    out = Series()
    start = since
    while start < until:
        end = min(until, start + SLICE_S)
        rows = reading_rows.readings_between(conn, room_id, start, end, metric, SLICE_LIMIT)
        out.truncated = out.truncated or len(rows) >= SLICE_LIMIT
        out.readings += len(rows)
        for row in rows:
            index = min(points - 1, int((row.ts - since) / width))
            for name, value in row.data.items():
                bucket = buckets.setdefault(name, {}).setdefault(index, _Bucket())
                bucket.sum_t += row.ts
                bucket.sum_v += value
                bucket.n += 1
        start = end
    for name, by_index in sorted(buckets.items()):
        out.points[name] = [
            [round(b.sum_t / b.n, 3), round(b.sum_v / b.n, 3)]
            for _, b in sorted(by_index.items())
        ]
    return out
