"""The live protocol: NOTIFY payloads the hub reads (never trusted: parsed defensively) and the
JSON messages browsers receive, plus the close codes.

Server → browser messages (one JSON object per text frame, ``type`` first):
``hello``, ``subscribed``, ``unsubscribed``, ``error``, ``pong``, ``resync`` (events may have been
missed: reload snapshots), and the events ``reading``, ``status``, ``command``, ``alert``,
``recommendation``, ``notification``, ``edge``, ``room`` (renamed or new stage: reload it) and
``automation`` (its edge reported the room's effective automation anew: reload it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

# Channels: ours (migration 0009 and the batch writer), and the AI and notification ones that
# migration 0008 announces on.
LIVE, ROOM, USER = "smartfarm_live", "smartfarm_room", "smartfarm_user"
CHANNELS = (LIVE, ROOM, USER)

CLOSE_UNAUTHORIZED = 4401  # no, bad or expired token; or no auth message in time
CLOSE_FORBIDDEN = 4403  # the account was disabled
CLOSE_TOO_SLOW = 4408  # the client fell queue_size messages behind or stopped reading


@dataclass(frozen=True)
class Notice:
    """One parsed NOTIFY. ``ident`` names the row to fetch; readings carry their values."""

    kind: str
    farm_id: str | None = None
    room_id: str | None = None
    ident: str | int | None = None
    user_id: int | None = None
    status: str | None = None
    at: float | None = None
    devices: dict[str, tuple[float, dict[str, float]]] = field(default_factory=dict)
    fetch: tuple[str, ...] = ()


def _str(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) else None


def _readings(doc: dict[str, Any]) -> dict[str, tuple[float, dict[str, float]]]:
    out: dict[str, tuple[float, dict[str, float]]] = {}
    devices = doc.get("devices") or {}
    if not isinstance(devices, dict):
        raise ValueError("devices is not an object")
    for device_id, entry in devices.items():
        t, values = float(entry["t"]), entry["v"]
        if not isinstance(values, dict):
            raise ValueError("values is not an object")
        out[str(device_id)] = (t, {str(m): float(v) for m, v in values.items()})
    return out


def parse_notice(channel: str, payload: str) -> Notice | None:
    """The notice in a payload; None (and a warning) for anything unexpected."""
    try:
        doc = json.loads(payload)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        if channel == ROOM:  # {"farm_id", "room_id", "recommendation"} (migrations 0008, 0011)
            return Notice(
                "recommendation",
                farm_id=_str(doc, "farm_id"),
                room_id=str(doc["room_id"]),
                ident=int(doc["recommendation"]),
            )
        if channel == USER:  # {"user_id", "notification"} (migration 0008)
            return Notice(
                "notification", user_id=int(doc["user_id"]), ident=int(doc["notification"])
            )
        kind = doc["k"]
        if kind == "readings":
            fetch = doc.get("fetch") or []
            return Notice(
                "readings",
                farm_id=str(doc["farm"]),
                room_id=str(doc["room"]),
                at=float(doc["at"]),
                devices=_readings(doc),
                fetch=tuple(str(d) for d in fetch),
            )
        if kind in ("command", "status"):
            return Notice(
                kind,
                farm_id=str(doc["farm"]),
                room_id=str(doc["room"]),
                ident=str(doc["id"]),
                status=_str(doc, "status"),
            )
        if kind == "alert":
            return Notice(
                "alert", farm_id=str(doc["farm"]), room_id=_str(doc, "room"), ident=int(doc["id"])
            )
        if kind in ("room", "automation"):
            return Notice(kind, farm_id=str(doc["farm"]), room_id=str(doc["room"]))
        if kind == "access":
            return Notice("access", farm_id=str(doc["farm"]), user_id=int(doc["user"]))
        if kind in ("user", "signed_out"):
            return Notice(kind, user_id=int(doc["user"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    log.warning("ignoring unexpected notification on %s: %.200s", channel, payload)
    return None


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def message(kind: str, **fields: Any) -> str:
    """One server → browser message as JSON text (datetimes as ISO 8601)."""
    return json.dumps({"type": kind, **fields}, default=_default, separators=(",", ":"))


def reading_message(
    farm_id: str, room_id: str, device_id: str, t: float, values: dict[str, float], at: float | None
) -> str:
    """``reading``: a device's newest values; ``time`` in unix seconds (what charts plot),
    ``ingested_at`` when the cloud committed them (unix seconds; latency, data age)."""
    return message(
        "reading",
        farm_id=farm_id,
        room_id=room_id,
        device_id=device_id,
        time=t,
        values=values,
        ingested_at=at,
    )


def row_message(kind: str, row: dict[str, Any], status: str | None = None) -> str:
    """The message for a fetched row (command, status, alert, recommendation, notification)."""
    if kind == "notification":
        return message("notification", notification=row)
    where = {"farm_id": row["farm_id"], "room_id": row["room_id"]}
    if kind == "command":
        return message("command", **where, command=command_out(row, status))
    if kind == "status":
        return message("status", **where, device_id=row["device_id"], online=row["online"],
                       state=row["state"], time=row["at"], firmware=row.get("firmware"))
    return message(kind, **where, **{kind: row})


def command_out(row: dict[str, Any], status: str | None) -> dict[str, Any]:
    """A command as the REST API shows it, in the state the notice announced (fetched later, the
    row may already be further along; each step is shown in turn)."""
    return {
        "id": row["id"],
        "room_id": row["room_id"],
        "device_id": row["device_id"],
        "action": row["action"],
        "value": row["value"],
        "status": status or row["status"],
        "error": row["error"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
