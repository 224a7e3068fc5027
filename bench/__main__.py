"""``python -m bench`` (``make bench``): every benchmark in turn, then bench/results/summary.md with
each headline figure beside its target.

    .venv/bin/python -m bench [--quick] [--only edge_ingest,automation_latency]

A benchmark that fails is reported as such and the others still run; the exit status is 1 if any
failed (a missed target is a finding, not a failure).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import RESULTS_DIR, Target, fmt, machine, verdict

# (module, what it measures); each module has main() reading its flags from sys.argv.
BENCHES: list[tuple[str, str]] = [
    ("edge_ingest", "Edge ingest vs raw broker, QoS 1"),
    ("automation_latency", "Reading → actuator command latency under load"),
    ("edge_footprint", "Edge RSS and disk bytes per reading, 200 devices"),
    ("control_quality", "Control quality: simulated 24 h per profile"),
    ("cloud_telemetry_query", "Cloud telemetry query, 30 days at 10 s, 1 h buckets, 10M rows"),
    ("cloud_partitions", "Monthly partitions of sensor_data at 100M rows vs the plain table"),
    ("cloud_latest_throughput", "Cloud GET /api/devices/{id}/latest throughput"),
    ("sync_drain", "Edge backlog drain into the cloud vs raw binary COPY"),
    ("dashboard_fanout", "Dashboard fan-out: 500 WebSocket clients on two instances"),
    ("edge_fleet", "Edge fleet: 1,000 edges' batches and streams, two instances behind nginx"),
]


def _load_main(name: str) -> Callable[[], Any]:
    module = importlib.import_module(f"bench.{name}")
    main: Callable[[], Any] = module.main
    return main


def _targets(name: str, result: Any) -> list[dict[str, Any]]:
    """Headline figures from what main() returned, else from its JSON file."""
    doc = result if isinstance(result, dict) else None
    if doc is None:
        path = RESULTS_DIR / f"{name}.json"
        if path.exists():
            doc = json.loads(path.read_text())
    if not doc:
        return []
    out = []
    for target in doc.get("targets", []):
        if isinstance(target, Target):
            out.append(target.as_dict())
        elif isinstance(target, dict):
            out.append(target)
    return out


def _cell_value(target: dict[str, Any]) -> str:
    value, unit = target.get("value"), target.get("unit", "")
    if isinstance(value, float) and target.get("op") == ">=" and value <= 1.5 and not unit:
        return f"{100 * value:.0f} %"  # ratios read better as percentages
    return f"{fmt(value)} {unit}".strip()


def _cell_limit(target: dict[str, Any]) -> str:
    limit, unit = target.get("limit"), target.get("unit", "")
    if isinstance(limit, float) and target.get("op") == ">=" and limit <= 1.5 and not unit:
        return f"{target['op']} {100 * limit:.0f} %"
    shown = f"{limit:g}" if isinstance(limit, float) else fmt(limit)
    return f"{target.get('op', '')} {shown} {unit}".strip()


def summary_markdown(outcomes: list[dict[str, Any]], quick: bool) -> str:
    info = machine()
    lines = [
        "# Benchmark summary",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M %Z')}, {'quick' if quick else 'full'} mode, "
        f"{info['cpus']} CPUs, Python {info['python']}, load average at end "
        f"{', '.join(str(x) for x in info['loadavg_at_end'])}. "
        "Full figures: `bench/results/*.json`.",
        "",
        "| benchmark | figure | value | target | verdict |",
        "|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        if outcome.get("earlier"):
            title = f"{outcome['title']} (`{outcome['name']}`, from {outcome['earlier']})"
        else:
            title = f"{outcome['title']} (`{outcome['name']}`, {outcome['seconds']:.0f} s)"
        if outcome.get("skipped"):
            lines.append(f"| {title} | - | - | - | not run: bench/{outcome['name']}.py missing |")
            continue
        if outcome["error"]:
            lines.append(f"| {title} | - | - | - | FAILED: {outcome['error']} |")
            continue
        if not outcome["targets"]:
            lines.append(f"| {title} | see `bench/results/{outcome['name']}.json` | - | - | - |")
        for target in outcome["targets"]:
            lines.append(f"| {title} | {target.get('name', '')} | {_cell_value(target)} | "
                         f"{_cell_limit(target)} | {verdict(target.get('met'))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    args = parser.parse_args(argv)
    selected = [b for b in BENCHES if args.only is None or b[0] in args.only.split(",")]
    outcomes = []
    started = time.monotonic()
    for name, title in selected:
        print(f"\n===== {name}: {title} =====", flush=True)
        t0 = time.monotonic()
        outcome: dict[str, Any] = {"name": name, "title": title, "error": None, "targets": []}
        saved_argv = sys.argv
        sys.argv = [f"bench.{name}", *(["--quick"] if args.quick else [])]
        try:
            result = _load_main(name)()
            outcome["targets"] = _targets(name, result)
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            print(f"bench/{name}.py is not there yet: skipped")
            outcome["skipped"] = True
        except (Exception, SystemExit) as exc:
            traceback.print_exc()
            outcome["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        finally:
            sys.argv = saved_argv
        outcome["seconds"] = time.monotonic() - t0
        outcomes.append(outcome)
    # Benchmarks left out by --only keep their last figures in the summary, marked as such.
    for name, title in BENCHES:
        if (name, title) not in selected and (RESULTS_DIR / f"{name}.json").exists():
            doc = json.loads((RESULTS_DIR / f"{name}.json").read_text())
            outcomes.append({"name": name, "title": title, "error": None, "seconds": None,
                             "earlier": doc.get("finished_at", "an earlier run"),
                             "targets": _targets(name, doc)})
    text = summary_markdown(outcomes, args.quick)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(RESULTS_DIR / "summary.md")
    path.write_text(text)
    print(f"\n{text}\nwrote {path} ({time.monotonic() - started:.0f} s in all)")
    return 1 if any(o["error"] for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
