"""Two real cloud processes (``smartfarm cloud serve``) behind a round-robin proxy, SIGKILLed and
restarted while an edge drains its backlog into them: one instance at a time (the other carries
on), then both at once (the whole cloud restarts). A kill lands as a batch reaches the instance,
so some die mid-transaction (PostgreSQL rolls it back), some after the commit. PostgreSQL ends up
with every seq once, and the edge's down stream finds its way back to a live instance."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import pytest

from bench.sync_drain import queue_readings
from edge.config import load_config
from firmware_sim.farm import build_farm
from tests.chaos.conftest import (
    Cloud,
    CloudProcess,
    drained,
    fast_settings,
    make_site,
    register_edge,
    tally,
    until,
)
from tests.chaos.proxy import FaultProxy

pytestmark = pytest.mark.postgres

EDGE_ID = "edge-restarts"
# Which instances die together, in order: each alone, both, then each alone again.
PLAN = (("a",), ("b",), ("a", "b"), ("b",), ("a",))


async def test_cloud_instances_killed_and_restarted_during_uploads(
    cloud: Any, tmp_path: Path, farm_id: str, edge_app: Any
) -> None:
    the_cloud: Cloud = await cloud(instance=False, command_ttl_s=60)
    rnd = random.Random(1999)
    procs = {"a": the_cloud.spawn(), "b": the_cloud.spawn()}
    for proc in procs.values():
        await the_cloud.ready(proc.url)
    the_cloud.url = procs["a"].url  # the user's way in (also restarted)
    await the_cloud.sign_in()
    async with FaultProxy([p.url for p in procs.values()]) as proxy:
        config = make_site(tmp_path / "site", farm_id)
        reg = await the_cloud.provision(load_config(config), EDGE_ID)
        register_edge(config, proxy.url, reg, batch_max_records=300)
        settings = fast_settings(config)
        queue_readings(settings.db_path, [("room-a-sensor", "room-a")], 30_000,
                       metrics=("co2_ppm", "humidity_pct"))
        run = await edge_app(settings)
        edge = run.app
        farm = build_farm(settings, speed=60, telemetry_interval_s=2, seed=21)
        stop = asyncio.Event()
        sim = asyncio.create_task(farm.run(stop))
        killed: list[tuple[str, ...]] = []
        try:
            for names in PLAN:
                await _kill_during_uploads(proxy, [procs[n] for n in names], rnd)
                killed.append(names)
                for name in names:  # restarted on the same address
                    procs[name] = the_cloud.spawn(procs[name].port)
                for name in names:
                    await the_cloud.ready(procs[name].url)
            # The backlog was still draining at the last kill.
            assert edge.uplink is not None and edge.uplink.stats.attempts_failed > 0
            # The down stream is back on a live instance: a command goes through.
            await until(lambda: all(a.received for a in farm.actuators.values()), 20,
                        "the actuators online")
            made = await the_cloud.api("POST", "/api/rooms/room-a/commands",
                                       {"device_id": "room-a-heater", "action": "on"})
            await until(lambda: _acked(the_cloud, made["id"]), 30, "a command after the kills")
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sim, 10)
        await drained(the_cloud, settings.db_path, EDGE_ID, 60)
        await run.stop()
        counted = await tally(the_cloud, settings.db_path, EDGE_ID, reg.farm_id)
    print(counted.summary(), proxy.stats, sep="\n")
    counted.assert_exactly_once()
    assert killed == list(PLAN)
    assert proxy.stats.upstream_errors > 0  # requests did die with their instance
    assert counted.readings > 30_000, counted.summary()


async def _kill_during_uploads(
    proxy: FaultProxy, victims: list[CloudProcess], rnd: random.Random
) -> None:
    """SIGKILL ``victims`` when a batch reaches the first of them, 0-40 ms into it."""
    done = asyncio.Event()
    urls = {v.url for v in victims}
    after = rnd.randint(1, 3)
    seen = 0

    def now() -> None:
        for victim in victims:
            victim.kill()
        done.set()

    async def on_request(path: str, upstream: str) -> None:
        nonlocal seen
        if path.endswith("/batches") and upstream in urls and not done.is_set():
            seen += 1
            if seen == after:
                asyncio.get_running_loop().call_later(rnd.uniform(0.0, 0.04), now)

    proxy.on_request = on_request
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        proxy.on_request = None


async def _acked(the_cloud: Cloud, command_id: str) -> bool:
    try:
        answer = await the_cloud.api("GET", f"/api/rooms/room-a/commands/{command_id}")
    except (AssertionError, OSError):
        return False
    return bool(answer["status"] == "acked")
