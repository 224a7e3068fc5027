"""Actuator switching history for the charts: the commands each actuator acknowledged (its edge
uploads every command it carried out, automation's and people's alike, with the device's ack),
and the device's own last status report.

The state at the start of a range is the last acknowledged command before it; a status report
newer than the last command (the device rebooted, was switched at the wall, came back off) is
taken as one more switch at the report's time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloud.db.database import Database

ROOM = """
SELECT id, species, stage, stage_started FROM rooms
WHERE farm_id = %(farm_id)s AND id = %(room_id)s"""
ACTUATORS = """
SELECT d.id, d.name, d.actuator, s.online, s.state, s.at AS status_at
FROM devices d
LEFT JOIN device_status s ON s.farm_id = d.farm_id AND s.device_id = d.id
WHERE d.farm_id = %(farm_id)s AND d.room_id = %(room_id)s AND d.kind = 'actuator'
ORDER BY d.actuator, d.id"""
NAMES = """
SELECT id, name FROM devices WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s ORDER BY id"""
# Acknowledged on/off/set commands in the range, and per device the last one before it.
_DONE = """
FROM edge_commands
WHERE farm_id = %(farm_id)s AND device_id = ANY(%(devices)s)
  AND (ack_status = 'ok' OR state = 'acked') AND action IN ('on', 'off', 'set')"""
SWITCHES = (
    "SELECT device_id, action, value, coalesce(acked_at, created_at) AS at, source"
    + _DONE
    + """
  AND coalesce(acked_at, created_at) >= %(start)s AND coalesce(acked_at, created_at) < %(end)s
ORDER BY at, command_id"""
)
BEFORE = (
    "SELECT DISTINCT ON (device_id) device_id, action, value,"
    " coalesce(acked_at, created_at) AS at, source"
    + _DONE
    + """
  AND coalesce(acked_at, created_at) < %(start)s
ORDER BY device_id, coalesce(acked_at, created_at) DESC, command_id DESC"""
)


async def read(
    db: Database, farm_id: str, room_id: str, *, start: datetime, end: datetime
) -> dict[str, Any]:
    """The room, its devices' names, its actuators with their status, the switches in
    [start, end) and the last one before ``start`` per actuator; an empty dict when the room does
    not exist."""
    params: dict[str, Any] = {"farm_id": farm_id, "room_id": room_id, "start": start, "end": end}
    async with db.transaction() as cur:
        await cur.execute(ROOM, params)
        room = await cur.fetchone()
        if room is None:
            return {}
        await cur.execute(NAMES, params)
        names = {r["id"]: r["name"] or r["id"] for r in await cur.fetchall()}
        await cur.execute(ACTUATORS, params)
        actuators = await cur.fetchall()
        params["devices"] = [a["id"] for a in actuators]
        await cur.execute(BEFORE, params)
        before = await cur.fetchall()
        await cur.execute(SWITCHES, params)
        switches = await cur.fetchall()
    return {
        "room": room,
        "names": names,
        "actuators": actuators,
        "before": before,
        "switches": switches,
    }
