"""Backups of the edge's SQLite database: a consistent copy taken while the edge runs, and its
safe return.

``backup_database`` copies the live file with SQLite's online backup API in steps of a few
hundred pages, all from one read snapshot (a read transaction held on the source connection), so
the edge's writer never waits and never forces the copy to start over; the copy is switched to a
single self-contained file and checked with ``PRAGMA integrity_check``. ``restore_database``
refuses while the edge runs (its run lock is held, or the file is open elsewhere) unless forced,
and keeps the database it replaces as ``edge.db.before-restore``.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import os
import shutil
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

from edge.config import load_config
from edge.store.db import load_migrations
from shared.errors import SmartfarmError

LOCK_NAME: Final = "edge.lock"
PAGES_PER_STEP: Final = 256
GZIP_MAGIC: Final = b"\x1f\x8b"
_CHUNK: Final = 1 << 20

Progress = Callable[[int, int], None]


class BackupError(SmartfarmError):
    """A backup or restore cannot be made; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    size_bytes: int
    pages: int
    schema_version: int


@dataclass(frozen=True, slots=True)
class RestoreResult:
    db_path: Path
    replaced: Path | None
    schema_version: int


# ---- the run lock: one edge per data dir ---------------------------------------------------------

@contextlib.contextmanager
def run_lock(data_dir: Path) -> Iterator[Path]:
    """Hold ``data_dir/edge.lock`` (an exclusive flock, with our pid inside) while the edge runs;
    the kernel drops it when the process ends, however it ends. Raises BackupError when another
    process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(
                f"another edge is running on {data_dir} (pid {_read_pid(path) or '?'})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)  # releases the lock


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def running_pid(data_dir: Path) -> str | None:
    """The pid in the run lock when an edge holds it (``"?"`` if unreadable), else None."""
    path = data_dir / LOCK_NAME
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(path) or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ---- backup --------------------------------------------------------------------------------------

def backup_name(farm_id: str, *, compress: bool, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"edge-{farm_id}-{stamp}.sqlite3" + (".gz" if compress else "")


def backup_target(out: str | None, default_dir: Path, farm_id: str, *, compress: bool) -> Path:
    """Where the backup goes: a timestamped file in ``out`` (a folder, existing or ending in
    ``/``) or in ``default_dir``; ``out`` itself when it names a file."""
    if out is None:
        return default_dir / backup_name(farm_id, compress=compress)
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        return Path(out) / backup_name(farm_id, compress=compress)
    return Path(out)


def integrity_errors(conn: sqlite3.Connection) -> list[str]:
    """``PRAGMA integrity_check``'s complaints (empty when the file is sound)."""
    rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
    return [] if rows == ["ok"] else rows


def backup_database(
    db_path: Path,
    dest: Path,
    *,
    compress: bool = False,
    pages_per_step: int = PAGES_PER_STEP,
    progress: Progress | None = None,
) -> BackupResult:
    """Copy the (possibly live) database at ``db_path`` to ``dest``, gzipped when ``compress``;
    ``progress(done_pages, total_pages)`` after each step. The copy is written beside ``dest``
    and renamed into place only once it passed the integrity check."""
    if not db_path.is_file():
        raise BackupError(f"no edge database at {db_path} (has the edge run with this config?)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial")
    copy = partial.with_suffix(".sqlite3") if compress else partial
    try:
        pages, version = _copy(db_path, copy, pages_per_step, progress)
        if compress:
            with copy.open("rb") as src, gzip.open(partial, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            copy.unlink()
        os.chmod(partial, 0o600)
        _fsync(partial)
        os.replace(partial, dest)
    except BaseException:
        for leftover in (partial, copy):
            leftover.unlink(missing_ok=True)
        raise
    return BackupResult(dest, dest.stat().st_size, pages, version)


def _copy(db_path: Path, copy: Path, pages_per_step: int,
          progress: Progress | None) -> tuple[int, int]:
    copy.unlink(missing_ok=True)
    src = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True,
                          isolation_level=None, timeout=5)
    try:
        dst = sqlite3.connect(copy, isolation_level=None)
        try:
            # One snapshot for every step: the edge's commits meanwhile are not in the copy and
            # do not restart it (a step outside a read transaction would see them and restart).
            src.execute("BEGIN")
            version = int(src.execute("PRAGMA user_version").fetchone()[0])
            total = int(src.execute("PRAGMA page_count").fetchone()[0])

            def step(_status: int, remaining: int, pages: int) -> None:
                if progress is not None:
                    progress(pages - remaining, pages)

            try:
                src.backup(dst, pages=max(1, pages_per_step), progress=step)
            except sqlite3.Error as exc:
                raise BackupError(f"backup of {db_path} failed: {exc}") from exc
            src.execute("ROLLBACK")
            # The source is in WAL mode and so is the copy's header: make it one plain file.
            dst.execute("PRAGMA journal_mode = DELETE")
            errors = integrity_errors(dst)
            if errors:
                raise BackupError(f"the copy of {db_path} failed its integrity check: "
                                  + "; ".join(errors[:5]))
        finally:
            dst.close()
    finally:
        src.close()
    return total, version


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- restore -------------------------------------------------------------------------------------

def _database_busy(db_path: Path) -> str | None:
    """None when nobody else has the file open; then it is also folded into one file (its WAL
    checkpointed and removed), so the copy kept aside is complete by itself. Leaving WAL needs
    exclusive access, which makes it the test."""
    try:
        conn = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
        return None
    except sqlite3.OperationalError as exc:
        return str(exc)
    finally:
        conn.close()


def _unpack(backup: Path, into: Path) -> None:
    with backup.open("rb") as head:
        gzipped = head.read(2) == GZIP_MAGIC
    try:
        with (gzip.open(backup, "rb") if gzipped else backup.open("rb")) as src, \
                into.open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    except (OSError, EOFError) as exc:
        raise BackupError(f"{backup}: cannot read it: {exc}") from exc


def check_backup(path: Path) -> int:
    """Raise BackupError unless ``path`` (uncompressed) is a sound edge database this code can
    run; returns its schema version."""
    latest = load_migrations()[-1].version
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            errors = integrity_errors(conn)
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"not an SQLite database: {exc}") from None
    if errors:
        raise BackupError("it fails the integrity check: " + "; ".join(errors[:5]))
    if version < 1 or "readings" not in tables:
        raise BackupError("it is not a smartfarm edge database")
    if version > latest:
        raise BackupError(f"its schema version {version} is newer than this code's {latest}:"
                          " upgrade smartfarm first")
    return version


def restore_database(backup: Path, db_path: Path, *, force: bool = False) -> RestoreResult:
    """Put ``backup`` (plain or gzipped) in place of ``db_path``. Refuses while an edge runs on
    that data dir unless ``force``; the replaced file is kept as ``<db>.before-restore`` (with
    a timestamp when one is already there)."""
    if not backup.is_file():
        raise BackupError(f"backup file {backup} not found")
    data_dir = db_path.parent
    if not force:
        pid = running_pid(data_dir)
        if pid is not None:
            raise BackupError(f"the edge is running on {data_dir} (pid {pid}): stop it first"
                              " (or --force)")
    data_dir.mkdir(parents=True, exist_ok=True)
    staged = data_dir / f".{db_path.name}.restore"
    try:
        _unpack(backup, staged)
        try:
            version = check_backup(staged)
        except BackupError as exc:
            raise BackupError(f"{backup}: {exc}") from None
        replaced: Path | None = None
        if db_path.exists():
            if not force:
                busy = _database_busy(db_path)
                if busy is not None:
                    raise BackupError(f"{db_path} is in use by another process ({busy}): stop"
                                      " the edge first (or --force)")
            replaced = db_path.with_name(db_path.name + ".before-restore")
            if replaced.exists():
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
                replaced = replaced.with_name(f"{replaced.name}.{stamp}")
            os.replace(db_path, replaced)
            # With --force the WAL may still hold the newest commits: it goes with its file.
            for suffix in ("-wal", "-shm"):
                side = db_path.with_name(db_path.name + suffix)
                if side.exists():
                    os.replace(side, replaced.with_name(replaced.name + suffix))
        _fsync(staged)
        os.replace(staged, db_path)
    finally:
        staged.unlink(missing_ok=True)
    return RestoreResult(db_path, replaced, version)


# ---- `smartfarm edge backup|restore` -------------------------------------------------------------

def add_backup_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("backup", help="consistent copy of the edge database (safe while running)")
    p.add_argument("--config", type=Path, default=Path("edge.toml"))
    p.add_argument("--out", metavar="PATH",
                   help="file, or folder for a timestamped file (default: DATA_DIR/backups/)")
    p.add_argument("--gzip", action="store_true", help="gzip it (implied by --out *.gz)")
    p = sub.add_parser("restore", help="replace the edge database by a backup (edge stopped)")
    p.add_argument("backup", type=Path, metavar="BACKUP")
    p.add_argument("--config", type=Path, default=Path("edge.toml"))
    p.add_argument("--force", action="store_true",
                   help="even if the edge seems to be running (it must not be)")


def progress_bar(stream: TextIO, label: str) -> Progress:
    def show(done: int, total: int) -> None:
        width = 30
        share = done / total if total else 1.0
        stream.write(f"\r  {label} [{'#' * int(share * width):<{width}}] {share:6.1%}")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


def backup_main(args: argparse.Namespace) -> int:
    """Run ``edge backup`` / ``edge restore``; BackupError and ConfigError go to the caller."""
    settings = load_config(args.config)
    if args.command == "backup":
        compress = args.gzip or (args.out is not None and args.out.endswith(".gz"))
        dest = backup_target(args.out, settings.data_path / "backups", settings.farm_id,
                             compress=compress)
        result = backup_database(settings.db_path, dest, compress=compress,
                                 progress=progress_bar(sys.stderr, "backup"))
        print(f"backup written: {result.path} ({result.size_bytes / 1e6:.1f} MB,"
              f" {result.pages} pages, schema {result.schema_version}, integrity ok)")
        return 0
    restored = restore_database(args.backup, settings.db_path, force=args.force)
    print(f"restored {args.backup} into {restored.db_path} (schema {restored.schema_version})")
    if restored.replaced is not None:
        print(f"the database it replaced is kept as {restored.replaced}")
    return 0
