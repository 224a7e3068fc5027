"""A real edge site in a temp folder: config, credentials, free ports; edge and simulator
run in-process or as processes, against the embedded amqtt broker."""
from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from edge.config import EdgeSettings, load_config
from edge.site_init import init_site
from shared.rules import Safety
from tests.conftest import free_port

ONE_ROOM = (("room-a", "Room A", "oyster", "fruiting"),)


def make_site(
    directory: Path, farm_id: str, rooms: tuple[tuple[str, str, str, str], ...] = ONE_ROOM,
    extra_toml: str = "",
) -> Path:
    config_path, _ = init_site(
        directory, farm_id=farm_id, broker_port=free_port(), api_port=free_port(), rooms=rooms
    )
    if extra_toml:
        config_path.write_text(config_path.read_text() + "\n" + extra_toml)
    return config_path


def fast_settings(config_path: Path) -> EdgeSettings:
    """The site's settings with timings shrunk for accelerated tests."""
    settings = load_config(config_path)
    settings.automation.tick_s = 0.5
    settings.automation.command_timeout_s = 1.0
    settings.automation.command_retries = 1
    settings.store.commit_interval_ms = 50
    for device in settings.devices:
        if device.kind == "actuator":
            # The physics runs 60x faster than the edge's clock: real-time min on/off would
            # stretch to hours of simulated time.
            device.safety = Safety()
    return settings


def query(db_path: Path, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
