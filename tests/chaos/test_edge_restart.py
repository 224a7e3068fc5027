"""The edge as a real process: SIGKILL under load leaves a sound database and timers resume;
SIGTERM drains every accepted reading to disk."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt

from edge.config import load_config
from edge.credentials import DeviceSecrets
from firmware_sim.farm import build_farm
from shared.models import Telemetry, dump
from shared.topics import build_topic
from tests.e2e.conftest import make_site, wait_for

SLOW_RULE = """
[[rooms.rules]]
id = "room-a-slow-light"
room_id = "room-a"
actuator = "room-a-light"
type = "threshold"
metric = "light_lux"
on_below = 100000
off_above = 120000
for_s = 3600
"""


def start_edge(config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "smartfarm_cli", "edge", "run", "--config", str(config)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
        env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[2],
    )


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def pending_since(db: Path) -> str | None:
    try:
        found = rows(db, "SELECT value FROM automation_state WHERE key = 'rule:room-a-slow-light'")
    except sqlite3.OperationalError:
        return None
    return json.loads(found[0][0])["pending_since"] if found else None


async def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"nothing listening on {port} after {timeout} s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


async def test_sigkill_under_load_then_restart(tmp_path, farm_id):
    config = make_site(tmp_path / "site", farm_id, extra_toml=SLOW_RULE)
    settings = load_config(config)
    db = settings.db_path
    log = tmp_path / "edge.log"
    proc = start_edge(config, log)
    stop = asyncio.Event()
    sim: asyncio.Task[None] | None = None
    try:
        await wait_port(settings.broker.port)
        # ~100 readings/s: the simulated sensor reports every simulated second at 100x.
        farm = build_farm(settings, speed=100, telemetry_interval_s=1, seed=5)
        sim = asyncio.create_task(farm.run(stop))
        since = await wait_for(lambda: pending_since(db), 20, "the 'for' timer to be persisted")
        await wait_for(lambda: rows(db, "SELECT count(*) FROM readings")[0][0] > 300, 20,
                       "readings under load")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before = rows(db, "SELECT count(*) FROM readings")[0][0]
        assert rows(db, "PRAGMA integrity_check") == [("ok",)]

        proc = start_edge(config, log)
        await wait_for(lambda: rows(db, "SELECT count(*) FROM readings")[0][0] > before + 50,
                       30, "the restarted edge to store new readings")
        # The timer resumed from its persisted start instead of starting over.
        assert pending_since(db) == since
        assert datetime.fromisoformat(since) < datetime.now(UTC) - timedelta(seconds=1)
    finally:
        stop.set()
        if sim is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sim, 10)
        stop_process(proc)
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert "Traceback" not in log.read_text()


async def test_sigterm_drains_every_accepted_reading(tmp_path, farm_id):
    config = make_site(tmp_path / "site", farm_id)
    settings = load_config(config)
    secrets = DeviceSecrets.load(settings.device_secrets_path)
    log = tmp_path / "edge.log"
    # A long commit interval: at SIGTERM most readings are still queued in memory.
    proc = start_edge(config, log, SMARTFARM_EDGE_STORE__COMMIT_INTERVAL_MS="8000")
    sent = 500
    try:
        await wait_port(settings.broker.port)
        await asyncio.sleep(1.0)  # let the edge subscribe
        topic = build_topic(farm_id, "room-a", "telemetry", "room-a-sensor")
        start = datetime.now(UTC) - timedelta(minutes=10)
        async with aiomqtt.Client("127.0.0.1", settings.broker.port, username="room-a-sensor",
                                  password=secrets.devices["room-a-sensor"]) as client:
            for i in range(sent):
                tel = Telemetry(device_id="room-a-sensor",
                                timestamp=start + timedelta(seconds=i),
                                data={"humidity_pct": 80 + i % 10, "temperature_c": 18})
                await client.publish(topic, dump(tel), qos=1)
        await asyncio.sleep(1.0)  # delivered to the edge's subscriber, not yet committed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop_process(proc)
    assert rows(settings.db_path, "SELECT count(*) FROM readings")[0][0] == sent
    assert "edge stopped; store closed cleanly" in log.read_text()
