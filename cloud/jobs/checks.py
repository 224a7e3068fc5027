"""check_automation_rules: what the cloud watches itself, because no edge is there to.

- An edge not seen for ``edge_offline_after_s`` is offline (alert ``edge_offline``).
- Rooms of farms without a connected edge (an edge down, or devices that reach the cloud
  directly through AWS IoT Core) get the edge's band check here: the mean of the last
  ``band_window_s`` against the profile band (alert ``out_of_band``), and a room whose readings
  stopped while it has no edge at all is silent (``sensor_silent``).
- Consistency, every farm: an enabled rule whose actuator is not an actuator of its room can
  never act (``rule_orphaned``).

Only changes become alert events (``source`` "cloud"): a condition that starts, and one that
ends. process_alerts turns them into notifications like the edges' alerts.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from cloud.db import alerts as alerts_db
from cloud.db.database import Database
from cloud.jobs.queue import JobQueue
from cloud.jobs.settings import JobsConfig
from shared.profiles import BANDED_METRICS, profile_for

log = logging.getLogger(__name__)

SOURCE = "cloud"
EDGES = "SELECT id, farm_id, last_seen FROM edges ORDER BY id"
ROOMS = "SELECT id, farm_id, species, stage FROM rooms ORDER BY id"
# Room ids are per farm: rooms are named by (farm, room) pairs, the two arrays side by side.
MEANS = """
SELECT farm_id, room_id, metric, avg(value) AS mean, count(*) AS n FROM sensor_data
WHERE (farm_id, room_id) IN (SELECT * FROM unnest(%(farms)s::text[], %(rooms)s::text[]))
  AND metric = ANY(%(metrics)s) AND time >= %(since)s
GROUP BY farm_id, room_id, metric"""
LAST_READING = """
SELECT farm_id, room_id, max(time) AS at FROM sensor_latest
WHERE (farm_id, room_id) IN (SELECT * FROM unnest(%(farms)s::text[], %(rooms)s::text[]))
GROUP BY farm_id, room_id"""
ORPHAN_RULES = """
SELECT r.room_id, r.id, r.body->>'actuator' AS actuator, r.farm_id
FROM automation_rules r
LEFT JOIN devices d ON d.farm_id = r.farm_id AND d.id = r.body->>'actuator'
    AND d.room_id = r.room_id AND d.kind = 'actuator'
WHERE d.id IS NULL AND coalesce((r.body->>'enabled')::boolean, true)"""
KINDS = {"edge": "edge_offline", "band": "out_of_band", "silent": "sensor_silent"}


def _kind(key: str) -> str:
    return KINDS.get(key.split(":", 1)[0], "rule_orphaned")


async def check_automation_rules(
    db: Database, queue: JobQueue, config: JobsConfig, *, now: datetime
) -> dict[str, int]:
    offline_before = now - timedelta(seconds=config.edge_offline_after_s)
    wanted: dict[tuple[str, str], dict[str, Any]] = {}
    edges = await db.fetch_all(EDGES)
    connected = {e["farm_id"] for e in edges if e["last_seen"] and e["last_seen"] >= offline_before}
    with_edges = {e["farm_id"] for e in edges}
    for edge in edges:
        seen = edge["last_seen"]
        if seen is not None and seen < offline_before:  # never seen: not installed yet
            minutes = (now - seen).total_seconds() / 60
            wanted[(edge["farm_id"], f"edge:{edge['id']}")] = {
                "severity": "critical",
                "message": f"edge {edge['id']} not seen for {minutes:.0f} min: the farm runs "
                "on its own, but the cloud gets no readings and cannot send commands",
            }
    rooms = [r for r in await db.fetch_all(ROOMS) if r["farm_id"] not in connected]
    pairs = {"farms": [r["farm_id"] for r in rooms], "rooms": [r["id"] for r in rooms]}
    since = now - timedelta(seconds=config.band_window_s)
    means = await db.fetch_all(
        MEANS, {**pairs, "metrics": list(BANDED_METRICS), "since": since}
    )
    last = {
        (r["farm_id"], r["room_id"]): r["at"] for r in await db.fetch_all(LAST_READING, pairs)
    }
    by_room: dict[tuple[str, str], dict[str, float]] = {}
    for row in means:
        by_room.setdefault((row["farm_id"], row["room_id"]), {})[row["metric"]] = float(
            row["mean"]
        )
    for room in rooms:
        profile = profile_for(room["species"], room["stage"])
        for metric, mean in by_room.get((room["farm_id"], room["id"]), {}).items():
            band = profile.band(metric)
            if band is not None and not band.contains(mean):
                wanted[(room["farm_id"], f"band:{room['id']}:{metric}")] = {
                    "room_id": room["id"],
                    "severity": "warning",
                    "message": f"{room['id']}: {metric} averaged {mean:.1f} over the last "
                    f"{config.band_window_s / 60:.0f} min, outside "
                    f"[{band.min if band.min is not None else '-'}, "
                    f"{band.max if band.max is not None else '-'}] (checked in the cloud: no "
                    "edge connected)",
                }
        seen = last.get((room["farm_id"], room["id"]))
        stale = seen is not None and now - seen > timedelta(seconds=config.stale_after_s)
        if stale and room["farm_id"] not in with_edges:
            assert seen is not None
            wanted[(room["farm_id"], f"silent:{room['id']}")] = {
                "room_id": room["id"],
                "severity": "warning",
                "message": f"no readings from {room['id']} for "
                f"{(now - seen).total_seconds() / 60:.0f} min",
            }
    for rule in await db.fetch_all(ORPHAN_RULES):
        wanted[(rule["farm_id"], f"rule:{rule['room_id']}:{rule['id']}")] = {
            "room_id": rule["room_id"],
            "severity": "warning",
            "message": f"rule {rule['id']} in {rule['room_id']} drives {rule['actuator']}, "
            "which is not an actuator of that room: it can never act",
        }
    active = await alerts_db.active_keys(db, SOURCE)
    started = ended = 0
    for (farm_id, key), fields in wanted.items():
        if (farm_id, key) in active:
            continue
        await alerts_db.add_event(
            db,
            farm_id=farm_id,
            source=SOURCE,
            key=key,
            kind=_kind(key),
            state="active",
            at=now,
            **fields,
        )
        started += 1
    for farm_id, key in active - wanted.keys():
        await alerts_db.add_event(
            db,
            farm_id=farm_id,
            source=SOURCE,
            key=key,
            kind=_kind(key),
            severity="info",
            message="back to normal",
            state="resolved",
            at=now,
        )
        ended += 1
    if started or ended:
        await queue.defer("process_alerts", queueing_lock="process_alerts")
        log.info("cloud checks: %d alerts started, %d ended", started, ended)
    return {"started": started, "ended": ended, "rooms_checked": len(rooms)}
