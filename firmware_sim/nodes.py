"""Simulated ESP32 nodes: MQTT clients that speak exactly the wire formats of ``shared.models``.

A SensorNode publishes its room's readings as telemetry; an ActuatorNode takes commands on its
command topic, drives the room's physics through an ActuatorBank, acks and reports status. Each
node logs in as its device id and reconnects with jittered exponential backoff.

Every node takes an ``ota`` command (``edge.firmware``): it acks it, downloads the image from the
offered URL, checks its size, MD5 and SHA-256 and, when they match, "flashes" it: from then on
its status reports ``smartfarm-sim/<version>`` (a real node reboots in between: its last will
says offline, then it reconnects). A failed update keeps the old firmware (``ota_log`` says why).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
from collections import OrderedDict
from typing import Any, Final, Literal

import aiohttp
import aiomqtt

from firmware_sim.clock import Clock, RealClock
from firmware_sim.faults import FaultInjector, FaultPlan
from firmware_sim.physics import ROLES, ActuatorBank, Room
from shared.errors import PayloadError
from shared.models import (
    Ack,
    Command,
    FirmwareOffer,
    Status,
    Telemetry,
    dump,
    parse_command,
    utcnow,
)
from shared.mqtt_client import MqttClient
from shared.topics import Kind, build_topic, is_valid_id

log = logging.getLogger(__name__)

FIRMWARE: Final = "smartfarm-sim/0.1"
NodeFailure = Literal["no_ack", "ack_error", "ignore"]


class _Dropped(Exception):
    """A fault-injected connection drop: leave the session, reconnect after a pause."""


class Node:
    """What every simulated node shares: identity, clock, connection loop.

    Payload timestamps are wall-clock time (an ESP32 syncs its RTC by NTP); the clock only paces
    the node and its room's physics, which may run faster than real time.
    """

    def __init__(
        self,
        *,
        farm_id: str,
        room_id: str,
        device_id: str,
        password: str | None = None,
        host: str = "127.0.0.1",
        port: int = 1883,
        clock: Clock | None = None,
        seed: int = 0,
        keepalive_s: int = 30,
        backoff_max_s: float = 15.0,
    ) -> None:
        build_topic(farm_id, room_id, "status", device_id)  # validates the ids
        self.farm_id, self.room_id, self.device_id = farm_id, room_id, device_id
        self.password = password
        self.host, self.port = host, port
        self.clock: Clock = clock if clock is not None else RealClock()
        self.rng = random.Random(f"{seed}:{device_id}")  # noqa: S311 - simulation, not crypto
        self._jitter = random.Random(f"{seed}:{device_id}:backoff")  # noqa: S311 - simulation, not crypto
        self.keepalive_s = keepalive_s
        self.backoff_max_s = backoff_max_s
        self.connected = asyncio.Event()
        self.connects = 0
        self._started_s = self.clock.elapsed()
        self.firmware = FIRMWARE
        self.ota_log: list[str] = []  # "installed 1.2.0" / "failed 1.2.0: why", for tests
        self._ota_task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None

    def topic(self, kind: Kind) -> str:
        return build_topic(self.farm_id, self.room_id, kind, self.device_id)

    def status_payload(self, *, online: bool = True) -> bytes:
        return dump(
            Status(
                device_id=self.device_id,
                online=online,
                timestamp=utcnow(),
                state=self.state(),
                firmware=self.firmware,
                rssi_dbm=round(-55 - 15 * self.rng.random()),
                uptime_s=round(self.clock.elapsed() - self._started_s, 1),
            )
        )

    def state(self) -> dict[str, float | bool | str | None]:
        return {}

    async def run(self) -> None:
        """Connect, run the session, and on any broker trouble reconnect with backoff; forever
        (until cancelled)."""
        failures = 0
        while True:
            try:
                async with MqttClient(
                    self.host,
                    self.port,
                    username=self.device_id,
                    password=self.password,
                    identifier=f"{self.device_id}.{self.farm_id}",
                    keepalive=self.keepalive_s,
                    # Bounds connect, publish and the goodbye on a dead socket (default 10 s).
                    timeout=5.0,
                    will=aiomqtt.Will(self.topic("status"), self.status_payload(online=False), 1),
                ) as client:
                    failures = 0
                    self.connects += 1
                    self.connected.set()
                    log.debug("%s connected to %s:%s", self.device_id, self.host, self.port)
                    try:
                        await self.session(client)
                    finally:
                        self.connected.clear()  # now, not after the client's goodbye
            except aiomqtt.MqttError as exc:
                failures += 1
                log.warning("%s: broker connection lost (%s), retrying", self.device_id, exc)
            except _Dropped:
                failures += 1
                log.info("%s: connection dropped (fault injection)", self.device_id)
            finally:
                self.connected.clear()
            delay = min(self.backoff_max_s, 0.25 * 2 ** min(failures, 10))
            await asyncio.sleep(self._jitter.uniform(delay / 2, delay))

    async def session(self, client: aiomqtt.Client) -> None:
        raise NotImplementedError

    # ---- firmware updates from the edge ----
    def start_ota(self, cmd: Command) -> bytes:
        """Take an ``ota`` command: the ack now, the download and flash in the background."""
        offer = cmd.firmware
        assert offer is not None  # the model requires it with action ota
        if cmd.device_id != self.device_id:
            return self.ack(cmd.command_id, "error", f"command is for {cmd.device_id}")
        if self._ota_task is not None and not self._ota_task.done():
            return self.ack(cmd.command_id, "error", "an update is already running")
        self._ota_task = asyncio.create_task(self._ota(cmd.command_id, offer),
                                             name=f"{self.device_id}-ota")
        return self.ack(cmd.command_id, "ok")

    async def _ota(self, command_id: str, offer: FirmwareOffer) -> None:
        problem = await self._download(offer)
        client = self._client
        if problem is not None:
            self.ota_log.append(f"failed {offer.version}: {problem}")
            log.warning("%s: firmware %s refused: %s", self.device_id, offer.version, problem)
            if client is not None:  # a second ack, with the reason (the contract's error ack)
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.publish(self.topic("ack"), self.ack(
                        command_id, "error", f"update failed: {problem}"), qos=1)
            return
        self.firmware = f"smartfarm-sim/{offer.version}"
        self.ota_log.append(f"installed {offer.version}")
        log.info("%s now runs firmware %s", self.device_id, offer.version)
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(self.topic("status"), self.status_payload(), qos=1)

    async def _download(self, offer: FirmwareOffer) -> str | None:
        """Fetch and check the offered image; None when it is good, else why not."""
        try:
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.get(offer.md5_url) as answer:
                    answer.raise_for_status()
                    md5_served = (await answer.text()).strip()
                async with http.get(offer.url) as answer:
                    answer.raise_for_status()
                    image = await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"download: {exc}"
        if len(image) != offer.size:
            return f"size {len(image)}, offered {offer.size}"
        if md5_served != offer.md5 or hashlib.md5(image).hexdigest() != offer.md5:  # noqa: S324
            return "MD5 mismatch"
        if hashlib.sha256(image).hexdigest() != offer.sha256:
            return "SHA-256 mismatch"
        if image[:1] != b"\xe9":
            return "not an ESP application image"
        return None

    def ack(
        self, command_id: str, status: Literal["ok", "error"], error: str | None = None
    ) -> bytes:
        return dump(
            Ack(
                command_id=command_id,
                status=status,
                device_id=self.device_id,
                error=error,
                state=self.state(),
                timestamp=utcnow(),
            )
        )


class SensorNode(Node):
    """Publishes temperature, RH, CO₂, light, substrate moisture and battery every interval."""

    def __init__(
        self,
        *,
        room: Room,
        interval_s: float = 10.0,
        battery_v: float = 4.15,
        battery_drain_v_per_day: float = 0.03,
        faults: FaultPlan | FaultInjector | None = None,
        **node: Any,
    ) -> None:
        super().__init__(**node)
        self.room = room
        self.interval_s = interval_s
        self.battery_start_v = battery_v
        self.battery_drain_v_per_day = battery_drain_v_per_day
        if isinstance(faults, FaultPlan):
            faults = faults.injector(self.device_id)
        self.faults = faults
        self.published = 0  # readings sent (each once, duplicates and garbage not counted)

    def battery_v(self) -> float:
        days = (self.clock.elapsed() - self._started_s) / 86_400
        drained = self.battery_start_v - self.battery_drain_v_per_day * days
        return round(max(3.3, drained) + self.rng.gauss(0.0, 0.004), 3)

    def state(self) -> dict[str, float | bool | str | None]:
        return {"battery_v": self.battery_v()}

    def reading(self) -> Telemetry:
        data = self.room.sensors(self.rng)
        data["battery_v"] = self.battery_v()
        return Telemetry(device_id=self.device_id, timestamp=utcnow(), data=data)

    async def session(self, client: aiomqtt.Client) -> None:
        # A QoS 1 publish on a dead socket waits out its timeout for the PUBACK; the message
        # iterator ends at once on a disconnect, so watch it beside the publishing loop.
        self._client = client
        await client.subscribe(self.topic("command"), qos=1)  # firmware updates
        publisher = asyncio.create_task(self._publish_loop(client))
        watcher = asyncio.create_task(self._commands(client))
        try:
            done, _ = await asyncio.wait({publisher, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (publisher, watcher):
                task.cancel()
            await asyncio.gather(publisher, watcher, return_exceptions=True)
        for task in done:
            task.result()  # re-raise why the session ended (MqttError, _Dropped)

    async def _commands(self, client: aiomqtt.Client) -> None:
        """Commands to a sensor: ``ota`` only (anything else is refused). Raises MqttError when
        the connection drops."""
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes):
                payload = str(payload).encode()
            try:
                cmd = parse_command(payload)
            except PayloadError as exc:
                ack = self.ack(_raw_command_id(payload), "error", exc.reason)
            else:
                ack = (self.start_ota(cmd) if cmd.action == "ota" else
                       self.ack(cmd.command_id, "error", "a sensor takes no switching commands"))
            await client.publish(self.topic("ack"), ack, qos=1)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topic("status"), self.status_payload(), qos=1)
        while True:
            if self.faults is not None and self.faults.disconnect_now():
                raise _Dropped
            await self.publish_reading(client)
            await self.clock.sleep(self.interval_s)

    async def publish_reading(self, client: aiomqtt.Client) -> None:
        tel = self.reading()
        if self.faults is None:
            messages = [(self.topic("telemetry"), dump(tel))]
        else:
            doc = json.loads(dump(tel))
            messages = self.faults.outgoing(self.farm_id, self.room_id, self.device_id, doc)
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)
        self.published += 1


class ActuatorNode(Node):
    """A relay node (humidifier, exhaust fan, heater or light) answering commands.

    ``on``/``off`` switch it; ``set`` takes a level 0–100 (or a bool). Every command is acked
    (``ok`` with the new state, or ``error`` with the reason); a repeated command id (QoS 1
    redelivery, edge retry) is acked again without being applied twice. ``fail_mode`` breaks it:
    ``no_ack`` applies but never acks, ``ack_error`` refuses everything, ``ignore`` does nothing.
    """

    def __init__(
        self,
        *,
        role: str,
        bank: ActuatorBank,
        ack: bool = True,
        fail_mode: NodeFailure | None = None,
        status_interval_s: float = 60.0,
        **node: Any,
    ) -> None:
        super().__init__(**node)
        if role not in ROLES:
            raise ValueError(f"unknown actuator role {role!r}")
        self.role = role
        self.bank = bank
        self.fail_mode: NodeFailure | None = fail_mode or (None if ack else "no_ack")
        self.status_interval_s = status_interval_s
        self.received: list[bytes] = []  # raw command payloads, for tests
        self._recent: OrderedDict[str, bytes | None] = OrderedDict()
        bank.set(self.device_id, role, 0.0)

    @property
    def level(self) -> float:
        return self.bank.level(self.device_id)

    def state(self) -> dict[str, float | bool | str | None]:
        return {"on": self.level > 0, "level": round(self.level * 100, 1), "role": self.role}

    def handle(self, payload: bytes) -> tuple[bytes | None, bool]:
        """Apply one command payload; return (ack payload or None, whether the state changed)."""
        self.received.append(payload)
        if self.fail_mode == "ignore":
            return None, False
        try:
            cmd = parse_command(payload)
        except PayloadError as exc:
            return self._ack(_raw_command_id(payload), "error", exc.reason), False
        if cmd.command_id in self._recent:
            return self._recent[cmd.command_id], False
        before = self.level
        ack: bytes | None
        if cmd.device_id != self.device_id:
            ack = self._ack(cmd.command_id, "error", f"command is for {cmd.device_id}")
        elif self.fail_mode == "ack_error":
            ack = self._ack(cmd.command_id, "error", f"{self.role} hardware fault")
        elif cmd.action == "ota":
            ack = self.start_ota(cmd)
        else:
            level = _level(cmd)
            if level is None:
                ack = self._ack(cmd.command_id, "error", "set needs a value 0-100 or a boolean")
            else:
                self.bank.set(self.device_id, self.role, level)
                ack = None if self.fail_mode == "no_ack" else self._ack(cmd.command_id, "ok")
        self._recent[cmd.command_id] = ack
        while len(self._recent) > 256:
            self._recent.popitem(last=False)
        return ack, self.level != before

    def _ack(
        self, command_id: str, status: Literal["ok", "error"], error: str | None = None
    ) -> bytes:
        return self.ack(command_id, status, error)

    async def session(self, client: aiomqtt.Client) -> None:
        self._client = client
        await client.subscribe(self.topic("command"), qos=1)
        await client.publish(self.topic("status"), self.status_payload(), qos=1)
        # Not a TaskGroup: a broken connection must surface as MqttError (for the reconnect
        # loop), not as an ExceptionGroup; the message iterator raises it for both.
        heartbeat = asyncio.create_task(
            self._heartbeat(client), name=f"{self.device_id}-heartbeat"
        )
        try:
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes):
                    payload = str(payload).encode()
                ack, changed = self.handle(payload)
                if ack is not None:
                    await client.publish(self.topic("ack"), ack, qos=1)
                if changed:
                    log.debug("%s now %s", self.device_id, self.state())
                    await client.publish(self.topic("status"), self.status_payload(), qos=1)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await heartbeat

    async def _heartbeat(self, client: aiomqtt.Client) -> None:
        while True:
            await self.clock.sleep(self.status_interval_s)
            await client.publish(self.topic("status"), self.status_payload(), qos=1)


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """Return nothing, raise MqttError when the connection drops (a sensor subscribes to
    nothing, so no message ever arrives)."""
    async for _message in client.messages:
        pass


def _level(cmd: Command) -> float | None:
    if cmd.action == "on":
        return 1.0
    if cmd.action == "off":
        return 0.0
    value = cmd.value
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if value is None or not 0.0 <= value <= 100.0:
        return None
    return value / 100.0


def _raw_command_id(payload: bytes) -> str:
    """The command id of an invalid command if one can be read, so the edge can match the ack."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return "unknown"
    cid = doc.get("command_id") if isinstance(doc, dict) else None
    return cid if isinstance(cid, str) and is_valid_id(cid) else "unknown"
