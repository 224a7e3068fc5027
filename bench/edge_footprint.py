"""Edge footprint with 200 connected simulated devices: resident memory and disk bytes per reading.

``smartfarm edge run`` runs as its own process (embedded broker) with 10 rooms of 18 sensors and
2 actuators; ``smartfarm sim`` (another process) connects all 200 devices, sensors publishing every
5 s, actuators acking commands and reporting status. After a warm-up, over a fixed window:
  - RSS of the edge process (VmRSS sampled every second; VmHWM is the peak since start);
  - bytes the edge process caused to be written (``/proc/<pid>/io`` write_bytes), plus the bytes
    of the WAL checkpoint those pages still owe the main file (run by this process at the end of
    the window, after one at its start, so it covers exactly the window), per reading stored;
  - WAL bytes appended and main-file growth per reading, for the record.
Each store.commit_interval_ms setting asked for is one run (fresh data directory each time).

    .venv/bin/python -m bench.edge_footprint [--quick] [--variants default,1000,default+malloc]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from bench.report import Target, print_table, verdict, write_json
from bench.site import RoomSpec, Site, die_with_parent, free_port, write_site
from edge.config import StoreConfig

NAME = "edge_footprint"
TARGET_RSS_MB = 90.0
TARGET_BYTES_PER_READING = 300.0
ROOMS, SENSORS_PER_ROOM = 10, 18
INTERVAL_S = 5.0
FULL_VARIANTS = "default,200,default+malloc"


# ---- /proc ------------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile… in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key.startswith(("Vm", "Rss")) and len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def proc_write_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/<pid>/io")


# ---- the store, seen from outside -------------------------------------------------------------

def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def query(db: Path, sql: str) -> Any:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def checkpoint(db: Path) -> tuple[tuple[int, int, int], int]:
    """PRAGMA wal_checkpoint(TRUNCATE) from this process: (SQLite's answer, bytes it wrote)."""
    before = proc_write_bytes()
    conn = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    return (int(row[0]), int(row[1]), int(row[2])), proc_write_bytes() - before


# ---- processes --------------------------------------------------------------------------------

class Child:
    """A subprocess whose output is kept in memory (a pipe, so it is not counted as disk I/O)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, text=True,
                                     preexec_fn=die_with_parent)
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        return int(self.proc.returncode)

    def tail(self, n: int = 20) -> str:
        return "\n".join(list(self.lines)[-n:])


def smartfarm(*args: str) -> list[str]:
    return [sys.executable, "-m", "smartfarm_cli", *args]


def wait_until(predicate: Any, timeout: float, what: str, child: Child) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{what}: process exited\n{child.tail()}")
        with contextlib.suppress(sqlite3.Error, OSError):
            if predicate():
                return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}\n{child.tail()}")


# ---- one run ----------------------------------------------------------------------------------

def measure(site: Site, label: str, interval_ms: float | None, malloc_fix: bool,
            warmup_s: float, window_s: float) -> dict[str, Any]:
    env = {"SMARTFARM_EDGE_DATA_DIR": f"data-{label}", **(MALLOC_FIX if malloc_fix else {})}
    if interval_ms is not None:
        env["SMARTFARM_EDGE_STORE__COMMIT_INTERVAL_MS"] = f"{interval_ms:g}"
    db = site.directory / f"data-{label}" / "edge.db"
    wal = db.with_name("edge.db-wal")
    devices = len(site.settings.devices)
    edge = Child(smartfarm("edge", "run", "--config", str(site.config_path)), env)
    sim: Child | None = None
    try:
        wait_until(lambda: db.exists() and query(db, "SELECT count(*) FROM automation_state")
                   >= 0, 30, "the edge store", edge)
        sim = Child(smartfarm("sim", "--config", str(site.config_path), "--interval",
                              f"{INTERVAL_S:g}", "--log-level", "WARNING"))
        started = time.monotonic()
        wait_until(lambda: query(db, "SELECT count(*) FROM device_status WHERE online")
                   >= devices, 120, f"{devices} devices online", edge)
        connect_s = time.monotonic() - started
        time.sleep(warmup_s)
        (busy0, _, _), _ = checkpoint(db)
        readings0 = query(db, "SELECT count(*) FROM readings")
        io0, db0, wal0 = proc_write_bytes(edge.pid), file_size(db), file_size(wal)
        t0 = time.monotonic()
        rss: list[int] = []
        while time.monotonic() - t0 < window_s:
            if not (edge.alive() and sim.alive()):
                raise RuntimeError(f"a process exited mid-window\n{edge.tail()}\n{sim.tail()}")
            rss.append(proc_status(edge.pid)["VmRSS"])
            time.sleep(1.0)
        io1, wal1 = proc_write_bytes(edge.pid), file_size(wal)
        status = proc_status(edge.pid)
        readings1 = query(db, "SELECT count(*) FROM readings")
        elapsed = time.monotonic() - t0
        (busy1, wal_frames, done_frames), ckpt_bytes = checkpoint(db)
        db1 = file_size(db)
        online = query(db, "SELECT count(*) FROM device_status WHERE online")
    finally:
        if sim is not None:
            sim.stop()
        code = edge.stop()
    if code != 0:
        raise RuntimeError(f"edge exited with {code}\n{edge.tail()}")
    readings = readings1 - readings0
    edge_bytes = io1 - io0
    per = (lambda b: b / readings if readings else None)  # noqa: E731
    return {
        "label": label,
        "commit_interval_ms": interval_ms if interval_ms is not None
        else StoreConfig().commit_interval_ms,
        "malloc_mmap_threshold": malloc_fix,
        "devices": devices, "online_at_end": online, "connect_s": connect_s,
        "window_s": elapsed, "readings": readings, "readings_per_s": readings / elapsed,
        "rss_mb": rss[-1] / 2**20, "rss_max_mb": max(rss) / 2**20,
        "hwm_mb": status["VmHWM"] / 2**20, "rss_anon_mb": status.get("RssAnon", 0) / 2**20,
        "edge_write_bytes": edge_bytes, "checkpoint_write_bytes": ckpt_bytes,
        "bytes_per_reading": per(edge_bytes + ckpt_bytes),
        "edge_bytes_per_reading": per(edge_bytes),
        "checkpoint_bytes_per_reading": per(ckpt_bytes),
        "wal_bytes_per_reading": per(wal1 - wal0), "db_growth_per_reading": per(db1 - db0),
        "checkpoint_busy": [busy0, busy1], "checkpoint_frames": [wal_frames, done_frames],
    }


def rooms() -> list[RoomSpec]:
    return [RoomSpec(f"room{i}", SENSORS_PER_ROOM,
                     actuators={f"room{i}-hum": "humidifier", f"room{i}-fan": "exhaust_fan"},
                     species=("oyster", "shiitake", "lions_mane")[i % 3],
                     stage=("fruiting", "pinning", "spawn_run")[i % 3])
            for i in range(ROOMS)]


# glibc keeps freed argon2 buffers (19 MiB each, one per thread arena that verified a login) once
# its dynamic mmap threshold has risen to their size; pinning the threshold returns them to the OS.
MALLOC_FIX = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def parse_variants(text: str) -> list[tuple[float | None, bool]]:
    """``default,1000,default+malloc`` → [(None, False), (1000.0, False), (None, True)]."""
    out = []
    for part in text.split(","):
        interval, _, extra = part.strip().partition("+")
        if extra not in ("", "malloc"):
            raise SystemExit(f"unknown variant option {extra!r} (only +malloc)")
        out.append((None if interval == "default" else float(interval), extra == "malloc"))
    return out


def run(quick: bool, variants: list[tuple[float | None, bool]],
        window: float | None = None) -> dict[str, Any]:
    warmup, window = (5.0, window or 20.0) if quick else (10.0, window or 45.0)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        print("  writing a 200-device site (argon2-hashing every password) …", flush=True)
        site = write_site(Path(tmp), rooms(), farm_id=f"bench{uuid.uuid4().hex[:6]}",
                          broker_port=free_port(), api_port=free_port())
        for n, (interval, malloc_fix) in enumerate(variants):
            label = ("default" if interval is None else f"{interval:g}ms") + (
                "+malloc" if malloc_fix else "")
            print(f"  run {n + 1}/{len(variants)}: commit_interval_ms={label}, "
                  f"{warmup:g} s warm-up + {window:g} s window …", flush=True)
            runs.append(measure(site, f"{n}-{label}", interval, malloc_fix, warmup, window))
    head = runs[0]
    return {
        "params": {"devices": ROOMS * (SENSORS_PER_ROOM + 2), "rooms": ROOMS,
                   "sensor_interval_s": INTERVAL_S, "warmup_s": warmup, "window_s": window,
                   "quick": quick},
        "runs": runs,
        "targets": [
            Target(f"edge RSS, 200 devices ({head['commit_interval_ms']:g} ms commits)",
                   head["rss_mb"], "<", TARGET_RSS_MB, "MB"),
            Target(f"disk bytes per reading ({head['commit_interval_ms']:g} ms commits)",
                   head["bytes_per_reading"], "<", TARGET_BYTES_PER_READING, "B"),
        ],
    }


def print_result(result: dict[str, Any]) -> None:
    rows = [
        [f"{r['commit_interval_ms']:g}", "yes" if r["malloc_mmap_threshold"] else "-",
         r["online_at_end"], r["readings"], r["readings_per_s"],
         r["rss_mb"], r["hwm_mb"], r["edge_bytes_per_reading"], r["checkpoint_bytes_per_reading"],
         r["bytes_per_reading"], r["wal_bytes_per_reading"], r["db_growth_per_reading"]]
        for r in result["runs"]
    ]
    p = result["params"]
    print_table(
        f"Edge footprint: {p['devices']} devices online, sensors every {p['sensor_interval_s']:g}"
        f" s, {p['window_s']:g} s window",
        ["commit ms", "malloc fix", "online", "readings", "readings/s", "RSS MB", "peak MB",
         "edge B/rd", "ckpt B/rd", "total B/rd", "WAL B/rd", "db +B/rd"],
        rows,
    )
    print_table("Targets (first run)", ["figure", "value", "target", "verdict"],
                [[t.name, t.value, f"{t.op} {t.limit:g} {t.unit}", verdict(t.met)]
                 for t in result["targets"]])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_footprint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s warm-up, 20 s window, one run")
    parser.add_argument("--variants", default=None,
                        help="one run each, comma-separated: store.commit_interval_ms or "
                             "'default', optionally '+malloc' (MALLOC_MMAP_THRESHOLD_ pinned); "
                             f"full run: {FULL_VARIANTS}")
    parser.add_argument("--window", type=float, default=None, help="measuring window, s")
    args = parser.parse_args(argv)
    text = args.variants or ("default" if args.quick else FULL_VARIANTS)
    variants = parse_variants(text)
    print(f"bench {NAME}: {'quick' if args.quick else 'full'} run, variants {text}", flush=True)
    result = run(args.quick, variants, args.window)
    print_result(result)
    write_json(NAME, result)
    return result


if __name__ == "__main__":
    main()
