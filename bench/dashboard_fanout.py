"""Dashboard fan-out: 500 WebSocket clients on two cloud instances while readings arrive at 200/s.

Two ``smartfarm cloud serve`` processes share one fresh PostgreSQL database. Farms (each with an
edge, rooms and sensors) upload batches to either instance in turn, as edges behind a load
balancer would; every browser-like client (aiohttp, in this process) holds /api/ws on one of the
instances and subscribes to one farm. Each ``reading`` message carries ``ingested_at``, stamped
by the ingesting instance inside the batch's transaction just before it commits; an independent
listener thread in this process notes when PostgreSQL delivers each batch's NOTIFY, i.e. at its
commit. Ingest-commit → client-receive latency is a client's receive time minus that (one machine,
one clock); the time from the pre-commit stamp (which adds the commit's own wait) is reported too.
The instances' CPU is read from /proc (psutil) over the measured window.

    .venv/bin/python -m bench.dashboard_fanout [--quick] [--clients 500] [--rate 200] [--seconds 30]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg

from bench.cloud_database import JWT_SECRET, bench_database, server_version, tokens
from bench.report import RESULTS_DIR, Target, print_table, summarize, verdict, write_json
from bench.site import die_with_parent, free_port
from cloud.auth.tokens import token_hash
from cloud.db import devices, edges, farms, rooms, users
from cloud.db.database import Database

NAME = "dashboard_fanout"
TARGET_P99_MS = 150.0
REPO = Path(__file__).resolve().parents[1]
ROOMS_PER_FARM = 2
SENSORS_PER_ROOM = 5
UPLOAD_PERIOD_S = 0.5  # each farm's edge sends a batch this often (the edge default is ≤ 2 s)


@dataclass
class Farm:
    id: str
    edge_token: str
    devices: list[tuple[str, str]]  # (device id, room id)
    seq: int = 0


@dataclass
class Tally:
    # (room, ingested_at, received at) of each reading message in the window
    arrivals: list[tuple[str, float, float]] = field(default_factory=list)
    uploads_ms: list[float] = field(default_factory=list)  # POST → answer (commit included)
    received: int = 0
    measuring: bool = False
    window: tuple[float, float] = (0.0, 0.0)
    errors: list[str] = field(default_factory=list)


async def make_world(dsn: str, n_farms: int) -> tuple[int, list[Farm]]:
    db = await Database.connect(dsn, min_size=1, max_size=2)
    try:
        owner = await users.create(db, email="fanout@example.com", password_hash="x")
        made = []
        for f in range(n_farms):
            farm_id = f"fan-{f}"
            await farms.create(db, farm_id=farm_id, name=farm_id, timezone="UTC",
                               user_id=owner["id"])
            farm = Farm(farm_id, f"sfe_fanout_{f}_{os.getpid()}", [])
            await edges.create(db, edge_id=f"{farm_id}-edge", farm_id=farm_id, name="edge",
                               token_hash=token_hash(farm.edge_token))
            for r in range(ROOMS_PER_FARM):
                room_id = f"{farm_id}-r{r}"
                await rooms.create(db, room_id=room_id, farm_id=farm_id, name=room_id,
                                   species="oyster", stage="fruiting", stage_started=None)
                for s in range(SENSORS_PER_ROOM):
                    device_id = f"{room_id}-s{s}"
                    await devices.create(db, device_id=device_id, farm_id=farm_id, room_id=room_id,
                                         name=device_id, kind="sensor", actuator=None,
                                         capabilities=[], credentials_hash="x")
                    farm.devices.append((device_id, room_id))
            made.append(farm)
        return owner["id"], made
    finally:
        await db.close()


def spawn_cloud(dsn: str, port: int, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "SMARTFARM_CLOUD_HOST": "127.0.0.1",
        "SMARTFARM_CLOUD_PORT": str(port),
        "SMARTFARM_CLOUD_DATA_DIR": str(data_dir),
        "SMARTFARM_CLOUD_MIGRATE_ON_START": "false",
        "SMARTFARM_CLOUD_LOG_LEVEL": "WARNING",
        "SMARTFARM_CLOUD_AUTH__JWT_SECRET": JWT_SECRET,
        "SMARTFARM_CLOUD_AUTH__API_PER_TOKEN": "1000000000",
        "SMARTFARM_CLOUD_JOBS__IN_PROCESS_WORKER": "false",
        "SMARTFARM_CLOUD_JOBS__PERIODIC": "false",
    }
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "smartfarm_cli", "cloud", "serve"], env=env, cwd=REPO,
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
    finally:
        out.close()


async def wait_ready(session: aiohttp.ClientSession, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(url + "/health") as resp:
                if resp.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not up after {timeout:g} s")
        await asyncio.sleep(0.2)


async def client(session: aiohttp.ClientSession, url: str, token: str, farm_id: str,
                 tally: Tally, ready: asyncio.Queue[bool]) -> None:
    try:
        ws = await session.ws_connect(url + "/api/ws", autoping=True, max_msg_size=0)
    except (aiohttp.ClientError, OSError) as exc:
        tally.errors.append(f"connect: {exc}")
        await ready.put(False)
        return
    async with ws:
        await ws.send_json({"type": "auth", "token": token})
        await ws.send_json({"type": "subscribe", "farm_id": farm_id})
        subscribed = False
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.time()
            if not subscribed:
                doc = json.loads(msg.data)
                if doc["type"] == "subscribed":
                    subscribed = True
                    await ready.put(True)
                elif doc["type"] == "error":
                    tally.errors.append(str(doc))
                    await ready.put(False)
                    return
                continue
            if not msg.data.startswith('{"type":"reading"'):
                continue
            doc = json.loads(msg.data)
            at = doc["ingested_at"]
            start, end = tally.window
            if tally.measuring and start <= at and (not end or at <= end):
                tally.arrivals.append((doc["room_id"], at, now))
                tally.received += 1
    if not subscribed:
        await ready.put(False)


async def upload_loop(session: aiohttp.ClientSession, urls: list[str], farm: Farm, index: int,
                      per_s: float, stop: asyncio.Event, sent: list[int], tally: Tally) -> None:
    """One edge: a batch every UPLOAD_PERIOD_S with its share of the rate, alternate instance."""
    per_batch = per_s * UPLOAD_PERIOD_S
    carry = 0.0
    headers = {"Authorization": f"Bearer {farm.edge_token}"}
    await asyncio.sleep(UPLOAD_PERIOD_S * index / 97 % UPLOAD_PERIOD_S)  # spread the edges
    tick = 0
    next_at = time.monotonic()
    while not stop.is_set():
        carry += per_batch
        n, carry = int(carry), carry - int(carry)
        if n:
            now = time.time()
            records = []
            for i in range(n):
                farm.seq += 1
                device_id, room_id = farm.devices[farm.seq % len(farm.devices)]
                records.append({"seq": farm.seq, "kind": "reading", "at": now, "data": {
                    "device_id": device_id, "room_id": room_id, "ts": now - 0.001 * (n - i),
                    "values": {"temperature_c": 17.0 + i % 7 * 0.1, "humidity_pct": 88.5,
                               "co2_ppm": 800.0 + i}}})
            body = {"edge_id": f"{farm.id}-edge", "farm_id": farm.id,
                    "first_seq": farm.seq - n + 1, "last_seq": farm.seq,
                    "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "records": records}
            url = urls[(index + tick) % len(urls)]
            posted = time.perf_counter()
            async with session.post(url + "/api/edge/v1/batches", json=body,
                                    headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"upload {resp.status}: {await resp.text()}")
            if tally.measuring:
                tally.uploads_ms.append((time.perf_counter() - posted) * 1000)
            sent.append(n)
        tick += 1
        next_at += UPLOAD_PERIOD_S
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def listen_commits(dsn: str, stop: threading.Event, ready: threading.Event,
                   commits: dict[tuple[str, float], float]) -> None:
    """An independent listener, in its own thread: when PostgreSQL delivers a batch's NOTIFY
    (at its commit), keyed (room, ingested_at) like the messages the clients get."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("LISTEN smartfarm_live")
        ready.set()
        while not stop.is_set():
            for notify in conn.notifies(timeout=0.2):
                now = time.time()
                if notify.payload.startswith('{"k":"readings"'):
                    doc = json.loads(notify.payload)
                    commits[(doc["room"], doc["at"])] = now


def cpu_seconds(procs: list[psutil.Process]) -> list[float]:
    out = []
    for proc in procs:
        times = proc.cpu_times()
        out.append(times.user + times.system)
    return out


async def measure(args: argparse.Namespace, dsn: str, work: Path) -> dict[str, Any]:
    devices_per_farm = ROOMS_PER_FARM * SENSORS_PER_ROOM
    # Every sensor sends about once a second: no two readings of a device share a batch or a
    # coalescing interval, so each reading is one message to each client of its farm.
    n_farms = max(1, round(args.rate / devices_per_farm))
    user_id, world = await make_world(dsn, n_farms)
    token = tokens().issue(user_id)
    ports = [free_port(), free_port()]
    procs = [spawn_cloud(dsn, port, work / f"cloud-{port}", work / f"cloud-{port}.log")
             for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    tally = Tally()
    stop = asyncio.Event()
    commits: dict[tuple[str, float], float] = {}
    listener_stop, listener_ready = threading.Event(), threading.Event()
    listener = threading.Thread(target=listen_commits, name="commit-listener", daemon=True,
                                args=(dsn, listener_stop, listener_ready, commits))
    listener.start()
    listener_ready.wait(10)
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(wait_ready(session, url) for url in urls))
            ready: asyncio.Queue[bool] = asyncio.Queue()
            clients = [
                asyncio.create_task(client(session, urls[i % 2], token,
                                           world[i % n_farms].id, tally, ready))
                for i in range(args.clients)
            ]
            started = time.monotonic()
            ok = 0
            for _ in range(args.clients):
                ok += await asyncio.wait_for(ready.get(), 60)
            connect_s = time.monotonic() - started
            if ok != args.clients:
                raise RuntimeError(f"only {ok}/{args.clients} clients subscribed: "
                                   f"{tally.errors[:3]}")
            print(f"{ok} clients subscribed on 2 instances in {connect_s:.1f} s; "
                  f"{n_farms} farms × {devices_per_farm} sensors", flush=True)
            per_farm = args.rate / n_farms
            sent: list[int] = []
            loaders = [asyncio.create_task(upload_loop(session, urls, farm, i, per_farm, stop,
                                                       sent, tally))
                       for i, farm in enumerate(world)]
            await asyncio.sleep(args.warmup)
            cloud_procs = [psutil.Process(p.pid) for p in procs]
            cpu0, sent0 = cpu_seconds(cloud_procs), sum(sent)
            bench_proc = psutil.Process()
            own0 = sum(cpu_seconds([bench_proc]))
            t0 = time.time()
            tally.window = (t0, 0.0)
            tally.measuring = True
            await asyncio.sleep(args.seconds)
            t1 = time.time()
            tally.window = (t0, t1)
            sent1, cpu1 = sum(sent), cpu_seconds(cloud_procs)
            own1 = sum(cpu_seconds([bench_proc]))
            stop.set()
            await asyncio.gather(*loaders, return_exceptions=True)
            await asyncio.sleep(1.0)  # the last batches' messages arrive
            tally.measuring = False
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
    finally:
        listener_stop.set()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    wall = t1 - t0
    readings = sent1 - sent0
    clients_per_farm = args.clients / n_farms
    expected = readings * clients_per_farm
    listener.join(5)
    # From the commit (the NOTIFY's arrival at the independent listener) and, more pessimistic,
    # from the stamp taken inside the transaction just before COMMIT (adds the commit's wait).
    from_commit = [(now - commits[(room, at)]) * 1000 for room, at, now in tally.arrivals
                   if (room, at) in commits]
    from_stamp = [(now - at) * 1000 for _, at, now in tally.arrivals]
    lat = summarize(from_commit)
    cpu = [round(100 * (b - a) / wall, 1) for a, b in zip(cpu0, cpu1, strict=True)]
    return {
        "parameters": {"clients": args.clients, "instances": 2, "farms": n_farms,
                       "sensors": n_farms * devices_per_farm, "rate_per_s": args.rate,
                       "upload_period_s": UPLOAD_PERIOD_S, "seconds": args.seconds,
                       "warmup_s": args.warmup},
        "readings_per_s": round(readings / wall, 1),
        "messages_per_s": round(tally.received / wall, 1),
        "delivered_share": round(tally.received / expected, 4) if expected else None,
        "latency_ms": _rounded(lat),
        "latency_from_pre_commit_stamp_ms": _rounded(summarize(from_stamp)),
        "matched_to_commit": len(from_commit),
        # What the ingest itself took, seen by the edge (parse, COPY, commit, answer): a latency
        # above is at least its share of this.
        "upload_ms": _rounded(summarize(tally.uploads_ms)),
        "cloud_cpu_pct": cpu,
        "bench_process_cpu_pct": round(100 * (own1 - own0) / wall, 1),
        "connect_s": round(connect_s, 2),
        "errors": tally.errors[:10],
        "targets": [Target("ingest-commit → client p99", lat.get("p99"), "<", TARGET_P99_MS,
                           "ms")],
    }


def _rounded(stats: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in stats.items()}


def report(result: dict[str, Any]) -> None:
    p = result["parameters"]
    lat = result["latency_ms"]
    stamp = result["latency_from_pre_commit_stamp_ms"]
    rows = [
        ["clients (2 instances)", p["clients"]],
        ["farms / sensors", f"{p['farms']} / {p['sensors']}"],
        ["readings ingested /s", result["readings_per_s"]],
        ["messages delivered /s", result["messages_per_s"]],
        ["delivered / expected", f"{100 * (result['delivered_share'] or 0):.2f} %"],
        ["commit → client p50 (ms)", lat.get("p50")],
        ["commit → client p99 (ms)", lat.get("p99")],
        ["commit → client max (ms)", lat.get("max")],
        ["pre-commit stamp → client p50 / p99",
         f"{stamp.get('p50', 0):.1f} / {stamp.get('p99', 0):.1f}"],
        ["upload POST p50 / p99 (ms)",
         f"{result['upload_ms'].get('p50', 0):.1f} / {result['upload_ms'].get('p99', 0):.1f}"],
        ["cloud CPU, % of a core", " + ".join(f"{c:g}" for c in result["cloud_cpu_pct"])],
        ["bench process CPU (clients, load)", f"{result['bench_process_cpu_pct']:g} %"],
    ]
    print_table(f"Dashboard fan-out ({p['seconds']:g} s measured)", ["", "value"], rows)
    for target in result["targets"]:
        print(f"{target.name}: {target.value if target.value is None else round(target.value, 1)}"
              f" {target.unit} (target {target.op} {target.limit:g}) — {verdict(target.met)}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.dashboard_fanout",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 clients, 8 s")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--rate", type=float, default=200.0, help="readings per second")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.clients = args.clients or (200 if args.quick else 500)
    args.seconds = args.seconds or (8.0 if args.quick else 30.0)
    with tempfile.TemporaryDirectory(prefix="smartfarm-fanout-") as tmp, \
            bench_database() as (dsn, where):
        result = asyncio.run(measure(args, dsn, Path(tmp)))
        result["database"] = {"where": where, "server": server_version(dsn)}
    report(result)
    write_json(NAME, result, args.results_dir)
    return result


if __name__ == "__main__":
    main()
