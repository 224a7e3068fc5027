"""Simulator ▶ real edge ▶ real cloud on PostgreSQL, and back: readings stored exactly once,
commands made in the cloud reaching a simulated actuator with their ack, cloud config edits
applied and acknowledged by the edge, a device registered in the cloud logging in to the edge's
broker. Everything on loopback: the cloud is ``init_app`` on a free port, the edge an ``EdgeApp``
registered with ``smartfarm edge register``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge.config import load_config
from firmware_sim.farm import SimFarm, build_farm
from shared.models import Telemetry, dump, utcnow
from tests.chaos.conftest import (
    Cloud,
    EdgeRun,
    Registration,
    cloud,
    drained,
    edge_app,
    fast_settings,
    make_site,
    register_edge,
    tally,
    until,
)

pytestmark = pytest.mark.postgres
# The real cloud's fixtures (tests/chaos/conftest.py), found by pytest under these names.
FIXTURES = (cloud, edge_app)

EDGE_ID = "edge-e2e"
# The production pace of the uplink (a 2 s batch age, a 0.1 s look at the outbox): the
# within-a-second claims must hold without test-only tuning.
PRODUCTION_PACE = {"batch_max_age_s": 2.0, "poll_interval_s": 0.1}


@contextlib.asynccontextmanager
async def simulated(farm: SimFarm) -> AsyncIterator[SimFarm]:
    stop = asyncio.Event()
    task = asyncio.create_task(farm.run(stop), name="sim")
    try:
        yield farm
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def online_farm(
    the_cloud: Cloud, tmp_path: Path, farm_id: str, start: Any, **pace: Any
) -> tuple[EdgeRun, Registration]:
    """A site whose farm, room and devices are registered in the cloud, its edge registered
    and running, its first config version applied."""
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), EDGE_ID)
    register_edge(config, the_cloud.url, reg, **pace)
    run: EdgeRun = await start(fast_settings(config))
    await until(lambda: applied(the_cloud), 10, "the first config applied")
    return run, reg


async def applied(the_cloud: Cloud) -> int:
    """The config version the edge acknowledged, once it is the farm's current one (else 0)."""
    found = await the_cloud.rows(
        "SELECT e.config_version AS applied, f.version AS current FROM edges e"
        " JOIN farm_config f ON f.farm_id = e.farm_id WHERE e.id = %s", (EDGE_ID,))
    if found and found[0]["applied"] == found[0]["current"]:
        return int(found[0]["applied"])
    return 0


async def test_readings_reach_postgres_once_and_a_cloud_command_round_trips(
    cloud: Any, tmp_path: Path, farm_id: str, edge_app: Any
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    run, reg = await online_farm(the_cloud, tmp_path, farm_id, edge_app, **PRODUCTION_PACE)
    edge = run.app
    farm = build_farm(edge.settings, speed=60, telemetry_interval_s=10, seed=11)
    async with simulated(farm):
        # The simulated nodes are up: every actuator acked what the edge re-asserted at boot.
        await until(lambda: farm.actuators and all(a.received for a in farm.actuators.values())
                    and not edge.commands.pending_count(), 20, "the actuators to be online")
        heater = farm.actuators["room-a-heater"]
        before = len(heater.received)
        started = time.monotonic()
        made = await the_cloud.api("POST", "/api/rooms/room-a/commands",
                                   {"device_id": "room-a-heater", "action": "on"})
        path = f"/api/rooms/room-a/commands/{made['id']}"
        seen: list[tuple[float, str]] = []

        async def status() -> bool:
            answer = await the_cloud.api("GET", path)
            if not seen or seen[-1][1] != answer["status"]:
                seen.append((time.monotonic() - started, answer["status"]))
            return bool(answer["status"] == "acked")

        await until(status, 5, "the command acked in the cloud", every=0.02)
        elapsed = seen[-1][0]
        # The simulated actuator got it (under the edge's own command id) and switched on.
        assert len(heater.received) > before and heater.level > 0
        command = await the_cloud.api("GET", path)
        assert command["status"] == "acked"
        kept = await the_cloud.rows(
            "SELECT command_id, source, state, ack_status, cloud_command_id FROM edge_commands"
            " WHERE cloud_command_id = %s", (made["id"],))
        assert len(kept) == 1 and kept[0]["source"] == "cloud" and kept[0]["state"] == "acked"
        assert kept[0]["ack_status"] == "ok"
        print(f"cloud command states seen through the API (s after POST): {seen}")
        assert elapsed < 1.0, f"command states seen through the API: {seen}"
        await asyncio.sleep(1.0)  # some more readings while the heater runs
    await drained(the_cloud, edge.settings.db_path, EDGE_ID, 15)
    await run.stop()
    counted = await tally(the_cloud, edge.settings.db_path, EDGE_ID, reg.farm_id)
    print(counted.summary())
    counted.assert_exactly_once()
    assert counted.readings >= 10 and counted.kinds["command"] >= 1, counted.summary()


async def test_cloud_edits_reach_the_edge_as_versions_and_new_devices_log_in(
    cloud: Any, tmp_path: Path, farm_id: str, edge_app: Any
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    run, reg = await online_farm(the_cloud, tmp_path, farm_id, edge_app)
    edge = run.app
    first = await applied(the_cloud)
    assert edge.downlink is not None and edge.downlink.config_version == first

    # A stage change and a new rule, edited in the cloud: one version each, applied, acked.
    started = time.monotonic()
    await the_cloud.api("PATCH", "/api/rooms/room-a", {"stage": "pinning"})
    rule = {"id": "room-a-night-fan", "room_id": "room-a", "actuator": "room-a-fan",
            "type": "threshold", "metric": "co2_ppm", "on_above": 1500, "off_below": 1100}
    await the_cloud.api("POST", "/api/rooms/room-a/automation", rule)
    version = await until(lambda: _at_least(the_cloud, first + 2), 10, "the edits acknowledged")
    took = time.monotonic() - started
    assert edge.downlink.config_version == version
    assert edge.automation.rooms["room-a"].stage == "pinning"
    pushed = next(r for r in edge.automation.rules("room-a") if r.id == "room-a-night-fan")
    assert pushed.enabled and pushed.actuator == "room-a-fan"
    print(f"stage + rule edits applied and acknowledged after {took:.2f} s")
    assert took < 5, f"config took {took:.1f} s"

    # A device registered in the cloud: its credentials reach the edge broker within seconds.
    started = time.monotonic()
    made = await the_cloud.api("POST", "/api/rooms/room-a/devices",
                               {"id": "room-a-probe", "kind": "sensor"})
    mqtt = made["mqtt"]
    topic = f"farm/{reg.farm_id}/room/room-a/telemetry/room-a-probe"
    assert topic in mqtt["publish_topics"]
    host, port = edge.mqtt_address()
    while True:
        try:
            async with aiomqtt.Client(host, port, username=mqtt["username"],
                                      password=mqtt["password"], identifier="room-a-probe",
                                      timeout=3) as device:
                reading = Telemetry(device_id="room-a-probe", timestamp=utcnow(),
                                    data={"temperature_c": 18.25, "co2_ppm": 812})
                await device.publish(topic, dump(reading), qos=1)
            break
        except aiomqtt.MqttError:
            assert time.monotonic() - started < 10, "the edge broker never took the device"
            await asyncio.sleep(0.2)
    logged_in = time.monotonic() - started
    print(f"a device registered in the cloud logged in to the edge after {logged_in:.2f} s")
    assert logged_in < 5, f"the device could log in after {logged_in:.1f} s"
    # ... and its first reading reaches PostgreSQL.
    stored = await until(lambda: the_cloud.rows(
        "SELECT metric, value FROM sensor_data WHERE device_id = 'room-a-probe'"), 10,
        "the new device's reading in the cloud")
    assert {(r["metric"], r["value"]) for r in stored} == {
        ("temperature_c", 18.25), ("co2_ppm", 812.0)}
    await drained(the_cloud, edge.settings.db_path, EDGE_ID, 10)
    await run.stop()
    counted = await tally(the_cloud, edge.settings.db_path, EDGE_ID, reg.farm_id)
    counted.assert_exactly_once()


async def _at_least(the_cloud: Cloud, version: int) -> int:
    found = await applied(the_cloud)
    return found if found >= version else 0
