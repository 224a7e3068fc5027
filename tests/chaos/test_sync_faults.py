"""A faulty network between a real edge and two real cloud instances: 30 % of uploads fail (503,
a timeout after the cloud committed, a stale copy arriving after its retry, a connection cut
after the commit), and still every seq the edge gave out is in PostgreSQL exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from bench.sync_drain import queue_readings
from edge.config import load_config
from edge.credentials import edge_login
from firmware_sim.farm import build_farm
from shared.topics import build_topic
from tests.chaos.conftest import (
    Cloud,
    drained,
    fast_settings,
    make_site,
    register_edge,
    tally,
    until,
)
from tests.chaos.proxy import FaultProxy

pytestmark = pytest.mark.postgres

EDGE_ID = "edge-faults"
FAULTS = ("5xx", "timeout", "late", "cut")


async def publish_garbage(settings: Any, n: int) -> None:
    """Malformed telemetry on the sensor's topic (as the edge user, who may publish anything):
    each becomes a quarantine record with a seq of its own."""
    user, password = edge_login(settings)
    host, port = "127.0.0.1", settings.broker.port
    topic = build_topic(settings.farm_id, "room-a", "telemetry", "room-a-sensor")
    async with aiomqtt.Client(host, port, username=user, password=password,
                              identifier="garbage") as client:
        for i in range(n):
            await client.publish(topic, f"not json {i}".encode(), qos=1)


async def test_thirty_percent_faults_across_two_instances(
    cloud: Any, tmp_path: Path, farm_id: str, edge_app: Any
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    second = await the_cloud.start()
    # Seeded: the n-th upload meets the same fate in every run.
    rnd = random.Random(20240501)
    uploads = 0

    def faults(method: str, path: str) -> str | None:
        nonlocal uploads
        if not path.endswith("/batches"):
            return None
        uploads += 1
        return rnd.choice(FAULTS) if rnd.random() < 0.3 else None

    async with FaultProxy(list(the_cloud.runners), faults=faults, hold_s=1.2) as proxy:
        config = make_site(tmp_path / "site", farm_id)
        reg = await the_cloud.provision(load_config(config), EDGE_ID)
        register_edge(config, proxy.url, reg, batch_max_records=250, request_timeout_s=1.0)
        settings = fast_settings(config)
        # A backlog from before, and live traffic on top.
        queue_readings(settings.db_path, [("room-a-sensor", "room-a")], 8_000,
                       metrics=("co2_ppm", "humidity_pct"))
        run = await edge_app(settings)
        edge = run.app
        farm = build_farm(settings, speed=60, telemetry_interval_s=2, seed=3)
        stop = asyncio.Event()
        sim = asyncio.create_task(farm.run(stop))
        try:
            await publish_garbage(settings, 5)
            await until(lambda: all(a.received for a in farm.actuators.values()), 20,
                        "the actuators online")
            # Commands made through the other instance than the one holding the stream, as
            # often as not: they cross over by NOTIFY, and their acks come back up through
            # the faults.
            for device in ("room-a-heater", "room-a-light"):
                made = await the_cloud.api("POST", "/api/rooms/room-a/commands",
                                           {"device_id": device, "action": "on"}, url=second)
                path = f"/api/rooms/room-a/commands/{made['id']}"
                await until(lambda p=path: _status(the_cloud, p, "acked"), 20, f"{device} acked")
            await until(lambda: uploads >= 80, 60, "enough uploads")
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sim, 10)
        await drained(the_cloud, settings.db_path, EDGE_ID, 90)
        await run.stop()
        assert edge.uplink is not None
        counted = await tally(the_cloud, settings.db_path, EDGE_ID, reg.farm_id)
        print(counted.summary(), proxy.stats, edge.uplink.stats, sep="\n")
        counted.assert_exactly_once()
        stats = edge.uplink.stats
    # The faults really happened, each kind, and both instances took uploads.
    assert all(proxy.stats.faults[f] > 0 for f in FAULTS), proxy.stats.faults
    assert len([u for u, n in proxy.stats.by_upstream.items() if n > 0]) == 2
    assert stats.attempts_failed > 0 and stats.duplicates > 0, stats
    assert counted.readings >= 8_000 and counted.kinds["quarantine"] == 5, counted.summary()
    assert counted.kinds["command"] >= 2, counted.summary()


async def _status(the_cloud: Cloud, path: str, want: str) -> bool:
    answer = await the_cloud.api("GET", path)
    return bool(answer["status"] == want)
