"""The outbox: what the edge owes the cloud, in seq order, and the disk it may take.

Records are appended by the store (triggers, and acks in edge/commands.py) in the same transaction
as the rows they mirror; readings are read from their own table. This module hands the uploader
its next batch (a resend first), moves the cursor on the cloud's answers, and keeps the disk
bounded:

- **Retention.** What the cloud confirmed is kept ``retention_days`` (local history, and resends
  if the cloud ever loses data), then pruned: confirmed segments and their outbox rows, and
  confirmed readings older than that.
- **The cap policy.** Unconfirmed records are never dropped. Past ``max_unsynced_rows`` of them
  (the cloud unreachable for days), the oldest readings not yet sent are merged into one mean per
  device, metric set and minute (the first reading of the minute keeps its row with the means and
  a count; the others are deleted, locally too), until the backlog is back under 90 % of the cap,
  and a critical alert says what was merged. If nothing is left to merge, a second alert says so
  and the backlog keeps growing: nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final

from edge.alerts import AlertMonitor
from edge.store import outbox as rows
from edge.store.db import Database
from shared.models import utcnow

log = logging.getLogger(__name__)

MERGE_PERIOD_S: Final = 60.0
MERGE_CHUNK: Final = 20_000
# Exact counts scan the backlog; above this estimate the status shows the (upper-bound) estimate.
EXACT_COUNT_LIMIT: Final = 200_000
CAP_ALERT: Final = "sync:backlog_cap"
FULL_ALERT: Final = "sync:backlog_full"
GAP_ALERT: Final = "sync:gap"
# An ack held for the next batch's write is stored on its own after this long without one.
ACK_FLUSH_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Backlog:
    records: int
    exact: bool
    oldest_at: float | None  # edge time of the oldest unconfirmed record
    acked_seq: int
    next_seq: int


@dataclass(slots=True)
class OutboxStats:
    pruned_segments: int = 0
    pruned_outbox_rows: int = 0
    pruned_readings: int = 0
    merged_readings: int = 0  # readings folded into 1-minute means by the cap policy
    rebases: int = 0
    rewinds: int = 0


class Outbox:
    def __init__(
        self,
        db: Database,
        *,
        retention_days: float,
        max_unsynced_rows: int,
        alerts: AlertMonitor | None = None,
        clock: Callable[[], datetime] = utcnow,
        merge_period_s: float = MERGE_PERIOD_S,
    ) -> None:
        self._db = db
        self._retention_s = retention_days * 86_400
        self._cap = max_unsynced_rows
        self._alerts = alerts
        self._clock = clock
        self._merge_period_s = merge_period_s
        # Seq bookkeeping and merging never interleave: a batch is read, then assigned.
        self._lock = asyncio.Lock()
        self._series = rows.SeriesCache()
        self._merged_upto = 0  # readings up to this id were already offered to the merge
        self._held_ack: rows.Marks | None = None
        self.stats = OutboxStats()

    def _now(self) -> float:
        return self._clock().timestamp()

    # ---- batches ----
    # An ack is held in memory and stored with the next batch's assignment (one small write per
    # batch instead of two): losing it to a crash only means that batch is sent once more, and
    # the cloud answers it as duplicates.
    async def marks(self) -> rows.Marks:
        """The cursor, with an ack not yet stored taken into account."""
        stored = await self._db.read(rows.marks)
        return self._effective(stored)

    def _effective(self, stored: rows.Marks) -> rows.Marks:
        held = self._held_ack
        if held is None or held.acked_seq <= stored.acked_seq:
            return stored
        return replace(stored, acked_seq=held.acked_seq, acked_outbox=held.acked_outbox,
                       acked_reading=held.acked_reading)

    async def probe(self) -> rows.Probe:
        def run(conn: sqlite3.Connection) -> rows.Probe:
            return rows.probe(conn, rows.marks(conn))

        return await self._db.read(run)

    async def next_batch(
        self, max_records: int, max_bytes: int, *, new: bool = True
    ) -> rows.Prepared | None:
        """The records to send next: the rest of a segment already given seqs (after a restart or
        a rewind), else, with ``new``, fresh records given seqs now. None when nothing waits."""
        async with self._lock:
            marks = await self.marks()
            segment = await self._db.read(rows.segment_containing, marks.acked_seq + 1)
            if segment is not None:
                return await self._db.read(
                    rows.prepare_segment, self._series, segment, marks.acked_seq + 1
                )
            if marks.next_seq != marks.acked_seq + 1:
                raise rows.OutboxError(
                    f"seqs {marks.acked_seq + 1}..{marks.next_seq - 1} were given out but their"
                    " segment is gone"
                )
            if not new:
                return None
            prepared = await self._db.read(
                rows.prepare_new, self._series, max_records, max_bytes, self._now()
            )
            if prepared is not None:
                # Durable: these seqs leave the edge next, and the cloud keeps whatever it gets
                # under them. Were the assignment lost to a power cut, the same seqs would be
                # given to other records (a command made at boot, …) that the cloud would then
                # skip as duplicates. Urgent: the batch waits for this commit, and waiting out
                # the group commit interval per batch would cap a backlog drain at a few
                # batches a second. One fsync per batch (up to 5,000 records) is cheap.
                await self._db.write(rows.assign, prepared.segment, self._held_ack,
                                     urgent=True, durable=True)
                self._held_ack = None
            return prepared

    async def next_after(
        self, batch: rows.Prepared, max_records: int, max_bytes: int
    ) -> rows.Prepared | None:
        """While ``batch`` (the newest segment) is in flight: the batch after it, given its seqs
        now, so it can leave the moment the cloud answers (a backlog drain overlaps reading and
        encoding here with the cloud storing the batch before). Only when a full batch waits:
        ordinary batching, by age, is left alone. None otherwise, or when the cursor moved."""
        async with self._lock:
            marks = await self.marks()
            if marks.next_seq != batch.last_seq + 1:
                return None
            probe = await self.probe()
            if probe.unassigned < max_records:
                return None
            prepared = await self._db.read(
                rows.prepare_new, self._series, max_records, max_bytes, self._now()
            )
            if prepared is not None:
                await self._db.write(rows.assign, prepared.segment, self._held_ack,
                                     urgent=True, durable=True)
                self._held_ack = None
            return prepared

    async def confirmed(
        self, batch: rows.Prepared, acked_seq: int, clock_offset_s: float | None = None
    ) -> str:
        """The cloud stored every seq up to ``acked_seq`` (its answer to ``batch``). Returns what
        it meant: "ok", "stale" (nothing new), "rebased" (the cloud is ahead of anything this edge
        gave out: its database was replaced)."""
        async with self._lock:
            marks = await self.marks()
            now = self._now()
            if clock_offset_s is not None:
                self._db.write_nowait(rows.set_state, {"clock_offset_s": clock_offset_s}, now)
            if acked_seq > marks.next_seq - 1:
                await self._store_held()
                dropped = await self._db.write(rows.rebase, acked_seq, now, urgent=True)
                self.stats.rebases += 1
                log.warning(
                    "the cloud already holds seqs up to %d, past the %d this edge gave out (was"
                    " the edge database replaced?): %d unconfirmed batch(es) renumbered from %d",
                    acked_seq, marks.next_seq - 1, dropped, acked_seq + 1,
                )
                return "rebased"
            if acked_seq <= marks.acked_seq:
                return "stale"
            segment = batch.segment
            if acked_seq == segment.last_seq:  # the usual answer: hold it for the next write
                self._held_ack = replace(
                    marks, acked_seq=acked_seq, acked_outbox=segment.outbox_to,
                    acked_reading=segment.readings_to,
                )
                return "ok"
            await self._store_held()
            if not await self._db.write(rows.set_acked, acked_seq, now, urgent=True):
                raise rows.OutboxError(f"acked seq {acked_seq} is in no known segment")
            return "ok"

    async def flush(self) -> None:
        """Store an ack held in memory (when idle, and before shutting down)."""
        async with self._lock:
            await self._store_held()

    async def _store_held(self) -> None:
        if self._held_ack is not None:
            await self._db.write(rows.save_acked, self._held_ack, self._now())
            self._held_ack = None

    @property
    def holding_ack(self) -> bool:
        return self._held_ack is not None

    async def flush_quietly(self) -> None:
        """``flush`` at shutdown: if the store is already closing, the cloud sees that batch
        again (it answers a replay with the same ack), so nothing is lost."""
        try:
            await self.flush()
        except Exception:
            log.debug("held ack not stored", exc_info=True)

    async def wait_for_batch(self, max_records: int, max_age_s: float, poll_s: float) -> None:
        """Until a batch is due for an uploader: ``max_records`` unsent, the oldest unsent seen
        ``max_age_s`` ago, or something urgent. An ack held meanwhile is stored after
        ACK_FLUSH_S idle."""
        first_seen: float | None = None
        idle_since = time.monotonic()
        while True:
            probe = await self.probe()
            now = time.monotonic()
            if self.holding_ack and now - idle_since >= ACK_FLUSH_S:
                await self.flush()
            if probe.unassigned:
                first_seen = now if first_seen is None else first_seen
                if (probe.urgent or probe.unassigned >= max_records
                        or now - first_seen >= max_age_s):
                    return
            else:
                first_seen = None
            await asyncio.sleep(poll_s)

    async def rewind(self, expected_seq: int) -> bool:
        """The cloud's mark is ``expected_seq - 1`` (a 409): send again from there. False when
        those records were already pruned here (an alert says so; nothing can fix it but a
        person)."""
        async with self._lock:
            await self._store_held()
            ok = await self._db.write(rows.set_acked, expected_seq - 1, self._now(), urgent=True)
        if ok:
            self.stats.rewinds += 1
            log.warning("the cloud expects seq %d: resending from there", expected_seq)
            if self._alerts is not None:
                await self._alerts.resolve(GAP_ALERT)
            return True
        log.error("the cloud expects seq %d, which this edge no longer keeps", expected_seq)
        if self._alerts is not None:
            await self._alerts.raise_alert(
                GAP_ALERT, kind="sync_gap", severity="critical",
                message=(f"the cloud lost records from seq {expected_seq} on, and this edge has"
                         " already pruned them: uploads are stuck until someone intervenes"),
            )
        return False

    async def clock_offset(self) -> float | None:
        value = await self._db.read(rows.get_state, "clock_offset_s")
        return None if value is None else float(value)

    # ---- progress ----
    async def backlog(self) -> Backlog:
        def run(conn: sqlite3.Connection) -> Backlog:
            m = self._effective(rows.marks(conn))
            estimate = rows.unsynced(conn, m, exact=False)
            exact = estimate <= EXACT_COUNT_LIMIT
            count = rows.unsynced(conn, m, exact=True) if exact else estimate
            oldest = rows.oldest_unsynced_at(conn, m) if count else None
            return Backlog(count, exact, oldest, m.acked_seq, m.next_seq)

        return await self._db.read(run)

    # ---- bounded disk ----
    async def maintain_forever(self, interval_s: float) -> None:
        """``maintain`` every ``interval_s`` until cancelled; a failure is logged, not fatal."""
        while True:
            try:
                await self.maintain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox maintenance failed; next try in %.0f s", interval_s)
            await asyncio.sleep(interval_s)

    async def maintain(self) -> None:
        """Prune what retention allows, then enforce the cap (see the module docstring)."""
        cutoff = self._now() - self._retention_s
        while True:
            pruned = await self._db.write(rows.prune, cutoff)
            self.stats.pruned_segments += pruned.segments
            self.stats.pruned_outbox_rows += pruned.outbox_rows
            self.stats.pruned_readings += pruned.readings
            if pruned.segments or pruned.readings:
                log.info(
                    "pruned %d synced reading(s), %d outbox row(s), %d segment(s) older than the"
                    " retention", pruned.readings, pruned.outbox_rows, pruned.segments,
                )
            if not pruned.more:
                break
        await self._enforce_cap()

    async def _enforce_cap(self) -> None:
        def count(conn: sqlite3.Connection) -> int:
            m = self._effective(rows.marks(conn))
            if rows.unsynced(conn, m, exact=False) <= self._cap:
                return 0
            return rows.unsynced(conn, m, exact=True)

        backlog = await self._db.read(count)
        if backlog <= self._cap:
            if self._alerts is not None:
                await self._alerts.resolve(CAP_ALERT)
                await self._alerts.resolve(FULL_ALERT)
            return
        target = int(self._cap * 0.9)
        merged, oldest, newest = 0, None, None
        async with self._lock:
            while backlog - merged > target:
                step = await self._db.write(
                    rows.downsample, self._merged_upto, MERGE_CHUNK, self._merge_period_s
                )
                if step.examined == 0:
                    break
                self._merged_upto = step.last_id
                merged += step.removed
                oldest = step.oldest_ts if oldest is None else oldest
                newest = step.newest_ts if step.newest_ts is not None else newest
        self.stats.merged_readings += merged
        left = backlog - merged
        if merged:
            message = (
                f"{backlog} records wait for the cloud (cap {self._cap}): {merged} of the oldest"
                f" unsent readings ({_iso(oldest)} to {_iso(newest)}) were merged into"
                f" {self._merge_period_s:g} s means"
            )
            log.warning("%s", message)
            if self._alerts is not None:
                await self._alerts.raise_alert(
                    CAP_ALERT, kind="sync_backlog", severity="critical", message=message
                )
        if left > self._cap:
            message = (
                f"{left} records wait for the cloud, over the cap of {self._cap}, and no unsent"
                " readings are left to merge: nothing is dropped, the disk keeps filling"
            )
            log.error("%s", message)
            if self._alerts is not None:
                await self._alerts.raise_alert(
                    FULL_ALERT, kind="sync_backlog", severity="critical", message=message
                )


def _iso(ts: float | None) -> str:
    return "?" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
