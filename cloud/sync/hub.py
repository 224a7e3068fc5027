"""Fan-out of config and command announcements to the edge streams this instance holds.

PostgreSQL is the bus: triggers NOTIFY ``smartfarm_edge`` with ids when a farm's config version
moves or a command is created (see migration 0004), on whichever instance the change was made. Each
instance keeps one LISTEN connection and hands the events to the queues of the streams of that
farm; a stream then fetches what it needs by id. When the LISTEN connection drops, events may be
lost, so after reconnecting every stream is told to resynchronise from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import psycopg

from shared.backoff import Backoff

log = logging.getLogger(__name__)

CHANNEL = "smartfarm_edge"
QUEUE_SIZE = 256


@dataclass(frozen=True)
class Event:
    kind: Literal["command", "config", "resync"]
    command_id: str | None = None
    version: int | None = None


RESYNC = Event("resync")


def parse_event(payload: str) -> tuple[str, Event] | None:
    """(farm id, event) from a NOTIFY payload; None for anything else."""
    try:
        doc = json.loads(payload)
        farm_id = doc["farm_id"]
        if "command" in doc:
            return farm_id, Event("command", command_id=str(doc["command"]))
        if "config" in doc:
            return farm_id, Event("config", version=int(doc["config"]))
    except (ValueError, KeyError, TypeError):
        pass
    log.warning("ignoring unexpected notification on %s: %.200s", CHANNEL, payload)
    return None


class EdgeHub:
    """One LISTEN connection; ``subscribe(farm_id)`` gives a stream its queue of events."""

    def __init__(self, dsn: str, *, retry_max_s: float = 30.0) -> None:
        self._dsn = dsn
        self._retry_max_s = retry_max_s
        self._queues: dict[str, set[asyncio.Queue[Event]]] = {}
        # Called with every farm's events (farm None: resynchronise), without blocking.
        self._watchers: list[Callable[[str | None, Event], None]] = []
        self.listening = asyncio.Event()  # set while LISTEN is active (tests wait for it)

    @contextlib.contextmanager
    def subscribe(self, farm_id: str) -> Iterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._queues.setdefault(farm_id, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._queues.get(farm_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._queues[farm_id]

    def watch(self, watcher: Callable[[str | None, Event], None]) -> None:
        """Also hand every event of every farm to ``watcher`` (the AWS IoT publisher)."""
        self._watchers.append(watcher)

    def streams(self) -> int:
        """Edge streams open on this instance."""
        return sum(len(queues) for queues in self._queues.values())

    def publish(self, farm_id: str, event: Event) -> None:
        for queue in self._queues.get(farm_id, ()):
            self._put(queue, event)
        for watcher in self._watchers:
            watcher(farm_id, event)

    def _put(self, queue: asyncio.Queue[Event], event: Event) -> None:
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            # A stream this far behind re-reads everything from the database instead.
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(RESYNC)

    def _resync_all(self) -> None:
        for queues in self._queues.values():
            for queue in queues:
                self._put(queue, RESYNC)
        for watcher in self._watchers:
            watcher(None, RESYNC)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with jittered exponential backoff."""
        backoff = Backoff(0.5, self._retry_max_s)
        connected_before = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if connected_before:
                        log.info("listening on %s again; streams resynchronise", CHANNEL)
                    connected_before = True
                    # Streams opened before LISTEN was active may have missed events.
                    self._resync_all()
                    backoff.reset()
                    async for notify in conn.notifies():
                        parsed = parse_event(notify.payload)
                        if parsed is not None:
                            self.publish(*parsed)
            except (psycopg.Error, OSError) as exc:
                delay = backoff.delay()
                log.warning(
                    "LISTEN %s connection lost (%s); retrying in %.1f s", CHANNEL, exc, delay
                )
            else:
                delay = backoff.delay()
            finally:
                self.listening.clear()
            await asyncio.sleep(delay)
