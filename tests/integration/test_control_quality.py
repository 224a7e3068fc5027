"""Control quality: each profile's generated rules, run by the real evaluator against the room
physics for a simulated day with door openings, keep the room in band without short-cycling.

The rooms are the ones ``firmware_sim.closed_loop.SCENARIOS`` describes (where a farm would put
them and what it would equip them with); ``python -m bench.control_quality`` prints the figures.
"""
from __future__ import annotations

import itertools

import pytest

from firmware_sim.closed_loop import MAX_SWITCHES_PER_HOUR, simulate
from shared.profiles import BANDED_METRICS, DEFAULT_SAFETY, SPECIES, STAGES, Species, Stage, Tuning
from shared.rules import Safety

PAIRS = list(itertools.product(SPECIES, STAGES))
DOORS_PER_DAY = 8  # the busy end of 4–8 openings a day, 1–3 minutes each
MIN_IN_BAND = 0.95


@pytest.mark.parametrize(("species", "stage"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_a_day_in_band_without_short_cycling(species: Species, stage: Stage) -> None:
    report = simulate(species, stage, hours=24, seed=1, doors_per_day=DOORS_PER_DAY)

    assert len(report.doors) == DOORS_PER_DAY, "the disturbances really happened"
    figures = {m: f"{v:.1%}" for m, v in report.time_in_band.items()}
    for metric in BANDED_METRICS:
        assert report.time_in_band[metric] >= MIN_IN_BAND, (metric, figures, report.extremes)
    for role, stats in report.switches.items():
        assert stats.max_per_hour <= MAX_SWITCHES_PER_HOUR, (role, stats)
    # The controllers really worked: the room needed them (no tautology of an idle room).
    assert report.switches["humidifier"].total > 0
    if stage != "spawn_run":
        assert report.switches["exhaust_fan"].total > 0  # fresh air and CO₂
        assert report.switches["light"].total == 2  # 12 h on, 12 h off


def test_the_harness_catches_short_cycling_and_a_room_out_of_band() -> None:
    # A 0.5-point hysteresis with no minimum on/off times: the humidifier chatters.
    chatty = simulate(
        "oyster", "fruiting", hours=3, seed=1,
        tuning=Tuning(rh_on_margin=0.45, rh_off_margin=0.45, rh_for_s=0),
        safety={"humidifier": Safety()},
    )
    assert chatty.switches["humidifier"].max_per_hour > MAX_SWITCHES_PER_HOUR
    # A fogger capped at 10 % duty cannot hold 85–90 %.
    starved = simulate(
        "oyster", "fruiting", hours=3, seed=1,
        safety={"humidifier": DEFAULT_SAFETY["humidifier"].model_copy(update={"max_duty": 0.1})},
    )
    assert starved.time_in_band["humidity_pct"] < MIN_IN_BAND
