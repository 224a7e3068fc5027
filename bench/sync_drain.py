"""Backlog drain: readings queued on the edge while the cloud was down, then the cloud comes up.

An edge site (``smartfarm edge init``) registered in a cloud database gets N readings written
straight into its SQLite outbox (the store's own encoding, in bulk: generating them through MQTT
would take longer than the drain). The edge runs as a process (``smartfarm edge run``) with its
cloud unreachable; then the cloud starts (``init_app`` in this process, real PostgreSQL) and the
clock runs until PostgreSQL holds every reading, exactly once. In the same run, the same rows are
written into the same table by one raw binary COPY (psycopg ``write_row``, what the cloud's ingest
uses), before the drain on the then truncated table, so the two rates compare like for like.
The edge process's CPU and memory are sampled during the drain (psutil).

    .venv/bin/python -m bench.sync_drain [--quick] [--readings N] [--metrics M] [--profile]

A "reading" is one outbox record (one telemetry message of M metrics, M rows in ``sensor_data``).
``--profile`` runs py-spy on the edge process and on this process (the cloud) during the drain
and writes their top functions next to the JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from aiohttp import web

from bench.cloud_database import app_settings, bench_database, server_version
from bench.report import RESULTS_DIR, Target, print_table, verdict, write_json
from bench.site import die_with_parent, free_port
from cloud.app import init_app
from cloud.auth.tokens import token_hash
from cloud.db import devices, edges, farms, rooms, users
from cloud.db.database import Database
from cloud.db.telemetry import COPY_IN, COPY_TYPES
from edge.config import EdgeSettings, load_config
from edge.credentials import hash_password
from edge.registration import register_cloud
from edge.site_init import init_site
from edge.store import readings as reading_rows
from edge.store.db import PAGE_SIZE, load_migrations, migrate

NAME = "sync_drain"
TARGET_RPS = 100_000.0
TARGET_SHARE = 0.25
EDGE_ID = "edge-bench"
FARM_ID = "drain-farm"
TOKEN = "sfe_bench-drain-token"  # a throw-away token for a throw-away database
ROOMS = tuple((f"room-{i}", f"Room {i}", "oyster", "fruiting") for i in range(4))
ALL_METRICS = ("co2_ppm", "humidity_pct", "temperature_c", "light_lux", "substrate_moisture")
REPO = Path(__file__).resolve().parents[1]


# ---- the backlog ------------------------------------------------------------------------------

def queue_readings(
    db_path: Path,
    sensors: Sequence[tuple[str, str]],
    count: int,
    *,
    metrics: Sequence[str] = ("co2_ppm",),
    start_ts: float | None = None,
    step_s: float = 0.01,
    chunk: int = 50_000,
) -> int:
    """Write ``count`` readings, round robin over ``sensors`` ((device, room) pairs), into the
    edge store at ``db_path`` (created and migrated if needed) as its ingest would have stored
    them: a series per device, values in the store's encoding, ``step_s`` apart per device,
    starting a day ago by default. Returns the number written. The edge must not be running."""
    names = sorted(metrics)
    start = time.time() - 86_400 if start_ts is None else start_ts
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE:d}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        migrate(conn, load_migrations())
        conn.execute("BEGIN IMMEDIATE")
        keys = [reading_rows.series_key(conn, dev, room, names, start) for dev, room in sensors]
        conn.execute("COMMIT")
        n = len(keys)
        for low in range(0, count, chunk):
            rows = []
            for i in range(low, min(count, low + chunk)):
                ts = start + (i // n) * step_s
                values = [round(400 + (i % 997) * 0.5 + k, 2) for k in range(len(names))]
                rows.append((keys[i % n], ts, 5, 0, reading_rows.encode_values(values)))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO readings (series, ts, recv_ms, ts_replaced, vals)"
                " VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        return count
    finally:
        conn.close()


def stored_rows(db_path: Path, chunk: int = 100_000) -> Iterator[list[tuple[Any, ...]]]:
    """The readings in the edge store as the cloud stores them: (time, room, device, metric,
    value) rows, in chunks."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        series = {key: (dev, room, json.loads(m)) for key, dev, room, m in
                  conn.execute("SELECT key, device_id, room_id, metrics FROM series")}
        last = 0
        while True:
            found = conn.execute("SELECT id, series, ts, vals FROM readings WHERE id > ?"
                                 " ORDER BY id LIMIT ?", (last, chunk)).fetchall()
            if not found:
                return
            out = []
            for _, key, ts, vals in found:
                dev, room, names = series[key]
                when = datetime.fromtimestamp(ts, UTC)
                for name, value in zip(names, json.loads(vals), strict=True):
                    out.append((when, room, dev, name, float(value)))
            last = found[-1][0]
            yield out
    finally:
        conn.close()


# ---- the cloud side ---------------------------------------------------------------------------

async def register(dsn: str, settings: EdgeSettings) -> None:
    """The farm, its rooms and devices and the edge, as a user would have registered them."""
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        owner = await users.create(db, email="drain@example.com", password_hash="x")
        await farms.create(db, farm_id=FARM_ID, name="Drain", timezone="UTC",
                           user_id=owner["id"])
        for room in settings.rooms:
            await rooms.create(db, room_id=room.id, farm_id=FARM_ID, name=room.name,
                               species=room.species, stage=room.stage, stage_started=None)
        hashed = hash_password("not-a-real-device-password")
        for device in settings.devices:
            await devices.create(db, device_id=device.id, farm_id=FARM_ID, room_id=device.room,
                                 name=device.id,
                                 kind=device.kind, actuator=device.actuator, capabilities=[],
                                 credentials_hash=hashed)
        await edges.create(db, edge_id=EDGE_ID, farm_id=FARM_ID, name="bench",
                           token_hash=token_hash(TOKEN))
    finally:
        await db.close()


async def raw_copy(dsn: str, db_path: Path) -> tuple[int, float]:
    """COPY the edge's readings into sensor_data in one binary COPY; (rows, seconds), counting
    only the COPY and its commit (not building the rows)."""
    rows = 0
    spent = 0.0
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.cursor() as cur:
            async with cur.copy(COPY_IN) as copy:
                copy.set_types(COPY_TYPES)
                for chunk in stored_rows(db_path):
                    started = time.perf_counter()
                    for row in chunk:
                        await copy.write_row((FARM_ID, *row))  # as the ingest writes them
                    spent += time.perf_counter() - started
                    rows += len(chunk)
                started = time.perf_counter()
            spent += time.perf_counter() - started  # the COPY's end
        started = time.perf_counter()
        await conn.commit()
        spent += time.perf_counter() - started
    return rows, spent


async def scalar(dsn: str, query: str) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query)
        if cur.description is None:
            return None
        row = await cur.fetchone()
        return row[0] if row else None


# ---- the run ----------------------------------------------------------------------------------

@dataclass
class Sampler:
    """CPU and RSS of a process (and optionally every postgres backend) over the drain."""

    proc: psutil.Process
    rss: list[int] = field(default_factory=list)
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    own_start: float = 0.0  # this process: the cloud (and the bench's light polling)
    own_end: float = 0.0
    pg_start: float = 0.0
    pg_end: float = 0.0

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    @staticmethod
    def _postgres() -> float:
        total = 0.0
        for proc in psutil.process_iter(["name"]):
            if proc.info["name"] and proc.info["name"].startswith("postgres"):
                with contextlib.suppress(psutil.Error):
                    total += Sampler._cpu(proc)
        return total

    def start(self) -> None:
        self.cpu_start, self.pg_start = self._cpu(self.proc), self._postgres()
        self.own_start = self._cpu(psutil.Process())

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.rss.append(self.proc.memory_info().rss)

    def stop(self) -> None:
        self.cpu_end, self.pg_end = self._cpu(self.proc), self._postgres()
        self.own_end = self._cpu(psutil.Process())


def edge_progress(db_path: Path) -> tuple[int, int, int]:
    """(next seq - 1, the assigned reading mark, the newest reading id) from the edge store."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        state = dict(conn.execute("SELECT key, value FROM sync_state").fetchall())
        newest = conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0]
        return int(state["next_seq"]) - 1, int(state["assigned_reading"]), int(newest)
    finally:
        conn.close()


def start_profiler(pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not installed (pip install py-spy): no profile", flush=True)
        return None
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--format", "raw",
         "--rate", "200", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_functions(raw: Path, n: int = 12) -> list[tuple[str, float]]:
    """Self-time share of the hottest functions in a py-spy raw (collapsed stacks) file."""
    if not raw.exists():
        return []
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        leaf = frames[-1] if frames else "?"
        total += int(count)
        own[leaf] = own.get(leaf, 0) + int(count)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:n]
    return [(name, count / total) for name, count in ranked] if total else []


async def drain(args: argparse.Namespace, dsn: str, work: Path) -> dict[str, Any]:
    config, _ = init_site(work / "site", farm_id=FARM_ID, broker_port=free_port(),
                          api_port=free_port(), rooms=ROOMS)
    settings = load_config(config)
    await register(dsn, settings)
    cloud_port = free_port()
    url = f"http://127.0.0.1:{cloud_port}"
    register_cloud(config, url, TOKEN, EDGE_ID)
    with config.open("a") as fh:  # the [cloud] section is the file's last
        fh.write("backoff_initial_s = 0.2\nbackoff_max_s = 1.0\n")
    sensors = [(d.id, d.room) for d in settings.devices if d.kind == "sensor"]
    metrics = ALL_METRICS[: args.metrics]
    started = time.perf_counter()
    # Ending a day ago, whatever its span (the readings are a day old, as they always were).
    span_s = args.step_s * (args.readings // len(sensors))
    queue_readings(settings.db_path, sensors, args.readings, metrics=metrics,
                   start_ts=time.time() - 86_400 - span_s, step_s=args.step_s)
    queued_s = time.perf_counter() - started
    print(f"queued {args.readings:,} readings ({len(metrics)} metric(s) each) on the edge in"
          f" {queued_s:.1f} s", flush=True)

    copy_rows, copy_s = await raw_copy(dsn, settings.db_path)
    print(f"raw binary COPY: {copy_rows:,} rows in {copy_s:.2f} s", flush=True)
    await scalar(dsn, "TRUNCATE sensor_data, sensor_latest")

    log = (work / "edge.log").open("ab")
    edge = subprocess.Popen(
        [sys.executable, "-m", "smartfarm_cli", "edge", "run", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=die_with_parent,
    )
    runner: web.AppRunner | None = None
    try:
        # The edge is up with its cloud unreachable (it retries with backoff, nothing is lost):
        # at least down_s, and until its uplink has tried the cloud. Starting up takes an edge
        # with this backlog several seconds (its automation restores each room's latest
        # readings from the last hour of readings, here all of them); a cloud that came up
        # before the edge was running would time the edge's start-up, not the drain.
        launched = time.perf_counter()
        await asyncio.sleep(args.down_s)
        while b"upload of seqs" not in (work / "edge.log").read_bytes():
            if edge.poll() is not None:
                raise RuntimeError(f"the edge exited: see {work / 'edge.log'}")
            if time.perf_counter() - launched > args.timeout_s:
                raise RuntimeError(f"the edge never tried the cloud: see {work / 'edge.log'}")
            await asyncio.sleep(0.1)
        edge_up_s = time.perf_counter() - launched
        backlog = edge_progress(settings.db_path)
        sampler = Sampler(psutil.Process(edge.pid))
        app = init_app(app_settings(dsn, work / "cloud", jobs={"in_process_worker": False,
                                                               "periodic": False}))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        profilers = []
        if args.profile:
            seconds = max(5, int(args.readings / 20_000))
            profilers = [
                (name, out, start_profiler(pid, out, seconds))
                for name, pid in (("edge", edge.pid), ("cloud", os.getpid()))
                for out in [work / f"profile-{name}.txt"]
            ]
        await web.TCPSite(runner, "127.0.0.1", cloud_port).start()
        up = time.perf_counter()
        sampler.start()
        first_batch: float | None = None
        while True:
            sampler.sample()
            mark = int(await scalar(dsn, f"SELECT high_water FROM edges WHERE id = '{EDGE_ID}'"))
            if mark and first_batch is None:
                first_batch = time.perf_counter()
            given, assigned, newest = edge_progress(settings.db_path)
            if assigned >= newest and mark >= given:
                break
            if time.perf_counter() - up > args.timeout_s:
                raise RuntimeError(f"not drained after {args.timeout_s} s: mark {mark}")
            await asyncio.sleep(0.1)
        done = time.perf_counter()
        sampler.stop()
        for _, _, proc in profilers:
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(60)
    finally:
        edge.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            edge.wait(30)
        if edge.poll() is None:
            edge.kill()
        log.close()
        if runner is not None:
            await runner.cleanup()

    stored = int(await scalar(dsn, "SELECT count(*) FROM sensor_data"))
    dupes = await scalar(dsn, "SELECT count(*) FROM (SELECT 1 FROM sensor_data GROUP BY"
                              " device_id, time, metric HAVING count(*) > 1) d")
    wall = done - up
    steady = done - (first_batch or up)
    cpu = sampler.cpu_end - sampler.cpu_start
    pg_cpu = sampler.pg_end - sampler.pg_start
    rows = args.readings * len(metrics)
    rate = args.readings / wall
    copy_rate_rows = copy_rows / copy_s
    share = (rows / wall) / copy_rate_rows
    result: dict[str, Any] = {
        "params": {"readings": args.readings, "metrics_per_reading": len(metrics),
                   "sensors": len(sensors), "batch_max_records": settings.cloud.batch_max_records,
                   "step_s": args.step_s,
                   "down_s": args.down_s},
        "backlog_at_start": {"seqs_given": backlog[0], "readings": backlog[2]},
        "edge_first_upload_try_s": round(edge_up_s, 2),
        "queue_s": round(queued_s, 2),
        "drain_s": round(wall, 2),
        "first_batch_after_s": round((first_batch or up) - up, 2),
        "readings_per_s": round(rate),
        "readings_per_s_after_first_batch": round(args.readings / steady),
        "rows_per_s": round(rows / wall),
        "raw_copy_rows": copy_rows,
        "raw_copy_s": round(copy_s, 2),
        "raw_copy_rows_per_s": round(copy_rate_rows),
        "share_of_raw_copy": round(share, 3),
        "stored_rows": stored,
        "expected_rows": rows,
        "duplicated_keys": int(dupes),
        "edge_cpu_s": round(cpu, 1),
        "edge_cpu_pct_of_core": round(100 * cpu / wall, 1),
        "edge_rss_mib_max": round(max(sampler.rss) / 2**20, 1) if sampler.rss else None,
        "edge_rss_mib_mean": round(sum(sampler.rss) / len(sampler.rss) / 2**20, 1)
        if sampler.rss else None,
        "postgres_cpu_s": round(pg_cpu, 1),
        "cloud_cpu_s": round(sampler.own_end - sampler.own_start, 1),
        "targets": [
            Target("drain rate", round(rate), ">=", TARGET_RPS, "readings/s"),
            Target("share of raw COPY", round(share, 3), ">=", TARGET_SHARE),
        ],
    }
    if args.profile:
        result["profile"] = {name: top_functions(out) for name, out, _ in profilers}
    return result


def report(result: dict[str, Any]) -> None:
    p = result["params"]
    print_table(
        f"Backlog drain: {p['readings']:,} readings x {p['metrics_per_reading']} metric(s) queued"
        f" on the edge, then the cloud comes up",
        ["figure", "value", "unit"],
        [
            ("drain time (cloud up -> all in PostgreSQL)", result["drain_s"], "s"),
            ("edge start -> its first upload tried (cloud down)",
             result["edge_first_upload_try_s"], "s"),
            ("first batch stored after", result["first_batch_after_s"], "s"),
            ("drain rate", result["readings_per_s"], "readings/s"),
            ("drain rate after the first batch", result["readings_per_s_after_first_batch"],
             "readings/s"),
            ("drain rate", result["rows_per_s"], "rows/s"),
            ("raw binary COPY, same rows, same table", result["raw_copy_rows_per_s"], "rows/s"),
            ("drain / raw COPY", f"{100 * result['share_of_raw_copy']:.0f} %", ""),
            ("rows in PostgreSQL / expected", f"{result['stored_rows']:,} /"
             f" {result['expected_rows']:,}", ""),
            ("duplicated (device, time, metric)", result["duplicated_keys"], ""),
            ("edge CPU during the drain", result["edge_cpu_pct_of_core"], "% of a core"),
            ("edge RSS max / mean", f"{result['edge_rss_mib_max']} / "
             f"{result['edge_rss_mib_mean']}", "MiB"),
            ("cloud process CPU during the drain", result["cloud_cpu_s"], "s"),
            ("PostgreSQL CPU during the drain", result["postgres_cpu_s"], "s"),
        ],
    )
    def shown(value: float | None, limit: float, unit: str) -> str:
        if value is not None and not unit and limit <= 1:  # a ratio
            return f"{100 * value:.0f} %"
        return f"{value:,.0f} {unit}".strip() if value is not None else "-"

    print_table("Targets", ["target", "value", "goal", "verdict"], [
        (t.name, shown(t.value, t.limit, t.unit), f"{t.op} {shown(t.limit, t.limit, t.unit)}",
         verdict(t.met)) for t in result["targets"]
    ])
    for name, top in result.get("profile", {}).items():
        print_table(f"py-spy, {name} process: own time", ["function", "share"],
                    [(fn[:90], f"{100 * share:.1f} %") for fn, share in top])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.sync_drain", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k readings instead of 1M")
    parser.add_argument("--readings", type=int)
    parser.add_argument("--metrics", type=int, default=1, choices=range(1, len(ALL_METRICS) + 1),
                        help="metrics per reading (rows per reading in sensor_data)")
    parser.add_argument("--step-s", type=float, default=0.01,
                        help="seconds between one sensor's readings (the default, 100 a second,"
                             " puts the whole backlog in the edge's last hour)")
    parser.add_argument("--down-s", type=float, default=3.0,
                        help="how long the edge runs with its cloud down before it comes up")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--profile", action="store_true", help="py-spy both processes")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (edge log, site, profiles) and say where")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.readings is None:
        args.readings = 100_000 if args.quick else 1_000_000
    work = Path(tempfile.mkdtemp(prefix="smartfarm-drain-"))
    try:
        with bench_database() as (dsn, where):
            result = asyncio.run(drain(args, dsn, work))
            result["database"] = {"where": where, "server": server_version(dsn)}
    finally:
        if args.keep:
            print(f"work directory kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(result)
    if result["stored_rows"] != result["expected_rows"] or result["duplicated_keys"]:
        print("ERROR: PostgreSQL does not hold every reading exactly once", flush=True)
    write_json(NAME, result, args.results_dir)
    return result


if __name__ == "__main__":
    main()
