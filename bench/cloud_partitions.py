"""Partitioned telemetry at scale (issue 15): ``sensor_data`` partitioned by UTC month
(migration 0019) against the plain table it replaced (the schema through 0018), each in a
throw-away database on the ``DATABASE_URL`` server, filled server-side with the same readings.

Measured, on both layouts in the same run:

- the dashboard's query: one room, the last 30 days, 1 h buckets (``cloud.db.telemetry.buckets``,
  hourly rollups plus the raw rows of the partial edge hours), p50/p95 (target p95 < 50 ms);
- retention of the oldest month: dropping its partition (``cloud.db.partitions``, target < 1 s)
  vs the old batched DELETE of the same rows from the plain table; and the daily boundary
  delete (one day of rows out of the month the cutoff falls in);
- ingest by the real writer path (``cloud.db.telemetry.insert_readings``: binary COPY, the
  rollup trigger and the sensor_latest upsert, one transaction per batch of 5,000 readings of
  6 metrics), rounds alternating between the layouts so both see the same machine load.

Data: 20 rooms × 6 metrics from the first day of a month 18 months back until now, at the step
that makes ``--rows`` rows (60 s for 100M). Loaded with INSERT … SELECT generate_series, one
statement per month, with the indexes built and the hourly rollups computed afterwards (what a
long-running farm's tables hold, made fast), then VACUUM ANALYZE as autovacuum would have.

    .venv/bin/python -m bench.cloud_partitions [--quick] [--rows N] [--plain-rows N]

Needs DATABASE_URL (a server to make the two databases on; both are dropped at the end).
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench.report import Target, print_table, summarize, write_json
from cloud.db import partitions, telemetry
from cloud.db.database import Database
from cloud.db.migrate import MIGRATIONS_DIR, migrate

NAME = "cloud_partitions"
TARGET_QUERY_P95_MS = 50.0
TARGET_DROP_S = 1.0
FARM = "bench-farm"
ROOMS = 20
MONTHS_BACK = 18
PARTITIONED_FROM = 19  # the migration that partitions sensor_data
METRICS = (
    ("temperature_c", 17.0, 1.5),
    ("humidity_pct", 88.0, 4.0),
    ("co2_ppm", 800.0, 150.0),
    ("light_lux", 300.0, 250.0),
    ("substrate_moisture", 60.0, 5.0),
    ("battery_v", 3.9, 0.1),
)
BATCH_READINGS = 5_000  # an edge upload batch's readings (edge/outbox.py: up to 5,000 records)

GENERATE = """
INSERT INTO sensor_data (time, room_id, device_id, metric, value, farm_id)
SELECT t, r.room, r.device, m.metric,
       m.mean + m.swing * sin(2 * pi() * extract(epoch FROM t) / 86400)
              + m.swing * 0.2 * (random() - 0.5),
       %(farm)s
FROM generate_series(%(lo)s::timestamptz, %(hi)s::timestamptz - %(step)s::interval,
                     %(step)s::interval) AS t
CROSS JOIN (SELECT 'bench-r' || i AS room, 'bench-r' || i || '-s0' AS device
            FROM generate_series(0, %(rooms)s - 1) AS i) AS r
CROSS JOIN (SELECT * FROM unnest(%(metrics)s::text[], %(means)s::float8[], %(swings)s::float8[]))
           AS m(metric, mean, swing)"""
ROLLUP = """
INSERT INTO sensor_hourly (farm_id, room_id, metric, hour, device_id, count, sum, min, max)
SELECT farm_id, room_id, metric, date_bin('1 hour', time, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       device_id, count(*), sum(value), min(value), max(value)
FROM sensor_data WHERE time >= %(lo)s AND time < %(hi)s
GROUP BY 1, 2, 3, 4, 5"""
INDEXES = (
    "CREATE INDEX sensor_data_room_metric_time_idx"
    " ON sensor_data (farm_id, room_id, metric, time) INCLUDE (device_id, value)",
    "CREATE INDEX sensor_data_time_brin ON sensor_data USING brin (time)",
)
TRIGGER = "ALTER TABLE sensor_data {} TRIGGER sensor_data_fold_hourly"
# Retention before 0019: batched by ctid over the plain table.
OLD_DELETE = """
DELETE FROM sensor_data WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM sensor_data WHERE time < %(cutoff)s LIMIT %(batch)s))"""


@contextmanager
def throwaway(label: str, folder: Path | None = None) -> Iterator[str]:
    """A fresh database on the DATABASE_URL server, migrated (from ``folder``), dropped after."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("bench.cloud_partitions needs DATABASE_URL (a PostgreSQL server)")
    name = f"smartfarm_bench_{label}_{os.getpid()}"
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = make_conninfo(url, dbname=name)
        asyncio.run(migrate(dsn, **({"folder": folder} if folder else {})))
        yield dsn
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(drop)


def months(first: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    out = []
    lo = first
    while lo < end:
        hi = partitions.add_months(lo, 1)
        out.append((lo, min(hi, end)))
        lo = hi
    return out


async def _add_months(dsn: str, starts: list[datetime]) -> None:
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        for lo in starts:
            await partitions.add_month(db, lo)
    finally:
        await db.close()


def fill(
    dsn: str, spans: list[tuple[datetime, datetime]], step: timedelta, label: str,
    *, partitioned: bool,
) -> dict[str, float]:
    """Readings of every span, then indexes, rollups and VACUUM ANALYZE; seconds of each."""
    params = {
        "farm": FARM,
        "step": step,
        "rooms": ROOMS,
        "metrics": [m[0] for m in METRICS],
        "means": [m[1] for m in METRICS],
        "swings": [m[2] for m in METRICS],
    }
    took: dict[str, float] = {}
    if partitioned:
        # The months a farm running since then would have had made by make_partitions (not
        # made, they would all be in the DEFAULT partition).
        asyncio.run(_add_months(dsn, [lo for lo, _ in spans]))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET work_mem = '64MB'")
        conn.execute("DROP INDEX sensor_data_room_metric_time_idx, sensor_data_time_brin")
        conn.execute(TRIGGER.format("DISABLE"))
        started = time.perf_counter()
        rows = 0
        for lo, hi in spans:
            rows += conn.execute(GENERATE, {**params, "lo": lo, "hi": hi}).rowcount
        took["generate_s"] = time.perf_counter() - started
        print(f"  {label}: {rows:,} rows in {took['generate_s']:.0f} s", flush=True)
        started = time.perf_counter()
        for statement in INDEXES:
            conn.execute(statement)
        took["index_s"] = time.perf_counter() - started
        conn.execute(TRIGGER.format("ENABLE"))
        started = time.perf_counter()
        for lo, hi in spans:
            conn.execute(ROLLUP, {"lo": lo, "hi": hi})
        took["rollup_s"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE sensor_data")
        conn.execute("VACUUM ANALYZE sensor_hourly")
        took["vacuum_s"] = time.perf_counter() - started
        took["rows"] = rows
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        took["database_bytes"] = int(row[0]) if row else 0
    print(f"  {label}: indexes {took['index_s']:.0f} s, rollups {took['rollup_s']:.0f} s, "
          f"vacuum {took['vacuum_s']:.0f} s", flush=True)
    return took


async def query_ms(dsns: dict[str, str], end: datetime, iterations: int) -> dict[str, Any]:
    """The dashboard's 30-day query of one room, all metrics and one metric, 1 h buckets, on
    each layout; the layouts take turns call by call, so both see the same machine load."""
    start = end - timedelta(days=30)
    span = {"start": start, "end": end, "bucket": timedelta(hours=1), "device_id": None}
    dbs = {k: await Database.connect(dsn, min_size=1, max_size=1) for k, dsn in dsns.items()}
    out: dict[str, Any] = {k: {} for k in dsns}
    try:
        for label, metrics in (("all 6 metrics", None), ("1 metric", ["humidity_pct"])):
            samples: dict[str, list[float]] = {k: [] for k in dsns}
            rows = {}
            for k, db in dbs.items():
                rows[k] = len(await telemetry.buckets(db, FARM, "bench-r0", metrics=metrics,
                                                      **span))
                for _ in range(2):
                    await telemetry.buckets(db, FARM, "bench-r0", metrics=metrics, **span)
            for _ in range(iterations):
                for k, db in dbs.items():
                    t0 = time.perf_counter()
                    await telemetry.buckets(db, FARM, "bench-r0", metrics=metrics, **span)
                    samples[k].append((time.perf_counter() - t0) * 1000)
            for k in dsns:
                out[k][label] = {"rows": rows[k], "ms": summarize(samples[k])}
    finally:
        for db in dbs.values():
            await db.close()
    return out


def batches(start: datetime, count: int) -> list[list[telemetry.Reading]]:
    """``count`` upload batches of BATCH_READINGS readings (6 rows each) spread over the rooms,
    one reading per room and second, in time order."""
    out = []
    k = 0
    for _ in range(count):
        batch: list[telemetry.Reading] = []
        while len(batch) < BATCH_READINGS * len(METRICS):
            at = start + timedelta(seconds=k // ROOMS)
            room = k % ROOMS
            for metric, mean, _swing in METRICS:
                batch.append((at, f"bench-r{room}", f"bench-r{room}-s0", metric, mean))
            k += 1
        out.append(batch)
    return out


async def ingest_rate(dsn: str, work: list[list[telemetry.Reading]]) -> float:
    """Rows per second through insert_readings, one transaction per batch."""
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        rows = 0
        t0 = time.perf_counter()
        for batch in work:
            rows += await telemetry.insert_readings(db, FARM, batch)
        return rows / (time.perf_counter() - t0)
    finally:
        await db.close()


async def drop_month(dsn: str, cutoff: datetime) -> dict[str, Any]:
    """Partitioned retention: the oldest month dropped whole, then a day of the next deleted."""
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        t0 = time.perf_counter()
        dropped = await partitions.drop_expired(db, cutoff=cutoff)
        drop_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        deleted = await partitions.delete_older(db, cutoff=cutoff + timedelta(days=1))
        boundary_s = time.perf_counter() - t0
    finally:
        await db.close()
    return {"dropped": dropped, "drop_s": drop_s, "boundary_rows": deleted,
            "boundary_s": boundary_s}


def delete_month(dsn: str, cutoff: datetime, batch: int = 50_000) -> dict[str, Any]:
    """Plain-table retention as it was: the same month deleted in ctid batches."""
    deleted = 0
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            n = conn.execute(OLD_DELETE, {"cutoff": cutoff, "batch": batch}).rowcount
            deleted += n
            if n < batch:
                break
    return {"deleted": deleted, "delete_s": time.perf_counter() - t0}


def month_rows(dsn: str, lo: datetime, hi: datetime) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM sensor_data WHERE time >= %s AND time < %s", (lo, hi)
        ).fetchone()
    return int(row[0]) if row else 0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.cloud_partitions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2M rows, fewer samples")
    parser.add_argument("--rows", type=int, default=None, help="rows, partitioned (100M)")
    parser.add_argument("--plain-rows", type=int, default=None,
                        help="rows in the plain table (default: the same; fewer = its newest "
                             "months only, which can only flatter the plain table)")
    args = parser.parse_args(argv)
    rows_target = args.rows or (2_000_000 if args.quick else 100_000_000)
    plain_target = args.plain_rows or rows_target
    iterations = 30 if args.quick else 200
    rounds, per_round = (2, 4) if args.quick else (3, 10)

    now = datetime.now(UTC).replace(microsecond=0)
    first = partitions.add_months(partitions.month_start(now), -MONTHS_BACK)
    span_s = (now - first).total_seconds()
    step = timedelta(seconds=max(1, round(span_s * ROOMS * len(METRICS) / rows_target)))
    end = first + step * int(span_s // step.total_seconds())
    spans = months(first, end)
    per_month = rows_target / len(spans)
    plain_spans = spans[-max(1, math.ceil(plain_target / per_month)):]

    result: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "rooms": ROOMS,
        "metrics": len(METRICS),
        "step_s": step.total_seconds(),
        "from": first.isoformat(),
        "to": end.isoformat(),
        "months": len(spans),
    }
    with tempfile.TemporaryDirectory(prefix="smartfarm-bench-") as old_dir:
        for path in MIGRATIONS_DIR.glob("*.sql"):
            if int(path.name[:4]) < PARTITIONED_FROM:
                (Path(old_dir) / path.name).write_text(path.read_text())
        with throwaway("part") as part_dsn, throwaway("plain", Path(old_dir)) as plain_dsn:
            print(f"{len(spans)} months from {first:%Y-%m}, {ROOMS} rooms × {len(METRICS)} "
                  f"metrics every {step.total_seconds():g} s", flush=True)
            result["load"] = {
                "partitioned": fill(part_dsn, spans, step, "partitioned", partitioned=True),
                "plain": fill(plain_dsn, plain_spans, step, "plain", partitioned=False),
            }
            result["query"] = asyncio.run(
                query_ms({"partitioned": part_dsn, "plain": plain_dsn}, end, iterations)
            )
            # Five engineers share this machine's 2 cores: the load says how quiet it was.
            result["loadavg_after_queries"] = os.getloadavg()
            rates: dict[str, list[float]] = {"partitioned": [], "plain": []}
            work = batches(end, rounds * per_round)
            for r in range(rounds):
                chunk = work[r * per_round:(r + 1) * per_round]
                rates["partitioned"].append(asyncio.run(ingest_rate(part_dsn, chunk)))
                rates["plain"].append(asyncio.run(ingest_rate(plain_dsn, chunk)))
            result["ingest_rows_per_s"] = rates
            oldest = plain_spans[0]
            result["month_rows"] = month_rows(part_dsn, *spans[0])
            result["retention"] = {
                "partitioned": asyncio.run(drop_month(part_dsn, spans[1][0])),
                "plain": delete_month(plain_dsn, oldest[1]),
            }
    q = result["query"]["partitioned"]["all 6 metrics"]["ms"]["p95"]
    drop_s = result["retention"]["partitioned"]["drop_s"]
    part_rate = median(rates["partitioned"])
    plain_rate = median(rates["plain"])
    result["targets"] = [
        Target("p95, 1 room × 30 days, 1 h buckets, partitioned", q, "<", TARGET_QUERY_P95_MS,
               "ms"),
        Target("retention: drop a month", drop_s, "<", TARGET_DROP_S, "s"),
        Target("ingest rate partitioned / plain", part_rate / plain_rate, ">=", 0.9),
    ]
    report(result)
    write_json(NAME, result)
    return result


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def report(result: dict[str, Any]) -> None:
    load = result["load"]
    print_table(
        f"{result['months']} months, {result['rooms']} rooms × {result['metrics']} metrics "
        f"every {result['step_s']:g} s",
        ["", "rows", "generate s", "index s", "rollup s", "vacuum s", "GiB"],
        [[k, int(v["rows"]), v["generate_s"], v["index_s"], v["rollup_s"], v["vacuum_s"],
          v["database_bytes"] / 2**30] for k, v in load.items()],
    )
    print_table(
        "dashboard query: 1 room, last 30 days, 1 h buckets (ms)",
        ["layout, metrics", "rows", "n", "p50", "p95", "max"],
        [[f"{layout}, {label}", q["rows"], q["ms"]["count"], q["ms"]["p50"], q["ms"]["p95"],
          q["ms"]["max"]]
         for layout, queries in result["query"].items() for label, q in queries.items()],
    )
    rates = result["ingest_rows_per_s"]
    print_table(
        f"ingest, insert_readings, batches of {BATCH_READINGS:,} readings (rows/s per round)",
        ["layout", *[f"round {i + 1}" for i in range(len(rates["plain"]))], "median"],
        [[k, *v, median(v)] for k, v in rates.items()],
    )
    ret = result["retention"]
    print_table(
        f"retention of the oldest month ({result['month_rows']:,} rows)",
        ["", "rows", "seconds"],
        [
            [f"partitioned: DROP {', '.join(ret['partitioned']['dropped'])}",
             result["month_rows"],
             ret["partitioned"]["drop_s"]],
            ["partitioned: daily boundary DELETE (1 day)", ret["partitioned"]["boundary_rows"],
             ret["partitioned"]["boundary_s"]],
            ["plain: batched DELETE (before 0019)", ret["plain"]["deleted"],
             ret["plain"]["delete_s"]],
        ],
    )


if __name__ == "__main__":
    main()
