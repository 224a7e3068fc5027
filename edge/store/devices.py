"""Each device's last known status (online, actuator state, firmware) and when it was last heard."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from shared.models import Status


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    device_id: str
    room_id: str
    online: bool
    state: dict[str, Any]
    firmware: str | None
    rssi_dbm: float | None
    uptime_s: float | None
    status_at: float | None  # receive time of its last status message
    last_seen: float  # receive time of its last message of any kind


def upsert_status(
    conn: sqlite3.Connection, status: Status, room_id: str, received_at: float
) -> None:
    """Record a status message. An empty ``state`` (a last-will "offline" message) keeps the
    previous state, and missing firmware/rssi/uptime keep theirs: it is the last *known* state."""
    conn.execute(
        "INSERT INTO device_status (device_id, room_id, online, state, firmware, rssi_dbm,"
        "  uptime_s, status_at, last_seen)"
        " VALUES (:device, :room, :online, :state, :firmware, :rssi, :uptime, :at, :at)"
        " ON CONFLICT (device_id) DO UPDATE SET"
        "  room_id = excluded.room_id,"
        "  online = excluded.online,"
        "  state = CASE WHEN excluded.state = '{}' THEN device_status.state"
        "   ELSE excluded.state END,"
        "  firmware = coalesce(excluded.firmware, device_status.firmware),"
        "  rssi_dbm = coalesce(excluded.rssi_dbm, device_status.rssi_dbm),"
        "  uptime_s = coalesce(excluded.uptime_s, device_status.uptime_s),"
        "  status_at = excluded.status_at,"
        "  last_seen = max(device_status.last_seen, excluded.last_seen)",
        {
            "device": status.device_id,
            "room": room_id,
            "online": int(status.online),
            "state": json.dumps(status.state, separators=(",", ":")),
            "firmware": status.firmware,
            "rssi": status.rssi_dbm,
            "uptime": status.uptime_s,
            "at": received_at,
        },
    )


def touch(conn: sqlite3.Connection, device_id: str, room_id: str, seen_at: float) -> None:
    """The device was just heard from (telemetry, ack): it is online; last_seen moves forward."""
    conn.execute(
        "INSERT INTO device_status (device_id, room_id, online, last_seen) VALUES (?, ?, 1, ?)"
        " ON CONFLICT (device_id) DO UPDATE SET"
        "  room_id = excluded.room_id, online = 1,"
        "  last_seen = max(device_status.last_seen, excluded.last_seen)",
        (device_id, room_id, seen_at),
    )


def _status(row: sqlite3.Row) -> DeviceStatus:
    return DeviceStatus(
        device_id=row["device_id"],
        room_id=row["room_id"],
        online=bool(row["online"]),
        state=json.loads(row["state"]),
        firmware=row["firmware"],
        rssi_dbm=row["rssi_dbm"],
        uptime_s=row["uptime_s"],
        status_at=row["status_at"],
        last_seen=row["last_seen"],
    )


def get(conn: sqlite3.Connection, device_id: str) -> DeviceStatus | None:
    row = conn.execute(
        "SELECT device_id, room_id, online, state, firmware, rssi_dbm, uptime_s, status_at,"
        " last_seen FROM device_status WHERE device_id = ?",
        (device_id,),
    ).fetchone()
    return None if row is None else _status(row)


def all_status(conn: sqlite3.Connection, room_id: str | None = None) -> list[DeviceStatus]:
    """Every known device (or those in one room), by device id."""
    rows = conn.execute(
        "SELECT device_id, room_id, online, state, firmware, rssi_dbm, uptime_s, status_at,"
        " last_seen FROM device_status WHERE (:room IS NULL OR room_id = :room)"
        " ORDER BY device_id",
        {"room": room_id},
    ).fetchall()
    return [_status(r) for r in rows]
