"""A device may acknowledge only commands sent to it: the edge matches an ack on the command id
AND the device that sent it (its topic). An ack from another device is quarantined with the
reason and counted, and the command stays pending until its own device answers. Through the
embedded broker, with devices connecting as aiomqtt clients."""
from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiomqtt

from edge.credentials import DeviceSecrets
from shared.topics import build_topic
from tests.e2e.conftest import fast_settings, make_site, wait_for

TARGET, INTRUDER = "room-a-humidifier", "room-a-fan"


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def state(db: Path, command_id: str) -> str | None:
    found = rows(db, "SELECT state FROM commands WHERE command_id = ?", (command_id,))
    return str(found[0][0]) if found else None


async def ack_as(settings: Any, device_id: str, command_id: str) -> None:
    password = DeviceSecrets.load(settings.device_secrets_path).devices[device_id]
    async with aiomqtt.Client("127.0.0.1", settings.broker.port, username=device_id,
                              password=password, identifier=f"{device_id}-acks",
                              timeout=10) as client:
        topic = build_topic(settings.farm_id, "room-a", "ack", device_id)
        payload = {"command_id": command_id, "status": "ok", "device_id": device_id}
        await client.publish(topic, json.dumps(payload).encode(), qos=1)


async def test_an_ack_from_another_device_is_quarantined_and_the_command_stays_pending(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    settings.automation.command_timeout_s = 30  # stays pending for the whole test
    settings.automation.tick_s = 3600  # no automation commands meanwhile
    app = await running_edge(settings)
    db = settings.db_path
    # At start the edge re-asserts every actuator's state: the humidifier's command waits for
    # its ack.
    found = await wait_for(lambda: rows(
        db, "SELECT command_id FROM commands WHERE device_id = ? AND state = 'pending'",
        (TARGET,)), 10, "the boot command to the humidifier")
    command_id = str(found[0][0])  # type: ignore[index]

    await ack_as(settings, INTRUDER, command_id)
    reason = (f"ack for command {command_id} from device {INTRUDER}, which was sent to"
              f" {TARGET}")
    await wait_for(lambda: rows(db, "SELECT 1 FROM quarantine WHERE reason LIKE ?",
                                (reason + "%",)), 10, "the intruder's ack quarantined")
    assert app.commands.stats.wrong_device_acks == 1
    await asyncio.sleep(0.5)
    assert state(db, command_id) == "pending"
    topic = rows(db, "SELECT topic FROM quarantine WHERE reason LIKE ?", (reason + "%",))[0][0]
    assert topic == "" or topic.endswith(f"/ack/{INTRUDER}")

    # Its own device's ack settles it.
    await ack_as(settings, TARGET, command_id)
    await wait_for(lambda: state(db, command_id) == "acked", 10, "the command acked")
    assert app.commands.stats.wrong_device_acks == 1
