"""Many edges at once: N lightweight edges hold their command streams and upload batches through
the repo's nginx config in front of two cloud instances, while a user sends commands.

A fresh PostgreSQL database gets F farms of N/F edges, each edge with its own room of sensors
and an exhaust fan (repository calls, a few connections at a time). Two ``smartfarm cloud serve``
processes share it; nginx runs deploy/nginx/smartfarm.conf with only its addresses changed
(bench/nginx_site.py: TLS, least_conn upstream, the stream location). The edges
(bench/fleet_edges.py) run in a few spawned processes: each says hello on
``/api/edge/v1/stream`` and keeps it, then uploads a batch every period (gzip JSON, real
sequence numbers, resent from the cloud's ``acked_seq``). This process sends commands through
the REST API as the farms' owner, at a paced rate, to random edges' fans; delivery is the time
from the POST to the command's arrival on the owning edge's stream (one machine, one clock); the
edge answers ``CommandAccepted`` and reports the device's ack in its next batch.

Per-instance ingest comes from each instance's own counters (``/metrics`` on its port, which
nginx does not expose); CPU seconds of every process over the measured window from /proc
(psutil): the instances, nginx, the PostgreSQL backends of this database, the load processes and
this one. Memory per stream: each instance's RSS growth from idle to holding its streams
(before any batch), over the streams it holds.

    .venv/bin/python -m bench.edge_fleet [--quick] [--edges 1000] [--farms 250] [--rate 11000]
        [--seconds 60] [--workers 2] [--no-pacing]

Under load the instances ask the edges for a longer batch interval (cloud.sync.pace), as real
edges then send: the table shows the interval the edges used and the oldest reading's age when
its batch was acked, the freshness that pacing costs. ``--no-pacing`` measures without it.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.cloud_database import bench_database, server_version, tokens
from bench.dashboard_fanout import spawn_cloud, wait_ready
from bench.fleet_edges import EdgeSpec, FleetSpec, run_fleet
from bench.load import Worker, Workers, split
from bench.nginx_site import make_site, nginx_binary, run_nginx
from bench.report import RESULTS_DIR, Target, print_table, summarize, verdict, write_json
from bench.site import free_port
from cloud.auth.tokens import token_hash
from cloud.db import devices, edges, farms, rooms, users
from cloud.db.database import Database

NAME = "edge_fleet"
TARGET_READINGS_PER_INSTANCE = 5_000.0
TARGET_ACK_P99_MS = 250.0
SENSORS_PER_ROOM = 4
POOL_ENV = "SMARTFARM_CLOUD_DATABASE__POOL_MAX"
PACE_ENV = "SMARTFARM_CLOUD_SYNC__PACE_MAX_S"  # 0: the instances never ask edges to slow down


@dataclass
class Commands:
    """Commands this process sent: id → (wall time of the POST, wall time of its 201)."""

    sent: dict[str, tuple[float, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


async def seed(dsn: str, n_edges: int, n_farms: int) -> tuple[int, list[EdgeSpec]]:
    """An owner of every farm; per edge a token, a room, its sensors and a fan."""
    db = await Database.connect(dsn, min_size=1, max_size=6)
    gate = asyncio.Semaphore(6)
    salt = secrets.token_hex(4)
    try:
        owner = await users.create(db, email="fleet@example.com", password_hash="x")
        per_farm = split(list(range(n_edges)), n_farms)

        async def one(f: int, members: list[int]) -> list[EdgeSpec]:
            farm_id = f"fleet-{f}"
            made = []
            async with gate:
                await farms.create(db, farm_id=farm_id, name=farm_id, timezone="UTC",
                                   user_id=owner["id"])
                for e in members:
                    edge_id, room_id, token = f"edge-{e}", f"room-{e}", f"sfe_fleet_{salt}_{e}"
                    await edges.create(db, edge_id=edge_id, farm_id=farm_id, name=edge_id,
                                       token_hash=token_hash(token))
                    await rooms.create(db, room_id=room_id, farm_id=farm_id, name=room_id,
                                       species="oyster", stage="fruiting", stage_started=None)
                    # Each edge runs its own room: config and commands go to it alone.
                    await edges.assign_room(db, farm_id, room_id, edge_id)
                    sensors = tuple(f"{room_id}-s{s}" for s in range(SENSORS_PER_ROOM))
                    for device_id in sensors:
                        await devices.create(db, device_id=device_id, farm_id=farm_id,
                                             room_id=room_id, name=device_id, kind="sensor",
                                             actuator=None, capabilities=[], credentials_hash="x")
                    fan = f"{room_id}-fan"
                    await devices.create(db, device_id=fan, farm_id=farm_id, room_id=room_id,
                                         name=fan, kind="actuator", actuator="exhaust_fan",
                                         capabilities=[], credentials_hash="x")
                    made.append(EdgeSpec(edge_id, farm_id, token, room_id, sensors, fan))
            return made

        groups = await asyncio.gather(*(one(f, m) for f, m in enumerate(per_farm) if m))
        return int(owner["id"]), [spec for group in groups for spec in group]
    finally:
        await db.close()


async def command_loop(session: aiohttp.ClientSession, base: str, tls: ssl.SSLContext,
                       token: str, fleet: list[EdgeSpec], rate: float, stop: asyncio.Event,
                       out: Commands) -> None:
    """``rate`` commands a second to fans spread over the fleet, each POST on its own task."""
    headers = {"Authorization": f"Bearer {token}"}
    pending: set[asyncio.Task[None]] = set()

    async def send(k: int, edge: EdgeSpec) -> None:
        command_id = f"fc-{k}"
        body = {"device_id": edge.actuator, "action": "on" if k % 2 else "off",
                "command_id": command_id}
        posted = time.time()
        try:
            async with session.post(f"{base}/api/rooms/{edge.room_id}/commands", json=body,
                                    headers=headers, ssl=tls) as resp:
                if resp.status != 201:
                    out.errors.append(f"{resp.status}: {(await resp.text())[:200]}")
                    return
        except (aiohttp.ClientError, OSError) as exc:
            out.errors.append(repr(exc))
            return
        out.sent[command_id] = (posted, time.time())

    k = 0
    next_at = time.monotonic()
    while rate > 0 and not stop.is_set():
        edge = fleet[(k * 7919) % len(fleet)]
        task = asyncio.create_task(send(k, edge))
        pending.add(task)
        task.add_done_callback(pending.discard)
        k += 1
        next_at += 1 / rate
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*pending, return_exceptions=True)


_SAMPLE = re.compile(r'^(smartfarm_sync_records_total\{kind="reading"\}|'
                     r'smartfarm_sync_batches_total\{outcome="stored"\}|smartfarm_sync_streams) '
                     r'(\S+)$', re.MULTILINE)


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """An instance's reading records and batches stored so far and streams open, from its own
    /metrics (on its port: nginx denies /metrics)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    found = {name: float(value) for name, value in _SAMPLE.findall(text)}
    return {"readings": found.get('smartfarm_sync_records_total{kind="reading"}', 0.0),
            "batches": found.get('smartfarm_sync_batches_total{outcome="stored"}', 0.0),
            "streams": found.get("smartfarm_sync_streams", 0.0)}


def cpu_of(procs: dict[str, list[psutil.Process]]) -> dict[str, float]:
    out = {}
    for name, group in procs.items():
        total = 0.0
        for proc in group:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        out[name] = total
    return out


def postgres_backends(dbname: str) -> list[psutil.Process]:
    """The server processes serving this benchmark's database (not the server's other work)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if cmdline.startswith("postgres:") and f" {dbname} " in f"{cmdline} ":
            found.append(proc)
    return found


async def measure(args: argparse.Namespace, dsn: str, work: Path) -> dict[str, Any]:
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    t_seed = time.monotonic()
    owner_id, fleet = await seed(dsn, args.edges, args.farms)
    seed_s = time.monotonic() - t_seed
    print(f"seeded {len(fleet)} edges in {args.farms} farms in {seed_s:.1f} s", flush=True)
    ports = [free_port(), free_port()]
    overrides = {POOL_ENV: None if args.pool_max is None else str(args.pool_max),
                 PACE_ENV: None if args.pacing else "0"}
    saved = {name: os.environ.get(name) for name in overrides}
    for name, value in overrides.items():  # spawn_cloud passes this process's environment on
        if value is not None:
            os.environ[name] = value
    try:
        clouds = [spawn_cloud(dsn, port, work / f"cloud-{port}", work / f"cloud-{port}.log")
                  for port in ports]
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    site_dir = work / "nginx"
    site_dir.mkdir()
    site = make_site(site_dir, ports)
    tls = ssl.create_default_context(cafile=str(site.cafile))
    commands = Commands()
    stop = asyncio.Event()
    dbname = conninfo_to_dict(dsn).get("dbname") or ""
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            await asyncio.gather(*(wait_ready(http, f"http://127.0.0.1:{p}") for p in ports))
            cloud_procs = [psutil.Process(c.pid) for c in clouds]
            with run_nginx(site, binary) as nginx:
                async with http.get(site.base_url + "/health", ssl=tls) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"nginx → cloud /health: {resp.status}")
                rss_idle = [p.memory_info().rss for p in cloud_procs]
                per_edge = args.rate / len(fleet)
                workers = [
                    Worker(run_fleet, FleetSpec(
                        name=f"fleet-{w}", base_url=site.base_url, cafile=str(site.cafile),
                        edges=part, readings_per_edge_s=per_edge, period_s=args.period,
                        metrics=args.metrics), name=f"fleet-{w}")
                    for w, part in enumerate(split(fleet, args.workers))
                ]
                with Workers(workers) as pool:
                    ready = await pool.ready(timeout=300)
                    connect_s = max(r["connect_s"] for r in ready)
                    print(f"{sum(r['streams'] for r in ready)} streams open through nginx in "
                          f"{connect_s:.1f} s", flush=True)
                    await asyncio.sleep(2.0)  # the instances settle (config pushes answered)
                    held = [await scrape(http, p) for p in ports]
                    rss_streams = [p.memory_info().rss for p in cloud_procs]
                    pool.go()
                    token = tokens().issue(owner_id)
                    commander = asyncio.create_task(command_loop(
                        http, site.base_url, tls, token, fleet, args.commands, stop, commands))
                    await asyncio.sleep(args.warmup)
                    groups = {
                        "cloud-1": [cloud_procs[0]], "cloud-2": [cloud_procs[1]],
                        "nginx": [psutil.Process(nginx.pid)],
                        "postgres (this database)": postgres_backends(dbname),
                        "load processes": [psutil.Process(w.process.pid) for w in workers],
                        "bench (commands)": [psutil.Process()],
                    }
                    before = [await scrape(http, p) for p in ports]
                    cpu0, t0 = cpu_of(groups), time.time()
                    await asyncio.sleep(args.seconds)
                    cpu1, t1 = cpu_of(groups), time.time()
                    after = [await scrape(http, p) for p in ports]
                    rss_end = [p.memory_info().rss for p in cloud_procs]
                    stop.set()
                    await commander
                    await asyncio.sleep(1.0)  # the last commands reach their edges
                    pool.stop()
                    results = await pool.results(timeout=120)
    finally:
        for proc in clouds:
            proc.terminate()
        for proc in clouds:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    checks = await verify(dsn)
    return summarize_run(args, results, commands, seed_s=seed_s, connect_s=connect_s,
                         window=(t0, t1), before=before, after=after, held=held,
                         rss=(rss_idle, rss_streams, rss_end), cpu=(cpu0, cpu1), checks=checks)


async def verify(dsn: str) -> dict[str, Any]:
    """What PostgreSQL holds at the end: the edges' marks and the commands' outcomes."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT coalesce(sum(high_water), 0) FROM edges")
        row = await cur.fetchone()
        marks = int(row[0]) if row else 0
        cur = await conn.execute(
            "SELECT status, count(*) FROM commands WHERE id LIKE 'fc-%%' GROUP BY status")
        statuses = {str(s): int(n) for s, n in await cur.fetchall()}
    return {"sum_of_high_water_marks": marks, "command_status": statuses}


def summarize_run(args: argparse.Namespace, results: list[dict[str, Any]], commands: Commands,
                  *, seed_s: float, connect_s: float, window: tuple[float, float],
                  before: list[dict[str, float]], after: list[dict[str, float]],
                  held: list[dict[str, float]], rss: tuple[list[int], list[int], list[int]],
                  cpu: tuple[dict[str, float], dict[str, float]],
                  checks: dict[str, Any]) -> dict[str, Any]:
    t0, t1 = window
    wall = t1 - t0
    in_window = [b for r in results for b in r["batches"] if t0 <= b[0] <= t1]
    acks = summarize([b[1] for b in in_window])
    # How long an edge's readings gathered before their batch (its period, or longer when the
    # cloud asked), and the oldest reading's age when its batch was acked: the price of pacing.
    gathered = summarize([b[3] for b in in_window])
    delay = summarize([b[3] * 1000 + b[1] for b in in_window])
    readings = sum(b[2] for b in in_window)
    per_instance = [round((a["readings"] - b["readings"]) / wall, 1)
                    for b, a in zip(before, after, strict=True)]
    batches_per_instance = [round((a["batches"] - b["batches"]) / wall, 1)
                            for b, a in zip(before, after, strict=True)]
    arrived = {cid: at for r in results for cid, at in r["commands"]}
    delivery, undelivered = [], 0
    for cid, (posted, _) in commands.sent.items():
        if not t0 <= posted <= t1:
            continue
        if cid in arrived:
            delivery.append((arrived[cid] - posted) * 1000)
        else:
            undelivered += 1
    rss_idle, rss_streams, rss_end = rss
    streams = [int(h["streams"]) for h in held]
    per_stream = [round((s - i) / n / 1024, 1) if n else None
                  for i, s, n in zip(rss_idle, rss_streams, streams, strict=True)]
    cpu_s = {name: round(cpu[1][name] - cpu[0][name], 1) for name in cpu[0]}
    errors: dict[str, int] = {}
    for r in results:
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    delivery_stats = summarize(delivery)
    # What an instance's own CPU time bought: the figure that survives a machine whose cores are
    # shared with the load generator, nginx, PostgreSQL (and, here, other people's work).
    cloud_cpu = [cpu_s["cloud-1"], cpu_s["cloud-2"]]
    cpu_ms_per_batch = [round(1000 * c / (b * wall), 2) if b else None
                        for c, b in zip(cloud_cpu, batches_per_instance, strict=True)]
    readings_per_cpu_s = [round(r * wall / c) if c else None
                          for c, r in zip(cloud_cpu, per_instance, strict=True)]
    mean_per_instance = sum(per_instance) / len(per_instance)
    return {
        "parameters": {"edges": args.edges, "farms": args.farms, "instances": 2,
                       "load_processes": args.workers, "offered_readings_per_s": args.rate,
                       "metrics_per_reading": args.metrics, "batch_period_s": args.period,
                       "commands_per_s": args.commands, "seconds": args.seconds,
                       "warmup_s": args.warmup, "cpus": os.cpu_count(),
                       "pool_max": args.pool_max or "default", "pacing": args.pacing},
        "seed_s": round(seed_s, 1),
        "connect_s": connect_s,
        "readings_per_s": round(readings / wall, 1),
        "readings_per_s_by_instance": per_instance,
        "batches_per_s": round(len(in_window) / wall, 1),
        "batches_per_s_by_instance": batches_per_instance,
        "batch_ack_ms": _rounded(acks),
        "batch_interval_s": _rounded(gathered),
        "oldest_reading_age_at_ack_ms": _rounded(delay),
        "command_delivery_ms": _rounded(delivery_stats),
        "commands_sent_in_window": len(delivery) + undelivered,
        "commands_undelivered": undelivered,
        "command_errors": commands.errors[:10],
        "foreign_commands": sum(r["foreign_commands"] for r in results),
        "streams_by_instance": streams,
        "streams_open_at_end": sum(r["streams_open_at_end"] for r in results),
        "stream_drops": sum(r["stream_drops"] for r in results),
        "rss_mib_idle": [round(x / 2**20, 1) for x in rss_idle],
        "rss_mib_with_streams": [round(x / 2**20, 1) for x in rss_streams],
        "rss_mib_end": [round(x / 2**20, 1) for x in rss_end],
        "kib_per_stream": per_stream,
        "cpu_s": cpu_s,
        "cpu_pct_of_core": {k: round(100 * v / wall, 1) for k, v in cpu_s.items()},
        "cloud_cpu_ms_per_batch": cpu_ms_per_batch,
        "cloud_readings_per_cpu_s": readings_per_cpu_s,
        "errors": errors,
        "error_samples": [s for r in results for s in r["samples"]][:10],
        "unacked_at_end": sum(r["unacked"] for r in results),
        # Every seq an edge saw acked, against the marks PostgreSQL holds: equal, or a batch was
        # acked without being stored (or stored twice over a mark that moved back).
        "acked_seqs": sum(r["acked_seqs"] for r in results),
        "database": checks,
        "targets": [
            Target("readings/s per instance (mean of 2)", round(mean_per_instance, 1), ">=",
                   TARGET_READINGS_PER_INSTANCE, "readings/s"),
            Target("batch ack p99", acks.get("p99"), "<", TARGET_ACK_P99_MS, "ms"),
        ],
    }


def _rounded(stats: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in stats.items()}


def report(result: dict[str, Any]) -> None:
    p = result["parameters"]
    ack, cmd = result["batch_ack_ms"], result["command_delivery_ms"]
    gap, age = result["batch_interval_s"], result["oldest_reading_age_at_ack_ms"]

    def pair(values: list[Any]) -> str:
        return " / ".join(f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                           else str(v) for v in values)

    rows = [
        ["edges (streams through nginx)", f"{p['edges']} in {p['farms']} farms"],
        ["streams held, instance 1 / 2", pair(result["streams_by_instance"])],
        ["readings/s offered", p["offered_readings_per_s"]],
        ["readings/s acked (all)", result["readings_per_s"]],
        ["readings/s stored, instance 1 / 2", pair(result["readings_per_s_by_instance"])],
        ["batches/s acked (all)", result["batches_per_s"]],
        ["batches/s stored, instance 1 / 2", pair(result["batches_per_s_by_instance"])],
        ["batch ack p50 / p99 / max (ms)",
         f"{ack.get('p50', 0):.1f} / {ack.get('p99', 0):.1f} / {ack.get('max', 0):.1f}"],
        ["edge batch interval p50 / max (s)" + ("" if p["pacing"] else ", pacing off"),
         f"{gap.get('p50', 0):.1f} / {gap.get('max', 0):.1f}"],
        ["oldest reading's age at ack p50 / p99 (ms)",
         f"{age.get('p50', 0):.0f} / {age.get('p99', 0):.0f}"],
        ["commands sent / undelivered", f"{result['commands_sent_in_window']} / "
                                        f"{result['commands_undelivered']}"],
        ["command delivery p50 / p99 (ms)",
         f"{cmd.get('p50', 0):.1f} / {cmd.get('p99', 0):.1f}"],
        ["RSS idle → with streams (MiB)",
         f"{pair(result['rss_mib_idle'])} → {pair(result['rss_mib_with_streams'])}"],
        ["memory per stream (KiB), instance 1 / 2", pair(result["kib_per_stream"])],
        ["RSS at end (MiB)", pair(result["rss_mib_end"])],
        *[[f"CPU s: {name}", f"{secs:g} ({result['cpu_pct_of_core'][name]:g} % of a core)"]
          for name, secs in result["cpu_s"].items()],
        ["cloud CPU ms per batch, instance 1 / 2", pair(result["cloud_cpu_ms_per_batch"])],
        ["readings per cloud CPU second, 1 / 2", pair(result["cloud_readings_per_cpu_s"])],
        ["stream drops / errors", f"{result['stream_drops']} / {result['errors'] or 0}"],
    ]
    print_table(f"Edge fleet: {p['edges']} edges, 2 instances behind nginx "
                f"({p['seconds']:g} s measured, {p['cpus']} CPUs shared by all)",
                ["", "value"], rows)
    for target in result["targets"]:
        print(f"{target.name}: {target.value if target.value is None else round(target.value, 1)}"
              f" {target.unit} (target {target.op} {target.limit:g}) — {verdict(target.met)}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import sys

    parser = argparse.ArgumentParser(prog="bench.edge_fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 edges, 20 s")
    parser.add_argument("--edges", type=int)
    parser.add_argument("--farms", type=int)
    parser.add_argument("--rate", type=float, default=11_000.0,
                        help="readings per second offered by the whole fleet")
    parser.add_argument("--metrics", type=int, default=3, help="metrics per reading (1-6)")
    parser.add_argument("--period", type=float, default=2.0,
                        help="seconds between an edge's batches (the edge's batch_max_age_s)")
    parser.add_argument("--commands", type=float, default=5.0,
                        help="commands per second (0: none)")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds of full load before measuring: the whole fleet starts at"
                             " once, and the instances take ~20-30 s to pace it")
    parser.add_argument("--no-pacing", dest="pacing", action="store_false",
                        help="the instances never ask edges for a longer batch interval")
    parser.add_argument("--workers", type=int, default=2, help="load processes")
    parser.add_argument("--pool-max", type=int, default=None,
                        help="each instance's database.pool_max (default: the cloud's, 10)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.edges = args.edges or (100 if args.quick else 1000)
    args.farms = args.farms or max(1, args.edges // 4)
    args.seconds = args.seconds or (20.0 if args.quick else 60.0)
    with tempfile.TemporaryDirectory(prefix="smartfarm-fleet-") as tmp, \
            bench_database() as (dsn, where):
        result = asyncio.run(measure(args, dsn, Path(tmp)))
        result["database"]["where"] = where
        result["database"]["server"] = server_version(dsn)
    report(result)
    write_json(NAME, result, args.results_dir)
    return result


if __name__ == "__main__":
    main()
