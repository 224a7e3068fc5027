"""MQTT ingest: every uplink message validated, then stored, quarantined, or handed on.

Per message: topic → farm → known device in that room → payload (shared.models) → SQLite (group
commit, not awaited) → callbacks (automation, command tracking). Anything wrong becomes a quarantine
row with its reason, a counter and a warning logged once per burst; the loop never stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import aiomqtt

from edge.burst_log import BurstLog
from edge.store import Database, StoreError, devices, quarantine
from edge.store.telemetry import store_telemetry
from shared.backoff import Backoff
from shared.errors import PayloadError, TopicError
from shared.models import (
    MAX_PAYLOAD_BYTES,
    Ack,
    Status,
    Telemetry,
    parse_ack,
    parse_status,
    parse_telemetry,
    utcnow,
)
from shared.mqtt_client import MqttClient
from shared.topics import UPLINK_KINDS, Topic, parse_topic, subscription

log = logging.getLogger(__name__)

# last_seen from telemetry/acks is written at most this often per device (status always writes):
# each touch dirties a page of device_status, ~90 bytes written per reading at 1/min with 200
# devices. The automation and the local page keep the exact last-seen time in memory.
TOUCH_INTERVAL_S: Final = 300.0

# Messages handled from aiomqtt's queue between two waits on ``client.messages`` (see messages()).
DRAIN_BATCH: Final = 64

ReadingCallback = Callable[[str, Telemetry], Awaitable[None] | None]
AckCallback = Callable[[Topic, Ack], Awaitable[None] | None]
StatusCallback = Callable[[Topic, Status], Awaitable[None] | None]


@dataclass
class IngestStats:
    """Plain counters; the app exports them as metrics."""

    received: int = 0
    readings: int = 0  # valid telemetry handed to the store (not caught as a duplicate first)
    stored: int = 0  # …of which committed as new rows
    duplicates: int = 0  # redeliveries: caught in memory, or refused by the database
    quarantined: int = 0
    quarantined_by_reason: Counter[str] = field(default_factory=Counter)
    statuses: int = 0
    acks: int = 0
    callback_errors: int = 0
    write_errors: int = 0


class Rejected(Exception):
    """A message the ingest refuses; ``kind`` is the counter class, the message the detail."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class RecentKeys:
    """Keys seen in the last ``ttl_s`` seconds, at most ``max_size`` of them (oldest dropped)."""

    def __init__(self, ttl_s: float, max_size: int) -> None:
        self.ttl_s = ttl_s
        self.max_size = max_size
        self._seen: OrderedDict[Hashable, float] = OrderedDict()

    def check_and_add(self, key: Hashable, now: float) -> bool:
        """True if key was seen within the window; otherwise remember it and return False."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.ttl_s and len(self._seen) < self.max_size:
                break
            del self._seen[oldest]
        if key in self._seen:
            return True
        self._seen[key] = now
        return False

    def __len__(self) -> int:
        return len(self._seen)


def _as_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


class Inbox:
    """A client's incoming-message queue, kept where ``messages`` can drain it. aiomqtt makes the
    queue itself from the class passed as ``Client(queue_type=inbox.queue_type)`` (its public way
    to choose one); that class records the instance here. One Inbox per client."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[aiomqtt.Message] | None = None
        inbox = self

        class _Queue(asyncio.Queue[aiomqtt.Message]):
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                inbox.queue = self

        self.queue_type: type[asyncio.Queue[aiomqtt.Message]] = _Queue


def commit_point(conn: object) -> None:
    """A barrier in the store's writer queue: a write that changes nothing (no page dirtied).
    The store commits in order, so once it is committed so is every write queued before it."""


class CommittedAcks:
    """PUBACKs for a broker's QoS 1 messages, each sent only once what the ingest wrote for it
    (reading, status, ack or quarantine row) is committed: a SIGKILL between the two leaves the
    message unacknowledged, and the broker sends it again to the persistent session (where the
    ingest's dedup catches what was committed after all). The embedded broker does the same for
    the devices themselves (edge.intake); this is the external broker's (Mosquitto) side.

    After a run of messages (the client's queue empty, or BARRIER_EVERY of them) one barrier
    write is queued; its callback acknowledges the run, in the order received. Group commit is
    kept for a lone message, acknowledged when the group's timer commits it; once URGENT_UNACKED
    messages wait, the barrier commits at once, since a broker sends a client only so many
    unacknowledged messages (Mosquitto: max_inflight_messages, 20 by default) and queues the rest.
    """

    BARRIER_EVERY: Final = DRAIN_BATCH
    URGENT_UNACKED: Final = 10

    def __init__(self, client: MqttClient, db: Database) -> None:
        self._client = client
        self._db = db
        self._run: list[aiomqtt.Message] = []
        self.unacked = 0  # taken, not yet acknowledged
        self.failed = 0  # barriers the store could not commit (their messages stay unacked)

    def took(self, message: aiomqtt.Message, *, more: bool) -> None:
        """``message`` is handled (its writes queued); ``more``: another is waiting already."""
        if message.qos == 0:
            return
        self._run.append(message)
        self.unacked += 1
        if more and len(self._run) < self.BARRIER_EVERY:
            return
        run, self._run = self._run, []
        try:
            self._db.write_nowait(commit_point, urgent=self.unacked >= self.URGENT_UNACKED,
                                  on_done=lambda ok, value: self._committed(run, ok, value))
        except StoreError as exc:
            self._committed(run, False, exc)

    def _committed(self, run: list[aiomqtt.Message], ok: bool, value: object) -> None:
        self.unacked -= len(run)
        if not ok:
            self.failed += 1
            log.error("%d message(s) not committed (%s): left unacknowledged, the broker sends "
                      "them again after a reconnect", len(run), value)
            return
        for message in run:
            self._client.ack(message)


async def messages(
    client: aiomqtt.Client, inbox: Inbox | None = None
) -> AsyncIterator[aiomqtt.Message]:
    """Every message ``client`` receives, like ``async for m in client.messages``, but cheaper
    under load: aiomqtt's iterator costs a task and an ``asyncio.wait`` per message (~10 µs) even
    when its queue already holds the next one. Here, after each wait, up to DRAIN_BATCH queued
    messages are taken from ``inbox`` (the client's queue) without one; the next wait yields to
    the loop and ends the iteration with aiomqtt.MqttError on a disconnect, as aiomqtt's does.
    Without an inbox, plain iteration. The bench's null subscriber uses this too."""
    iterator = client.messages
    queue = inbox.queue if inbox is not None else None
    if queue is None:
        async for message in iterator:
            yield message
        return
    while True:
        yield await anext(iterator)
        for _ in range(DRAIN_BATCH):
            try:
                message = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            yield message


class Ingest:
    """The uplink subscriber: ``handle`` one message, ``run`` on a client, ``run_forever``."""

    def __init__(
        self,
        db: Database,
        *,
        farm_id: str,
        known_devices: Callable[[], Mapping[str, str]],
        on_reading: ReadingCallback | None = None,
        on_ack: AckCallback | None = None,
        on_status: StatusCallback | None = None,
        quarantine_max_payload: int = quarantine.DEFAULT_MAX_PAYLOAD,
        clock: Callable[[], datetime] = utcnow,
        dedup_window_s: float = 10.0,
    ) -> None:
        self._db = db
        self.farm_id = farm_id
        self._known_devices = known_devices
        self._on_reading = on_reading
        self._on_ack = on_ack
        self._on_status = on_status
        self._max_payload = quarantine_max_payload
        self._clock = clock
        self.stats = IngestStats()
        # QoS 1 redeliveries caught before they reach the callbacks. Device-timestamped readings
        # are keyed by (device, ts, payload) and also deduplicated by the database; readings
        # without a usable timestamp only by payload, so that window is short: an identical
        # payload from the same device within it is taken for a redelivery.
        self._recent_ts = RecentKeys(ttl_s=120.0, max_size=20_000)
        self._recent_payloads = RecentKeys(ttl_s=dedup_window_s, max_size=20_000)
        self._last_touch: dict[str, float] = {}
        self._burst = BurstLog()
        # Set while subscribed on a live connection (tests and the app's readiness use it).
        self.subscribed = asyncio.Event()

    # ---- one message ----
    async def handle(self, topic: str, payload: bytes, *, redelivery: bool = False) -> None:
        """Validate, store and dispatch one message; never raises (except cancellation).

        ``redelivery``: the broker marked it a resend (MQTT DUP flag), which is what lets a
        reading without a usable timestamp be told from a new one with the same values."""
        self.stats.received += 1
        received = self._clock()
        try:
            parsed, room_id = self._route(topic, payload)
            if parsed.kind == "telemetry":
                tel = self._telemetry(topic, parsed, room_id, payload, received, redelivery)
                # The automation sees the reading now; the commit follows within one group
                # interval. Called inline (no coroutine per reading unless it evaluates).
                if tel is not None and self._on_reading is not None:
                    pending = self._invoke(self._on_reading, room_id, tel)
                    if pending is not None:
                        await self._finish(self._on_reading, pending)
            elif parsed.kind == "status":
                status = parse_status(payload, expected_device=parsed.device_id)
                self._db.write_nowait(devices.upsert_status, status, room_id, received.timestamp())
                self.stats.statuses += 1
                await self._call(self._on_status, parsed, status)
            else:
                ack = parse_ack(payload, expected_device=parsed.device_id)
                self._touch(parsed.device_id, room_id, received.timestamp())
                self.stats.acks += 1
                await self._call(self._on_ack, parsed, ack)
        except Rejected as exc:
            self._quarantine(topic, payload, exc.kind, exc.reason, received)
        except TopicError as exc:
            self._quarantine(topic, payload, "topic", str(exc), received)
        except PayloadError as exc:
            self._quarantine(topic, payload, "payload", exc.reason, received)
        except StoreError as exc:  # the store is closed: not the message's fault
            self.stats.write_errors += 1
            log.error("cannot store a message on %.200r: %s", topic, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug in validation must not stop the flow either: keep the message to look at.
            log.exception("unexpected error ingesting a message on %.200r", topic)
            self._quarantine(topic, payload, "internal", f"{type(exc).__name__}: {exc}", received)

    def _route(self, topic: str, payload: bytes) -> tuple[Topic, str]:
        parsed = parse_topic(topic)
        if parsed.farm_id != self.farm_id:
            raise Rejected(
                "farm", f"topic is for farm {parsed.farm_id!r}, this edge is {self.farm_id!r}"
            )
        if parsed.kind not in UPLINK_KINDS:
            raise Rejected("kind", f"{parsed.kind} messages are not ingested")
        room_id = self._known_devices().get(parsed.device_id)
        if room_id is None:
            raise Rejected("unknown_device", f"device {parsed.device_id!r} is not registered")
        if room_id != parsed.room_id:
            raise Rejected(
                "wrong_room",
                f"device {parsed.device_id!r} is in room {room_id!r}, not {parsed.room_id!r}",
            )
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise Rejected(
                "oversize", f"payload is {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}"
            )
        return parsed, room_id

    def _telemetry(
        self, raw_topic: str, topic: Topic, room_id: str, payload: bytes, received: datetime,
        redelivery: bool,
    ) -> Telemetry | None:
        """Validate and queue one reading for the store; the reading, or None if a duplicate."""
        tel = parse_telemetry(payload, received_at=received, expected_device=topic.device_id)
        now = time.monotonic()
        if tel.timestamp_replaced:
            # Stamped with the receive time: the same values again are a new reading (a sensor
            # without a clock reporting a steady room), unless the broker says it is a resend.
            seen = self._recent_payloads.check_and_add((tel.device_id, hash(payload)), now)
            dup = seen and redelivery
        else:
            key = (tel.device_id, tel.timestamp, hash(payload))
            dup = self._recent_ts.check_and_add(key, now)
        if dup:
            self.stats.duplicates += 1
            return None
        at = received.timestamp()
        self._db.write_nowait(
            store_telemetry, tel, room_id, at, self._touch_due(tel.device_id), raw_topic,
            payload, self._max_payload, on_done=self._stored,
        )
        self.stats.readings += 1
        return tel

    def _stored(self, ok: bool, result: Any) -> None:
        if not ok:
            self.stats.write_errors += 1
            log.error("storing a reading failed: %r", result)
        elif result == "new":
            self.stats.stored += 1
        elif result == "conflict":  # store_telemetry wrote its quarantine row
            self.stats.quarantined += 1
            self.stats.quarantined_by_reason["conflict"] += 1
            self._burst.note(time.monotonic(), "conflict", "(telemetry)",
                             "a different reading holds its timestamp")
        else:  # the database already had it: a redelivery older than the memory window
            self.stats.duplicates += 1

    def _touch_due(self, device_id: str) -> bool:
        now = time.monotonic()
        last = self._last_touch.get(device_id)
        if last is not None and now - last < TOUCH_INTERVAL_S:
            return False
        self._last_touch[device_id] = now
        return True

    def _touch(self, device_id: str, room_id: str, at: float) -> None:
        if self._touch_due(device_id):
            self._db.write_nowait(devices.touch, device_id, room_id, at)

    def refuse(
        self, topic: str, payload: bytes, kind: str, reason: str, *,
        original_size: int | None = None,
    ) -> None:
        """Quarantine a message refused before the ingest saw it (the broker's ACL, an oversize
        packet of which ``payload`` is the head); counted like the ingest's own refusals."""
        self.stats.received += 1
        self._quarantine(topic, payload, kind, reason, self._clock(), original_size)

    def _quarantine(
        self, topic: str, payload: bytes, kind: str, reason: str, received: datetime,
        original_size: int | None = None,
    ) -> None:
        self.stats.quarantined += 1
        self.stats.quarantined_by_reason[kind] += 1
        self._burst.note(time.monotonic(), kind, topic, reason)
        try:
            self._db.write_nowait(
                quarantine.insert,
                topic,
                payload,
                f"{kind}: {reason}",
                received.timestamp(),
                self._max_payload,
                original_size,
            )
        except Exception:
            self.stats.write_errors += 1
            log.exception("could not queue a quarantine row")

    async def _call(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        # Callbacks run inline (ordered, with back-pressure): they must be quick or spawn tasks.
        if callback is None:
            return
        pending = self._invoke(callback, *args)
        if pending is not None:
            await self._finish(callback, pending)

    def _invoke(self, callback: Callable[..., Any], *args: Any) -> Awaitable[Any] | None:
        """Call ``callback``; what it returned if that is to be awaited (see _finish)."""
        try:
            result = callback(*args)
        except Exception:
            self._callback_failed(callback)
            return None
        return result if result is not None and inspect.isawaitable(result) else None

    async def _finish(self, callback: Callable[..., Any], pending: Awaitable[Any]) -> None:
        try:
            await pending
        except asyncio.CancelledError:
            raise
        except Exception:
            self._callback_failed(callback)

    def _callback_failed(self, callback: Callable[..., Any]) -> None:
        self.stats.callback_errors += 1
        log.exception("ingest callback %s failed", getattr(callback, "__qualname__", callback))

    # ---- on a connection ----
    async def run(
        self, client: aiomqtt.Client, *, subscribe: bool = True, inbox: Inbox | None = None
    ) -> None:
        """Subscribe (QoS 1) to this farm's telemetry, status and ack topics and handle every
        message until the connection drops (aiomqtt.MqttError) or the task is cancelled.
        ``subscribe=False``: the embedded broker hands devices' messages over in-process
        (edge.intake); this only handles what the client was sent otherwise. ``inbox``: the
        client's (made with ``queue_type=inbox.queue_type``), drained in batches. A client made
        with ``MqttClient(manual_ack=True)`` has each message acknowledged once committed
        (CommittedAcks); any other, on receipt."""
        acks = (CommittedAcks(client, self._db)
                if isinstance(client, MqttClient) and client.manual_ack else None)
        queue = inbox.queue if inbox is not None else None
        if subscribe:
            for kind in UPLINK_KINDS:
                await client.subscribe(subscription(self.farm_id, kind), qos=1)  # type: ignore[arg-type]
        ticker = asyncio.create_task(self._flush_bursts(), name="ingest-burst-log")
        self.subscribed.set()
        try:
            async for message in messages(client, inbox):
                await self.handle(message.topic.value, _as_bytes(message.payload))
                if acks is not None:
                    acks.took(message, more=queue is not None and not queue.empty())
        finally:
            self.subscribed.clear()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self._burst.flush()

    async def _flush_bursts(self) -> None:
        while True:
            await asyncio.sleep(self._burst.window_s / 2)
            self._burst.flush(time.monotonic())

    async def run_forever(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        identifier: str | None = None,
        keepalive: int = 30,
        backoff_max_s: float = 30.0,
    ) -> None:
        """Connect, ``run``, and reconnect with jittered exponential backoff, until cancelled.

        A persistent session (fixed client id, clean_session=False) makes the broker keep QoS 1
        messages for us while we reconnect, those not acknowledged (committed) included; their
        redelivery is deduplicated.
        """
        client_id = identifier or f"smartfarm-ingest-{self.farm_id}"
        backoff = Backoff(0.5, backoff_max_s)
        while True:
            inbox = Inbox()
            try:
                async with MqttClient(
                    host,
                    port,
                    username=username,
                    password=password,
                    identifier=client_id,
                    clean_session=False,
                    keepalive=keepalive,
                    queue_type=inbox.queue_type,
                    manual_ack=True,
                ) as client:
                    log.info("ingest connected to %s:%d as %s", host, port, client_id)
                    backoff.reset()
                    await self.run(client, inbox=inbox)
            except aiomqtt.MqttError as exc:
                # Jitter keeps a farm's reconnecting clients from stampeding the broker.
                delay = backoff.delay()
                log.warning(
                    "ingest MQTT connection to %s:%d failed (%s); retrying in %.1f s",
                    host,
                    port,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
