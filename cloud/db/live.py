"""SQL of the live dashboard: announcing a batch's readings on its transaction, and the rows the
hub fetches by id when a NOTIFY names one (commands, device status, alerts, recommendations,
notifications), plus edge presence and the snapshots the page starts from."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from cloud.db.database import Cursor, Database

CHANNEL = "smartfarm_live"
# NOTIFY payloads must stay under 8000 bytes; past this a room's readings are split by device,
# and a device whose values alone do not fit is announced by id (the hub reads sensor_latest).
MAX_PAYLOAD = 7000

NOTIFY = "SELECT pg_notify('smartfarm_live', p) FROM unnest(%(payloads)s::text[]) AS p"

COMMAND = """
SELECT c.id, c.room_id, c.farm_id, c.device_id, c.action, c.value, c.status, c.error,
    c.created_at, c.updated_at
FROM commands c WHERE c.farm_id = %(farm_id)s AND c.id = %(id)s"""
STATUS = """
SELECT s.device_id, d.room_id, s.farm_id, s.online, s.state, s.at, s.firmware
FROM device_status s JOIN devices d ON d.farm_id = s.farm_id AND d.id = s.device_id
WHERE s.farm_id = %(farm_id)s AND s.device_id = %(id)s"""
ALERT = """
SELECT id, farm_id, room_id, device_id, source, kind, severity, message, state, started_at,
    last_at, resolved_at
FROM alert_episodes WHERE id = %(id)s"""
RECOMMENDATION = """
SELECT x.id, x.room_id, x.farm_id, x.source, x.severity, x.title, x.reason, x.status,
    x.created_at
FROM recommendations x WHERE x.id = %(id)s"""
NOTIFICATION = """
SELECT id, user_id, farm_id, room_id, kind, title, body, severity, created_at
FROM notifications WHERE id = %(id)s"""
LATEST_OF = """
SELECT l.device_id, l.room_id, l.farm_id, l.metric, l.time, l.value
FROM sensor_latest l WHERE l.farm_id = %(farm_id)s AND l.device_id = ANY(%(ids)s)"""
# With each edge's health (migration 0020): backlog and version as reported, clock offset as
# measured, and the rooms it serves.
EDGES = """
SELECT e.id, e.farm_id, e.name, e.last_seen,
    coalesce(e.last_seen > now() - make_interval(secs => %(window)s), false) AS online,
    e.backlog, e.software_version, e.clock_offset_s, e.status_at,
    array(SELECT r.id FROM rooms r
          WHERE r.farm_id = e.farm_id AND room_edge(r.farm_id, r.edge_id) = e.id
          ORDER BY r.id) AS rooms
FROM edges e WHERE e.farm_id = ANY(%(farms)s) ORDER BY e.farm_id, e.id"""

ROOMS = """
SELECT id, farm_id, name, species, stage, stage_started FROM rooms
WHERE farm_id = %(farm_id)s AND (%(only)s::text[] IS NULL OR id = ANY(%(only)s))
ORDER BY id"""
ROOM_LATEST = """
SELECT DISTINCT ON (d.room_id, l.metric) d.room_id, l.metric, l.device_id, l.time, l.value
FROM devices d JOIN sensor_latest l ON l.farm_id = d.farm_id AND l.device_id = d.id
WHERE d.farm_id = %(farm_id)s AND d.room_id = ANY(%(rooms)s)
ORDER BY d.room_id, l.metric, l.time DESC"""
ROOM_DEVICES = """
SELECT d.id, d.name, d.kind, d.actuator, d.last_seen, s.online, s.state, s.at AS status_at,
    s.firmware,
    coalesce((SELECT json_object_agg(l.metric, json_build_object('value', l.value, 'time', l.time))
              FROM sensor_latest l WHERE l.farm_id = d.farm_id AND l.device_id = d.id),
             '{}') AS latest,
    c.id AS command_id, c.action AS command_action, c.value AS command_value,
    c.status AS command_status, c.error AS command_error, c.created_at AS command_created_at,
    c.updated_at AS command_updated_at
FROM devices d
LEFT JOIN device_status s ON s.farm_id = d.farm_id AND s.device_id = d.id
LEFT JOIN LATERAL (
    SELECT id, action, value, status, error, created_at, updated_at FROM commands
    WHERE farm_id = d.farm_id AND room_id = d.room_id AND device_id = d.id
    ORDER BY created_at DESC, id DESC LIMIT 1
) c ON true
WHERE d.farm_id = %(farm_id)s AND d.room_id = %(room_id)s ORDER BY d.kind DESC, d.id"""


def reading_payloads(
    farm_id: str, readings: Iterable[tuple[datetime, str, str, str, float]], now: float
) -> list[str]:
    """NOTIFY payloads for a batch's readings: per room, each device's newest time and its newest
    value per metric; ``at`` is when the batch was announced (just before its commit)."""
    # Datetimes compared as they are: converting each row to a float would cost more than the
    # whole scan (a backlog batch has thousands of rows).
    newest: dict[tuple[str, str], dict[str, tuple[datetime, float]]] = {}
    for when, room_id, device_id, metric, value in readings:
        key = (room_id, device_id)
        metrics = newest.get(key)
        if metrics is None:
            newest[key] = {metric: (when, value)}
            continue
        old = metrics.get(metric)
        if old is None or when >= old[0]:
            metrics[metric] = (when, value)
    by_room: dict[str, dict[str, dict[str, Any]]] = {}
    for (room_id, device_id), metrics in newest.items():
        t = max(at for at, _ in metrics.values()).timestamp()
        values = {metric: value for metric, (_, value) in metrics.items()}
        by_room.setdefault(room_id, {})[device_id] = {"t": round(t, 3), "v": values}
    payloads: list[str] = []
    for room_id, devices in by_room.items():
        head = {"k": "readings", "farm": farm_id, "room": room_id, "at": round(now, 4)}
        whole = json.dumps({**head, "devices": devices}, separators=(",", ":"))
        if len(whole) <= MAX_PAYLOAD:
            payloads.append(whole)
            continue
        for device_id, entry in devices.items():
            one = json.dumps({**head, "devices": {device_id: entry}}, separators=(",", ":"))
            if len(one) > MAX_PAYLOAD:
                one = json.dumps({**head, "fetch": [device_id]}, separators=(",", ":"))
            payloads.append(one)
    return payloads


async def announce_readings(
    cur: Cursor, farm_id: str, readings: list[tuple[datetime, str, str, str, float]]
) -> None:
    """NOTIFY the batch's newest readings on the batch's own transaction: PostgreSQL delivers
    them when (and only if) it commits, to the listeners of every cloud instance."""
    if not readings:
        return
    payloads = reading_payloads(farm_id, readings, time.time())
    await cur.execute(NOTIFY, {"payloads": payloads})


async def notify(db: Database, payloads: list[str]) -> None:
    await db.execute(NOTIFY, {"payloads": payloads})


async def command(db: Database, farm_id: str, command_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(COMMAND, {"farm_id": farm_id, "id": command_id})


async def status(db: Database, farm_id: str, device_id: str) -> dict[str, Any] | None:
    return await db.fetch_one(STATUS, {"farm_id": farm_id, "id": device_id})


async def alert(db: Database, episode_id: int) -> dict[str, Any] | None:
    return await db.fetch_one(ALERT, {"id": episode_id})


async def recommendation(db: Database, rec_id: int) -> dict[str, Any] | None:
    return await db.fetch_one(RECOMMENDATION, {"id": rec_id})


async def notification(db: Database, notification_id: int) -> dict[str, Any] | None:
    return await db.fetch_one(NOTIFICATION, {"id": notification_id})


async def latest_of(db: Database, farm_id: str, device_ids: list[str]) -> list[dict[str, Any]]:
    return await db.fetch_all(LATEST_OF, {"farm_id": farm_id, "ids": device_ids})


async def edges(db: Database, farm_ids: list[str], *, window_s: float) -> list[dict[str, Any]]:
    return await db.fetch_all(EDGES, {"farms": farm_ids, "window": window_s})


async def rooms(db: Database, farm_id: str, only: list[str] | None) -> list[dict[str, Any]]:
    return await db.fetch_all(ROOMS, {"farm_id": farm_id, "only": only})


async def room_latest(db: Database, farm_id: str, room_ids: list[str]) -> list[dict[str, Any]]:
    return await db.fetch_all(ROOM_LATEST, {"farm_id": farm_id, "rooms": room_ids})


async def room_devices(db: Database, farm_id: str, room_id: str) -> list[dict[str, Any]]:
    return await db.fetch_all(ROOM_DEVICES, {"farm_id": farm_id, "room_id": room_id})
