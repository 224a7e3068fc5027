"""Outages between a real edge and the real cloud: the cloud gone for a stretch in the middle of a
run (the edge keeps the farm going and catches up, nothing lost or doubled), and the edge cut off
while users keep issuing commands in the cloud (fresh ones delivered on reconnect, stale ones
expired, by the cloud or by the edge, never executed)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from firmware_sim.farm import build_farm
from tests.chaos.conftest import (
    Cloud,
    drained,
    edge_query,
    fast_settings,
    make_site,
    register_edge,
    tally,
    until,
)
from tests.chaos.proxy import FaultProxy

pytestmark = pytest.mark.postgres


async def test_cloud_down_mid_run_then_back(
    cloud: Any, tmp_path: Path, farm_id: str, edge_app: Any
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    url = the_cloud.url
    port = int(url.rsplit(":", 1)[1])
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), "edge-outage")
    register_edge(config, url, reg)
    settings = fast_settings(config)
    run = await edge_app(settings)
    edge = run.app
    assert edge.uplink is not None and edge.outbox is not None
    farm = build_farm(settings, speed=60, telemetry_interval_s=1, seed=5)
    stop = asyncio.Event()
    sim = asyncio.create_task(farm.run(stop))
    db = settings.db_path
    try:
        await until(lambda: the_cloud.high_water("edge-outage"), 10, "uploads before the outage")
        # The cloud goes away (its port closes: connection refused, the stream drops).
        await the_cloud.stop(url)
        down_at = time.monotonic()
        readings_before = edge_query(db, "SELECT count(*) FROM readings")[0][0]
        await until(_failing(edge), 10, "the uplink to notice")
        await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))
        # Offline, the edge kept ingesting and its page shows the backlog growing.
        status = await edge.sync_status()
        assert edge_query(db, "SELECT count(*) FROM readings")[0][0] > readings_before + 50
        assert status["backlog_records"] > 50 and status["oldest_unsent_at"] is not None
        assert status["last_error"] and status["downlink"]["mode"] in ("connecting", "poll")
        # Back on the same address.
        await the_cloud.start(port)
        await until(lambda: _caught_up(edge), 20, "the backlog uploaded")
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sim, 10)
    await drained(the_cloud, db, "edge-outage", 20)
    await run.stop()
    counted = await tally(the_cloud, db, "edge-outage", reg.farm_id)
    print(counted.summary(), edge.uplink.stats, sep="\n")
    counted.assert_exactly_once()
    assert edge.uplink.stats.attempts_failed > 0
    assert counted.readings > 100, counted.summary()


def _failing(edge: Any) -> Any:
    async def check() -> dict[str, Any] | None:
        status: dict[str, Any] = await edge.sync_status()
        return status if status["failures_in_row"] > 0 else None
    return check


async def _caught_up(edge: Any) -> bool:
    status = await edge.sync_status()
    return bool(status["failures_in_row"] == 0 and status["backlog_records"] < 50)


async def test_commands_while_the_edge_is_offline(
    cloud: Any, tmp_path: Path, farm_id: str, edge_app: Any
) -> None:
    # The cloud expires what it could not deliver within 3 s; the edge refuses what is older
    # than 1 s when it finally arrives (its clock is the judge of a command it is handed late).
    the_cloud: Cloud = await cloud(command_ttl_s=3, expiry_sweep_s=0.3)
    async with FaultProxy([the_cloud.url]) as proxy:
        config = make_site(tmp_path / "site", farm_id)
        reg = await the_cloud.provision(load_config(config), "edge-offline")
        register_edge(config, proxy.url, reg, command_ttl_s=1.0, pending_poll_s=0.1)
        settings = fast_settings(config)
        run = await edge_app(settings)
        edge = run.app
        assert edge.downlink is not None and edge.outbox is not None
        farm = build_farm(settings, speed=60, telemetry_interval_s=5, seed=9)
        stop = asyncio.Event()
        sim = asyncio.create_task(farm.run(stop))
        try:
            await until(lambda: all(a.received for a in farm.actuators.values())
                        and not edge.commands.pending_count(), 20, "the actuators online")
            await until(lambda: edge.downlink.stats.mode == "stream", 10, "the stream")
            seen = {d: len(a.received) for d, a in farm.actuators.items()}
            await proxy.set_down(True)  # the farm's internet link is down
            await until(lambda: edge.downlink.stats.mode != "stream", 5, "the stream to drop")

            async def command(device: str) -> str:
                made = await the_cloud.api("POST", "/api/rooms/room-a/commands",
                                           {"device_id": device, "action": "on"})
                return str(made["id"])

            started = time.monotonic()
            stale = await command("room-a-light")  # older than the cloud's TTL on reconnect
            await asyncio.sleep(1.8)
            late = await command("room-a-fan")  # within the cloud's TTL, past the edge's
            await asyncio.sleep(max(0.0, 3.4 - (time.monotonic() - started)))
            fresh = await command("room-a-heater")
            await until(lambda: _status(the_cloud, stale, "expired"), 5, "the cloud's expiry")
            assert await _status(the_cloud, late, "pending")
            await proxy.set_down(False)

            await until(lambda: _status(the_cloud, fresh, "acked"), 10, "the fresh command")
            await until(lambda: _status(the_cloud, late, "expired"), 10, "the edge's refusal")
            gone = await the_cloud.api("GET", f"/api/rooms/room-a/commands/{late}")
            assert "expired" in (gone["error"] or ""), gone
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sim, 10)
        # The fresh command reached its actuator; the stale and late ones reached nothing.
        assert len(farm.actuators["room-a-heater"].received) > seen["room-a-heater"]
        executed = edge_query(settings.db_path,
                              "SELECT c.cloud_command_id FROM cloud_commands c"
                              " JOIN commands e ON e.command_id = c.command_id")
        assert [r[0] for r in executed] == [fresh]
        linked = dict(edge_query(settings.db_path,
                                 "SELECT cloud_command_id, state FROM cloud_commands"))
        assert linked == {fresh: "delivered", late: "expired"}  # the stale one never came
        assert edge.downlink.stats.expired == 1
        rows = edge_query(settings.db_path, "SELECT source FROM commands WHERE source = 'cloud'")
        assert len(rows) == 1
        await drained(the_cloud, settings.db_path, "edge-offline", 20)
        await run.stop()
        counted = await tally(the_cloud, settings.db_path, "edge-offline", reg.farm_id)
        print(counted.summary(), edge.downlink.stats, sep="\n")
        counted.assert_exactly_once()


async def _status(the_cloud: Cloud, command_id: str, want: str) -> bool:
    answer = await the_cloud.api("GET", f"/api/rooms/room-a/commands/{command_id}")
    return bool(answer["status"] == want)
