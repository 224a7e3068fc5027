"""The edge sync of one cloud instance: the NOTIFY hub, the expiry sweep, the metrics, and the
loop that serves one edge's WebSocket stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import TypeAdapter, ValidationError

from cloud import appkeys
from cloud.db import downlink
from cloud.db.database import Database
from cloud.errors import DatabaseUnavailable
from cloud.sync.announce import ReadingAnnouncer
from cloud.sync.hub import RESYNC, EdgeHub
from cloud.sync.iot_acks import IotAckPublisher, iot_data_client
from cloud.sync.iot_down import IotDownPublisher
from cloud.sync.link import DownMsg, EdgeLink, UpMsg
from cloud.sync.pace import BatchPacer
from cloud.sync.settings import SyncConfig
from cloud.sync.writer import Counts
from shared.sync import Hello, UpMessage

log = logging.getLogger(__name__)

# mypy 1.20 loses the TypeForm of an Annotated union alias read from its cache (arg-type
# there, none without a cache): ignore it either way.
UP: TypeAdapter[UpMsg] = TypeAdapter(UpMessage)  # type: ignore[arg-type,unused-ignore]


class SyncMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        streams: Callable[[], float],
        interval: Callable[[], float],
    ) -> None:
        self.batches = Counter(
            "smartfarm_sync_batches", "edge batches by outcome", ["outcome"], registry=registry
        )
        self.records = Counter(
            "smartfarm_sync_records",
            "edge outbox records stored, by kind",
            ["kind"],
            registry=registry,
        )
        self.duplicates = Counter(
            "smartfarm_sync_duplicates", "records skipped as already stored", registry=registry
        )
        self.quarantined = Counter(
            "smartfarm_sync_quarantined", "records kept in edge_quarantine", registry=registry
        )
        gauge = Gauge(
            "smartfarm_sync_streams", "edge streams open on this instance", registry=registry
        )
        gauge.set_function(streams)
        paced = Gauge(
            "smartfarm_sync_batch_interval_seconds",
            "batch interval this instance asks of edges (0: their own setting)",
            registry=registry,
        )
        paced.set_function(interval)

    def stored(self, counts: Counts) -> None:
        self.batches.labels("stored").inc()
        for kind, n in counts.by_kind.items():
            self.records.labels(kind).inc(n)
        self.duplicates.inc(counts.duplicates)
        self.quarantined.inc(counts.quarantined)


class EdgeSync:
    """Owned by the app (``EDGE_SYNC``); ``run()`` is its background work until cancelled."""

    def __init__(self, db: Database, config: SyncConfig, registry: CollectorRegistry) -> None:
        self.db = db
        self.config = config
        self.hub = EdgeHub(db.dsn)
        self.announcer = ReadingAnnouncer(db)  # stored readings → the dashboards
        self.pacer = BatchPacer(
            high_s=config.pace_high_ms / 1000, low_s=config.pace_low_ms / 1000,
            max_s=config.pace_max_s,
        )
        self.metrics = SyncMetrics(registry, self.hub.streams, self.pacer.interval_s)
        # AWS IoT Core (None: not configured): answers to batches that came through it, and
        # commands and config published to the edges on it.
        client = iot_data_client(config)
        self.iot_acks = None if client is None else IotAckPublisher(client)
        self.iot_down = None if client is None else IotDownPublisher(db, client, config, registry)
        if self.iot_down is not None:
            self.hub.watch(self.iot_down.notify)
        self.iot_unanswered: set[str] = set()  # edges told about a missing publisher (logged)
        # (farm, edge) of the streams held here → when this instance last stored a batch of
        # theirs (monotonic; 0: none yet): such an edge is known to be marked seen.
        self._stored_at: dict[tuple[str, str], float] = {}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.hub.run(), name="edge-sync-listen")
            tasks.create_task(self._sweep(), name="edge-sync-expiry")
            tasks.create_task(self.announcer.run(), name="edge-sync-announce")
            if self.pacer.enabled:
                tasks.create_task(self.pacer.watch_loop(), name="edge-sync-loop-lag")
            if self.iot_down is not None:
                tasks.create_task(self.iot_down.run(), name="edge-sync-iot-down")

    async def _sweep(self) -> None:
        """Expire stale commands of every farm, so they show as expired while an edge is away."""
        while True:
            await asyncio.sleep(self.config.expiry_sweep_s)
            try:
                expired = await downlink.expire_stale(self.db, ttl_s=self.config.command_ttl_s)
            except Exception:  # the sweep must outlive a database outage
                log.exception("expiry sweep failed")
                continue
            if expired:
                log.info("expired %d undelivered command(s): %s", len(expired), expired[:20])
            if self.iot_down is not None:  # republish what AWS IoT edges have not taken yet
                self.iot_down.notify(None, RESYNC)

    def batch_stored(self, farm_id: str, edge_id: str) -> None:
        """A batch of this edge was committed (which marked it seen)."""
        key = (farm_id, edge_id)
        if key in self._stored_at:  # only for streams held here: the map stays their size
            self._stored_at[key] = time.monotonic()

    async def serve(self, ws: web.WebSocketResponse, edge: dict[str, Any], hello: Hello) -> None:
        """Push what the edge needs and apply its answers until the socket closes."""
        key = (edge["farm_id"], edge["id"])
        self._stored_at.setdefault(key, 0.0)
        try:
            await self._serve(ws, edge, hello)
        finally:
            self._stored_at.pop(key, None)

    async def _serve(self, ws: web.WebSocketResponse, edge: dict[str, Any], hello: Hello) -> None:
        link = EdgeLink(self.db, edge, self.config, config_version=hello.config_version)
        if hello.acked_seq > edge["high_water"]:
            log.warning(
                "edge %s believes seq %d is stored, the cloud has %d (database restored?)",
                edge["id"],
                hello.acked_seq,
                edge["high_water"],
            )
        await downlink.touch(self.db, edge["farm_id"], edge["id"])
        # Subscribe before catching up: an event in between is then seen twice, never missed.
        with self.hub.subscribe(edge["farm_id"]) as queue:
            await _send(ws, await link.catch_up())
            tasks = [
                asyncio.create_task(self._read(ws, link), name="edge-stream-read"),
                asyncio.create_task(self._write(ws, link, queue), name="edge-stream-write"),
                asyncio.create_task(
                    self._keep_seen(edge["farm_id"], edge["id"]), name="edge-stream-seen"
                ),
            ]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception) and not isinstance(result, ConnectionError):
                    log.warning("edge %s stream ended: %r", edge["id"], result)
        with contextlib.suppress(Exception):
            await downlink.touch(self.db, edge["farm_id"], edge["id"])

    async def _read(self, ws: web.WebSocketResponse, link: EdgeLink) -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                up: UpMsg = UP.validate_json(msg.data)
            except ValidationError as exc:
                # Bad input never stops the flow: log it and keep the stream.
                log.warning("edge %s sent an invalid message: %s", link.edge_id, exc.errors()[:1])
                continue
            await link.receive(up)

    async def _write(
        self, ws: web.WebSocketResponse, link: EdgeLink, queue: asyncio.Queue[Any]
    ) -> None:
        while True:
            event = await queue.get()
            await _send(ws, await link.on_event(event))

    async def _keep_seen(self, farm_id: str, edge_id: str) -> None:
        fresh_s = self.config.heartbeat_s / 2
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            # An edge uploading batches is marked seen by them; half a heartbeat is fresh enough
            # for presence (online_window_s is minutes). Known here when its batches come to
            # this instance (no statement at all), else checked by the UPDATE's condition. A
            # busy or briefly unreachable database costs one mark, not the stream (whose
            # reconnect would cost the database more).
            stored = self._stored_at.get((farm_id, edge_id), 0.0)
            if stored and time.monotonic() - stored < fresh_s:
                continue
            try:
                await downlink.touch(self.db, farm_id, edge_id, fresh_s=fresh_s)
            except DatabaseUnavailable as exc:
                log.info("edge %s: not marked seen this heartbeat: %s", edge_id, exc.detail)


async def _send(ws: web.WebSocketResponse, messages: list[DownMsg]) -> None:
    for message in messages:
        await ws.send_str(message.model_dump_json())


EDGE_SYNC = web.AppKey("edge_sync", EdgeSync)


async def edge_sync_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context (after the database's): start the sync's background work, stop it."""
    sync = EdgeSync(app[appkeys.DB], app[appkeys.SETTINGS].sync, app[appkeys.METRICS].registry)
    app[EDGE_SYNC] = sync
    task = asyncio.create_task(sync.run(), name="edge-sync")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
