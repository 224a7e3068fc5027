"""The AWS IoT Core uplink: the outbox's batches over MQTT 5 with an X.509 client certificate
(awsiotsdk), and the cloud's commands received on the edge's command topic.

Up. Each batch is the ``Batch`` JSON the HTTPS uplink posts (gzip unless ``compress`` is off),
published at QoS 1 on ``batches_topic``, cut into several contiguous batches where it would pass
AWS IoT's 128 KiB message limit. The edge's cloud token and the body's encoding ride along as
MQTT 5 user properties (``authorization``, ``content-encoding``); the topic rule
(deploy/aws/topic-rule-batches.json) posts the payload to ``POST /api/edge/v1/batches`` with them as
headers, so the cloud authenticates and stores it exactly as an HTTPS upload.

Acknowledgement. The cursor moves on the cloud's answer, never on the PUBACK. A PUBACK only says
AWS IoT took the message: the rule's HTTPS call can still fail (cloud down, a deploy), and one
lost batch turns every later one into a 409 gap the edge would never hear of. So the cloud
publishes its answer (the ingest endpoint's response body, unchanged: ``BatchAck``, the 409
problem with ``expected_seq``, or another problem) on ``acks_topic`` through the IoT Data API.
One batch is in flight at a time; with no conclusive answer within ``ack_timeout_s`` it is
published again, with backoff and jitter, forever. Resends, duplicate deliveries and late answers
are all safe: the cloud's high-water mark stores each seq once and every answer names the mark
(a late answer can at worst cause a resend). See deploy/aws/README.md for the cloud's side.

Down. A ``CloudCommand`` (or ``ConfigPush``) on ``commands_topic`` goes to ``Downlink.handle``,
the WebSocket's own path, so a command that arrives both ways runs once; the answer is published
on ``replies_topic`` as ``{"messages": [...]}``, the body ``POST /api/edge/v1/pending`` takes.

Health. With ``downlink_stream`` off (no WebSocket or polling to carry it), the edge's
``EdgeStatus`` (backlog, software version) goes up the same way, every ``ws_heartbeat_s``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from awscrt import mqtt5
from pydantic import TypeAdapter, ValidationError

from edge.alerts import AlertMonitor
from edge.batch_body import BatchEncoder
from edge.config import IOT_TOPICS, EdgeSettings
from edge.iot_client import IotConnection, PublishError
from edge.outbox import Outbox
from edge.store.outbox import Prepared
from edge.uplink import (
    AUTH_ALERT,
    CLOCK_WARN_S,
    REFUSED_ALERT,
    UplinkStats,
    refusal_message,
    sync_progress,
)
from shared.backoff import Backoff
from shared.models import utcnow
from shared.sync import (
    BatchAck,
    CloudCommand,
    CloudRelease,
    CommandAccepted,
    ConfigApplied,
    ConfigPush,
    DownMessage,
    EdgeStatus,
    GapError,
)

log = logging.getLogger(__name__)

# Room under max_message_bytes: a resend re-encodes (new sent_at) and may come out a bit larger.
SIZE_MARGIN: Final = 1024
# Batches are read from the outbox up to this many times the message limit (gzip shrinks JSON
# readings ~8x), then cut to fit.
READ_FACTOR: Final = 8
# MQTT 5 user properties the topic rule makes HTTP headers of (deploy/aws/topic-rule-*.json).
AUTH_PROPERTY: Final = "authorization"
ENCODING_PROPERTY: Final = "content-encoding"
# mypy 1.20 loses the TypeForm of an Annotated union alias read from its cache (arg-type
# there, none without a cache): ignore it either way.
_DOWN: Final[TypeAdapter[CloudCommand | CloudRelease | ConfigPush]] = TypeAdapter(DownMessage)  # type: ignore[arg-type,unused-ignore]

Handle = Callable[
    [CloudCommand | CloudRelease | ConfigPush], Awaitable[CommandAccepted | ConfigApplied | None]
]


class OversizedRecord(ValueError):
    """One record alone does not fit in a message."""


@dataclass(frozen=True, slots=True)
class Part:
    """A contiguous run of one batch's records that fits in one message."""

    first_seq: int
    records: Sequence[bytes]

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.records) - 1


@dataclass(frozen=True, slots=True)
class Problem:
    """An answer that is neither an ack nor a gap: the cloud refused or failed the batch."""

    status: int | None
    detail: str


def split(
    first_seq: int, records: Sequence[bytes], size_of: Callable[[Part], int], limit: int
) -> list[Part]:
    """Cut ``records`` (seqs from ``first_seq``) into parts whose encoded size is at most
    ``limit``; the first guess for each part is the size of the one before."""
    parts: list[Part] = []
    start, guess = 0, len(records)
    while start < len(records):
        count = min(guess, len(records) - start)
        while True:
            part = Part(first_seq + start, records[start:start + count])
            size = size_of(part)
            if size <= limit:
                break
            if count == 1:
                raise OversizedRecord(f"record seq {part.first_seq} alone encodes to {size} bytes")
            count = max(1, min(count - 1, int(count * limit / size * 0.9)))
        parts.append(part)
        start += count
        guess = count
    return parts


def parse_answer(raw: bytes) -> BatchAck | GapError | Problem | None:
    """What the cloud published on the acks topic (None: unreadable)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    try:
        if "acked_seq" in doc:
            return BatchAck.model_validate(doc)
        if "expected_seq" in doc:
            return GapError.model_validate(doc)
    except ValidationError:
        return None
    status = doc.get("status")
    detail = doc.get("detail") or doc.get("title")
    failures = doc.get("failures")  # the topic rule's error action: the HTTPS call failed
    if not detail and isinstance(failures, list) and failures and isinstance(failures[0], dict):
        detail = f"topic rule: {failures[0].get('errorMessage', 'the action failed')}"
    return Problem(status if isinstance(status, int) else None, str(detail or "")[:300])


class IotUplink:
    def __init__(
        self,
        settings: EdgeSettings,
        outbox: Outbox,
        *,
        handle: Handle | None = None,
        alerts: AlertMonitor | None = None,
        clock: Callable[[], datetime] = utcnow,
        health: Callable[[], Awaitable[EdgeStatus]] | None = None,
    ) -> None:
        cloud = settings.cloud
        iot = cloud.aws_iot
        if not (cloud.enabled and iot.enabled):
            raise ValueError("the AWS IoT uplink needs cloud.url, cloud.edge_id, a cloud token"
                             " and cloud.aws_iot enabled with an endpoint")
        assert cloud.edge_id is not None and cloud.token is not None
        self._settings = settings
        self._cloud = cloud
        self._iot = iot
        self._edge_id = cloud.edge_id
        self._client_id = iot.client_id or cloud.edge_id
        self.topics = {name: iot.topic(name, settings.farm_id, cloud.edge_id)
                       for name in IOT_TOPICS}
        self._properties = [
            mqtt5.UserProperty(AUTH_PROPERTY, f"Bearer {cloud.token.get_secret_value()}"),
            mqtt5.UserProperty(ENCODING_PROPERTY, "gzip" if iot.compress else "identity"),
        ]
        self._encoder = BatchEncoder(cloud.edge_id, settings.farm_id, clock)
        self._outbox = outbox
        self._handle = handle
        self._alerts = alerts
        # Reported here only when no WebSocket/poll downlink runs beside (it reports it there).
        self._health = None if iot.downlink_stream else health
        self._clock = clock
        self._answers: asyncio.Queue[bytes] = asyncio.Queue()
        self._commands: asyncio.Queue[bytes] = asyncio.Queue()
        self.connection: IotConnection | None = None
        self._send_after = 0.0  # monotonic time the byte-rate budget allows the next publish
        self.stats = UplinkStats()
        self.messages = 0  # batch messages published (parts, resends included)
        self.commands = 0
        self.clock_offset_s: float | None = None

    # ---- the loops ----
    async def run(self) -> None:
        """Connect, then upload, take commands and keep the outbox bounded until cancelled."""
        self.clock_offset_s = await self._outbox.clock_offset()
        self.stats.last_acked_seq = (await self._outbox.marks()).acked_seq
        cloud = self._cloud
        connection = IotConnection(
            self._iot, client_id=self._client_id, resolve=self._settings.resolve,
            routes={self.topics["acks"]: self._answers, self.topics["commands"]: self._commands},
            reconnect_s=(cloud.backoff_initial_s, cloud.backoff_max_s),
        )
        self.connection = connection
        log.info("syncing over AWS IoT Core %s as %s: batches on %s", self._iot.endpoint,
                 self._client_id, self.topics["batches"])
        connection.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._outbox.maintain_forever(self._cloud.prune_interval_s),
                                  name="iot-uplink-maintenance")
                tasks.create_task(self._upload_loop(), name="iot-uplink-upload")
                tasks.create_task(self._command_loop(), name="iot-uplink-commands")
                if self._health is not None:
                    tasks.create_task(self._health_loop(self._health), name="iot-uplink-health")
        finally:
            await asyncio.shield(self._outbox.flush_quietly())
            await asyncio.shield(connection.stop())

    async def _upload_loop(self) -> None:
        cfg = self._cloud
        read_bytes = min(cfg.batch_max_bytes, self._iot.max_message_bytes * (
            READ_FACTOR if self._iot.compress else 1))
        while True:
            batch = await self._outbox.next_batch(cfg.batch_max_records, read_bytes, new=False)
            if batch is None:
                await self._outbox.wait_for_batch(
                    cfg.batch_max_records, cfg.batch_max_age_s, cfg.poll_interval_s)
                batch = await self._outbox.next_batch(cfg.batch_max_records, read_bytes)
                if batch is None:
                    continue
            await self.send(batch)

    async def _health_loop(self, health: Callable[[], Awaitable[EdgeStatus]]) -> None:
        """The edge's health on the replies topic once connected, then every heartbeat."""
        assert self.connection is not None
        while True:
            await self.connection.ready.wait()
            try:
                body = json.dumps({"messages": [(await health()).model_dump(mode="json")]})
                await self.connection.publish(self.topics["replies"], body.encode(),
                                               user_properties=self._properties[:1])
            except PublishError as exc:
                log.debug("edge health not published: %s", exc)
            except (sqlite3.Error, ValueError) as exc:  # a busy store, a value the model refuses
                log.warning("edge health not reported: %s", exc)
            await asyncio.sleep(self._cloud.ws_heartbeat_s)

    async def _command_loop(self) -> None:
        while True:
            raw = await self._commands.get()
            try:
                message = _DOWN.validate_json(raw)
            except ValidationError as exc:
                log.warning("ignoring an unreadable message on %s: %s", self.topics["commands"],
                            exc.errors(include_url=False)[0]["msg"])
                continue
            self.commands += 1
            if self._handle is None:
                log.warning("a %s arrived but this edge has no downlink", type(message).__name__)
                continue
            try:
                answer = await self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handling a %s from AWS IoT failed", type(message).__name__)
                continue
            if answer is None:
                continue
            body = json.dumps({"messages": [answer.model_dump(mode="json")]}).encode()
            try:
                assert self.connection is not None
                await self.connection.publish(self.topics["replies"], body,
                                               user_properties=self._properties[:1])
            except PublishError as exc:
                # The command's state also goes up in the outbox; only this receipt is lost.
                log.warning("answer to %s not published: %s", type(message).__name__, exc)

    # ---- one batch ----
    def encode(self, part: Part) -> bytes:
        """The part as a Batch document (gzip unless compress is off); sent_at is now."""
        return self._encoder.body(part.first_seq, part.records, compress=self._iot.compress)

    async def send(self, batch: Prepared) -> None:
        """Deliver one outbox batch (in parts that fit a message) until the cloud has it all,
        moving the cursor on each answer; a gap rewinds the cursor to the cloud's mark."""
        limit = self._iot.max_message_bytes - SIZE_MARGIN
        parts = await asyncio.to_thread(
            split, batch.first_seq, batch.records, lambda part: len(self.encode(part)), limit
        )
        acked = 0
        for part in parts:
            if part.last_seq <= acked:  # the cloud already had it (an answer named a later mark)
                continue
            answer = await self._deliver(part)
            if isinstance(answer, GapError):
                self.stats.gaps += 1
                if not await self._outbox.rewind(answer.expected_seq):
                    await asyncio.sleep(self._cloud.backoff_max_s)  # stuck: an alert is up
                return
            if await self._accepted(batch, part, answer) != "ok":
                return
            acked = answer.acked_seq

    async def _deliver(self, part: Part) -> BatchAck | GapError:
        """Publish the part until an answer settles it: an ack of its last seq, or a gap."""
        assert self.connection is not None
        connection = self.connection
        backoff = Backoff(self._cloud.backoff_initial_s, self._cloud.backoff_max_s)
        while True:
            await connection.ready.wait()
            payload = self.encode(part)
            await self._pace(len(payload))
            try:
                await connection.publish(self.topics["batches"], payload,
                                         user_properties=self._properties)
                self.messages += 1
                answer = await self._answer(part)
            except PublishError as exc:
                answer = Problem(None, str(exc))
            if isinstance(answer, BatchAck | GapError):
                return answer
            delay = backoff.delay()
            await self._failed(part, answer, backoff.failures)
            await asyncio.sleep(delay)

    async def _answer(self, part: Part) -> BatchAck | GapError | Problem:
        """The first answer that settles ``part`` or reports a failure; answers about earlier
        messages (acks of a lower mark) are skipped. A Problem when none comes in time."""
        deadline = time.monotonic() + self._iot.ack_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return Problem(None, f"no answer from the cloud in {self._iot.ack_timeout_s:g} s")
            try:
                raw = await asyncio.wait_for(self._answers.get(), left)
            except TimeoutError:
                continue
            answer = parse_answer(raw)
            if answer is None:
                log.warning("ignoring an unreadable answer on %s", self.topics["acks"])
            elif not isinstance(answer, BatchAck) or answer.acked_seq >= part.last_seq:
                return answer

    async def _pace(self, size: int) -> None:
        """Keep under max_bytes_per_s (AWS IoT throttles a connection past 512 KiB/s)."""
        now = time.monotonic()
        start = max(now, self._send_after)
        self._send_after = start + size / self._iot.max_bytes_per_s
        if start > now:
            await asyncio.sleep(start - now)

    async def _failed(self, part: Part, problem: Problem, attempt: int) -> None:
        stats = self.stats
        stats.attempts_failed += 1
        stats.failures_in_row += 1
        status = problem.status
        stats.last_error = f"HTTP {status}: {problem.detail}" if status else problem.detail
        stats.last_error_at = self._clock().timestamp()
        log.warning("AWS IoT upload of seqs %d..%d (%d records) failed: %s; attempt %d",
                    part.first_seq, part.last_seq, len(part.records), stats.last_error, attempt)
        if self._alerts is None or status is None:
            return
        if status in (401, 403):
            await self._alerts.raise_alert(
                AUTH_ALERT, kind="sync_auth", severity="critical",
                # 401: an unknown token; 403: a good one used as another edge or farm, which
                # the cloud's detail names. Worded as the HTTPS uplink words it.
                message=refusal_message(status, PermissionError(problem.detail)),
            )
        elif 400 <= status < 500 and status not in (408, 429):
            await self._alerts.raise_alert(
                REFUSED_ALERT, kind="sync_refused", severity="critical",
                message=f"the cloud refuses batch seq {part.first_seq}..{part.last_seq}:"
                        f" {stats.last_error}",
            )

    async def _accepted(self, batch: Prepared, part: Part, ack: BatchAck) -> str:
        if ack.clock_offset_s is not None:
            if abs(ack.clock_offset_s) > CLOCK_WARN_S and (
                self.clock_offset_s is None or abs(self.clock_offset_s) <= CLOCK_WARN_S
            ):
                log.warning("the edge clock is %.0f s off the cloud's", -ack.clock_offset_s)
            self.clock_offset_s = ack.clock_offset_s
        outcome = await self._outbox.confirmed(batch, ack.acked_seq, ack.clock_offset_s)
        stats = self.stats
        if stats.failures_in_row:
            log.info("cloud reachable over AWS IoT again after %d failed attempt(s)",
                     stats.failures_in_row)
            if self._alerts is not None:
                await self._alerts.resolve(AUTH_ALERT)
                await self._alerts.resolve(REFUSED_ALERT)
        stats.failures_in_row = 0
        stats.batches += 1
        stats.records += len(part.records)
        stats.duplicates += ack.duplicates
        stats.last_success_at = self._clock().timestamp()
        stats.last_acked_seq = max(stats.last_acked_seq, ack.acked_seq)
        log.debug("seqs %d..%d acked at %d over AWS IoT (%d new, %d duplicates)",
                  part.first_seq, part.last_seq, ack.acked_seq, ack.inserted, ack.duplicates)
        return outcome

    # ---- for the local page ----
    async def status(self) -> dict[str, Any]:
        """Backlog, last success and last error, as edge/uplink.py's, plus the connection."""
        connection = self.connection
        return {
            "enabled": True,
            "transport": "aws-iot",
            "cloud": self._cloud.url,
            "endpoint": f"{self._iot.endpoint}:{self._iot.port}",
            "client_id": self._client_id,
            "connected": connection is not None and connection.ready.is_set(),
            "connection_error": None if connection is None else connection.last_error,
            "edge_id": self._edge_id,
            **await sync_progress(self._outbox, self.stats, self._clock().timestamp()),
            "messages": self.messages,
            "commands": self.commands,
            "clock_offset_s": self.clock_offset_s,
        }

