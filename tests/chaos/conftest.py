"""The real edge and the real cloud, wired for sync tests: a PostgreSQL database per test, cloned
from a migrated template, cloud instances (in-process aiohttp runners or ``smartfarm cloud serve``
processes) on free loopback ports, edge sites (in-process ``EdgeApp`` or ``smartfarm edge run``
processes) registered with that cloud through its REST API, and the bookkeeping that counts every
record on both sides."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from psycopg.rows import dict_row

from cloud.app import init_app
from cloud.auth.passwords import Passwords
from cloud.db import users
from cloud.db.database import Database
from cloud.sync.service import EDGE_SYNC
from cloud.sync.settings import SyncConfig
from edge.app import EdgeApp
from edge.cli import edge_main
from edge.config import EdgeSettings, load_config
from edge.store import outbox as outbox_rows
from shared.sync import KIND_NAMES
from tests.cloud.conftest import JWT_SECRET, auth_settings, make_settings
from tests.conftest import free_port
from tests.e2e.conftest import fast_settings, make_site

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "sync-test-password"


# ---- the cloud ----------------------------------------------------------------------------------

@dataclass
class CloudProcess:
    url: str
    port: int
    proc: subprocess.Popen[bytes]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Registration:
    farm_id: str
    edge_id: str
    token: str
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> registration answer


class Cloud:
    """One cloud: its database, the instances serving it, and a signed-in farm owner."""

    def __init__(self, dsn: str, data_dir: Path, sync: dict[str, Any]) -> None:
        self.dsn = dsn
        self.data_dir = data_dir
        # Pacing off unless a test asks for it: these tests time their waits with edges set to
        # batch fast, and a loaded CI machine would make the cloud ask them for 2.5 s and more.
        # Pacing has its own tests (tests/cloud/test_batch_pacing.py, test_uplink.py).
        self.sync = {"pace_max_s": 0, **sync}
        self.runners: dict[str, web.AppRunner] = {}
        self.processes: dict[str, CloudProcess] = {}
        self.token = ""
        self.session: aiohttp.ClientSession | None = None
        self.url = ""  # the instance the test talks to as a user (not the edge's way in)

    # ---- instances ----
    async def start(self, port: int | None = None) -> str:
        """An in-process instance (a real ``init_app`` on the real database); returns its URL."""
        settings = make_settings(self.dsn, self.data_dir, sync=SyncConfig(**self.sync))
        app = init_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = port or free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.wait_for(app[EDGE_SYNC].hub.listening.wait(), 10)
        url = f"http://127.0.0.1:{port}"
        self.runners[url] = runner
        self.url = self.url or url
        return url

    async def stop(self, url: str) -> None:
        runner = self.runners.pop(url)
        await runner.cleanup()

    def env(self, port: int) -> dict[str, str]:
        env = {
            **os.environ,
            "DATABASE_URL": self.dsn,
            "SMARTFARM_CLOUD_PORT": str(port),
            "SMARTFARM_CLOUD_HOST": "127.0.0.1",
            "SMARTFARM_CLOUD_DATA_DIR": str(self.data_dir),
            "SMARTFARM_CLOUD_MIGRATE_ON_START": "false",
            "SMARTFARM_CLOUD_LOG_LEVEL": "WARNING",
            "SMARTFARM_CLOUD_AUTH__JWT_SECRET": JWT_SECRET,
            "SMARTFARM_CLOUD_JOBS__IN_PROCESS_WORKER": "false",
            "SMARTFARM_CLOUD_JOBS__PERIODIC": "false",
            "SMARTFARM_CLOUD_DATABASE__POOL_MAX": "4",
        }
        for key, value in self.sync.items():
            env[f"SMARTFARM_CLOUD_SYNC__{key.upper()}"] = str(value)
        return env

    def spawn(self, port: int | None = None, log: Path | None = None) -> CloudProcess:
        """A ``smartfarm cloud serve`` process (SIGKILL-able); wait for it with ``ready``."""
        port = port or free_port()
        out = (log or self.data_dir / f"cloud-{port}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "smartfarm_cli", "cloud", "serve"],
            stdout=out, stderr=subprocess.STDOUT, env=self.env(port), cwd=REPO,
        )
        out.close()
        found = CloudProcess(f"http://127.0.0.1:{port}", port, proc)
        self.processes[found.url] = found
        return found

    async def ready(self, url: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url + "/health") as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise AssertionError(f"cloud at {url} not up after {timeout:g} s")
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        for url in list(self.runners):
            await self.stop(url)
        for proc in self.processes.values():
            proc.kill()

    # ---- as a user, through the REST API ----
    async def sign_in(self) -> None:
        if self.session is not None:
            await self.session.close()
        db = await Database.connect(self.dsn, min_size=1, max_size=1)
        try:
            hashed = await Passwords(auth_settings()).hash(PASSWORD)
            await users.create(db, email="owner@sync.test", password_hash=hashed, replace=True)
        finally:
            await db.close()
        self.session = aiohttp.ClientSession()
        answer = await self.api("POST", "/api/auth/login",
                                {"email": "owner@sync.test", "password": PASSWORD})
        self.token = answer["access_token"]

    async def api(self, method: str, path: str, body: Any = None, *, status: int | None = None,
                  url: str | None = None) -> Any:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.request(method, (url or self.url) + path, json=body,
                                        headers=headers) as resp:
            text = await resp.text()
            expected = status or (201 if method == "POST" and "/login" not in path else 200)
            if method == "DELETE" and status is None:
                expected = 204
            assert resp.status == expected, f"{method} {path}: {resp.status} {text}"
            return json.loads(text) if text else None

    async def provision(self, settings: EdgeSettings, edge_id: str,
                        devices: bool = True) -> Registration:
        """The edge's farm, rooms and (unless told not to) devices, registered in the cloud as a
        user would; then the edge itself, whose token is shown once."""
        farm = settings.farm_id
        await self.api("POST", "/api/farms", {"id": farm, "name": f"Farm {farm}"})
        for room in settings.rooms:
            await self.api("POST", f"/api/farms/{farm}/rooms",
                           {"id": room.id, "name": room.name, "species": room.species,
                            "stage": room.stage})
        reg = Registration(farm, edge_id, "")
        if devices:
            for device in settings.devices:
                body: dict[str, Any] = {"id": device.id, "kind": device.kind}
                if device.actuator:
                    body["actuator"] = device.actuator
                reg.devices[device.id] = await self.api(
                    "POST", f"/api/rooms/{device.room}/devices", body)
        edge = await self.api("POST", f"/api/farms/{farm}/edges", {"id": edge_id, "name": "site"})
        reg.token = edge["token"]
        return reg

    # ---- straight from PostgreSQL (what the API does not show) ----
    async def rows(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(self.dsn, row_factory=dict_row) as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def high_water(self, edge_id: str) -> int:
        found = await self.rows("SELECT high_water FROM edges WHERE id = %s", (edge_id,))
        return int(found[0]["high_water"]) if found else 0


@pytest.fixture
async def cloud(db_dsn: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await cloud(**sync_settings)``: a Cloud on this test's database with one in-process
    instance started and a signed-in owner (``instance=False``: none yet; set ``url`` and call
    ``sign_in`` once one is up); every instance is stopped at teardown."""
    made: list[Cloud] = []

    async def make(*, instance: bool = True, **sync: Any) -> Cloud:
        found = Cloud(db_dsn, tmp_path / f"cloud-{len(made)}", sync)
        found.data_dir.mkdir(parents=True, exist_ok=True)
        made.append(found)
        if instance:
            await found.start()
            await found.sign_in()
        return found

    yield make
    for found in made:
        await found.close()


# ---- the edge -----------------------------------------------------------------------------------

# Upload and down-channel timings for tests on loopback (the defaults suit a farm's uplink).
FAST_CLOUD = {
    "batch_max_age_s": 0.2,
    "poll_interval_s": 0.02,
    "request_timeout_s": 1.0,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.5,
    "ws_heartbeat_s": 2.0,
    "ws_failures_before_poll": 3,
    "pending_poll_s": 0.2,
}


def register_edge(config: Path, url: str, reg: Registration, **cloud: Any) -> EdgeSettings:
    """``smartfarm edge register --cloud URL --token … --edge-id … --offline``, then the extra
    [cloud] keys (the section is the file's last, so appended keys land in it); the site's
    settings. ``--offline``: the cloud (or the proxy in front of it) serves on the caller's event
    loop, which this synchronous call blocks; the token check itself is tested against a real
    cloud in tests/integration/test_setup_checks.py."""
    argv = ["register", "--cloud", url, "--token", reg.token, "--edge-id", reg.edge_id,
            "--offline", "--config", str(config)]
    assert edge_main(argv) == 0
    extra = {**FAST_CLOUD, **cloud}
    with config.open("a") as fh:
        for key, value in extra.items():
            fh.write(f"{key} = {json.dumps(value)}\n")
    settings = load_config(config)
    assert settings.cloud.enabled and settings.cloud.edge_id == reg.edge_id
    return settings


@dataclass
class EdgeRun:
    """An ``EdgeApp`` running in this process (its broker, API, uplink and downlink)."""

    app: EdgeApp
    stopping: asyncio.Event
    task: asyncio.Task[None]

    async def stop(self) -> None:
        """Stop it the way SIGTERM does: the uplink stores the cursor it holds, the store is
        closed last. Then nothing more is made or sent: both sides can be counted."""
        self.stopping.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def edge_app() -> AsyncIterator[Callable[[EdgeSettings], Any]]:
    """``await edge_app(settings)``: an EdgeRun once its broker is up (stopped at teardown)."""
    runs: list[EdgeRun] = []

    async def start(settings: EdgeSettings) -> EdgeRun:
        app = EdgeApp(settings)
        stopping = asyncio.Event()
        task = asyncio.create_task(app.run(stopping), name="chaos-edge")
        run = EdgeRun(app, stopping, task)
        runs.append(run)
        ready = asyncio.create_task(app.broker_connected.wait())
        done, _ = await asyncio.wait({ready, task}, timeout=20,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # the start-up error
        if ready not in done:
            ready.cancel()
            raise AssertionError("the edge did not connect to its broker within 20 s")
        return run

    yield start
    for run in runs:
        if not run.task.done():
            with contextlib.suppress(Exception):
                await run.stop()


def start_edge_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "smartfarm_cli", "edge", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )
    finally:
        out.close()


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def edge_query(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def edge_marks(db_path: Path) -> outbox_rows.Marks:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return outbox_rows.marks(conn)
    finally:
        conn.close()


def edge_unassigned(db_path: Path) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return outbox_rows.probe(conn, outbox_rows.marks(conn)).unassigned
    finally:
        conn.close()


# ---- counting both sides ------------------------------------------------------------------------

@dataclass
class Tally:
    """Every seq the edge gave out, by kind, against what the cloud holds."""

    edge_seqs: int  # seqs given out (1..edge_seqs)
    acked_seq: int  # the edge's cursor
    high_water: int  # the cloud's mark for this edge
    kinds: Counter[str]  # seqs by record kind, on the edge
    readings: int  # reading records on the edge
    reading_rows: int  # metric values in them (one sensor_data row each)
    cloud_rows: int  # sensor_data rows of this farm
    lost: list[tuple[str, int, str]]  # (device, ms, metric) on the edge, not in the cloud
    duplicated: list[tuple[str, int, str]]  # in the cloud more than once
    foreign: list[tuple[str, int, str]]  # in the cloud, not on the edge
    quarantine_edge: list[int]  # seqs of quarantine records on the edge
    quarantine_cloud: list[int]  # seqs in edge_quarantine (origin edge)
    cloud_rejected: int  # records the cloud could not use (origin cloud)
    commands_edge: int
    commands_cloud: int

    def assert_exactly_once(self) -> None:
        # Every seq given out is stored (the edge's own cursor may trail the cloud's mark by a
        # batch whose answer it never heard: it would resend it, as duplicates).
        assert self.high_water == self.edge_seqs >= self.acked_seq, self.summary()
        assert self.lost == [], f"{len(self.lost)} lost, e.g. {self.lost[:3]}; {self.summary()}"
        assert self.duplicated == [], f"duplicated: {self.duplicated[:3]}; {self.summary()}"
        assert self.foreign == [], f"unknown rows in the cloud: {self.foreign[:3]}"
        assert self.cloud_rows == self.reading_rows, self.summary()
        assert self.quarantine_cloud == self.quarantine_edge, self.summary()
        assert self.cloud_rejected == 0, self.summary()
        assert self.commands_cloud == self.commands_edge, self.summary()

    def summary(self) -> str:
        return (f"edge gave seqs 1..{self.edge_seqs} (acked {self.acked_seq}), cloud mark"
                f" {self.high_water}; kinds {dict(self.kinds)}; {self.readings} readings ="
                f" {self.reading_rows} rows on the edge, {self.cloud_rows} in the cloud;"
                f" lost {len(self.lost)}, duplicated {len(self.duplicated)}; quarantine"
                f" {len(self.quarantine_edge)}/{len(self.quarantine_cloud)}; commands"
                f" {self.commands_edge}/{self.commands_cloud}; cloud-rejected"
                f" {self.cloud_rejected}")


def edge_seq_kinds(db_path: Path) -> tuple[dict[int, str], list[tuple[str, int, str, float]]]:
    """seq -> kind for every seq the edge gave out (from its segments), and the readings those
    seqs carry as (device, ms, metric, value) rows."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    kinds: dict[int, str] = {}
    rows: list[tuple[str, int, str, float]] = []
    try:
        segments = conn.execute(
            "SELECT first_seq, n_outbox, n_readings, outbox_from, outbox_to, readings_from,"
            " readings_to FROM outbox_segments ORDER BY first_seq").fetchall()
        series = {key: (dev, json.loads(metrics)) for key, dev, metrics in
                  conn.execute("SELECT key, device_id, metrics FROM series")}
        expected = 1
        for first, n_out, n_read, o_from, o_to, r_from, r_to in segments:
            assert first == expected, f"segments leave a hole at seq {expected}"
            seq = first
            for (code,) in conn.execute("SELECT kind FROM outbox WHERE id BETWEEN ? AND ?"
                                        " ORDER BY id", (o_from, o_to)):
                kinds[seq] = KIND_NAMES[code]
                seq += 1
            found = conn.execute("SELECT series, ts, vals FROM readings WHERE id BETWEEN ? AND ?"
                                 " ORDER BY id", (r_from, r_to)).fetchall()
            for key, ts, vals in found:
                kinds[seq] = "reading"
                seq += 1
                device, metrics = series[key]
                for metric, value in zip(metrics, json.loads(vals), strict=True):
                    rows.append((device, round(ts * 1000), metric, float(value)))
            assert seq == first + n_out + n_read, f"segment {first} does not add up"
            expected = seq
    finally:
        conn.close()
    return kinds, rows


async def tally(cloud: Cloud, db_path: Path, edge_id: str, farm_id: str) -> Tally:
    kinds, edge_rows = edge_seq_kinds(db_path)
    marks = edge_marks(db_path)
    cloud_rows = await cloud.rows(
        "SELECT s.device_id, (extract(epoch FROM s.time) * 1000)::numeric AS ms, s.metric,"
        " s.value FROM sensor_data s JOIN rooms r ON r.id = s.room_id WHERE r.farm_id = %s",
        (farm_id,))
    held = Counter((r["device_id"], round(float(r["ms"])), r["metric"]) for r in cloud_rows)
    made = Counter((d, ms, m) for d, ms, m, _ in edge_rows)
    quarantine_cloud = await cloud.rows(
        "SELECT seq, origin FROM edge_quarantine WHERE edge_id = %s ORDER BY seq", (edge_id,))
    commands_cloud = await cloud.rows(
        "SELECT count(*) AS n FROM edge_commands WHERE edge_id = %s", (edge_id,))
    commands_edge = edge_query(db_path, "SELECT count(*) FROM commands")[0][0]
    return Tally(
        edge_seqs=marks.next_seq - 1,
        acked_seq=marks.acked_seq,
        high_water=await cloud.high_water(edge_id),
        kinds=Counter(kinds.values()),
        readings=sum(1 for k in kinds.values() if k == "reading"),
        reading_rows=len(edge_rows),
        cloud_rows=len(cloud_rows),
        lost=sorted(k for k in made if k not in held),
        duplicated=sorted(k for k, n in held.items() if n > 1 or made.get(k, 0) > 1),
        foreign=sorted(k for k in held if k not in made),
        quarantine_edge=sorted(s for s, k in kinds.items() if k == "quarantine"),
        quarantine_cloud=[r["seq"] for r in quarantine_cloud if r["origin"] == "edge"],
        cloud_rejected=sum(1 for r in quarantine_cloud if r["origin"] == "cloud"),
        commands_edge=int(commands_edge),
        commands_cloud=int(commands_cloud[0]["n"]),
    )


async def until(predicate: Callable[[], Any], timeout: float, what: str,
                every: float = 0.05) -> Any:
    """Poll a (sync or async) predicate until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


async def drained(cloud: Cloud, db_path: Path, edge_id: str, timeout: float) -> int:
    """Until the cloud's mark equals every seq the edge gave out, with nothing left unassigned,
    for a moment; returns that seq. (The edge stores its cursor with the next batch, or when it
    idles or stops: stop it before ``tally`` to compare cursors too.)"""
    deadline = time.monotonic() + timeout
    stable_since: float | None = None
    while True:
        marks = edge_marks(db_path)
        mark = await cloud.high_water(edge_id)
        done = mark == marks.next_seq - 1 and edge_unassigned(db_path) == 0
        now = time.monotonic()
        if done:
            stable_since = stable_since or now
            if now - stable_since >= 0.5:
                return mark
        else:
            stable_since = None
        if now > deadline:
            raise AssertionError(
                f"not drained after {timeout:g} s: cloud mark {mark}, edge next_seq"
                f" {marks.next_seq}, acked {marks.acked_seq}, unassigned"
                f" {edge_unassigned(db_path)}")
        await asyncio.sleep(0.1)


__all__ = [
    "FAST_CLOUD", "Cloud", "CloudProcess", "EdgeRun", "Registration", "Tally", "drained",
    "edge_marks",
    "edge_query", "edge_seq_kinds", "fast_settings", "kill", "make_site", "register_edge",
    "start_edge_process", "tally", "until",
]
