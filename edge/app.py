"""The edge's composition root: builds every component from the settings and runs them.

Data flows broker → ingest → store → automation → commands, with the local API beside them;
with a cloud configured, the outbox goes up (uplink) and commands and config come down (downlink).
``EdgeApp.run`` keeps going until its stop event is set (SIGTERM/SIGINT in ``edge run``), then
shuts down in reverse order so nothing accepted is lost: the store is closed last, after its
queue is drained.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
from aiohttp import web

from edge.alerts import AlertMonitor
from edge.api import create_api_app
from edge.api.keys import ONBOARDING
from edge.automation import Automation
from edge.automation_report import AutomationReporter
from edge.broker import EmbeddedBroker, broker_address, embedded_broker
from edge.commands import CommandTracker
from edge.config import EdgeSettings, load_config
from edge.credentials import edge_login, sync_broker_files
from edge.downlink import Downlink
from edge.external_claims import ExternalClaims
from edge.homeassistant import HomeAssistantBridge
from edge.ingest import Inbox, Ingest
from edge.intake import Intake
from edge.metrics import METRICS, EdgeMetrics, EdgeParts
from edge.onboarding import Onboarding
from edge.outbox import Outbox
from edge.store import commands as command_rows
from edge.store.db import Database
from edge.systemd import Notifier
from edge.uplink import SYNC_STATUS, Uplink, edge_health
from shared.backoff import Backoff
from shared.models import Ack, utcnow
from shared.mqtt_client import MqttClient
from shared.topics import Topic

if TYPE_CHECKING:
    from edge.iot_uplink import IotUplink

log = logging.getLogger(__name__)

CONFIG_POLL_S = 2.0
SYNC_RESTART_S = 10.0


class EdgeApp:
    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        store = settings.store
        self.db = Database(
            settings.db_path,
            commit_interval_ms=store.commit_interval_ms,
            commit_max_items=store.commit_max_items,
        )
        auto = settings.automation
        self.alerts = AlertMonitor(
            self.db,
            out_of_band_after=timedelta(minutes=settings.alerts.out_of_band_minutes),
            silent_after=timedelta(minutes=settings.alerts.silent_minutes),
        )
        self.commands = CommandTracker(
            self.db, farm_id=settings.farm_id, ack_timeout_s=auto.command_timeout_s,
            retries=auto.command_retries,
            on_outcome=lambda outcome: self.automation.on_outcome(outcome),
        )
        self.automation = Automation(settings, self.db, self.commands, self.alerts)
        self.ingest = Ingest(
            self.db,
            farm_id=settings.farm_id,
            known_devices=self._device_rooms,
            on_reading=self.automation.on_reading,
            on_ack=self._on_ack,
            on_status=self.automation.on_status,
            quarantine_max_payload=store.quarantine_max_payload,
        )
        # Embedded broker: devices' messages come to the ingest in-process, acknowledged once
        # committed (edge.intake); with an external broker the edge subscribes to them.
        embedded = settings.broker.mode == "embedded"
        self.intake: Intake | None = (
            Intake(self.ingest, self.db, commit_interval_s=store.commit_interval_ms / 1000)
            if embedded and settings.broker.durable_acks else None
        )
        self.outbox: Outbox | None = None
        self.uplink: Uplink | IotUplink | None = None
        self.downlink: Downlink | None = None
        self.reporter: AutomationReporter | None = None
        if settings.cloud.enabled:
            self.outbox = Outbox(
                self.db, retention_days=settings.cloud.retention_days,
                max_unsynced_rows=settings.cloud.max_unsynced_rows, alerts=self.alerts,
            )
            self.downlink = Downlink(
                settings, self.db, self.automation, self.commands, alerts=self.alerts,
                clock_offset=lambda: None if self.uplink is None else self.uplink.clock_offset_s,
                health=functools.partial(edge_health, self.outbox),
            )
            # The rooms' effective automation goes up too (the cloud's "why" view).
            self.reporter = AutomationReporter(self.automation, clock=utcnow)
            if settings.cloud.aws_iot.enabled:  # batches over AWS IoT Core instead of HTTPS
                from edge.iot_uplink import IotUplink  # awscrt: only for IoT Core farms

                self.uplink = IotUplink(settings, self.outbox, handle=self.downlink.handle,
                                        alerts=self.alerts,
                                        health=functools.partial(edge_health, self.outbox))
            else:
                self.uplink = Uplink(settings, self.outbox, alerts=self.alerts)
        # Devices knocking with the farm's claim code (the embedded broker reports them).
        self.onboarding = Onboarding(settings, self.db, reload=self.reload_config)
        if self.downlink is not None:  # dismissals made in the cloud come with its config
            self.onboarding.cloud_dismissed = self.downlink.config_sync.cloud_dismissed
        # With Mosquitto, claims come as hellos of its claim account (edge.external_claims).
        self.external_claims = (ExternalClaims(settings, self.onboarding, self.mqtt_address)
                                if settings.broker.mode == "external" else None)
        self.broker: EmbeddedBroker | None = None
        self.api_runner: web.AppRunner | None = None
        self.api_port: int | None = None
        self.broker_connected = asyncio.Event()
        self.metrics = EdgeMetrics(EdgeParts(  # GET /metrics and /health
            settings=settings, db=self.db, ingest=self.ingest, intake=self.intake,
            commands=self.commands, automation=self.automation, alerts=self.alerts,
            outbox=self.outbox, uplink=self.uplink, broker=lambda: self.broker,
        ))
        self.home_assistant: HomeAssistantBridge | None = None
        if settings.home_assistant.enabled:
            self.home_assistant = HomeAssistantBridge(settings, self.automation, self.mqtt_address)
        self.notifier = Notifier()  # sd_notify; a no-op outside systemd
        self._stopping = False
        self._config_mtime: float | None = None
        self._devices_key: tuple[int, int] | None = None
        self._devices_map: dict[str, str] = {}

    def _device_rooms(self) -> dict[str, str]:
        # Called for every message: rebuilt only when the device list is replaced or grows.
        devices = self.settings.devices
        key = (id(devices), len(devices))
        if key != self._devices_key:
            self._devices_key = key
            self._devices_map = {d.id: d.room for d in devices}
        return self._devices_map

    async def _on_ack(self, topic: Topic, ack: Ack) -> None:
        await self.commands.on_ack(topic.device_id, ack, topic=str(topic))

    # ---- lifecycle ----
    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        settings.data_path.mkdir(parents=True, exist_ok=True)
        await self.db.open()
        intake_task: asyncio.Task[None] | None = None
        try:
            expired = await self.db.write(command_rows.expire_pending_on_boot, utcnow().timestamp())
            if expired:
                log.info("%d command(s) left pending by the last run: superseded", expired)
            if self.downlink is not None:
                # The cloud's rooms and devices over the TOML's.
                await self.downlink.config_sync.restore()
            await self.automation.load()
            if settings.broker.mode == "embedded":
                if self.intake is not None:
                    # Running before the listener opens; a message that comes in earlier simply
                    # waits in the intake (unacknowledged) until it is stored.
                    intake_task = asyncio.create_task(self.intake.run(), name="edge-intake")
                sync_broker_files(settings)
                if self.downlink is not None:
                    self.downlink.config_sync.write_credentials()
                self.onboarding.claim_code()  # created on first start
                self.broker = embedded_broker(settings, self.intake, onboarding=self.onboarding)
                await self.broker.start()
                log.info("embedded MQTT broker on %s:%d", self.broker.host, self.broker.port)
            await self._start_api()
            self.notifier.ready(f"broker and local page up (farm {settings.farm_id})")
            # What start-up allocated (modules, settings, the automation's state) lives as long as
            # the process: keep it out of the collector's full passes, which the ingest's allocation
            # rate triggers every few seconds (~50 ms each otherwise).
            gc.freeze()
            async with asyncio.TaskGroup() as tasks:
                workers = [
                    tasks.create_task(self._mqtt_loop(), name="edge-mqtt"),
                    tasks.create_task(self._tick_loop(), name="edge-tick"),
                    tasks.create_task(self._config_watch(), name="edge-config-watch"),
                    tasks.create_task(self.onboarding.run(), name="edge-onboarding"),
                    tasks.create_task(self.notifier.watchdog_loop(self.healthy),
                                      name="edge-watchdog"),
                ]
                if self.home_assistant is not None:
                    workers.append(tasks.create_task(self.home_assistant.run(),
                                                     name="edge-home-assistant"))
                if self.external_claims is not None:
                    workers.append(tasks.create_task(self.external_claims.run(),
                                                     name="edge-external-claims"))
                if self.uplink is not None and self.downlink is not None:
                    log.info("syncing with the cloud at %s as edge %s", settings.cloud.url,
                             settings.cloud.edge_id)
                    loops = [("uplink", self.uplink.run), ("downlink", self.downlink.run)]
                    if self.reporter is not None:
                        loops.insert(0, ("automation report", self.reporter.run))
                    iot = settings.cloud.aws_iot
                    if iot.enabled and not iot.downlink_stream:
                        loops.pop()  # commands come over AWS IoT only
                    for name, loop in loops:
                        workers.append(tasks.create_task(_keep_running(name, loop),
                                                         name=f"edge-{name}"))
                await stop.wait()
                self._stopping = True
                self.notifier.stopping("draining and closing the store")
                log.info("stopping edge: draining messages the broker already accepted")
                if self.intake is not None and self.broker is not None:
                    await self.broker.stop()  # no new messages; in-flight ones are queued
                    await self.intake.drain()
                else:
                    await self._drain_ingest()
                for worker in workers:
                    worker.cancel()
        finally:
            await self._shutdown()
            if intake_task is not None:
                intake_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await intake_task

    async def healthy(self, within_s: float) -> bool:
        """For the systemd watchdog: this coroutine running proves the event loop turns; a
        no-op write proves the store's writer thread still commits (within ``within_s``)."""
        if not self.db.is_open:
            return False
        try:
            async with asyncio.timeout(within_s):
                await self.db.write(_noop)
        except TimeoutError:
            log.error("store writer has not committed for %.1f s", within_s)
            return False
        return True

    async def _drain_ingest(self, quiet_s: float = 0.3, max_s: float = 5.0) -> None:
        """Keep ingesting until the flow pauses: messages a device saw acknowledged by the
        broker are still on their way to our subscriber and must be stored, not dropped. With
        the embedded broker, also until it has nothing left to deliver (a loaded Pi can pause
        longer than ``quiet_s`` between deliveries)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_s
        last = -1
        while loop.time() < deadline and self.broker_connected.is_set():
            received = self.ingest.stats.received
            pending = self.broker.pending_deliveries() if self.broker is not None else 0
            if received == last and pending == 0:
                return
            last = received
            await asyncio.sleep(quiet_s)

    async def _shutdown(self) -> None:
        await self.automation.close()
        await self.commands.close()
        if self.api_runner is not None:
            await self.api_runner.cleanup()
        if self.broker is not None:
            await self.broker.stop()
        if self.intake is not None:
            await self.intake.drain()  # what came in before the broker stopped is committed
        if self.db.is_open:
            await self.db.close()
        log.info("edge stopped; store closed cleanly")

    async def _start_api(self) -> None:
        api = self.settings.api
        app = create_api_app(
            settings=self.settings, db=self.db, automation=self.automation,
            ingest=self.ingest, commands=self.commands,
        )
        app[ONBOARDING] = self.onboarding
        app[SYNC_STATUS] = self.sync_status
        app[METRICS] = self.metrics
        # At shutdown an open request (a page's long poll) gets 5 s, not aiohttp's 60.
        self.api_runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self.api_runner.setup()
        site = web.TCPSite(self.api_runner, api.host, api.port)
        await site.start()
        self.api_port = int(self.api_runner.addresses[0][1])
        log.info("local page on http://%s:%d/", api.host, self.api_port)

    async def sync_status(self) -> dict[str, Any]:
        """The cloud sync's progress for the local page (``/api/stats`` → ``sync``)."""
        if self.uplink is None or self.downlink is None:
            return {"enabled": False}
        return {**await self.uplink.status(), "downlink": self.downlink.status()}

    def mqtt_address(self) -> tuple[str, int]:
        if self.broker is not None:
            return self.broker.host, self.broker.port
        return broker_address(self.settings)

    async def _mqtt_loop(self) -> None:
        """One connection for ingest and commands; on every (re)connect, re-assert actuators."""
        host, port = self.mqtt_address()
        username, password = edge_login(self.settings)
        backoff = Backoff(0.5, 30.0)
        while True:
            inbox = Inbox()
            try:
                async with MqttClient(
                    host, port, username=username, password=password,
                    identifier=f"smartfarm-edge-{self.settings.farm_id}",
                    clean_session=False, keepalive=self.settings.broker.keepalive_s,
                    max_queued_outgoing_messages=10_000, queue_type=inbox.queue_type,
                    # An external broker's messages: acknowledged once committed (the embedded
                    # broker's intake acknowledges the devices themselves that way).
                    manual_ack=self.intake is None,
                ) as client:
                    backoff.reset()
                    log.info("edge connected to MQTT broker %s:%d", host, port)
                    ingest = asyncio.create_task(
                        self.ingest.run(client, subscribe=self.intake is None, inbox=inbox),
                        name="edge-ingest")
                    self.commands.attach(client)
                    self.onboarding.attach(client)  # hands adopted claim nodes their password
                    self.broker_connected.set()
                    try:
                        # Boot-safe: after subscribing (so acks are heard), tell every actuator
                        # what it should be doing rather than trusting what it was last told.
                        subscribed = asyncio.create_task(self.ingest.subscribed.wait())
                        await asyncio.wait({subscribed, ingest},
                                           return_when=asyncio.FIRST_COMPLETED)
                        subscribed.cancel()
                        if not ingest.done():
                            await self.automation.reassert()
                        await ingest
                    finally:
                        self.commands.attach(None)
                        self.onboarding.attach(None)
                        self.broker_connected.clear()
                        ingest.cancel()
                        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                            await ingest
            except aiomqtt.MqttError as exc:
                if self._stopping:
                    return  # the embedded broker was stopped first, on purpose
                delay = backoff.delay()
                log.warning("MQTT connection to %s:%d lost (%s); retrying in %.1f s",
                            host, port, exc, delay)
                await asyncio.sleep(delay)

    async def _tick_loop(self) -> None:
        interval = self.settings.automation.tick_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.automation.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("automation tick failed; next tick in %.0f s", interval)

    async def _config_watch(self) -> None:
        """Pick up devices added with `smartfarm edge device add` while the edge runs."""
        path = self.settings.config_path
        if path is None:
            return
        self._config_mtime = _mtime(path)
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            mtime = _mtime(path)
            if mtime == self._config_mtime:
                continue
            self._config_mtime = mtime
            await self.reload_config()

    async def reload_config(self) -> None:
        """Re-read the TOML config's devices (added by `smartfarm edge device add` or an adoption
        on the local page): broker accounts rebuilt with the cloud's, automation reloaded."""
        path = self.settings.config_path
        if path is None:
            return
        self._config_mtime = _mtime(path)
        try:
            fresh = load_config(path)
        except Exception as exc:
            log.warning("config changed but cannot be loaded, keeping the old one: %s", exc)
            return
        added = {d.id for d in fresh.devices} - {d.id for d in self.settings.devices}
        if self.downlink is not None:
            self.downlink.config_sync.rebase_local(fresh)  # keeps cloud-registered devices
        else:
            self.settings.devices = fresh.devices
        if self.settings.broker.mode == "embedded":
            sync_broker_files(self.settings)
            if self.downlink is not None:
                self.downlink.config_sync.write_credentials()
            if self.broker is not None:
                self.broker.reload()
        await self.automation.reload_devices()
        if added:
            log.info("config reloaded: new device(s) %s", ", ".join(sorted(added)))


async def _keep_running(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """A sync loop that fails is restarted: the farm keeps running whatever the cloud does."""
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cloud %s stopped on an error; restarting it in %.0f s", name,
                          SYNC_RESTART_S)
        await asyncio.sleep(SYNC_RESTART_S)


def _noop(conn: object) -> None:
    """A write that changes nothing (no page is dirtied, so nothing reaches the SD card)."""


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
