"""Embedded-broker intake: what devices publish reaches the ingest in-process, and the broker
acknowledges a message (PUBACK) only once everything the ingest wrote for it is committed.

The broker (edge.broker) hands each device PUBLISH to ``admit`` before it acknowledges it and
awaits the future it gets back. One consumer task (``run``) feeds the queued messages to the
ingest in arrival order, as the MQTT subscriber did; after each run of messages it queues a
barrier (an urgent no-op write) in the store's writer queue, which is first in, first out, so
the barrier settles once every write before it is committed, and then so do those messages'
futures. Group commit is kept: a barrier ends the group early instead of waiting out
``store.commit_interval_ms``, and one barrier covers every message taken since the last.

How soon: a device whose previous message came within one commit interval (it is sending a
run: a backlog, a burst, a bench) is acknowledged as soon as its message is committed, the
barrier being urgent; a device reporting now and then (one reading every few seconds or minutes,
the usual case) is acknowledged when the group commit's own timer ends the group, at most
``store.commit_interval_ms`` later. Committing at once for every lone reading would cost an
SD-card write of a few pages per reading (measured: 540 B per reading at 200 devices, against
~200 B when the group collects a second's readings).

So a device that saw its PUBACK never loses the reading: not at a restart (a message that
arrives before the consumer runs simply waits), not at a SIGKILL (it is in the WAL). What the
edge refuses (the ACL, an oversize packet) is a committed quarantine row before the PUBACK.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Final

from edge.ingest import DRAIN_BATCH, Ingest, commit_point
from edge.store import Database, StoreError
from shared.topics import UPLINK_KINDS

log = logging.getLogger(__name__)

# A run of at most this many messages shares one barrier (one group commit).
BARRIER_EVERY: Final = DRAIN_BATCH
# A client whose previous message came within the commit interval plus this is sending a run.
RUN_SLACK_S: Final = 0.5
_SENDERS_MAX: Final = 10_000


@dataclass(slots=True)
class _Message:
    topic: str
    payload: bytes
    redelivery: bool
    # Set for a refused message: (counter class, reason, size of the original payload).
    refusal: tuple[str, str, int] | None
    done: asyncio.Future[None] | None
    urgent: bool = False  # its sender is sending a run: commit as soon as it is in


class Intake:
    """The queue between the embedded broker's PUBLISH handling and the ingest."""

    def __init__(self, ingest: Ingest, db: Database, *, commit_interval_s: float = 1.0) -> None:
        self._ingest = ingest
        self._db = db
        self._run_window_s = commit_interval_s + RUN_SLACK_S
        self._last_from: dict[str | None, float] = {}  # sender → when its last message came
        self._prefix = f"farm/{ingest.farm_id}/room/"
        self._queue: deque[_Message] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._unsettled = 0  # messages taken whose barrier has not settled yet
        self.accepted = 0
        self.refused = 0

    # ---- called by the broker, per PUBLISH ----
    def admit(
        self, topic: str, payload: bytes, *, permitted: bool, redelivery: bool, wait: bool,
        username: str | None,
    ) -> asyncio.Future[None] | None:
        """Take one PUBLISH from ``username``; the future settles when its writes (reading,
        status, ack, or quarantine row) are committed, None if there is nothing to wait for
        (not an uplink message, or ``wait`` is false: QoS 0)."""
        if not permitted:
            reason = f"{username or '(anonymous)'} may not publish on this topic"
            return self.refuse(topic, payload, "acl", reason, len(payload), wait=wait,
                               username=username)
        if not self._is_uplink(topic):
            return None  # the edge's own commands, or another client's traffic: not ours
        self.accepted += 1
        return self._put(_Message(topic, payload, redelivery, None, None,
                                  self._in_a_run(username)), wait)

    def refuse(
        self, topic: str, head: bytes, kind: str, reason: str, original_size: int, *,
        wait: bool = True, username: str | None = None,
    ) -> asyncio.Future[None] | None:
        """Quarantine a message the broker will not deliver (``head``: what was kept of it)."""
        self.refused += 1
        message = _Message(topic, head, False, (kind, reason, original_size), None,
                           self._in_a_run(username))
        return self._put(message, wait)

    def _in_a_run(self, sender: str | None) -> bool:
        """Whether ``sender``'s previous message came within the run window (and note this one)."""
        now = time.monotonic()
        last = self._last_from.get(sender)
        if last is None and len(self._last_from) >= _SENDERS_MAX:
            self._last_from.clear()
        self._last_from[sender] = now
        return last is not None and now - last <= self._run_window_s

    def _is_uplink(self, topic: str) -> bool:
        if not topic.startswith(self._prefix):
            return False
        parts = topic.split("/")
        return len(parts) == 6 and parts[4] in UPLINK_KINDS

    def _put(self, message: _Message, wait: bool) -> asyncio.Future[None] | None:
        if wait:
            message.done = asyncio.get_running_loop().create_future()
        self._queue.append(message)
        self._idle.clear()
        self._wake.set()
        return message.done

    # ---- the consumer ----
    @property
    def pending(self) -> int:
        """Messages queued or not yet committed."""
        return len(self._queue) + self._unsettled

    async def run(self) -> None:
        """Feed queued messages to the ingest until cancelled."""
        queue = self._queue
        while True:
            if not queue:
                self._wake.clear()
                if self._unsettled == 0:
                    self._idle.set()
                await self._wake.wait()
                continue
            waiting: list[asyncio.Future[None]] = []
            urgent = False
            for _ in range(BARRIER_EVERY):
                if not queue:
                    break
                message = queue.popleft()
                await self._handle(message)
                if message.done is not None:
                    waiting.append(message.done)
                    urgent = urgent or message.urgent
            if waiting:
                self._barrier(waiting, urgent)

    async def _handle(self, message: _Message) -> None:
        if message.refusal is None:
            await self._ingest.handle(message.topic, message.payload,
                                      redelivery=message.redelivery)
        else:
            kind, reason, size = message.refusal
            self._ingest.refuse(message.topic, message.payload, kind, reason, original_size=size)

    def _barrier(self, waiting: list[asyncio.Future[None]], urgent: bool) -> None:
        self._unsettled += len(waiting)
        try:
            self._db.write_nowait(commit_point, urgent=urgent,
                                  on_done=partial(self._barrier_done, waiting))
        except StoreError as exc:
            self._settle(waiting, exc)

    def _barrier_done(self, waiting: list[asyncio.Future[None]], ok: bool, value: object) -> None:
        self._settle(waiting, None if ok else value if isinstance(value, BaseException)
                     else StoreError(str(value)))

    def _settle(self, waiting: list[asyncio.Future[None]], error: BaseException | None) -> None:
        self._unsettled -= len(waiting)
        if error is not None:
            log.error("%d message(s) could not be committed; their publishers get no "
                      "acknowledgement and will send them again: %s", len(waiting), error)
        for future in waiting:
            if future.done():
                continue  # the publisher went away meanwhile
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(StoreError(str(error)))
        if self._unsettled == 0 and not self._queue:
            self._idle.set()

    async def drain(self, max_s: float = 10.0) -> bool:
        """Wait until everything queued is handled and committed (at shutdown, after the broker
        stopped taking messages); False if that took longer than ``max_s``."""
        try:
            async with asyncio.timeout(max_s):
                while self.pending:
                    self._idle.clear()
                    self._wake.set()
                    await self._idle.wait()
        except TimeoutError:
            log.error("%d accepted message(s) still not committed after %.0f s", self.pending,
                      max_s)
            return False
        return True

