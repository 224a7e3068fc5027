"""The edge's SQLite database: one writer thread with group commit, read-only reader threads.

Repository modules (readings.py, quarantine.py, …) are plain functions taking a
``sqlite3.Connection``; this class decides on which thread and in which transaction they run:
``await db.write(fn, *args)`` / ``db.write_nowait(fn, *args)`` / ``await db.read(fn, *args)``.

Durability trade-off (SD card on a Pi): WAL with ``synchronous=NORMAL`` never fsyncs on commit, only
on checkpoint. A committed transaction survives an application crash or SIGKILL (it is in the WAL,
in the OS page cache); a power cut can lose the last group(s) committed since the OS last wrote the
WAL out, but never corrupts the file. ``synchronous=FULL`` would fsync every group: several ms each
and far more SD-card wear, for the last ~200 ms of readings. The few writes that must survive a
power cut (the outbox's seq assignment, made before a batch leaves: see edge/outbox.py) ask for it:
``write(..., durable=True)`` commits their group with ``synchronous=FULL`` (one fsync of the WAL,
which also makes every group before it durable).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from edge.store.groups import STOP, Checkpoint, GroupCommitter, Item, WriterConnection
from edge.store.migrations import Migration, StoreError, load_migrations, migrate

log = logging.getLogger(__name__)

__all__ = ["Database", "DatabaseStats", "Migration", "StoreError", "load_migrations", "migrate"]

T = TypeVar("T")

BUSY_TIMEOUT_MS: Final = 5_000
# 512-byte pages (new files only; existing ones keep theirs): a group commit appends every page it
# dirtied to the WAL, and at edge rates a group dirties a handful of pages whatever its size (the
# last, partly filled page of each b-tree, its parent, the header page), so small pages cut the
# bytes written per reading (simulated, 37 readings per group: 4 KiB 520 B, 1 KiB 240 B, 512 B
# 200 B, WAL plus checkpoint), while the file grows by the same ~60 B per reading.
PAGE_SIZE: Final = 512
# Checkpoint every ~4 MiB of WAL (SQLite's default size in bytes), not every 1000 pages.
WAL_AUTOCHECKPOINT_PAGES: Final = 4_000


@dataclass(frozen=True, slots=True)
class DatabaseStats:
    """Writer counters (plain numbers; the app exposes them as metrics)."""

    transactions: int
    items: int
    failed_items: int
    queue_depth: int
    last_batch: int
    max_batch: int


class Database:
    """The SQLite file, its single writer thread (group commit) and its reader threads.

    Writes reach the writer through a deque, not a queue.Queue: appending costs the event loop no
    lock and no thread wake-up. The writer is woken (a threading.Event) only when it is idle, an
    urgent or control item arrives, or a group is full; otherwise it sleeps out the commit
    interval and takes the whole group at once. Waking it per write cost a lock, a futex wake
    and a GIL hand-over per reading.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        commit_interval_ms: float = 200,
        commit_max_items: int = 2_000,
        readers: int = 2,
    ) -> None:
        self.path = Path(path)
        self.commit_interval_s = max(0.0, commit_interval_ms / 1000)
        self.commit_max_items = max(1, commit_max_items)
        self._readers = max(1, readers)
        # _Item, _Checkpoint or STOP in submission order; appended by the event loop thread,
        # popped by the writer (deque's append/popleft are atomic).
        self._pending: deque[Any] = deque()
        self._wake = threading.Event()
        self._writer_idle = False  # the writer waits for a first item: wake it on the next
        self._writer: threading.Thread | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._read_local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_lock = threading.Lock()
        self._open = False
        self.schema_version = 0
        self._groups = GroupCommitter()  # runs each group; the writer's counters

    # ---- lifecycle ----
    async def open(self) -> None:
        """Create the file and folders if needed, apply migrations, start the writer thread."""
        if self._open:
            return
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[int] = loop.create_future()
        self._writer = threading.Thread(
            target=self._writer_main,
            args=(loop, ready),
            name=f"db-writer:{self.path.name}",
            daemon=True,
        )
        self._writer.start()
        self.schema_version = await ready  # raises StoreError / sqlite3.Error from the thread
        self._read_pool = ThreadPoolExecutor(self._readers, thread_name_prefix="db-read")
        self._open = True

    async def close(self) -> None:
        """Commit everything queued (nowait writes included), stop the threads, close the file."""
        if not self._open:
            return
        self._open = False  # new writes are refused from here on; queued ones still run
        self._put(STOP, wake=True)
        assert self._writer is not None
        await asyncio.to_thread(self._writer.join)
        await asyncio.sleep(0)  # let the last group's futures settle before returning
        assert self._read_pool is not None
        await asyncio.to_thread(self._read_pool.shutdown, wait=True)
        with self._read_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()
        self._read_pool = None
        self._writer = None

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        return self._open

    # ---- writes ----
    async def write(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        urgent: bool = False,
        durable: bool = False,
    ) -> T:
        """Run fn(conn, *args) on the writer thread in the shared transaction; return its result
        once committed, or raise its exception (only its own changes are rolled back).

        ``urgent=True`` commits the group as soon as this item is in it instead of waiting out
        commit_interval_ms: for writes someone is waiting on (a manual command, an API call).
        ``durable=True`` returns only once the group is fsynced (``synchronous=FULL`` for that
        commit): for a write that must survive a power cut, not just a crash.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(Item(fn, args, loop, future, urgent, durable), wake=urgent)
        return await future

    def write_nowait(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        on_done: Callable[[bool, Any], None] | None = None,
        urgent: bool = False,
    ) -> None:
        """Queue fn(conn, *args) for the next group without waiting; it is committed before
        close() returns. ``on_done(True, result)`` or ``on_done(False, exception)`` then runs on
        this event loop, once the group is committed (the cheapest way to learn an outcome: no
        future, one loop callback per group); without it a failure is logged and counted
        (``stats.failed_items``), never raised. Writes are committed in the order they were
        queued, so when a write's ``on_done`` runs every write queued before it is committed
        too (the embedded broker's intake acknowledges messages that way). ``urgent`` as for
        ``write``.

        With ``write`` (await the outcome) this is the one way in: both queue an item for the
        writer thread (``_put``), which runs and commits items in order.
        """
        self._check_open()
        loop = asyncio.get_running_loop() if on_done is not None else None
        self._put(Item(fn, args, loop, on_done, urgent), wake=urgent)

    async def checkpoint(
        self, mode: Literal["PASSIVE", "FULL", "RESTART", "TRUNCATE"] = "PASSIVE"
    ) -> tuple[int, int, int]:
        """Checkpoint the WAL into the main file (outside any group); returns SQLite's
        (busy, wal frames, checkpointed frames)."""
        self._check_open()
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"unknown checkpoint mode {mode!r}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, int, int]] = loop.create_future()
        self._put(Checkpoint(mode, loop, future), wake=True)
        return await future

    # ---- reads ----
    async def read(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
    ) -> T:
        """Run fn(conn, *args) on a read-only connection in a reader thread, inside one read
        transaction (a consistent snapshot across its queries). Sees committed data only."""
        self._check_open()
        assert self._read_pool is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_pool, self._run_read, fn, args)

    def _run_read(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn: sqlite3.Connection | None = getattr(self._read_local, "conn", None)
        if conn is None:
            conn = self._connect(read_only=True)
            self._read_local.conn = conn
            with self._read_lock:
                self._read_conns.append(conn)
        conn.execute("BEGIN")
        try:
            return fn(conn, *args)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    # ---- counters ----
    @property
    def stats(self) -> DatabaseStats:
        return DatabaseStats(
            transactions=self._groups.transactions,
            items=self._groups.items,
            failed_items=self._groups.failed,
            queue_depth=len(self._pending),
            last_batch=self._groups.last_batch,
            max_batch=self._groups.max_batch,
        )

    # ---- internals ----
    def _check_open(self) -> None:
        if not self._open:
            raise StoreError(f"database {self.path} is not open")

    def _put(self, item: Any, *, wake: bool) -> None:
        self._pending.append(item)
        # Read after the append: the writer sets _writer_idle before its last look at the deque,
        # so either it sees this item or we see it idle (and wake it).
        if (
            wake or self._writer_idle or len(self._pending) >= self.commit_max_items
        ) and not self._wake.is_set():  # set() takes a lock: not on every write of a backlog
            self._wake.set()

    def _next(self) -> Any:
        """Writer thread: the oldest queued item, waiting for one if need be."""
        pending = self._pending
        while not pending:
            self._wake.clear()
            self._writer_idle = True
            if not pending:
                self._wake.wait()
            self._writer_idle = False
        return pending.popleft()

    def _connect(self, *, read_only: bool) -> sqlite3.Connection:
        if read_only:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
        else:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False,
                factory=WriterConnection,
            )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        return conn

    def _writer_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[int]) -> None:
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect(read_only=False)
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE:d}")  # no-op once the file has tables
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES:d}")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA temp_store = MEMORY")
            version = migrate(conn, load_migrations())
        except BaseException as exc:  # report to open(), whatever it was
            if conn is not None:
                conn.close()
            loop.call_soon_threadsafe(_set_exception, ready, exc)
            return
        loop.call_soon_threadsafe(_set_result, ready, version)
        try:
            self._writer_loop(conn)
        finally:
            try:
                conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                log.debug("PRAGMA optimize failed at close", exc_info=True)
            conn.close()

    def _writer_loop(self, conn: sqlite3.Connection) -> None:
        while True:
            first = self._next()
            if first is STOP:
                return
            if isinstance(first, Checkpoint):
                self._groups.run_checkpoint(conn, first)
                continue
            batch: list[Item] = [first]
            stop = self._collect(batch, first.urgent)
            self._groups.run_group(conn, batch)
            if stop is STOP:
                return
            if stop is not None:  # a checkpoint request ended the group
                self._groups.run_checkpoint(conn, stop)

    def _collect(self, batch: list[Item], urgent: bool) -> Any:
        """Add queued items to batch until it is full or commit_interval_s has passed since the
        first (or, once an urgent item is in, until the queue is momentarily empty). Returns the
        control item (stop / checkpoint) that ended collection, if any."""
        deadline = time.monotonic() + self.commit_interval_s
        pending = self._pending
        while len(batch) < self.commit_max_items:
            if not pending:
                timeout = deadline - time.monotonic()
                if urgent or timeout <= 0:
                    return None
                # Sleep until the deadline unless _put wakes us (urgent, control item, full).
                self._wake.clear()
                if not pending:
                    self._wake.wait(timeout)
                continue
            item = pending.popleft()
            if item is STOP or isinstance(item, Checkpoint):
                return item
            batch.append(item)
            urgent = urgent or item.urgent
        return None

def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
