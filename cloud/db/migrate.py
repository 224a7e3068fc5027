"""Schema migrations: ordered ``migrations/NNNN_name.sql`` files, each applied in a transaction.

Applied versions are recorded in ``schema_migrations``. A session-level advisory lock serialises
concurrent runs (two instances starting at once), so running twice or in parallel is safe.
``NNNN_name.down.sql`` makes a migration reversible for ``migrate --down N``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from shared.errors import SmartfarmError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Arbitrary but fixed: the advisory lock key every smartfarm migrator agrees on.
LOCK_KEY = 0x5F_A2_4D_01
_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
APPLIED = "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
RECORD = "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"
FORGET = "DELETE FROM schema_migrations WHERE version = %s"


class MigrationError(SmartfarmError):
    """A migration cannot be applied or reverted."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str | None

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up.encode()).hexdigest()[:16]


def load_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    out: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME_RE.match(path.name)
        if match is None:
            continue  # the .down.sql halves, read below
        down = path.with_name(path.name.removesuffix(".sql") + ".down.sql")
        out.append(
            Migration(
                version=int(match[1]),
                name=match[2],
                up=path.read_text(),
                down=down.read_text() if down.exists() else None,
            )
        )
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {folder}")
    return out


async def migrate(dsn: str, *, down: int = 0, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration (or revert the last ``down`` ones); the names acted on."""
    migrations = load_migrations(folder)
    done: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            await conn.execute(CREATE_TABLE)
            cur = await conn.execute(APPLIED)
            applied = {row[0]: (row[1], row[2]) for row in await cur.fetchall()}
            if down:
                done = await _revert(conn, migrations, applied, down)
            else:
                done = await _apply(conn, migrations, applied)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return done


async def _apply(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    migrations: list[Migration],
    applied: dict[int, tuple[str, str]],
) -> list[str]:
    done = []
    for mig in migrations:
        if mig.version in applied:
            if applied[mig.version][1] != mig.checksum:
                log.warning("migration %04d_%s changed after it was applied", mig.version, mig.name)
            continue
        label = f"{mig.version:04d}_{mig.name}"
        try:
            async with conn.transaction():
                await conn.execute(mig.up.encode())
                await conn.execute(RECORD, (mig.version, mig.name, mig.checksum))
        except psycopg.Error as exc:
            raise MigrationError(f"{label} failed: {exc}") from exc
        log.info("applied migration %s", label)
        done.append(label)
    return done


async def _revert(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    migrations: list[Migration],
    applied: dict[int, tuple[str, str]],
    steps: int,
) -> list[str]:
    by_version = {m.version: m for m in migrations}
    targets = sorted(applied, reverse=True)[:steps]
    for version in targets:
        mig = by_version.get(version)
        if mig is None or mig.down is None:
            raise MigrationError(f"migration {version:04d} is not reversible (no .down.sql)")
    done = []
    for version in targets:
        mig = by_version[version]
        label = f"{mig.version:04d}_{mig.name}"
        assert mig.down is not None
        try:
            async with conn.transaction():
                await conn.execute(mig.down.encode())
                await conn.execute(FORGET, (mig.version,))
        except psycopg.Error as exc:
            raise MigrationError(f"reverting {label} failed: {exc}") from exc
        log.info("reverted migration %s", label)
        done.append(label)
    return done
