"""How benchmarks report: percentiles, a plain-text table, JSON in bench/results/, verdicts.

Every bench module builds a result dict (its figures, their targets, the run's parameters), prints
it as a table and writes it with ``write_json``; ``bench.__main__`` reads the same dicts back to
write ``bench/results/summary.md``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between closest ranks; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summarize(values: Sequence[float], ps: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
    """count, min, pNN…, max and mean of a sample."""
    out: dict[str, float] = {"count": len(values)}
    if not values:
        return out
    out["min"] = float(min(values))
    for p in ps:
        out[f"p{p:g}"] = percentile(values, p)
    out["max"] = float(max(values))
    out["mean"] = float(sum(values) / len(values))
    return out


def fmt(value: Any, digits: int = 1) -> str:
    """A cell: thousands separators for big numbers, fixed decimals for small ones."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width text table (first column left-aligned, the others right-aligned)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(items: Sequence[str]) -> str:
        parts = [
            item.ljust(widths[i]) if i == 0 else item.rjust(widths[i])
            for i, item in enumerate(items)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(headers), rule, *(line(r) for r in cells)])


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print()
    print(table(title, headers, rows), flush=True)


@dataclass(frozen=True, slots=True)
class Target:
    """One headline figure against its target, e.g. ``Target("p99", 12.3, "<", 25, "ms")``."""

    name: str
    value: float | None
    op: str  # "<" or ">="
    limit: float
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or math.isnan(self.value):
            return None
        return self.value < self.limit if self.op == "<" else self.value >= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "op": self.op, "limit": self.limit,
                "unit": self.unit, "met": self.met}


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[met]


def machine() -> dict[str, Any]:
    """Where the figures come from: they only mean something next to this."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in load],
    }


def write_json(name: str, result: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``result`` (plus a timestamp and machine facts) to ``results_dir/<name>.json``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "bench": name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **result,
    }
    path = results_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    print(f"\nwrote {path}", flush=True)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Target):
        return value.as_dict()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
