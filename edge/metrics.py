"""The edge's Prometheus metrics and health, read from the components' own counters at scrape time.

Nothing here runs on the ingest path: a scrape reads ``Ingest.stats``, ``CommandTracker.stats``,
``Database.stats`` and the like (plain numbers the components keep anyway), and the two figures
that need the database (outbox backlog, quarantine rows) are read once per scrape on a reader
thread. The one observation made as it happens is the command latency histogram (publish → ack),
fed by the tracker's latency observers. The registry belongs to the app, not the process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.store import quarantine as quarantine_rows
from edge.uplink import UplinkStats

if TYPE_CHECKING:
    from edge.alerts import AlertMonitor
    from edge.automation import Automation
    from edge.broker import EmbeddedBroker
    from edge.commands import CommandTracker
    from edge.config import EdgeSettings
    from edge.ingest import Ingest
    from edge.intake import Intake
    from edge.iot_uplink import IotUplink
    from edge.outbox import Outbox
    from edge.store.db import Database
    from edge.uplink import Uplink

log = logging.getLogger(__name__)

# Publish → ack on a farm LAN: ESP32s answer in tens of ms; retries push it to seconds.
LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# /health: the edge is unhealthy when its own MQTT connection has been down this long, or when
# the store's writer has queued work and committed nothing for this long.
BROKER_GRACE_S: Final = 60.0
STORE_STALL_S: Final = 30.0
# Bounds a scrape's database reads (a wedged store must not hang Prometheus).
DB_READ_TIMEOUT_S: Final = 5.0


@dataclass(slots=True)
class _DbFigures:
    backlog_records: float = 0.0
    backlog_oldest_age_s: float = 0.0
    quarantine_rows: float = 0.0


@dataclass(frozen=True, slots=True)
class EdgeParts:
    """The components the metrics read, handed over by the composition root (``edge.app``)
    rather than the app itself. The embedded broker starts later than the rest, hence a getter."""

    settings: EdgeSettings
    db: Database
    ingest: Ingest
    intake: Intake | None
    commands: CommandTracker
    automation: Automation
    alerts: AlertMonitor
    outbox: Outbox | None
    uplink: Uplink | IotUplink | None
    broker: Callable[[], EmbeddedBroker | None]


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), float(value))
    return family


def _counter(name: str, doc: str, value: float) -> Metric:
    family = CounterMetricFamily(name, doc)
    family.add_metric([], float(value))
    return family


class _EdgeCollector(Collector):
    """Everything but the latency histogram, built fresh from the components on each scrape."""

    def __init__(self, metrics: EdgeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        app = self._metrics.parts
        broker = app.broker()
        prefix = "smartfarm_edge_"
        yield _gauge(prefix + "info", "this edge (always 1)", 1,
                     {"farm_id": app.settings.farm_id, "broker_mode": app.settings.broker.mode})
        # ---- ingest ----
        stats = app.ingest.stats
        for name, value, doc in (
            ("messages_received", stats.received, "MQTT messages the ingest received"),
            ("readings", stats.readings, "valid readings accepted (handed to the store)"),
            ("readings_stored", stats.stored, "readings committed as new rows"),
            ("duplicates", stats.duplicates, "redelivered readings recognised and skipped"),
            ("statuses", stats.statuses, "device status messages"),
            ("acks", stats.acks, "command acks received"),
            ("ingest_callback_errors", stats.callback_errors, "callbacks that raised"),
            ("ingest_write_errors", stats.write_errors, "store writes from the ingest that failed"),
        ):
            yield _counter(prefix + name, doc, value)
        quarantined = CounterMetricFamily(
            prefix + "quarantined", "messages quarantined since start, by reason", labels=["reason"]
        )
        by_reason = dict(stats.quarantined_by_reason)
        if app.commands.stats.wrong_device_acks:  # quarantined by the command tracker
            by_reason["wrong_device_ack"] = app.commands.stats.wrong_device_acks
        for reason, count in sorted(by_reason.items()):
            quarantined.add_metric([reason], float(count))
        yield quarantined
        if app.intake is not None:
            yield _gauge(prefix + "intake_pending",
                         "device messages received, not yet committed (so not yet acknowledged)",
                         app.intake.pending)
        figures = self._metrics.db_figures
        yield _gauge(prefix + "quarantine_rows", "rows in the quarantine table",
                     figures.quarantine_rows)
        # ---- commands ----
        commands = app.commands
        cstats = commands.stats
        by_state = CounterMetricFamily(
            prefix + "commands", "commands sent, and their final states", labels=["state"]
        )
        for state in ("sent", "acked", "failed", "timed_out"):
            by_state.add_metric([state], float(getattr(cstats, state)))
        yield by_state
        yield _counter(prefix + "command_retries", "command publishes retried", cstats.retries)
        yield _gauge(prefix + "commands_pending", "commands waiting for an ack",
                     commands.pending_count())
        # ---- broker ----
        yield _gauge(prefix + "broker_connected", "the edge's own MQTT connection is up (1/0)",
                     1 if commands.connected else 0)
        clients = broker.connected_clients() if broker is not None else None
        if clients is not None:  # embedded broker only: an external one does not tell us
            yield _gauge(prefix + "broker_clients", "devices connected to the embedded broker",
                         clients)
        if broker is not None:
            yield _counter(prefix + "broker_connections_refused",
                           "sockets refused or dropped before login (floods, timeouts, garbage)",
                           broker.refused_connections)
        # ---- store ----
        dstats = app.db.stats
        yield _gauge(prefix + "store_open", "the SQLite store is open (1/0)",
                     1 if app.db.is_open else 0)
        yield _gauge(prefix + "store_queue_depth", "writes queued for the store's writer thread",
                     dstats.queue_depth)
        yield _counter(prefix + "store_transactions", "group commits", dstats.transactions)
        yield _counter(prefix + "store_writes", "writes run by the writer thread", dstats.items)
        yield _counter(prefix + "store_failed_writes", "writes that failed", dstats.failed_items)
        yield _gauge(prefix + "store_last_batch", "writes in the last group commit",
                     dstats.last_batch)
        # ---- automation, alerts ----
        yield _counter(prefix + "automation_evaluations", "room rule evaluations",
                       app.automation.evaluations)
        yield _gauge(prefix + "alerts_open", "alerts active now", len(app.alerts.active))
        yield _counter(prefix + "alerts_raised", "alerts raised since start", app.alerts.raised)
        # ---- cloud sync ----
        yield _gauge(prefix + "sync_enabled", "cloud sync configured (1/0)",
                     1 if app.uplink is not None else 0)
        yield _gauge(prefix + "outbox_backlog_records",
                     "records the cloud has not confirmed (0 without a cloud)",
                     figures.backlog_records)
        yield _gauge(prefix + "outbox_oldest_age_seconds",
                     "age of the oldest record the cloud has not confirmed",
                     figures.backlog_oldest_age_s)
        # Zeros without a cloud: one dashboard for every edge.
        ustats = app.uplink.stats if app.uplink is not None else UplinkStats()
        yield _counter(prefix + "uplink_batches", "batches the cloud confirmed", ustats.batches)
        yield _counter(prefix + "uplink_records", "records the cloud confirmed", ustats.records)
        yield _counter(prefix + "uplink_failed_attempts", "upload attempts that failed",
                       ustats.attempts_failed)
        yield _gauge(prefix + "uplink_failures_in_row", "consecutive failed uploads",
                     ustats.failures_in_row)
        yield _gauge(prefix + "uplink_last_success_timestamp_seconds",
                     "when the cloud last confirmed a batch (0 = never)",
                     ustats.last_success_at or 0)


class EdgeMetrics:
    """The edge's registry (``GET /metrics``) and health probe (``GET /health``)."""

    def __init__(self, parts: EdgeParts) -> None:
        self.parts = parts
        self.registry = CollectorRegistry()
        self.command_latency = Histogram(
            "smartfarm_edge_command_latency_seconds",
            "command publish to ack (including retries)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        parts.commands.latency_observers.append(self.command_latency.observe)
        self.db_figures = _DbFigures()
        self.registry.register(_EdgeCollector(self))
        self._disconnected_since: float | None = None
        self._store_items = -1
        self._store_moved_at = time.monotonic()

    async def refresh(self) -> None:
        """Read the figures that live in the database (once per scrape, off the event loop)."""
        app = self.parts
        if not app.db.is_open:
            return
        try:
            async with asyncio.timeout(DB_READ_TIMEOUT_S):
                rows = await app.db.read(quarantine_rows.count)
                backlog = await app.outbox.backlog() if app.outbox is not None else None
        except Exception as exc:  # keep the last figures; the scrape still answers
            log.warning("metrics: database figures unavailable: %s", exc)
            return
        figures = self.db_figures
        figures.quarantine_rows = rows
        if backlog is not None:
            figures.backlog_records = backlog.records
            figures.backlog_oldest_age_s = (
                0.0 if backlog.oldest_at is None else max(0.0, time.time() - backlog.oldest_at)
            )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details): broker connection, store writer, cloud uplink. The uplink never
        makes the edge unhealthy: the farm runs offline by design, and a restart fixes no WAN."""
        app = self.parts
        embedded = app.broker()
        now = time.monotonic()
        connected = app.commands.connected
        if connected:
            self._disconnected_since = None
        elif self._disconnected_since is None:
            self._disconnected_since = now
        down_s = 0.0 if self._disconnected_since is None else now - self._disconnected_since
        broker: dict[str, Any] = {
            "mode": app.settings.broker.mode, "connected": connected, "down_s": round(down_s, 1),
        }
        if embedded is not None:
            broker["embedded_running"] = embedded.running
            broker["clients"] = embedded.connected_clients()
        broker_ok = (connected or down_s < BROKER_GRACE_S) and (
            embedded is None or embedded.running
        )
        dstats = app.db.stats
        if dstats.items != self._store_items or dstats.queue_depth == 0:
            self._store_items = dstats.items
            self._store_moved_at = now
        stalled_s = now - self._store_moved_at
        store_ok = app.db.is_open and stalled_s < STORE_STALL_S
        store = {"open": app.db.is_open, "queue_depth": dstats.queue_depth,
                 "stalled_s": round(stalled_s, 1), "failed_writes": dstats.failed_items}
        uplink: dict[str, Any] = {"enabled": app.uplink is not None}
        if app.uplink is not None:
            ustats = app.uplink.stats
            uplink.update(
                state="ok" if ustats.failures_in_row == 0 else "failing",
                failures_in_row=ustats.failures_in_row,
                last_success_age_s=None if ustats.last_success_at is None
                else round(max(0.0, time.time() - ustats.last_success_at), 1),
                last_error=ustats.last_error,
            )
        healthy = broker_ok and store_ok
        return healthy, {"broker": broker, "store": store, "uplink": uplink,
                         "problems": [name for name, ok in (("broker", broker_ok),
                                                             ("store", store_ok)) if not ok]}


METRICS: Final = web.AppKey("edge_metrics", EdgeMetrics)

_LOOPBACK_V4: Final = ipaddress.ip_network("127.0.0.0/8")


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:  # a Unix socket path
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address in _LOOPBACK_V4


def scrape_allowed(remote: str | None, authorization: str, token: str | None) -> bool:
    """``api.metrics_token`` unset: loopback clients only; set: the bearer token, from anywhere."""
    if token is None:
        return _is_loopback(remote)
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Digests first: compare_digest is constant-time only for equal lengths.
    return hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(),
                               hashlib.sha256(token.encode()).digest())
