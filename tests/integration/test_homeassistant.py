"""Home Assistant MQTT discovery against the machine's Mosquitto (127.0.0.1:1883) as the external
broker: the retained configs as HA would read them, an HA switch command reaching the actuator
through the edge, and removed devices cleared. Unique farm id and discovery prefix per test."""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge.app import EdgeApp
from edge.config import ConfigError, load_config
from edge.homeassistant import SENSORS
from shared.models import KNOWN_METRICS
from tests.e2e.conftest import fast_settings, make_site, query, wait_for

pytestmark = pytest.mark.mosquitto

HOST, PORT = "127.0.0.1", 1883


class Watcher:
    """A plain MQTT client (as HA would be) that keeps the last payload seen per topic."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.last: dict[str, bytes] = {}
        self.seen: list[tuple[str, bytes]] = []

    async def collect(self) -> None:
        async for message in self.client.messages:
            payload = bytes(message.payload)  # type: ignore[arg-type]
            self.last[message.topic.value] = payload
            self.seen.append((message.topic.value, payload))

    def configs(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {t: json.loads(p) for t, p in self.last.items()
                if t.startswith(prefix + "/") and t.endswith("/config") and p}


@contextlib.asynccontextmanager
async def watching(*filters: str) -> AsyncIterator[Watcher]:
    async with aiomqtt.Client(HOST, PORT, identifier=f"ha-test-{uuid.uuid4().hex[:8]}") as client:
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=1)
        watcher = Watcher(client)
        task = asyncio.create_task(watcher.collect())
        try:
            yield watcher
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def clear_retained(prefix: str, farm_id: str) -> None:
    """Remove every retained message this test left on the shared broker."""
    async with watching(f"{prefix}/#", f"farm/{farm_id}/#") as watcher:
        await asyncio.sleep(0.5)
        retained = [t for t, p in watcher.last.items() if p]
        for topic in retained:
            await watcher.client.publish(topic, b"", qos=1, retain=True)


@pytest.fixture
def prefix() -> str:
    return f"hatest{uuid.uuid4().hex[:10]}"


async def test_discovery_configs_commands_and_removal(
    tmp_path: Path, farm_id: str, prefix: str
) -> None:
    config_path = make_site(tmp_path / "site", farm_id, extra_toml="")
    text = config_path.read_text().replace('mode = "embedded"', 'mode = "external"\nurl = '
                                           f'"mqtt://{HOST}:{PORT}"')
    config_path.write_text(text + f'\n[home_assistant]\nenabled = true\n'
                                  f'discovery_prefix = "{prefix}"\n')
    settings = fast_settings(config_path)
    node = f"smartfarm_{farm_id}"
    app = EdgeApp(settings)
    stop = asyncio.Event()
    edge = asyncio.create_task(app.run(stop))
    try:
        async with watching(f"{prefix}/#", f"farm/{farm_id}/#") as ha:
            assert app.home_assistant is not None
            await wait_for(lambda: app.home_assistant.connected.is_set(), 20,  # type: ignore[union-attr]
                           "the discovery connection")
            sensors = [d for d in settings.devices if d.kind == "sensor"]
            actuators = [d for d in settings.devices if d.kind == "actuator"]
            expected = len(sensors) * len(KNOWN_METRICS) + len(actuators)
            await wait_for(lambda: len(ha.configs(prefix)) == expected, 10,
                           f"{expected} discovery configs")
            configs = ha.configs(prefix)
            assert ha.last[f"farm/{farm_id}/ha/availability"] == b"online"

            humidity = configs[f"{prefix}/sensor/{node}/room-a-sensor_humidity_pct/config"]
            assert humidity["state_topic"] == f"farm/{farm_id}/room/room-a/telemetry/room-a-sensor"
            assert humidity["unit_of_measurement"] == "%"
            assert humidity["device_class"] == "humidity"
            assert humidity["unique_id"] == f"{node}_room-a-sensor_humidity_pct"
            assert "humidity_pct" in humidity["value_template"]
            assert "value_json.data" in humidity["value_template"]
            assert humidity["availability_topic"] == f"farm/{farm_id}/ha/availability"
            assert humidity["device"]["manufacturer"] == "smartfarm"
            assert humidity["device"]["identifiers"] == [f"{node}_room-a-sensor"]
            assert humidity["device"]["model"] == "sensor node"
            assert humidity["expire_after"] == round(settings.automation.stale_after_s)
            for metric, (_name, unit, device_class) in SENSORS.items():
                config = configs[f"{prefix}/sensor/{node}/room-a-sensor_{metric}/config"]
                assert config.get("unit_of_measurement") == unit
                assert config.get("device_class") == device_class

            heater = configs[f"{prefix}/switch/{node}/room-a-heater_power/config"]
            command_topic = f"farm/{farm_id}/ha/room-a-heater/set"
            assert heater["command_topic"] == command_topic
            assert heater["state_topic"] == f"farm/{farm_id}/room/room-a/status/room-a-heater"
            assert heater["payload_on"] == "ON"
            assert heater["device"]["model"] == "heater actuator"
            assert heater["unique_id"] == f"{node}_room-a-heater_power"
            ids = [c["unique_id"] for c in configs.values()]
            assert len(ids) == len(set(ids))

            # HA switches the heater on: the edge sends a tracked manual command to the device.
            device_topic = f"farm/{farm_id}/room/room-a/command/room-a-heater"
            await wait_for(lambda: app.broker_connected.is_set(), 20, "the edge's broker link")
            sent_before = len([t for t, _ in ha.seen if t == device_topic])
            await ha.client.publish(command_topic, b"ON", qos=1)
            commands = await wait_for(
                lambda: [json.loads(p) for t, p in ha.seen[sent_before:] if t == device_topic
                         and json.loads(p)["action"] == "on"], 10, "the heater command")
            command = commands[-1]  # type: ignore[index]
            rows = await wait_for(lambda: query(
                settings.db_path, "SELECT source, reason FROM commands WHERE command_id = ?",
                (command["command_id"],)), 10, "the command row")
            assert rows[0]["source"] == "manual"  # type: ignore[index]
            assert "home-assistant" in rows[0]["reason"]  # type: ignore[index]
            override = app.automation.actuators["room-a-heater"].override
            assert override is not None and override.on and override.by == "home-assistant"
            # Nonsense from HA is ignored, and the edge keeps going.
            await ha.client.publish(command_topic, b"MAYBE", qos=1)
            await ha.client.publish(f"farm/{farm_id}/ha/room-a-sensor/set", b"ON", qos=1)

            # A device removed from the config: its configs are cleared (empty retained).
            removed = "room-a-light"
            settings.devices = [d for d in settings.devices if d.id != removed]
            gone = f"{prefix}/switch/{node}/{removed}_power/config"
            await wait_for(lambda: ha.last.get(gone) == b"", 10, "the removed config cleared")
            assert gone not in ha.configs(prefix)
            assert len(ha.configs(prefix)) == expected - 1
        # A restart republishes, and clears what the earlier run left for a device now gone.
        stop.set()
        await asyncio.wait_for(edge, 15)
        async with watching(f"farm/{farm_id}/ha/availability") as watcher:
            await wait_for(lambda: watcher.last.get(f"farm/{farm_id}/ha/availability"), 5,
                           "the retained availability")
            assert watcher.last[f"farm/{farm_id}/ha/availability"] == b"offline"
        # Put a stale config back, as if an earlier run had published it.
        async with watching() as watcher:
            await watcher.client.publish(gone, b'{"name":"stale"}', qos=1, retain=True)
        fresh = fast_settings(config_path)
        fresh.devices = [d for d in fresh.devices if d.id != removed]
        app = EdgeApp(fresh)
        stop = asyncio.Event()
        edge = asyncio.create_task(app.run(stop))
        async with watching(f"{prefix}/#") as ha:
            await wait_for(lambda: app.home_assistant is not None
                           and app.home_assistant.connected.is_set(), 20, "the second run")
            await wait_for(lambda: gone not in ha.configs(prefix), 10, "the stale config cleared")
            assert len(ha.configs(prefix)) == expected - 1
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(edge, 15)
        await clear_retained(prefix, farm_id)


def test_home_assistant_needs_an_external_broker(tmp_path: Path, farm_id: str) -> None:
    config_path = make_site(tmp_path / "site", farm_id)
    config_path.write_text(config_path.read_text() + "\n[home_assistant]\nenabled = true\n")
    needs = re.escape('home_assistant.enabled needs broker.mode = "external"')
    with pytest.raises(ConfigError, match=needs):
        load_config(config_path)


def test_discovery_prefix_is_checked(tmp_path: Path, farm_id: str) -> None:
    config_path = make_site(tmp_path / "site", farm_id)
    config_path.write_text(config_path.read_text()
                           + '\n[home_assistant]\ndiscovery_prefix = "home/#"\n')
    with pytest.raises(ConfigError, match=re.escape("home_assistant.discovery_prefix")):
        load_config(config_path)
