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
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from shared.errors import SmartfarmError

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS: Final = 5_000
# 1 KiB pages (new files only): a group commit appends every page it dirtied to the WAL, and at
# edge rates a group dirties ~5-10 pages whatever its size, so smaller pages halve the bytes written
# per reading (measured: 40 readings/group, 200 devices: 331 B vs 721 B with 4 KiB pages), while
# the file itself grows by the same ~75 B per reading.
PAGE_SIZE: Final = 1_024
# Checkpoint every ~4 MiB of WAL (SQLite's default size in bytes), not every 1000 pages.
WAL_AUTOCHECKPOINT_PAGES: Final = 4_000
_MIGRATION_RE: Final = re.compile(r"^-- migration (\d+): (.+)$", re.MULTILINE)


class StoreError(SmartfarmError):
    """The edge store cannot do what was asked (closed, newer schema, broken migration)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    title: str
    sql: str


@dataclass(frozen=True, slots=True)
class DatabaseStats:
    """Writer counters (plain numbers; the app exposes them as metrics)."""

    transactions: int
    items: int
    failed_items: int
    queue_depth: int
    last_batch: int
    max_batch: int


def load_migrations(text: str | None = None) -> list[Migration]:
    """Split schema.sql into its ordered migrations; raise StoreError if numbering is off."""
    if text is None:
        text = resources.files("edge.store").joinpath("schema.sql").read_text(encoding="utf-8")
    marks = list(_MIGRATION_RE.finditer(text))
    out: list[Migration] = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        version = int(mark.group(1))
        if version != i + 1:
            raise StoreError(f"schema.sql: migration {version} found where {i + 1} was expected")
        out.append(Migration(version, mark.group(2).strip(), text[mark.end() : end].strip()))
    if not out:
        raise StoreError("schema.sql has no `-- migration N: title` sections")
    return out


def migrate(conn: sqlite3.Connection, migrations: list[Migration]) -> int:
    """Apply the migrations newer than the file's user_version; return the resulting version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    latest = migrations[-1].version
    if current > latest:
        raise StoreError(
            f"database schema version {current} is newer than this code's {latest}:"
            " upgrade smartfarm"
        )
    for mig in migrations[current:]:
        log.info("applying store migration %d: %s", mig.version, mig.title)
        # One transaction per migration, the version bump included: a crash leaves it undone.
        # The version is an int from our own file, not user input.
        script = f"BEGIN IMMEDIATE;\n{mig.sql}\n;PRAGMA user_version = {mig.version:d};\nCOMMIT;"
        try:
            conn.executescript(script)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"store migration {mig.version} ({mig.title}) failed: {exc}") from exc
    return latest


@dataclass(slots=True)
class _Item:
    """One queued write: fn(conn, *args), and where to report its outcome (None = nowait)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[Any] | None
    urgent: bool
    durable: bool = False


@dataclass(slots=True)
class _Checkpoint:
    mode: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_STOP: Final = object()


def _settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Runs on the event loop: resolve the futures of one committed group."""
    for future, ok, value in outcomes:
        if future.done():  # the awaiting task was cancelled; the write still happened
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Database:
    """The SQLite file, its single writer thread (group commit) and its reader threads."""

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
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._read_local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_lock = threading.Lock()
        self._open = False
        self.schema_version = 0
        # Written by the writer thread only.
        self._transactions = 0
        self._items = 0
        self._failed = 0
        self._last_batch = 0
        self._max_batch = 0

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
        self._queue.put(_STOP)
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
    def submit(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
    ) -> asyncio.Future[T]:
        """Queue fn(conn, *args) for the next group; the future settles once it is committed.

        Non-blocking (call from the event loop): for hot paths that want the outcome later
        without waiting for it now (``future.add_done_callback``).
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Item(fn, args, loop, future, False))
        return future

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
        self._queue.put(_Item(fn, args, loop, future, urgent, durable))
        return await future

    def write_nowait(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
    ) -> None:
        """Fire and forget: queue fn(conn, *args); it is committed before close() returns.
        A failure is logged and counted (``stats.failed_items``), never raised."""
        self._check_open()
        self._queue.put(_Item(fn, args, None, None, False))

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
        self._queue.put(_Checkpoint(mode, loop, future))
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
            transactions=self._transactions,
            items=self._items,
            failed_items=self._failed,
            queue_depth=self._queue.qsize(),
            last_batch=self._last_batch,
            max_batch=self._max_batch,
        )

    # ---- internals ----
    def _check_open(self) -> None:
        if not self._open:
            raise StoreError(f"database {self.path} is not open")

    def _connect(self, *, read_only: bool) -> sqlite3.Connection:
        if read_only:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
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
            first = self._queue.get()
            if first is _STOP:
                return
            if isinstance(first, _Checkpoint):
                self._run_checkpoint(conn, first)
                continue
            batch: list[_Item] = [first]
            stop = self._collect(batch, first.urgent)
            self._run_group(conn, batch)
            if stop is _STOP:
                return
            if stop is not None:  # a checkpoint request ended the group
                self._run_checkpoint(conn, stop)

    def _collect(self, batch: list[_Item], urgent: bool) -> Any:
        """Add queued items to batch until it is full or commit_interval_s has passed since the
        first (or, once an urgent item is in, until the queue is momentarily empty). Returns the
        control item (stop / checkpoint) that ended collection, if any."""
        deadline = time.monotonic() + self.commit_interval_s
        while len(batch) < self.commit_max_items:
            try:
                if urgent:
                    item = self._queue.get_nowait()
                else:
                    timeout = deadline - time.monotonic()
                    if timeout > 0:
                        item = self._queue.get(timeout=timeout)
                    else:
                        item = self._queue.get_nowait()
            except queue.Empty:
                return None
            if item is _STOP or isinstance(item, _Checkpoint):
                return item
            batch.append(item)
            urgent = urgent or item.urgent
        return None

    def _run_group(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        # SQLite refuses to change the safety level inside a transaction: set it around this one.
        durable = any(item.durable for item in batch)
        try:
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                outcomes.append(self._run_item(conn, item))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The group as a whole failed (disk full, I/O error, lock timeout): nothing of it is
            # on disk, so every item fails with that error.
            log.error("store group of %d writes failed and was rolled back: %s", len(batch), exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [(False, exc)] * len(batch)
        else:
            self._transactions += 1
        finally:
            if durable:
                conn.execute("PRAGMA synchronous = NORMAL")
        self._items += len(batch)
        self._last_batch = len(batch)
        self._max_batch = max(self._max_batch, len(batch))
        self._report(batch, outcomes)

    def _run_item(self, conn: sqlite3.Connection, item: _Item) -> tuple[bool, Any]:
        # A savepoint per item: one failing write is undone alone, the group goes on.
        conn.execute("SAVEPOINT item")
        try:
            result = item.fn(conn, *item.args)
        except Exception as exc:
            # If SQLite already rolled back the whole transaction (e.g. SQLITE_FULL), this raises
            # and _run_group fails the group.
            conn.execute("ROLLBACK TO item")
            conn.execute("RELEASE item")
            return False, exc
        conn.execute("RELEASE item")
        return True, result

    def _report(self, batch: list[_Item], outcomes: list[tuple[bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for item, (ok, value) in zip(batch, outcomes, strict=True):
            if not ok:
                self._failed += 1
            if item.future is not None and item.loop is not None:
                by_loop.setdefault(item.loop, []).append((item.future, ok, value))
            elif not ok:  # a nowait write: nobody else will hear of it
                log.error(
                    "store write %s failed: %r",
                    getattr(item.fn, "__qualname__", item.fn),
                    value,
                    exc_info=value,
                )
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                log.debug("event loop closed before %d writes settled", len(settled))

    def _run_checkpoint(self, conn: sqlite3.Connection, request: _Checkpoint) -> None:
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({request.mode})").fetchone()
            outcome: tuple[bool, Any] = (True, (int(row[0]), int(row[1]), int(row[2])))
        except sqlite3.Error as exc:
            outcome = (False, exc)
        try:
            request.loop.call_soon_threadsafe(_settle, [(request.future, *outcome)])
        except RuntimeError:
            log.debug("event loop closed before the checkpoint settled")


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
