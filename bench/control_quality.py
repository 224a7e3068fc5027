"""Control quality: every species × stage profile for a simulated 24 h (door openings included),
its generated rules run by the real evaluator against the room physics; time in band per metric,
switches per hour and duty per actuator.

The rooms are ``firmware_sim.closed_loop.SCENARIOS``. The first table is seed 1, the run the
control-quality test asserts on; the second is the worst of several seeds (door times and sensor
noise differ); the third, for reference, the same rules in the physics' bare default room
(``RoomParams()``: dry 14 °C outside air, bare walls), where 5-point RH bands cannot be held.

    .venv/bin/python -m bench.control_quality [--quick] [--seeds N] [--doors N]
"""
from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

from bench.report import Target, print_table, write_json
from firmware_sim.closed_loop import MAX_SWITCHES_PER_HOUR, ControlReport, simulate
from firmware_sim.physics import RoomParams
from shared.profiles import SPECIES, STAGES, TUNING, Species, Stage

NAME = "control_quality"
MIN_IN_BAND = 0.95
ROLES = ("humidifier", "exhaust_fan", "heater", "light")
SHORT = {"humidifier": "hum", "exhaust_fan": "fan", "heater": "heat", "light": "light"}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _row(key: str, reports: list[ControlReport]) -> list[Any]:
    """One table row for profile ``key`` ("species/stage"): worst time in band and most switches
    over ``reports`` (one per seed), the mean switches/h and duty averaged over them."""
    row: list[Any] = [key.replace("/", " ")]
    for metric in ("temperature_c", "humidity_pct", "co2_ppm"):
        row.append(_pct(min(r.time_in_band[metric] for r in reports)))
    row.append(_pct(min(r.overall_in_band for r in reports)))
    for role in ROLES:
        stats = [r.switches[role] for r in reports if role in r.switches]
        if not stats:
            row.append("-")
            continue
        worst = max(s.max_per_hour for s in stats)
        rolling = max(s.max_rolling_hour for s in stats)
        mean = sum(s.mean_per_hour for s in stats) / len(stats)
        duty = sum(r.duty[role] for r in reports) / len(reports)
        row.append(f"{worst}/{rolling}/{mean:.1f} {100 * duty:.0f}%")
    return row


HEADERS = [
    "profile", "temp %", "RH %", "CO2 %", "all %",
    *(f"{SHORT[r]} max/roll/mean duty" for r in ROLES),
]


def run(seeds: int, doors: float, reference: bool) -> dict[str, Any]:
    pairs: list[tuple[Species, Stage]] = list(itertools.product(SPECIES, STAGES))
    runs: dict[str, list[ControlReport]] = {}
    reference_runs: dict[str, ControlReport] = {}
    seconds: list[float] = []
    for species, stage in pairs:
        key = f"{species}/{stage}"
        runs[key] = []
        for seed in range(1, seeds + 1):
            # CPU time, not wall time: the figure should not depend on what else the machine runs.
            started = time.process_time()
            runs[key].append(simulate(species, stage, seed=seed, doors_per_day=doors))
            seconds.append(time.process_time() - started)
        if reference:
            reference_runs[key] = simulate(
                species, stage, seed=1, doors_per_day=doors, params=RoomParams()
            )
    worst_in_band = min(min(r.time_in_band.values()) for rs in runs.values() for r in rs)
    worst_switches = max(
        s.max_per_hour for rs in runs.values() for r in rs for s in r.switches.values()
    )
    return {
        "params": {"seeds": seeds, "doors_per_day": doors, "hours": 24, "step_s": 10.0},
        "tuning": TUNING.model_dump(mode="json"),
        "runs": {key: [r.to_dict() for r in rs] for key, rs in runs.items()},
        "reference_default_room": {key: r.to_dict() for key, r in reference_runs.items()},
        "cpu_seconds_per_24h_run": {"mean": sum(seconds) / len(seconds), "max": max(seconds)},
        "targets": [
            Target("worst time in band (any metric, profile, seed)", worst_in_band, ">=",
                   MIN_IN_BAND),
            Target("most switches of one actuator in a clock hour", float(worst_switches), "<",
                   MAX_SWITCHES_PER_HOUR + 1, "/h"),
        ],
    }


def print_result(result: dict[str, Any]) -> None:
    params = result["params"]
    runs = {key: [ControlReport.from_dict(d) for d in ds] for key, ds in result["runs"].items()}
    rows = [_row(key, reports[:1]) for key, reports in runs.items()]
    print_table(f"Seed 1, 24 h, {params['doors_per_day']:g} door openings (time in band %; "
                "switches: max in a clock hour / max in any 60 min / mean per h; duty)",
                HEADERS, rows)
    if params["seeds"] > 1:
        rows = [_row(key, reports) for key, reports in runs.items()]
        print_table(f"Worst of seeds 1-{params['seeds']} (mean and duty averaged)", HEADERS, rows)
    reference = result["reference_default_room"]
    if reference:
        rows = [_row(key, [ControlReport.from_dict(d)]) for key, d in reference.items()]
        print_table("Reference: the same rules in the bare default room, RoomParams(), seed 1",
                    HEADERS, rows)
    timing = result["cpu_seconds_per_24h_run"]
    print(f"\n24 h simulation: {timing['mean']:.2f} s mean, {timing['max']:.2f} s max CPU per run")
    for target in result["targets"]:
        print(f"{target.name}: {target.value:g} (target {target.op} {target.limit:g}) "
              f"{'met' if target.met else 'MISSED'}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.control_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seed 1 only, no reference table")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per profile (default 5)")
    parser.add_argument("--doors", type=float, default=8.0, help="door openings a day")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 5)
    print(f"bench {NAME}: 9 profiles × {seeds} seed(s), {args.doors:g} doors a day", flush=True)
    result = run(seeds, args.doors, reference=not args.quick)
    print_result(result)
    write_json(NAME, result)
    return result


if __name__ == "__main__":
    main()
