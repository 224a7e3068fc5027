"""Simulator ▶ edge with no cloud: the edge keeps a room in band on its own."""
from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace

from edge.store.readings import readings_between
from firmware_sim.farm import build_farm
from firmware_sim.physics import RoomParams
from tests.e2e.conftest import fast_settings, make_site, query, wait_for

SPEED = 60.0
# The profile's RH rule, without its "for" delay: the physics runs 60x faster than the edge's
# clock, so a real-time delay would stretch to hours of simulated drying.
FAST_RH_RULE = """
[[rooms.rules]]
id = "room-a-rh"
room_id = "room-a"
actuator = "room-a-humidifier"
type = "threshold"
metric = "humidity_pct"
on_below = 86
off_above = 89
"""


async def test_humidity_drop_is_corrected_by_the_humidifier(tmp_path, farm_id, running_edge):
    settings = fast_settings(make_site(tmp_path / "site", farm_id, extra_toml=FAST_RH_RULE))
    edge = await running_edge(settings)
    rule = next(r for r in edge.automation.rules("room-a") if r.id == "room-a-rh")
    farm = build_farm(settings, speed=SPEED, telemetry_interval_s=10, seed=7,
                      room_params=replace(RoomParams(), door_openings_per_h=0))
    # Start the room at the top of its band: with no one acting, RH falls out of it.
    farm.rooms["room-a"].state.humidity_pct = 89.0
    stop = asyncio.Event()
    sim = asyncio.create_task(farm.run(stop))
    db = settings.db_path
    humidifier = "room-a-humidifier"

    def commands(action: str) -> list:
        return query(db, "SELECT * FROM commands WHERE device_id = ? AND action = ?"
                         " AND source = 'automation' ORDER BY created_at", (humidifier, action))

    try:
        on = (await wait_for(lambda: [c for c in commands("on") if c["state"] == "acked"],
                             60, "the humidifier to be switched on and ack"))[0]
        off = (await wait_for(
            lambda: [c for c in commands("off") if c["state"] == "acked"
                     and c["created_at"] > on["created_at"]],
            60, "the humidifier to be switched off again"))[0]
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sim, 10)

    assert "humidity_pct" in on["reason"] and "<" in on["reason"]
    rows = query(db, "SELECT ts, vals, s.metrics FROM readings r JOIN series s ON s.key = r.series"
                     " ORDER BY ts")
    rh = [(ts, dict(zip(json.loads(m), json.loads(v), strict=True))["humidity_pct"])
          for ts, v, m in rows]
    before_on = [v for ts, v in rh if ts <= on["created_at"]]
    between = [v for ts, v in rh if on["created_at"] < ts <= off["created_at"]]
    # RH really left the band, the humidifier brought it back above the off threshold.
    assert min(before_on) < rule.on_below
    assert between and max(between) > rule.off_above
    assert query(db, "SELECT count(*) FROM quarantine")[0][0] == 0
    # The room's readings are also served through the store's own query (a reading still in
    # flight when the simulator stopped may land in between the two reads).
    stored = await edge.db.read(readings_between, "room-a", 0, 4e9)
    assert len(stored) >= len(rows) > 0


async def test_an_actuator_that_never_acks_raises_an_alert(tmp_path, farm_id, running_edge):
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    edge = await running_edge(settings)
    farm = build_farm(settings, speed=SPEED, telemetry_interval_s=10, seed=3)
    farm.actuators["room-a-heater"].fail_mode = "no_ack"
    stop = asyncio.Event()
    sim = asyncio.create_task(farm.run(stop))
    try:
        await wait_for(lambda: all(n.connected.is_set() for n in farm.nodes), 15,
                       "every node to connect")
        await edge.automation.manual_command("room-a-heater", "on", hold_minutes=5)
        alerts = await wait_for(
            lambda: query(settings.db_path, "SELECT * FROM alerts WHERE kind ="
                          " 'actuator_not_acking' AND state = 'active'"),
            30, "an actuator_not_acking alert")
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sim, 10)
    assert alerts[0]["device_id"] == "room-a-heater"
    assert farm.actuators["room-a-heater"].received, "the command did reach the node"
    timed_out = query(settings.db_path, "SELECT * FROM commands WHERE device_id = 'room-a-heater'"
                      " AND state = 'timed_out'")
    assert timed_out and timed_out[0]["attempts"] >= 2
    # The other actuators acked: only the silent one is flagged.
    others = query(settings.db_path, "SELECT count(*) FROM alerts WHERE kind ="
                   " 'actuator_not_acking' AND device_id != 'room-a-heater'")
    assert others[0][0] == 0
