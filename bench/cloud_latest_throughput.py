"""API throughput of ``GET /api/devices/{id}/latest`` on loopback: one cloud process (``smartfarm
cloud serve``, real PostgreSQL) and a concurrent aiohttp client in this process.

Each request is a full API call: bearer-token check, per-token rate limit, the user lookup, the
farm/room access check and the latest-values query (``sensor_latest``, a primary-key range), all
answered as JSON. The client keeps N requests in flight over keep-alive connections for a fixed
time, spread over 50 devices, after a warm-up; requests/s, p50/p99 latency and the server's
CPU time per request (from /proc) are reported per concurrency level. Client and server share
the machine's cores, so the figure is a floor for a server with cores of its own.

    .venv/bin/python -m bench.cloud_latest_throughput [--quick] [--concurrency 1,16,64]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.cloud_database import (
    JWT_SECRET,
    BenchFarm,
    bench_database,
    make_farm,
    server_version,
)
from bench.report import Target, print_table, summarize, write_json
from bench.site import free_port
from cloud.db import telemetry
from cloud.db.database import Database

NAME = "cloud_latest_throughput"
METRICS = ("temperature_c", "humidity_pct", "co2_ppm", "light_lux", "substrate_moisture")
# A floor, not an aim: 100 open dashboards polling 50 devices every 10 s need 500/s across the
# cloud's instances; one instance (one core, beside its client) should carry 100/s comfortably.
TARGET_RPS = 100.0
HEADLINE_CONCURRENCY = 16


async def seed(dsn: str) -> BenchFarm:
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        farm = await make_farm(db, rooms_count=5, devices_per_room=10)
        now = datetime.now(UTC)
        rows = [
            (now, device.rsplit("-s", 1)[0], device, metric, 20.0 + i)
            for device in farm.device_ids
            for i, metric in enumerate(METRICS)
        ]
        await telemetry.insert_readings(db, farm.farm_id, rows)
        return farm
    finally:
        await db.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0 where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """``smartfarm cloud serve`` in a child process, on the bench database."""

    def __init__(self, dsn: str, data_dir: str, port: int) -> None:
        self.port = port
        self.env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "SMARTFARM_CLOUD_DATA_DIR": data_dir,
            "SMARTFARM_CLOUD_LOG_LEVEL": "WARNING",
            "SMARTFARM_CLOUD_AUTH__JWT_SECRET": JWT_SECRET,
            "SMARTFARM_CLOUD_AUTH__API_PER_TOKEN": "1000000000",
            "SMARTFARM_CLOUD_DATABASE__POOL_MAX": "10",
        }
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 60) -> None:
        argv = [sys.executable, "-m", "smartfarm_cli", "cloud", "serve",
                "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = await asyncio.create_subprocess_exec(
            *argv, env=self.env, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"cloud server exited with {self.proc.returncode}")
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/health") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError("cloud server did not answer /health in time")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def run_level(
    base: str, farm: BenchFarm, concurrency: int, seconds: float, warmup: float, pid: int
) -> dict[str, Any]:
    """``concurrency`` requests in flight for ``seconds`` (after ``warmup``); the figures."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = time.monotonic() + warmup + seconds
    async with aiohttp.ClientSession(connector=connector, headers=farm.bearer()) as session:

        async def worker(n: int) -> None:
            nonlocal errors
            i = n
            while time.monotonic() < stop_at:
                device = farm.device_ids[i % len(farm.device_ids)]
                i += concurrency
                started = time.perf_counter()
                async with session.get(f"{base}/api/devices/{device}/latest") as resp:
                    body = await resp.read()
                    ok = resp.status == 200 and b'"readings"' in body
                if measuring:
                    latencies.append(time.perf_counter() - started)
                    errors += not ok

        tasks = [asyncio.create_task(worker(n)) for n in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        cpu_before, t0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu_before
    ms = summarize([x * 1000 for x in latencies], ps=(50, 90, 99))
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "ms": ms,
        "server_cpu_us_per_request": 1e6 * cpu / len(latencies) if latencies else None,
    }


async def measure(dsn: str, farm: BenchFarm, levels: list[int], seconds: float) -> list[Any]:
    with tempfile.TemporaryDirectory(prefix="smartfarm-bench-") as data_dir:
        server = Server(dsn, data_dir, free_port())
        await server.start()
        assert server.proc is not None
        try:
            base = f"http://127.0.0.1:{server.port}"
            out = []
            for level in levels:
                result = await run_level(base, farm, level, seconds, min(2.0, seconds / 2),
                                         server.proc.pid)
                print(f"  {level:>3} in flight: {result['rps']:,.0f} req/s", flush=True)
                out.append(result)
            return out
        finally:
            await server.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.cloud_latest_throughput",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s per level, 1 and 16 in flight")
    parser.add_argument("--concurrency", default=None, help="comma-separated levels")
    parser.add_argument("--seconds", type=float, default=None, help="measured time per level")
    args = parser.parse_args(argv)
    levels = [int(x) for x in (args.concurrency or ("1,16" if args.quick else "1,4,16,64"))
              .split(",")]
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    with bench_database() as (dsn, where):
        print(f"database: {where}, PostgreSQL {server_version(dsn)}", flush=True)
        farm = asyncio.run(seed(dsn))
        levels_out = asyncio.run(measure(dsn, farm, levels, seconds))
    result: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "where": where,
        "endpoint": "GET /api/devices/{id}/latest",
        "devices": len(farm.device_ids),
        "metrics_per_device": len(METRICS),
        "levels": levels_out,
    }
    headline = next((x for x in levels_out if x["concurrency"] == HEADLINE_CONCURRENCY), None)
    result["targets"] = [
        Target(f"requests/s at {HEADLINE_CONCURRENCY} in flight",
               headline["rps"] if headline else None, ">=", TARGET_RPS, "req/s"),
    ]
    print_table(
        f"GET /api/devices/{{id}}/latest, one server process, {seconds:g} s per level",
        ["in flight", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms",
         "server CPU µs/req"],
        [[x["concurrency"], x["requests"], x["errors"], x["rps"], x["ms"].get("p50"),
          x["ms"].get("p90"), x["ms"].get("p99"), x["server_cpu_us_per_request"]]
         for x in levels_out],
    )
    write_json(NAME, result)
    return result


if __name__ == "__main__":
    main()
