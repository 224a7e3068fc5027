"""Telemetry query latency: one room, 30 days at 10 s resolution, 1 h buckets, on a 10M-row
``sensor_data`` loaded with binary COPY; p50/p95 of the endpoint's query (target p95 < 50 ms) and
the table's size on disk.

What "10M rows" means: ``sensor_data`` is narrow, one row per metric value. Each room's sensor
reports 6 metrics every 10 s, so 30 days of one room are 259,200 readings = 1,555,200 rows; six
such rooms plus a seventh that joined late (its first reading carries 4 metrics) make exactly
10,000,000 rows, i.e. ~1.67M readings. Rows are loaded in time order, rooms interleaved, the way
ingest writes them, with the schema's indexes and rollup trigger in place.

Measured: the endpoint's query as it runs now (hourly rollups of migration 0006 plus raw rows
for the partial edge hours), all metrics and one metric; the same through HTTP (JSON of 4,320
buckets); the raw-row aggregation it replaced; the rollup trigger's cost on COPY; and, unless
``--no-wide``, the same data as one wide row per reading (a column per metric).

    .venv/bin/python -m bench.cloud_telemetry_query [--quick] [--no-wide]
"""
from __future__ import annotations

import argparse
import asyncio
import math
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiohttp import web

from bench.cloud_database import (
    FARM_ID,
    BenchFarm,
    app_settings,
    bench_database,
    make_farm,
    server_version,
)
from bench.report import Target, print_table, summarize, write_json
from bench.site import free_port
from cloud.app import init_app
from cloud.db import telemetry
from cloud.db.database import Database

NAME = "cloud_telemetry_query"
TARGET_P95_MS = 50.0
STEP = timedelta(seconds=10)
# (metric, mean, daily swing): a plausible fruiting room, so values and aggregates look real.
METRICS = (
    ("temperature_c", 17.0, 1.5),
    ("humidity_pct", 88.0, 4.0),
    ("co2_ppm", 800.0, 150.0),
    ("light_lux", 300.0, 250.0),
    ("substrate_moisture", 60.0, 5.0),
    ("battery_v", 3.9, 0.1),
)
BATCH_ROWS = 1_000_000  # one COPY statement (and rollup trigger run) per million rows


def schedule(rows: int, steps: int) -> list[tuple[str, str, int, int]]:
    """(room, device, first step, metrics in that first reading) per room, totalling ``rows``."""
    per_room = steps * len(METRICS)
    full, rest = divmod(rows, per_room)
    plan = [(f"bench-r{r}", f"bench-r{r}-s0", 0, len(METRICS)) for r in range(full)]
    if rest:
        readings = math.ceil(rest / len(METRICS))
        first = rest - (readings - 1) * len(METRICS)
        plan.append((f"bench-r{full}", f"bench-r{full}-s0", steps - readings, first))
    return plan


def generate(
    plan: list[tuple[str, str, int, int]], start: datetime, steps: int
) -> Iterator[tuple[datetime, str, str, str, float]]:
    rng = random.Random(7)
    day = 86_400 / STEP.total_seconds()
    for k in range(steps):
        at = start + STEP * k
        wave = math.sin(2 * math.pi * k / day)
        for room, device, first_step, first_count in plan:
            if k < first_step:
                continue
            metrics = METRICS[:first_count] if k == first_step else METRICS
            for metric, mean, swing in metrics:
                yield at, room, device, metric, mean + swing * wave + rng.gauss(0, swing / 10)


def load(dsn: str, rows: Iterator[tuple[Any, ...]]) -> tuple[int, float]:
    """Binary COPY in batches of BATCH_ROWS, each its own transaction; (rows, seconds)."""
    done = 0
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        more = True
        while more:
            with conn.cursor() as cur, cur.copy(telemetry.COPY_IN) as copy:
                copy.set_types(list(telemetry.COPY_TYPES))
                count = 0
                for row in rows:
                    copy.write_row((FARM_ID, *row))
                    count += 1
                    if count == BATCH_ROWS:
                        break
                else:
                    more = False
            conn.commit()
            done += count
            if count:
                print(f"\r  loaded {done:>12,} rows", end="", flush=True)
    print()
    return done, time.perf_counter() - started


def vacuum(dsn: str, table: str) -> float:
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - started


def sizes(dsn: str) -> dict[str, int]:
    # sensor_data is partitioned (migration 0019): its size is its partitions'.
    query = """
    SELECT sum(pg_total_relation_size(relid)), sum(pg_relation_size(relid)),
           sum(pg_indexes_size(relid)), pg_total_relation_size('sensor_hourly'),
           (SELECT count(*) FROM sensor_hourly)
    FROM pg_partition_tree('sensor_data')"""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    keys = ("total_bytes", "heap_bytes", "index_bytes", "rollup_bytes", "rollup_rows")
    return dict(zip(keys, (int(v) for v in row), strict=True))


async def timed(
    call: Callable[[], Awaitable[Any]], iterations: int, warmup: int = 2
) -> list[float]:
    """Milliseconds per call, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        await call()
    out = []
    for _ in range(iterations):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def query_latencies(
    dsn: str, farm: BenchFarm, start: datetime, end: datetime, iterations: int, raw_iterations: int
) -> dict[str, Any]:
    room = farm.room_ids[0]
    hour = timedelta(hours=1)
    span = {"start": start, "end": end, "device_id": None, "bucket": hour}
    db = await Database.connect(dsn, min_size=1, max_size=2)
    try:
        results: dict[str, Any] = {}
        for label, metrics in (("all 6 metrics", None), ("1 metric", ["humidity_pct"])):
            rows = await telemetry.buckets(db, farm.farm_id, room, metrics=metrics, **span)
            samples = await timed(
                lambda m=metrics: telemetry.buckets(db, farm.farm_id, room, metrics=m, **span),
                iterations,
            )
            results[f"rollup, {label}"] = {"rows": len(rows), "ms": summarize(samples)}
        metric_names = [m[0] for m in METRICS]
        raw_params = {"farm_id": farm.farm_id, "room_id": room, "metrics": metric_names, **span}
        rows = await db.fetch_all(telemetry.BUCKETS, raw_params)
        samples = await timed(
            lambda: db.fetch_all(telemetry.BUCKETS, raw_params), raw_iterations, 1
        )
        results["raw rows (before 0006), all 6 metrics"] = {
            "rows": len(rows),
            "ms": summarize(samples),
        }
    finally:
        await db.close()
    results["HTTP GET …/telemetry?bucket=1h, all metrics"] = await http_latency(
        dsn, farm, start, end, iterations
    )
    return results


async def http_latency(
    dsn: str, farm: BenchFarm, start: datetime, end: datetime, iterations: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="smartfarm-bench-") as data_dir:
        runner = web.AppRunner(init_app(app_settings(dsn, Path(data_dir))), access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/api/rooms/{farm.room_ids[0]}/telemetry"
        query = {"from": start.isoformat(), "to": end.isoformat(), "bucket": "1h"}
        try:
            async with aiohttp.ClientSession(headers=farm.bearer()) as session:

                async def call() -> int:
                    async with session.get(url, params=query) as resp:
                        assert resp.status == 200, await resp.text()
                        return len((await resp.json())["items"])

                items = await call()
                samples = await timed(call, iterations)
        finally:
            await runner.cleanup()
    return {"rows": items, "ms": summarize(samples)}


def trigger_overhead(dsn: str, start: datetime, steps: int) -> dict[str, float]:
    """COPY rate of 300k more rows (a new room) with the rollup trigger, and without it."""
    rates = {}
    for label, enabled in (("with rollup trigger", True), ("without", False)):
        plan = [(f"bench-extra-{label[:4]}", f"bench-extra-{label[:4]}-s0", 0, len(METRICS))]
        rows = generate(plan, start, min(steps, 50_000))
        with psycopg.connect(dsn, autocommit=True) as conn:
            verb = "ENABLE" if enabled else "DISABLE"
            conn.execute(f"ALTER TABLE sensor_data {verb} TRIGGER sensor_data_fold_hourly")
        try:
            count, seconds = load(dsn, rows)
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("ALTER TABLE sensor_data ENABLE TRIGGER sensor_data_fold_hourly")
        rates[label] = count / seconds
    return rates


WIDE = """
CREATE TABLE sensor_wide AS
SELECT time, room_id, device_id,
    max(value) FILTER (WHERE metric = 'temperature_c') AS temperature_c,
    max(value) FILTER (WHERE metric = 'humidity_pct') AS humidity_pct,
    max(value) FILTER (WHERE metric = 'co2_ppm') AS co2_ppm,
    max(value) FILTER (WHERE metric = 'light_lux') AS light_lux,
    max(value) FILTER (WHERE metric = 'substrate_moisture') AS substrate_moisture,
    max(value) FILTER (WHERE metric = 'battery_v') AS battery_v
FROM sensor_data WHERE room_id LIKE 'bench-r%%' GROUP BY 1, 2, 3 ORDER BY 1, 2"""
WIDE_INDEX = "CREATE INDEX sensor_wide_room_time_idx ON sensor_wide (room_id, time)"
WIDE_BUCKETS = """
SELECT date_bin(%(bucket)s, time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, device_id,
    avg(temperature_c), min(temperature_c), max(temperature_c),
    avg(humidity_pct), min(humidity_pct), max(humidity_pct),
    avg(co2_ppm), min(co2_ppm), max(co2_ppm),
    avg(light_lux), min(light_lux), max(light_lux),
    avg(substrate_moisture), min(substrate_moisture), max(substrate_moisture),
    avg(battery_v), min(battery_v), max(battery_v), count(*)
FROM sensor_wide WHERE room_id = %(room_id)s AND time >= %(start)s AND time < %(end)s
GROUP BY 1, 2 ORDER BY 1, 2"""


async def wide_layout(
    dsn: str, room: str, start: datetime, end: datetime, iterations: int
) -> dict[str, Any]:
    """The same readings as one row per reading: size and the raw 1 h aggregation."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(WIDE)
        conn.execute(WIDE_INDEX)
        conn.execute("VACUUM ANALYZE sensor_wide")
        row = conn.execute(
            "SELECT count(*), pg_total_relation_size('sensor_wide') FROM sensor_wide"
        ).fetchone()
    assert row is not None
    built = time.perf_counter() - started
    params = {"room_id": room, "start": start, "end": end, "bucket": timedelta(hours=1)}
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        buckets = await db.fetch_all(WIDE_BUCKETS, params)
        samples = await timed(lambda: db.fetch_all(WIDE_BUCKETS, params), iterations, 1)
    finally:
        await db.close()
    return {"rows": int(row[0]), "total_bytes": int(row[1]), "build_s": built,
            "result_rows": len(buckets), "ms": summarize(samples)}


def decision(result: dict[str, Any]) -> str:
    """The layout decision, with this run's figures."""
    raw = result["queries"]["raw rows (before 0006), all 6 metrics"]["ms"]["p50"]
    text = (
        "Keep narrow rows (one per metric value) and answer 1 h/1 d buckets from hourly rollups "
        "kept by a trigger: devices send any subset of metrics and unknown metrics are kept "
        "without an ALTER, and a 30-day chart reads ~720 rollup rows per series instead of "
        f"aggregating 259,200 raw rows ({raw:,.0f} ms p50 from raw rows)."
    )
    wide = result.get("wide")
    if wide:
        narrow_bytes = result["size"]["total_bytes"]
        text += (
            f" The price is disk: {mib(narrow_bytes):,.0f} MiB narrow vs "
            f"{mib(wide['total_bytes']):,.0f} MiB as wide rows "
            f"({narrow_bytes / wide['total_bytes']:.1f}x). Wide rows aggregate the month in "
            f"{wide['ms']['p50']:,.0f} ms p50, still far over 50 ms without a rollup. Revisit "
            "(wide rows + a jsonb column for unknown metrics) if disk becomes the constraint."
        )
    return text


def mib(n: float) -> float:
    return n / 2**20


def report(result: dict[str, Any]) -> None:
    size = result["size"]
    print_table(
        f"sensor_data: {result['rows']:,} rows ({result['readings']:,} readings), "
        f"loaded in {result['load_s']:.0f} s ({result['load_rows_per_s']:,.0f} rows/s)",
        ["relation", "MiB"],
        [
            ["sensor_data total", mib(size["total_bytes"])],
            ["  heap", mib(size["heap_bytes"])],
            ["  indexes", mib(size["index_bytes"])],
            [f"sensor_hourly ({size['rollup_rows']:,} rows)", mib(size["rollup_bytes"])],
            *([["wide layout, same readings", mib(result["wide"]["total_bytes"])]]
              if "wide" in result else []),
        ],
    )
    rows = [
        [label, q["rows"], q["ms"]["count"], q["ms"]["p50"], q["ms"]["p95"], q["ms"]["max"]]
        for label, q in result["queries"].items()
    ]
    if "wide" in result:
        w = result["wide"]
        rows.append(["wide layout, raw rows, all 6 metrics", w["result_rows"], w["ms"]["count"],
                     w["ms"]["p50"], w["ms"]["p95"], w["ms"]["max"]])
    print_table(
        f"room {result['room']}, {result['days']} days, 1 h buckets (ms)",
        ["query", "result rows", "n", "p50", "p95", "max"],
        rows,
    )
    print_table("COPY rate, rollup trigger on vs off", ["", "rows/s"],
                [[k, v] for k, v in result["copy_rows_per_s"].items()])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.cloud_telemetry_query",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1M rows, 7 days, fewer samples")
    parser.add_argument("--no-wide", action="store_true", help="skip the wide-layout comparison")
    parser.add_argument("--rows", type=int, default=None, help="rows in sensor_data")
    args = parser.parse_args(argv)
    rows_target = args.rows or (1_000_000 if args.quick else 10_000_000)
    days = 7 if args.quick else 30
    iterations, raw_iterations = (20, 3) if args.quick else (100, 10)
    steps = int(timedelta(days=days) / STEP)
    end = datetime.now(UTC).replace(microsecond=0)
    end -= timedelta(seconds=end.second % 10)
    start = end - STEP * steps
    plan = schedule(rows_target, steps)
    with bench_database() as (dsn, where):
        print(f"database: {where}, PostgreSQL {server_version(dsn)}", flush=True)
        farm = asyncio.run(_farm(dsn, len(plan)))
        loaded, load_s = load(dsn, generate(plan, start, steps))
        # What autovacuum would have done by the time anyone queries a month of data.
        vacuum_s = vacuum(dsn, "sensor_data") + vacuum(dsn, "sensor_hourly")
        result: dict[str, Any] = {
            "mode": "quick" if args.quick else "full",
            "where": where,
            "rows": loaded,
            "readings": loaded // len(METRICS),
            "rooms": len(plan),
            "room": farm.room_ids[0],
            "days": days,
            "resolution_s": STEP.total_seconds(),
            "load_s": load_s,
            "load_rows_per_s": loaded / load_s,
            "vacuum_s": vacuum_s,
            "size": sizes(dsn),
        }
        result["queries"] = asyncio.run(
            query_latencies(dsn, farm, start, end, iterations, raw_iterations)
        )
        result["copy_rows_per_s"] = trigger_overhead(dsn, start, steps)
        if not (args.quick or args.no_wide):
            result["wide"] = asyncio.run(
                wide_layout(dsn, farm.room_ids[0], start, end, raw_iterations)
            )
    headline = result["queries"]["rollup, all 6 metrics"]["ms"]["p95"]
    result["targets"] = [
        Target("p95, 1 h buckets, 30 days, all metrics", headline, "<", TARGET_P95_MS, "ms"),
    ]
    result["decision"] = decision(result)
    report(result)
    print(f"\ndecision: {result['decision']}")
    write_json(NAME, result)
    return result


async def _farm(dsn: str, rooms: int) -> BenchFarm:
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        return await make_farm(db, rooms_count=rooms, devices_per_room=1)
    finally:
        await db.close()


if __name__ == "__main__":
    main()
