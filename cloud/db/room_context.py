"""What an advisor needs to know about a room, read in one transaction: statistics per metric,
the actuators and their command history, status, alerts, recent actions and rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloud.db.database import Database

ROOM = """
SELECT id, farm_id, name, species, stage, stage_started FROM rooms
WHERE farm_id = %(farm_id)s AND id = %(room_id)s"""
# Raw min/max, mean, and the mean of each half of the window (a simple trend).
STATS = """
SELECT metric, avg(value) AS mean, min(value) AS min, max(value) AS max, count(*) AS count,
       avg(value) FILTER (WHERE time < %(mid)s) AS first_half_mean,
       avg(value) FILTER (WHERE time >= %(mid)s) AS last_half_mean
FROM sensor_data
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND metric = ANY(%(metrics)s)
  AND time >= %(start)s AND time < %(end)s
GROUP BY metric ORDER BY metric"""
METRICS = """
SELECT DISTINCT metric FROM sensor_hourly WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s"""
ACTUATORS = """
SELECT d.id, d.actuator, s.online, s.state, s.at AS status_at
FROM devices d
LEFT JOIN device_status s ON s.farm_id = d.farm_id AND s.device_id = d.id
WHERE d.farm_id = %(farm_id)s AND d.room_id = %(room_id)s AND d.kind = 'actuator' ORDER BY d.id"""
# Commands the edge carried out (acknowledged by the device): the switching history from which
# duty cycles are computed. One day before the window gives each actuator's starting state.
SWITCHES = """
SELECT device_id, action, value, coalesce(acked_at, created_at) AS at
FROM edge_commands
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND coalesce(acked_at, created_at) >= %(since)s
  AND coalesce(acked_at, created_at) < %(end)s
  AND (ack_status = 'ok' OR state = 'acked') AND action IN ('on', 'off', 'set')
ORDER BY at, command_id"""
EDGE_ALERTS = """
SELECT kind, severity, message, state, device_id, last_at AS at FROM edge_alerts
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND (state = 'active' OR resolved_at >= %(start)s)
ORDER BY last_at DESC LIMIT 20"""
CLOUD_ALERTS = """
SELECT kind, severity, message, state, device_id, last_at AS at FROM alert_episodes
WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND source = 'cloud'
  AND (state = 'active' OR resolved_at >= %(start)s)
ORDER BY last_at DESC LIMIT 20"""
RECENT_ACTIONS = """
(SELECT device_id, action, value, source, state, coalesce(acked_at, created_at) AS at
 FROM edge_commands WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s
  AND created_at >= %(start)s
 AND coalesce(source, '') <> 'automation'
 ORDER BY created_at DESC LIMIT 20)
UNION ALL
(SELECT device_id, action, value, 'cloud' AS source, status AS state, created_at AS at
 FROM commands WHERE farm_id = %(farm_id)s AND room_id = %(room_id)s AND created_at >= %(start)s
 ORDER BY created_at DESC LIMIT 20)
ORDER BY at DESC LIMIT 20"""
RULES = """
SELECT body FROM automation_rules WHERE farm_id = %(farm_id)s
  AND room_id = %(room_id)s ORDER BY id"""


async def read(
    db: Database, farm_id: str, room_id: str, *, start: datetime, end: datetime
) -> dict[str, Any]:
    """Everything ``cloud.ai.context`` folds into a RoomContext (an empty dict: no such room)."""
    mid = start + (end - start) / 2
    params = {
        "farm_id": farm_id,
        "room_id": room_id,
        "start": start,
        "end": end,
        "mid": mid,
        "since": start - (end - start),
    }
    out: dict[str, Any] = {}
    async with db.transaction() as cur:
        await cur.execute(ROOM, params)
        room = await cur.fetchone()
        if room is None:
            return {}
        out["room"] = room
        # Name the metrics: each then is a range scan of (room_id, metric, time).
        await cur.execute(METRICS, params)
        params["metrics"] = [r["metric"] for r in await cur.fetchall()]
        for key, query in (
            ("stats", STATS),
            ("actuators", ACTUATORS),
            ("switches", SWITCHES),
            ("edge_alerts", EDGE_ALERTS),
            ("cloud_alerts", CLOUD_ALERTS),
            ("actions", RECENT_ACTIONS),
            ("rules", RULES),
        ):
            await cur.execute(query, params)
            out[key] = await cur.fetchall()
    return out
