"""Fixtures every test layer shares: free loopback ports, unique MQTT namespaces, and real
PostgreSQL (DATABASE_URL, else one embedded pgserver per session) with a migrated template
database built once and a cheap ``CREATE DATABASE … TEMPLATE`` copy per test."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from shared.ports import free_port

if TYPE_CHECKING:
    from edge.app import EdgeApp
    from edge.config import EdgeSettings


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def farm_id() -> str:
    """A farm id unique to this test, so tests sharing the machine's Mosquitto never collide."""
    return f"t{uuid.uuid4().hex[:12]}"


# ---- PostgreSQL ---------------------------------------------------------------------------------

class Databases:
    """Creates and drops throw-away databases on one server."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.prefix = f"sft_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.created: list[str] = []

    def dsn(self, name: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=name)

    def create(self, template: str | None = None) -> str:
        name = f"{self.prefix}_{len(self.created)}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(query)
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def drop_all(self) -> None:
        for name in reversed(self.created):
            self.drop(name)


@contextmanager
def embedded_dir() -> Iterator[Path]:
    """A data dir for embedded PostgreSQL outside pytest's tmp tree: run as root, the server runs
    as user ``pgserver``, and pytest (ours or a concurrent run) resets /tmp/pytest-of-root to
    0700, which would lock that user out mid-run."""
    path = Path(tempfile.mkdtemp(prefix="smartfarm-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from cloud.db.embedded import start_embedded

    with embedded_dir() as data_dir:
        embedded = start_embedded(data_dir)
        try:
            yield embedded.dsn
        finally:
            embedded.stop()


@pytest.fixture(scope="session")
def databases(pg_admin_dsn: str) -> Iterator[Databases]:
    dbs = Databases(pg_admin_dsn)
    try:
        yield dbs
    finally:
        dbs.drop_all()


@pytest.fixture(scope="session")
def template_db(databases: Databases) -> str:
    """An empty database with every migration applied; cloned, never used directly."""
    name = databases.create()
    from cloud.db.migrate import migrate

    asyncio.run(migrate(databases.dsn(name)))
    return name


@pytest.fixture
def db_dsn(databases: Databases, template_db: str) -> Iterator[str]:
    name = databases.create(template=template_db)
    yield databases.dsn(name)
    databases.drop(name)


class Edges:
    """EdgeApps started in-process (``edges`` fixture); each is stopped cleanly, at the latest
    at teardown."""

    def __init__(self) -> None:
        self.running: dict[int, tuple[asyncio.Event, asyncio.Task[None]]] = {}

    async def start(self, settings: EdgeSettings) -> EdgeApp:
        from edge.app import EdgeApp

        app = EdgeApp(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop), name="test-edge")
        self.running[id(app)] = (stop, task)
        waiter = asyncio.create_task(app.broker_connected.wait())
        done, _ = await asyncio.wait({waiter, task}, timeout=20,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the start-up error
        if waiter not in done:
            waiter.cancel()
            raise AssertionError("edge did not connect to its broker within 20 s")
        return app

    async def stop(self, app: EdgeApp) -> None:
        stop, task = self.running.pop(id(app))
        stop.set()
        await asyncio.wait_for(task, 15)

    async def stop_all(self) -> None:
        running, self.running = list(self.running.values()), {}
        for stop, _task in running:
            stop.set()
        for _stop, task in running:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)


@pytest.fixture
async def edges() -> AsyncIterator[Edges]:
    edges = Edges()
    yield edges
    await edges.stop_all()


@pytest.fixture
def running_edge(edges: Edges) -> Any:
    """``await running_edge(settings)``: an EdgeApp running in-process until teardown."""
    return edges.start
