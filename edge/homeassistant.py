"""Home Assistant MQTT discovery: the farm's sensors and actuators appear in HA on the same broker.

The edge publishes one retained config per sensor metric and per actuator under
``<prefix>/{sensor|switch}/smartfarm_<farm>/<device>_<object>/config``. HA reads state straight
from the devices' own topics (telemetry ``data``, status ``state.on``); a switch's command goes to
``farm/<farm>/ha/<device>/set`` ("ON"/"OFF"), which the edge turns into a manual command, the same
path the local page uses (override, tracking to the ack, safety limits). Configs are republished
on (re)connect, when HA announces itself (``<prefix>/status`` "online"), and when the device
list changes; a removed device's configs are cleared (empty retained payload), including ones
left by an earlier run. Its own connection (not ingest's), with a retained availability topic
and a last will.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Final

import aiomqtt

from edge.automation import Automation, InvalidRequest, NotFound
from edge.config import DeviceConfig, EdgeSettings
from edge.credentials import edge_login
from shared.backoff import Backoff
from shared.models import KNOWN_METRICS
from shared.mqtt_client import MqttClient
from shared.topics import build_topic
from shared.vocabulary import METRICS

log = logging.getLogger(__name__)

ORIGIN: Final = {"name": "smartfarm"}
# HA's own words for our metrics and roles (its device classes and icons); a metric or role
# missing here still gets an entity, without a class or with a generic icon.
DEVICE_CLASSES: Final[dict[str, str]] = {
    "temperature_c": "temperature", "humidity_pct": "humidity", "co2_ppm": "carbon_dioxide",
    "light_lux": "illuminance", "substrate_moisture": "moisture", "battery_v": "voltage",
}
ICONS: Final[dict[str, str]] = {"humidifier": "mdi:air-humidifier", "exhaust_fan": "mdi:fan",
                                "heater": "mdi:radiator", "light": "mdi:lightbulb"}
# metric → (friendly name, unit, HA device_class), names and units from shared's vocabulary.
SENSORS: Final[dict[str, tuple[str, str | None, str | None]]] = {
    m.name: (m.label, m.unit or None, DEVICE_CLASSES.get(m.name)) for m in METRICS.values()
}
SCAN_QUIET_S: Final = 0.5
SCAN_MAX_S: Final = 5.0


def _sensor_template(metric: str) -> str:
    # A reading without this metric keeps the entity's last state instead of blanking it.
    return (f"{{% set d = value_json.data | default({{}}) %}}"
            f"{{{{ d['{metric}'] if '{metric}' in d else this.state }}}}")


# A status without state.on renders "", which HA ignores (no state change).
SWITCH_TEMPLATE: Final = ("{% set s = value_json.state | default({}) %}"
                          "{{ ('ON' if s.on else 'OFF') if 'on' in s else '' }}")


class Discovery:
    """The topics and payloads for one farm: pure, no I/O."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        farm = settings.farm_id
        self.prefix = settings.home_assistant.discovery_prefix
        self.node = f"smartfarm_{farm}"
        self.availability = f"farm/{farm}/ha/availability"
        self.command_filter = f"farm/{farm}/ha/+/set"
        self.config_filter = f"{self.prefix}/+/{self.node}/+/config"
        self.ha_status = f"{self.prefix}/status"

    def command_topic(self, device_id: str) -> str:
        return f"farm/{self.settings.farm_id}/ha/{device_id}/set"

    def device_of_command(self, topic: str) -> str | None:
        parts = topic.split("/")
        if len(parts) == 5 and parts[:3] == ["farm", self.settings.farm_id, "ha"] \
                and parts[4] == "set":
            return parts[3]
        return None

    def owns(self, topic: str) -> bool:
        parts = topic.split("/")
        return (topic.startswith(self.prefix + "/") and len(parts) >= 4
                and parts[-3] == self.node and parts[-1] == "config")

    def _device_info(self, device: DeviceConfig) -> dict[str, Any]:
        room = self.settings.room(device.room)
        model = "sensor node" if device.kind == "sensor" else f"{device.actuator} actuator"
        return {
            "identifiers": [f"{self.node}_{device.id}"],
            "name": device.name or device.id,
            "manufacturer": "smartfarm",
            "model": model,
            "suggested_area": (room.name or room.id) if room is not None else device.room,
        }

    def configs(self) -> dict[str, bytes]:
        """Every discovery topic this farm should have, with its retained payload."""
        out: dict[str, bytes] = {}
        farm = self.settings.farm_id
        common = {"availability_topic": self.availability, "payload_available": "online",
                  "payload_not_available": "offline", "origin": ORIGIN}
        for device in self.settings.devices:
            info = self._device_info(device)
            if device.kind == "sensor":
                state_topic = build_topic(farm, device.room, "telemetry", device.id)
                for metric in KNOWN_METRICS:
                    name, unit, device_class = SENSORS.get(metric, (metric, None, None))
                    config: dict[str, Any] = {
                        "name": name,
                        "unique_id": f"{self.node}_{device.id}_{metric}",
                        "state_topic": state_topic,
                        "value_template": _sensor_template(metric),
                        "state_class": "measurement",
                        # Readings this old never drive the automation; HA shows them as gone.
                        "expire_after": max(1, round(self.settings.automation.stale_after_s)),
                        "device": info, **common,
                    }
                    if unit is not None:
                        config["unit_of_measurement"] = unit
                    if device_class is not None:
                        config["device_class"] = device_class
                    if not METRICS[metric].room:  # the node's own health, not the room's
                        config["entity_category"] = "diagnostic"
                    out[f"{self.prefix}/sensor/{self.node}/{device.id}_{metric}/config"] = (
                        _dump(config))
            else:
                config = {
                    "name": None,  # the device's name: one switch per actuator
                    "unique_id": f"{self.node}_{device.id}_power",
                    "command_topic": self.command_topic(device.id),
                    "state_topic": build_topic(farm, device.room, "status", device.id),
                    "value_template": SWITCH_TEMPLATE,
                    "payload_on": "ON", "payload_off": "OFF",
                    "state_on": "ON", "state_off": "OFF",
                    "device_class": "switch",
                    "icon": ICONS.get(str(device.actuator), "mdi:power"),
                    "qos": 1,
                    "device": info, **common,
                }
                out[f"{self.prefix}/switch/{self.node}/{device.id}_power/config"] = _dump(config)
        return out


def _dump(config: dict[str, Any]) -> bytes:
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()


class HomeAssistantBridge:
    """Keeps the discovery configs current and forwards HA switch commands; ``run()`` forever."""

    def __init__(
        self,
        settings: EdgeSettings,
        automation: Automation,
        address: Callable[[], tuple[str, int]],
        *,
        poll_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.discovery = Discovery(settings)
        self._automation = automation
        self._address = address
        self._poll_s = poll_s
        self._published: dict[str, bytes] = {}
        self._sync_lock = asyncio.Lock()
        self.connected = asyncio.Event()
        self.commands_forwarded = 0

    async def run(self) -> None:
        backoff = Backoff(0.5, 30.0)
        d = self.discovery
        while True:
            host, port = self._address()
            try:
                username, password = edge_login(self.settings)
                async with MqttClient(
                    host, port, username=username, password=password,
                    identifier=f"smartfarm-edge-{self.settings.farm_id}-ha",
                    will=aiomqtt.Will(d.availability, b"offline", qos=1, retain=True),
                    clean_session=True, keepalive=self.settings.broker.keepalive_s,
                ) as client:
                    backoff.reset()
                    try:
                        await self._session(client)
                    except asyncio.CancelledError:  # the edge stops: say so before leaving
                        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                            async with asyncio.timeout(2):
                                await client.publish(d.availability, b"offline", qos=1,
                                                     retain=True)
                        raise
                    finally:
                        self.connected.clear()
            except aiomqtt.MqttError as exc:
                log.warning("Home Assistant discovery: MQTT %s:%d lost (%s)", host, port, exc)
            except Exception:  # never take the farm down for an integration
                log.exception("Home Assistant discovery failed")
            delay = backoff.delay()
            log.info("Home Assistant discovery: reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        d = self.discovery
        self._published = await self._retained_configs(client)
        await client.subscribe(d.command_filter, qos=1)
        await client.subscribe(d.ha_status, qos=1)
        await client.publish(d.availability, b"online", qos=1, retain=True)
        await self.sync(client, force=True)
        self.connected.set()
        log.info("Home Assistant discovery: %d config(s) under %s/…/%s",
                 len(self._published), d.prefix, d.node)
        # Not a TaskGroup: the connection's MqttError must reach run() as itself, not a group.
        tasks = {asyncio.create_task(self._watch_devices(client), name="ha-devices"),
                 asyncio.create_task(self._messages(client), name="ha-commands")}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # the error that ended the session

    async def _retained_configs(self, client: aiomqtt.Client) -> dict[str, bytes]:
        """What an earlier run left retained under our node (to clear removed devices)."""
        d = self.discovery
        found: dict[str, bytes] = {}
        await client.subscribe(d.config_filter, qos=1)
        messages = aiter(client.messages)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SCAN_MAX_S
        while loop.time() < deadline:
            try:
                async with asyncio.timeout(SCAN_QUIET_S):
                    message = await anext(messages)
            except TimeoutError:
                break
            payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) \
                else b""
            if d.owns(message.topic.value) and payload:
                found[message.topic.value] = payload
        await client.unsubscribe(d.config_filter)
        return found

    async def sync(self, client: aiomqtt.Client, *, force: bool = False) -> None:
        """Publish configs that are new or changed (all with ``force``); clear removed ones."""
        async with self._sync_lock:  # the device watcher and HA's birth message both sync
            wanted = self.discovery.configs()
            for topic in sorted(set(self._published) - set(wanted)):
                await client.publish(topic, b"", qos=1, retain=True)
                log.info("Home Assistant discovery: cleared %s", topic)
            for topic, payload in wanted.items():
                if force or self._published.get(topic) != payload:
                    await client.publish(topic, payload, qos=1, retain=True)
            self._published = wanted

    def _signature(self) -> tuple[Any, ...]:
        s = self.settings
        return (tuple((d.id, d.room, d.kind, d.actuator, d.name) for d in s.devices),
                tuple((r.id, r.name) for r in s.rooms))

    async def _watch_devices(self, client: aiomqtt.Client) -> None:
        # Polled: devices change through the TOML watcher and through the cloud's config.
        seen = self._signature()
        while True:
            await asyncio.sleep(self._poll_s)
            current = self._signature()
            if current != seen:
                seen = current
                await self.sync(client)

    async def _messages(self, client: aiomqtt.Client) -> None:
        d = self.discovery
        async for message in client.messages:
            topic = message.topic.value
            raw = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            text = bytes(raw).decode("utf-8", "replace").strip()
            if topic == d.ha_status:
                if text == "online":  # HA (re)started: it may have lost non-retained state
                    await self.sync(client, force=True)
                continue
            device_id = d.device_of_command(topic)
            if device_id is not None:
                await self._command(device_id, text)

    async def _command(self, device_id: str, text: str) -> None:
        action = {"ON": "on", "OFF": "off"}.get(text.upper())
        if action is None:
            log.warning("Home Assistant command for %s ignored: payload %r is not ON/OFF",
                        device_id, text[:40])
            return
        try:
            cid = await self._automation.manual_command(device_id, action, by="home-assistant")
        except (NotFound, InvalidRequest) as exc:
            log.warning("Home Assistant command for %s ignored: %s", device_id, exc)
            return
        self.commands_forwarded += 1
        log.info("Home Assistant: %s %s (command %s)", device_id, action, cid)
