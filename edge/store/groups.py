"""How the edge store's writer thread runs a group of writes: one transaction, optimistic first
(no savepoint per item), item by item with savepoints only if something fails; then every
item's outcome reported to the event loop that queued it. edge/store/db.py owns the queue and
the thread; this module, what happens to one group.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("edge.store.db")


class WriterConnection(sqlite3.Connection):
    """The writer thread's connection. ``cache`` is where repository modules keep what they
    learned of the data (series keys, recent reading keys…); the writer empties it whenever a
    write is rolled back, so it never remembers a row that is not there."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache: dict[str, Any] = {}


# Where a write's outcome goes: a future, or a callback(ok, result or exception).
Target = asyncio.Future[Any] | Callable[[bool, Any], None]


@dataclass(slots=True)
class Item:
    """One queued write: fn(conn, *args), and where to report its outcome (None = nowait)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop | None
    target: Target | None
    urgent: bool
    durable: bool = False


@dataclass(slots=True)
class Checkpoint:
    mode: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


STOP: Final = object()


def settle(outcomes: list[tuple[Target, bool, Any]]) -> None:
    """Runs on the event loop: resolve the futures and call the callbacks of one group."""
    for target, ok, value in outcomes:
        if not isinstance(target, asyncio.Future):
            try:
                target(ok, value)
            except Exception:
                log.exception("store write callback %r failed", target)
            continue
        if target.done():  # the awaiting task was cancelled; the write still happened
            continue
        if ok:
            target.set_result(value)
        else:
            target.set_exception(value)


class GroupCommitter:
    """Runs groups on the writer's connection and keeps the writer's counters (read by
    Database.stats from the event loop: plain ints, each written by the writer thread only)."""

    def __init__(self) -> None:
        self.transactions = 0
        self.items = 0
        self.failed = 0
        self.last_batch = 0
        self.max_batch = 0

    def run_group(self, conn: sqlite3.Connection, batch: list[Item]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        # SQLite refuses to change the safety level inside a transaction: set it around this one.
        durable = any(item.durable for item in batch)
        try:
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            outcomes = self._run_items(conn, batch)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The group as a whole failed (disk full, I/O error, lock timeout): nothing of it is
            # on disk, so every item fails with that error.
            log.error("store group of %d writes failed and was rolled back: %s", len(batch), exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            forget(conn)
            outcomes = [(False, exc)] * len(batch)
        else:
            self.transactions += 1
        finally:
            if durable:
                conn.execute("PRAGMA synchronous = NORMAL")
        self.items += len(batch)
        self.last_batch = len(batch)
        self.max_batch = max(self.max_batch, len(batch))
        self._report(batch, outcomes)

    def _run_items(self, conn: sqlite3.Connection, batch: list[Item]) -> list[tuple[bool, Any]]:
        """Run a group's items in the open transaction; each failing item is undone alone.

        Optimistic: first without a savepoint per item. Those cost two statements per item and,
        since the sqlite3 module lets go of the GIL for every statement, as many GIL hand-overs
        with a busy event loop (the edge ingest: ~10 µs of CPU per reading, both threads). Should
        any item fail, the whole transaction is rolled back and the group run again, a savepoint
        per item (items are database writes: running one again after a rollback is safe; what
        they cache on the connection is forgotten with the rollback).
        """
        if len(batch) > 1:
            try:
                return self._run_optimistic(conn, batch)
            except Exception:  # found again, and reported, item by item below
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                forget(conn)
                conn.execute("BEGIN IMMEDIATE")
        return [self._run_item(conn, item) for item in batch]

    @staticmethod
    def _run_optimistic(conn: sqlite3.Connection, batch: list[Item]) -> list[tuple[bool, Any]]:
        """Every item, no savepoints; raises on the first failure. A run of consecutive items
        whose function has a ``many`` attribute goes to it at once: ``fn.many(conn, [args, …])``
        returns their results in order, as ``fn`` would have one by one (the ingest's readings:
        multi-row INSERTs)."""
        outcomes: list[tuple[bool, Any]] = []
        i, n = 0, len(batch)
        while i < n:
            fn = batch[i].fn
            many = getattr(fn, "many", None)
            if many is None:
                outcomes.append((True, fn(conn, *batch[i].args)))
                i += 1
                continue
            j = i + 1
            while j < n and batch[j].fn is fn:
                j += 1
            results = many(conn, [item.args for item in batch[i:j]])
            if len(results) != j - i:
                raise RuntimeError(f"{fn!r}.many returned {len(results)} results for {j - i}")
            outcomes.extend((True, result) for result in results)
            i = j
        return outcomes

    def _run_item(self, conn: sqlite3.Connection, item: Item) -> tuple[bool, Any]:
        # A savepoint per item: one failing write is undone alone, the group goes on.
        conn.execute("SAVEPOINT item")
        try:
            result = item.fn(conn, *item.args)
        except Exception as exc:
            # If SQLite already rolled back the whole transaction (e.g. SQLITE_FULL), this raises
            # and _run_group fails the group.
            forget(conn)
            conn.execute("ROLLBACK TO item")
            conn.execute("RELEASE item")
            return False, exc
        conn.execute("RELEASE item")
        return True, result

    def _report(self, batch: list[Item], outcomes: list[tuple[bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Target, bool, Any]]] = {}
        for item, (ok, value) in zip(batch, outcomes, strict=True):
            if not ok:
                self.failed += 1
            if item.target is not None and item.loop is not None:
                by_loop.setdefault(item.loop, []).append((item.target, ok, value))
            elif not ok:  # a nowait write: nobody else will hear of it
                log.error(
                    "store write %s failed: %r",
                    getattr(item.fn, "__qualname__", item.fn),
                    value,
                    exc_info=value,
                )
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(settle, settled)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                log.debug("event loop closed before %d writes settled", len(settled))

    def run_checkpoint(self, conn: sqlite3.Connection, request: Checkpoint) -> None:
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({request.mode})").fetchone()
            outcome: tuple[bool, Any] = (True, (int(row[0]), int(row[1]), int(row[2])))
        except sqlite3.Error as exc:
            outcome = (False, exc)
        settled: list[tuple[Target, bool, Any]] = [(request.future, *outcome)]
        try:
            request.loop.call_soon_threadsafe(settle, settled)
        except RuntimeError:
            log.debug("event loop closed before the checkpoint settled")


def forget(conn: sqlite3.Connection) -> None:
    cache = getattr(conn, "cache", None)
    if cache is not None:
        cache.clear()
