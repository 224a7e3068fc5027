"""The uploader: outbox batches to the cloud's ``POST /api/edge/v1/batches``, at least once.

A batch goes when it is full (``batch_max_records``), when its oldest record has waited
``batch_max_age_s``, or at once when it holds a command, command state, ack, alert or config
change. The body is the gzip-compressed JSON ``Batch`` (shared/sync.py) with the edge's bearer
token. The cursor moves only on a ``BatchAck``; a 409 ``GapError`` rewinds it to the cloud's mark;
network errors, timeouts and 5xx are retried forever with exponential backoff and jitter. The same
batch (same seqs, same records) is resent until the cloud answers, so the cloud's high-water mark
makes every retry, replay and overlap safe. While a backlog drains, two batches are in flight:
the next full batch is read and given its seqs while the one before is on its way, and sent at
once. Answers are handled in seq order; a 409 for the later batch while the earlier one is not
yet stored is sent again once it is. After a full batch, the rest goes without waiting for age.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Final

import aiohttp
from aiohttp import web
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_exponential_jitter

from edge.alerts import AlertMonitor
from edge.batch_body import BatchEncoder
from edge.config import EdgeSettings
from edge.outbox import Outbox
from edge.store.outbox import Prepared
from shared.models import utcnow
from shared.sync import BATCH_INTERVAL_HEADER, BatchAck, EdgeStatus, GapError, batch_interval

log = logging.getLogger(__name__)

BATCHES_PATH: Final = "/api/edge/v1/batches"
PROGRESS_LOG_S: Final = 60.0
AUTH_ALERT: Final = "sync:auth"
REFUSED_ALERT: Final = "sync:refused"
CLOCK_WARN_S: Final = 60.0
# Batches in flight at once during a backlog drain: the cloud decodes one while it stores the one
# before (its per-edge lock keeps them in seq order; a 409 for the later one is resent).
WINDOW: Final = 2

# What /api/stats shows under "sync" (set by edge/app.py on the local API app).
SyncStatusSource = Callable[[], Awaitable[dict[str, Any]]]
SYNC_STATUS: web.AppKey[SyncStatusSource] = web.AppKey("sync_status")


@dataclass(slots=True)
class _Flight:
    """A batch on its way: the task sending it, and whether its answer has been handled."""

    batch: Prepared
    task: asyncio.Task[BatchAck | GapError]
    settled: asyncio.Event

    @property
    def last_seq(self) -> int:
        return self.batch.last_seq


async def _cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` and wait until they are done (their outcome no longer matters)."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class UploadError(Exception):
    """One upload attempt failed in a way worth retrying (network, timeout, 5xx, …)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def problem_detail(raw: bytes) -> str:
    """The ``detail`` of a problem+json answer, else the start of the body."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("detail"), str):
        return str(doc["detail"])[:500]
    return raw[:300].decode("utf-8", "replace")


def refusal_message(status: int, exc: BaseException | None) -> str:
    """The alert for a 401/403 answer to an upload. A 401 is the token itself (unknown or
    revoked); a 403 is a known token used for what it may not write (another edge's id or farm
    in this edge's config, or another farm's rooms), which the cloud names in its detail."""
    if status == 401:
        return ("the cloud does not know this edge's token (HTTP 401, unknown or revoked):"
                " register the edge again with a valid token (smartfarm edge register)")
    detail = str(exc).removeprefix(f"HTTP {status}: ") if exc is not None else ""
    return f"the cloud refuses this edge's batches (HTTP {status}): {detail}"


@dataclass(slots=True)
class UplinkStats:
    batches: int = 0
    records: int = 0
    duplicates: int = 0  # records the cloud already had (a retry after a lost answer)
    attempts_failed: int = 0
    failures_in_row: int = 0
    gaps: int = 0
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_acked_seq: int = 0
    # The batch interval the cloud asked for in its last answer (0: this edge's own setting).
    cloud_interval_s: float = 0.0


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def software_version() -> str | None:
    """This edge's installed smartfarm version (None when not installed as a package)."""
    try:
        return metadata.version("smartfarm")
    except metadata.PackageNotFoundError:
        return None


async def edge_health(outbox: Outbox) -> EdgeStatus:
    """What the edge tells the cloud about itself on its stream (the farm page shows it)."""
    backlog = await outbox.backlog()
    return EdgeStatus(backlog=backlog.records, software_version=software_version())


async def sync_progress(outbox: Outbox, stats: UplinkStats, now: float) -> dict[str, Any]:
    """What either transport reports about upload progress: backlog and the last outcomes."""
    backlog = await outbox.backlog()
    return {
        "acked_seq": backlog.acked_seq,
        "next_seq": backlog.next_seq,
        "backlog_records": backlog.records,
        "backlog_exact": backlog.exact,
        "oldest_unsent_at": _iso(backlog.oldest_at),
        "oldest_unsent_age_s": None if backlog.oldest_at is None
        else round(max(0.0, now - backlog.oldest_at), 1),
        "last_success_at": _iso(stats.last_success_at),
        "last_error": stats.last_error,
        "last_error_at": _iso(stats.last_error_at),
        "failures_in_row": stats.failures_in_row,
        "batches": stats.batches,
        "records": stats.records,
        "duplicates": stats.duplicates,
        "batch_interval_asked_s": stats.cloud_interval_s,
        "merged_readings": outbox.stats.merged_readings,
        "pruned_readings": outbox.stats.pruned_readings,
    }


class Uplink:
    def __init__(
        self,
        settings: EdgeSettings,
        outbox: Outbox,
        *,
        alerts: AlertMonitor | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        cloud = settings.cloud
        if not cloud.enabled:
            raise ValueError("the uplink needs cloud.url, cloud.edge_id and a cloud token")
        assert cloud.edge_id is not None and cloud.token is not None
        self._cloud = cloud
        self._edge_id = cloud.edge_id
        self._url = cloud.endpoint(BATCHES_PATH)
        self._headers = {
            "Authorization": f"Bearer {cloud.token.get_secret_value()}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "X-Edge-Id": cloud.edge_id,
        }
        self._outbox = outbox
        self._alerts = alerts
        self._clock = clock
        self._encoder = BatchEncoder(cloud.edge_id, settings.farm_id, clock)
        self.stats = UplinkStats()
        self.clock_offset_s: float | None = None
        self._progress = (time.monotonic(), 0, 0)  # (since, batches, records) for the log

    # ---- the loop ----
    async def run(self) -> None:
        """Upload until cancelled; prunes and enforces the cap every prune_interval_s."""
        self.clock_offset_s = await self._outbox.clock_offset()
        self.stats.last_acked_seq = (await self._outbox.marks()).acked_seq
        timeout = aiohttp.ClientTimeout(total=self._cloud.request_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._outbox.maintain_forever(self._cloud.prune_interval_s),
                                      name="uplink-maintenance")
                    tasks.create_task(self._upload_loop(session), name="uplink-upload")
        finally:
            await asyncio.shield(self._outbox.flush_quietly())

    async def _upload_loop(self, session: aiohttp.ClientSession) -> None:
        cfg = self._cloud
        flights: deque[_Flight] = deque()
        preparing: asyncio.Task[Prepared | None] | None = None
        tried_after = 0  # the last seq after which the next full batch was looked for
        draining = False  # the last batch was full: the rest goes without waiting for its age
        try:
            while True:
                if not flights and preparing is not None:
                    # The batch prepared after the last one answered: it leaves next.
                    following, preparing = await preparing, None
                    if following is not None:
                        flights.append(self._launch(session, following, None))
                if not flights:
                    batch = await self._outbox.next_batch(
                        cfg.batch_max_records, cfg.batch_max_bytes, new=draining
                    )
                    if batch is None:
                        await self._outbox.wait_for_batch(
                            cfg.batch_max_records, self.batch_age_s(), cfg.poll_interval_s)
                        batch = await self._outbox.next_batch(
                            cfg.batch_max_records, cfg.batch_max_bytes
                        )
                        if batch is None:
                            continue
                    flights.append(self._launch(session, batch, None))
                newest = flights[-1]
                if preparing is None and len(flights) < WINDOW and tried_after != newest.last_seq:
                    # The batch after the newest one in flight, given its seqs now (only when a
                    # full one waits: ordinary batching, by age, is left alone).
                    tried_after = newest.last_seq
                    preparing = asyncio.create_task(
                        self._outbox.next_after(
                            newest.batch, cfg.batch_max_records, cfg.batch_max_bytes
                        ),
                        name="uplink-prepare-ahead",
                    )
                head = flights[0]
                waits: set[asyncio.Future[Any]] = {head.task}
                if preparing is not None:
                    waits.add(preparing)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if preparing is not None and preparing.done():
                    following, preparing = preparing.result(), None
                    if following is not None:
                        flights.append(self._launch(session, following, flights[-1].settled))
                if not head.task.done():
                    continue
                flights.popleft()
                answer = head.task.result()  # a hard failure propagates (and ends the rest)
                if not await self._answered(head.batch, answer):
                    # A gap, or an answer behind this edge's cursor: everything after it is
                    # sent again from the cloud's mark (the cursor was moved accordingly).
                    await _cancel(preparing, *(f.task for f in flights))
                    flights.clear()
                    preparing, tried_after, draining = None, 0, False
                else:
                    draining = len(head.batch.records) >= cfg.batch_max_records
                head.settled.set()
        finally:
            # Cancelled (shutting down) or failed hard: a preparation cut short may still have
            # given out its seqs; they are resent from the stored segment like any batch in
            # flight.
            await _cancel(preparing, *(f.task for f in flights))

    def _launch(
        self, session: aiohttp.ClientSession, batch: Prepared, before: asyncio.Event | None
    ) -> _Flight:
        settled = asyncio.Event()
        task = asyncio.create_task(
            self._deliver(session, batch, before), name=f"uplink-batch-{batch.first_seq}"
        )
        return _Flight(batch, task, settled)

    # ---- one batch ----
    async def _deliver(
        self, session: aiohttp.ClientSession, batch: Prepared, before: asyncio.Event | None
    ) -> BatchAck | GapError:
        """Send one batch until the cloud answers it. ``before`` is set once the batch in flight
        ahead of this one is settled: a 409 naming a seq ahead of this batch may only mean the
        cloud has not stored that one yet, so this batch is sent again once it has."""
        cfg = self._cloud
        while True:
            retrying = AsyncRetrying(
                wait=wait_exponential_jitter(
                    initial=cfg.backoff_initial_s, max=cfg.backoff_max_s,
                    jitter=cfg.backoff_initial_s,
                ),
                retry=retry_if_exception_type(UploadError),
                before_sleep=functools.partial(self._failed, batch),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    answer = await self._post(session, batch)
            if isinstance(answer, GapError) and before is not None:
                log.debug("seqs %d..%d arrived before the batch ahead of them was stored:"
                          " sending them again once it is", batch.first_seq, batch.last_seq)
                await before.wait()
                before = None
                continue
            return answer

    async def _answered(self, batch: Prepared, answer: BatchAck | GapError) -> bool:
        """Move the cursor on the cloud's answer to ``batch``; False when what was sent after
        it must be sent again (a 409 gap, or an answer behind this edge's cursor)."""
        if isinstance(answer, GapError):
            self.stats.gaps += 1
            if not await self._outbox.rewind(answer.expected_seq):
                await asyncio.sleep(self._cloud.backoff_max_s)  # stuck: an alert is up
            return False
        return await self._succeeded(batch, answer)

    def body(self, batch: Prepared) -> bytes:
        """The gzip-compressed Batch JSON; sent_at is the edge clock at this attempt."""
        return self._encoder.body(batch.first_seq, batch.records)

    async def _post(
        self, session: aiohttp.ClientSession, batch: Prepared
    ) -> BatchAck | GapError:
        # Compressing 5,000 records takes milliseconds: off the event loop (zlib lets go of the
        # GIL), so the next batch's preparation and the down channel go on meanwhile.
        body = await asyncio.to_thread(self.body, batch)
        try:
            async with session.post(self._url, data=body, headers=self._headers) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UploadError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        try:
            if 200 <= status < 300:
                ack = BatchAck.model_validate_json(raw)
                self._paced(batch_interval(r.headers.get(BATCH_INTERVAL_HEADER)))
                return ack
            if status == 409:
                return GapError.model_validate_json(raw)
        except ValidationError as exc:
            raise UploadError(f"HTTP {status} with an unreadable body", status) from exc
        raise UploadError(f"HTTP {status}: {problem_detail(raw)}", status)

    def batch_age_s(self) -> float:
        """How long readings gather before a batch: this edge's ``batch_max_age_s``, or longer
        while the cloud asks for it (urgent records and full batches never wait)."""
        return max(self._cloud.batch_max_age_s, self.stats.cloud_interval_s)

    def _paced(self, interval_s: float) -> None:
        before, self.stats.cloud_interval_s = self.stats.cloud_interval_s, interval_s
        if (before > 0) != (interval_s > 0):
            log.info("the cloud asks for a batch every %.1f s while it is busy"
                     if interval_s else "the cloud no longer asks for slower batches (was every"
                     " %.1f s)", interval_s or before)

    async def _failed(self, batch: Prepared, state: RetryCallState) -> None:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        status = getattr(exc, "status", None)
        self.stats.attempts_failed += 1
        self.stats.failures_in_row += 1
        self.stats.last_error = str(exc)
        self.stats.last_error_at = self._clock().timestamp()
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "upload of seqs %d..%d (%d records) failed: %s; attempt %d, retrying in %.1f s",
            batch.first_seq, batch.last_seq, len(batch.records), exc, state.attempt_number, delay,
        )
        if self._alerts is None or status is None:
            return
        if status in (401, 403):
            await self._alerts.raise_alert(
                AUTH_ALERT, kind="sync_auth", severity="critical",
                message=refusal_message(status, exc),
            )
        elif 400 <= status < 500 and status not in (408, 429):
            await self._alerts.raise_alert(
                REFUSED_ALERT, kind="sync_refused", severity="critical",
                message=f"the cloud refuses batch seq {batch.first_seq}..{batch.last_seq}: {exc}",
            )

    async def _succeeded(self, batch: Prepared, ack: BatchAck) -> bool:
        if ack.clock_offset_s is not None:
            if abs(ack.clock_offset_s) > CLOCK_WARN_S and (
                self.clock_offset_s is None or abs(self.clock_offset_s) <= CLOCK_WARN_S
            ):
                log.warning("the edge clock is %.0f s off the cloud's", -ack.clock_offset_s)
            self.clock_offset_s = ack.clock_offset_s
        if ack.acked_seq != batch.last_seq and (
            await self._outbox.marks()
        ).acked_seq >= batch.last_seq:
            # The answer to the batch before this one already named a mark past this batch
            # (it was resent after this one was stored): nothing left to confirm.
            outcome = "ok"
        else:
            outcome = await self._outbox.confirmed(batch, ack.acked_seq, ack.clock_offset_s)
        if outcome == "stale":
            # An answer that confirms nothing of this batch: the cloud is behind this edge's
            # cursor without saying 409. Resend from its mark rather than loop on this batch.
            log.warning("the cloud answered batch %d..%d with mark %d: resending from %d",
                        batch.first_seq, batch.last_seq, ack.acked_seq, ack.acked_seq + 1)
            self.stats.gaps += 1
            if ack.acked_seq < batch.first_seq - 1:
                await self._outbox.rewind(ack.acked_seq + 1)
            await asyncio.sleep(self._cloud.backoff_max_s)
            return False
        stats = self.stats
        if stats.failures_in_row:
            log.info("cloud reachable again after %d failed attempt(s)", stats.failures_in_row)
            if self._alerts is not None:
                await self._alerts.resolve(AUTH_ALERT)
                await self._alerts.resolve(REFUSED_ALERT)
        stats.failures_in_row = 0
        stats.batches += 1
        stats.records += len(batch.records)
        stats.duplicates += ack.duplicates
        stats.last_success_at = self._clock().timestamp()
        stats.last_acked_seq = ack.acked_seq
        log.debug("batch %d..%d acked at %d (%d new, %d duplicates)", batch.first_seq,
                  batch.last_seq, ack.acked_seq, ack.inserted, ack.duplicates)
        since, batches, records = self._progress
        if time.monotonic() - since >= PROGRESS_LOG_S:
            log.info("uploaded %d records in %d batches in %.0f s; cloud has every seq up to %d",
                     stats.records - records, stats.batches - batches,
                     time.monotonic() - since, ack.acked_seq)
            self._progress = (time.monotonic(), stats.batches, stats.records)
        return outcome != "rebased"  # renumbered: what was in flight is sent again

    # ---- for the local page ----
    async def status(self) -> dict[str, Any]:
        """Backlog size, oldest unsent record, last success and last error (JSON-ready)."""
        return {
            "enabled": True,
            "cloud": self._cloud.url,
            "edge_id": self._edge_id,
            **await sync_progress(self._outbox, self.stats, self._clock().timestamp()),
            "clock_offset_s": self.clock_offset_s,
        }
