"""The dashboard's chart logic run in Node (the same ES modules the browser loads): time ticks on
local clock boundaries, spaced so labels never overlap at phone or desktop width, in a time zone
with daylight saving too; and the stage that held at each moment of a range."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

STATIC = Path(__file__).resolve().parents[2] / "cloud" / "static"
DAY = 86_400_000
HOUR = 3_600_000

SCRIPT = """
const chart = await import(process.argv[1] + '/chart.js');
const charts = await import(process.argv[1] + '/room-charts.js');
const input = JSON.parse(process.argv[2]);
const out = {};
for (const [name, c] of Object.entries(input.ticks)) {
  out[name] = chart.timeTicks(c.from, c.to, c.width).map((t) => {
    const d = new Date(t.t);
    return { ...t, hour: d.getHours(), minute: d.getMinutes(), day: d.getDay() };
  });
}
out.stages = charts.stageSegments(input.room, input.entries, input.from, input.to, 'humidity_pct',
  input.bands);
out.moment = chart.moment(input.from);
out.values = [[1.4, 2.6], [0.1, 0.35], [880, 1130], [17.26, 17.31]].map(([lo, hi]) =>
  chart.valueTicks(lo, hi, 4));
console.log(JSON.stringify(out));
"""


def _node(payload: dict[str, Any], tz: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    result = subprocess.run(
        [node, "--experimental-default-type=module", "--input-type=module", "-e", SCRIPT,
         STATIC.as_uri(), json.dumps(payload)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "TZ": tz}, check=False,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def _payload(end: int) -> dict[str, Any]:
    cases = {}
    for width in (300, 600, 1200):
        for name, span in (("1d", DAY), ("7d", 7 * DAY), ("30d", 30 * DAY), ("1h", HOUR)):
            cases[f"{name}@{width}"] = {"from": end - span, "to": end, "width": width}
    return {
        "ticks": cases,
        "room": {"stage": "fruiting", "stage_started": end - 2 * DAY, "bands": {}},
        "entries": [
            {"kind": "stage", "stage": "pinning", "at": end - 5 * DAY},
            {"kind": "note", "stage": None, "at": end - 4 * DAY},
        ],
        "from": end - 7 * DAY,
        "to": end,
        "bands": {
            "pinning": {"humidity_pct": {"min": 95, "max": 100}},
            "fruiting": {"humidity_pct": {"min": 85, "max": 90}},
        },
    }


# 2024-03-12 13:37 UTC: a week after the US clocks went forward (10 March) is in the 7-day range.
END = 1_710_250_620_000
LABEL_PX = 44  # the narrowest label width the generator allows for


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_time_ticks_fall_on_local_boundaries_and_do_not_crowd(tz: str) -> None:
    out = _node(_payload(END), tz)
    for name, ticks in out.items():
        if "@" not in name:
            continue
        span, width = name.split("@")
        plot = int(width)
        assert len(ticks) >= 2, (name, ticks)
        px = [(t["t"] - (END - {"1h": HOUR, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}[span]))
              / {"1h": HOUR, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}[span] * plot
              for t in ticks]
        gaps = [b - a for a, b in itertools.pairwise(px)]
        assert min(gaps) >= LABEL_PX * 0.9, (name, gaps)  # DST days are an hour short
        if span in ("7d", "30d"):
            assert all(t["hour"] == 0 and t["minute"] == 0 for t in ticks), (name, ticks)
            assert all(t["label"][0].isdigit() and len(t["label"].split()) == 2 for t in ticks)
        if span == "30d" and plot <= 600:
            assert all(t["day"] == 1 for t in ticks), (name, "weekly ticks fall on Mondays")
        if span == "7d" and plot >= 600:
            steps = {b["t"] - a["t"] for a, b in itertools.pairwise(ticks)}
            assert steps <= {DAY, DAY - HOUR, DAY + HOUR}, (name, steps)  # a tick a day
        if span == "1d":
            assert all(t["minute"] == 0 for t in ticks), (name, ticks)
            # Clock times, and the date at midnight.
            for t in ticks:
                assert (":" in t["label"]) != (t["hour"] == 0), (name, t)


def test_stage_segments_follow_the_logbook_then_the_room() -> None:
    out = _node(_payload(END), "UTC")
    segs = out["stages"]
    assert [(s["stage"], s["from"], s["band"]) for s in segs] == [
        (None, END - 7 * DAY, None),  # before the first known stage: no band
        ("pinning", END - 5 * DAY, {"min": 95, "max": 100}),
        ("fruiting", END - 2 * DAY, {"min": 85, "max": 90}),
    ]
    assert segs[0]["to"] == END - 5 * DAY and segs[1]["to"] == END - 2 * DAY
    assert segs[2]["to"] is None  # JSON's Infinity: the current stage holds on
    assert out["moment"] == "5 Mar 13:37"


def test_value_ticks_are_round_and_distinct() -> None:
    out = _node(_payload(END), "UTC")
    for ticks in out["values"]:
        assert len(ticks) >= 2 and len(set(ticks)) == len(ticks), ticks
        assert all(len(repr(t)) <= 6 for t in ticks), ticks  # 1.5, 0.25, 900: no 0.30000000004
    assert out["values"][0] == [1.5, 2, 2.5]
