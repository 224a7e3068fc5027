"""Closed-loop control quality: a grow room's physics driven by the real rule evaluator, on a
simulated clock, for a day with door openings; reports time-in-band, switching and duty.

No MQTT and no edge: readings come straight from ``Room.sensors`` (with its noise), keyed
(room_id, metric) with their timestamps as the edge keys them; every decision is applied with
``apply_switch`` as the edge records a switch; rule states carry over between evaluations.
A 24 h run at the sensor's 10 s rhythm (8,640 evaluations) costs under a second of CPU.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from firmware_sim.physics import Room, RoomParams, RoomState
from shared.automation import apply_switch, evaluate
from shared.profiles import (
    BANDED_METRICS,
    TUNING,
    Profile,
    Species,
    Stage,
    Tuning,
    default_safety,
    profile_for,
    rules_for,
)
from shared.rules import ActuatorRole, ActuatorState, Reading, RuleState, Safety
from shared.vocabulary import ACTUATOR_ROLES

ROOM_ID = "room-1"
ROLES: tuple[ActuatorRole, ...] = ACTUATOR_ROLES
DEVICES: Mapping[ActuatorRole, str] = {role: f"{role.replace('_', '-')}-1" for role in ROLES}
START = datetime(2024, 1, 1, tzinfo=UTC)  # midnight, so clock hours are whole simulated hours
MAX_SWITCHES_PER_HOUR = 6


@dataclass(frozen=True, slots=True)
class SwitchStats:
    """Transitions (on→off and off→on each count one) of one actuator."""

    total: int
    max_per_hour: int  # over any clock hour (hh:00–hh:59)
    max_rolling_hour: int  # over any 60-minute window, wherever it starts
    mean_per_hour: float


@dataclass(frozen=True, slots=True)
class ControlReport:
    """What one run did. Time in band is scored every step on the room's true air (what the crop
    lives in), not on the noisy readings the evaluator sees."""

    species: str
    stage: str
    hours: float
    seed: int
    step_s: float
    doors: tuple[tuple[float, float], ...]  # (start s, duration s) of each door opening
    time_in_band: dict[str, float]  # metric → fraction of the run inside the profile's band
    overall_in_band: float  # fraction of the run with every banded metric inside its band
    switches: dict[str, SwitchStats]  # actuator role → switching figures
    duty: dict[str, float]  # actuator role → fraction of the run spent on
    extremes: dict[str, tuple[float, float]]  # metric → (min, max) of the true value
    blocked: int = 0  # changes a safety limit held back

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ControlReport:
        """The report ``to_dict`` made (also after a JSON round trip)."""
        return cls(**{
            **doc,
            "doors": tuple(tuple(door) for door in doc["doors"]),
            "switches": {role: SwitchStats(**stats) for role, stats in doc["switches"].items()},
            "extremes": {metric: tuple(pair) for metric, pair in doc["extremes"].items()},
        })


class Scenario(NamedTuple):
    """Where a farm puts a room and what it equips it with. ``outside`` is the physics' outside:
    the space the room leaks to, draws fresh air from and opens its door onto."""

    outside_c: float
    swing_c: float  # ± daily swing of the outside temperature
    outside_rh: float
    fogger_pct_min: float  # humidifier output, RH points per minute into dry air
    heater_w: float


# Rooms have a heater and no cooler, so each room sits in a space cooler than its band, less its
# own respiration and light heat (+1.5–2.5 K): the heater holds the floor, nothing could hold a
# ceiling. Spawn run: a heated building ~2–3 °C under the band (a 450 W heater holds it up).
# Pinning and fruiting: the damp farm corridor the rooms open onto (growers keep it near 90 %)
# ±1 °C a day, 1.5–3 °C over the band's floor so a 300 W heater is a night-time top-up; a small
# heater also jolts the air less (switching on warms the air ~0.3 K at once: −2 % RH). Shiitake
# fruits at 60–80 %, so its room opens onto drier air. A fogger in a 95–100 % room must out-run
# the fresh-air fan near saturation (3–4 %/min); in an 85–90 % room a small one (0.6 %/min) runs
# long, gentle cycles instead of overshooting the 5-point band.
SCENARIOS: Mapping[tuple[Species, Stage], Scenario] = {
    ("oyster", "spawn_run"): Scenario(20.0, 1.0, 75.0, 2.0, 450.0),
    ("oyster", "pinning"): Scenario(11.5, 1.0, 90.0, 3.0, 300.0),
    ("oyster", "fruiting"): Scenario(13.0, 1.0, 90.0, 0.6, 300.0),
    ("shiitake", "spawn_run"): Scenario(19.0, 1.0, 75.0, 4.0, 450.0),
    ("shiitake", "pinning"): Scenario(11.5, 1.0, 90.0, 3.0, 300.0),
    ("shiitake", "fruiting"): Scenario(13.0, 1.0, 65.0, 0.6, 300.0),
    ("lions_mane", "spawn_run"): Scenario(19.0, 1.0, 75.0, 4.0, 450.0),
    ("lions_mane", "pinning"): Scenario(11.5, 1.0, 90.0, 3.0, 300.0),
    ("lions_mane", "fruiting"): Scenario(20.0, 1.0, 90.0, 0.6, 300.0),
}


def scenario_params(species: Species, stage: Stage) -> RoomParams:
    """The room of ``SCENARIOS`` for this profile: the physics' 30 m³ room with 300 kg of blocks
    and a 4 ACH exhaust fan, lined and kept wet as grow rooms are, so its surfaces take up a
    quarter of the bare-room default's moisture (``moisture_sink_per_h`` 0.1 instead of 0.4)."""
    s = SCENARIOS[(species, stage)]
    return RoomParams(
        outside_temp_c=s.outside_c,
        outside_temp_amplitude_c=s.swing_c,
        outside_rh_pct=s.outside_rh,
        moisture_sink_per_h=0.1,
        humidifier_pct_per_min=s.fogger_pct_min,
        fan_ach=4.0,
        heater_w=s.heater_w,
    )


def door_schedule(
    rng: random.Random, hours: float, doors_per_day: float
) -> list[tuple[float, float]]:
    """Door openings at random times, each 1–3 minutes: count pro rata of ``doors_per_day``."""
    count = round(doors_per_day * hours / 24.0)
    starts = sorted(rng.uniform(0.0, hours * 3600.0 - 180.0) for _ in range(count))
    return [(start, rng.uniform(60.0, 180.0)) for start in starts]


def initial_state(profile: Profile) -> RoomState:
    """A room that starts settled in the middle of its bands."""
    t, rh = profile.temperature_c, profile.humidity_pct
    assert t.min is not None and t.max is not None and rh.min is not None and rh.max is not None
    co2_max = profile.co2_ppm.max
    assert co2_max is not None
    temp = t.min + 0.4 * (t.max - t.min)
    return RoomState(
        temperature_c=temp,
        humidity_pct=min(rh.max - 1.0, (rh.min + rh.max) / 2),
        co2_ppm=min(800.0, 420.0 + 0.5 * (co2_max - 420.0)),
        mass_temp_c=temp,
    )


def simulate(
    species: Species,
    stage: Stage,
    hours: float = 24.0,
    *,
    seed: int = 1,
    step_s: float = 10.0,
    doors_per_day: float = 6.0,
    params: RoomParams | None = None,
    tuning: Tuning = TUNING,
    safety: Mapping[ActuatorRole, Safety] | None = None,
    observer: Callable[[float, RoomState, Mapping[str, bool]], None] | None = None,
) -> ControlReport:
    """Run one room under its profile's generated rules for ``hours`` of simulated time.

    Every ``step_s`` the physics advances, the sensor is read (with noise), the evaluator runs on
    the readings, and its decisions switch the actuators for the next step."""
    profile = profile_for(species, stage)
    rng = random.Random(seed)  # noqa: S311 - simulation, not crypto
    room_params = replace(
        params or scenario_params(species, stage), door_openings_per_h=0.0
    )  # doors come from the seeded schedule below, a known count per day
    room = Room(
        species, stage, params=room_params, state=initial_state(profile),
        seed=seed, start=START,
    )
    doors = door_schedule(rng, hours, doors_per_day)
    for start_s, duration_s in doors:
        room.open_door(duration_s, at_s=start_s)

    rules = rules_for(ROOM_ID, species, stage, DEVICES, tuning=tuning)
    governed = {rule.actuator for rule in rules}
    metrics = sorted({getattr(rule, "metric", "") for rule in rules} - {""})
    role_of = {device: role for role, device in DEVICES.items() if device in governed}
    limits = {
        device: (safety or {}).get(role, default_safety(role)) for device, role in role_of.items()
    }
    actuators: dict[str, ActuatorState] = {device: ActuatorState() for device in role_of}
    rule_states: dict[str, RuleState] = {}
    readings: dict[tuple[str, str], Reading] = {}

    steps = round(hours * 3600.0 / step_s)
    hour_count = max(1, math.ceil(steps * step_s / 3600.0))
    per_hour = {role: [0] * hour_count for role in role_of.values()}
    switch_times: dict[str, list[float]] = {role: [] for role in role_of.values()}
    on_steps = dict.fromkeys(role_of.values(), 0)
    inside = dict.fromkeys(BANDED_METRICS, 0)
    all_inside = 0
    lowest = {m: float("inf") for m in BANDED_METRICS}
    highest = {m: float("-inf") for m in BANDED_METRICS}
    bands = {m: profile.band(m) for m in BANDED_METRICS}
    blocked = 0

    for _ in range(steps):
        levels: dict[str, bool] = {role: actuators[device].on for device, role in role_of.items()}
        state = room.step(step_s, levels)
        t = room.elapsed_s
        now = START + timedelta(seconds=t)
        sensed = room.sensors(rng)
        for metric in metrics:
            # Values and times are already valid: skip pydantic validation on the hot path.
            readings[(ROOM_ID, metric)] = Reading.model_construct(value=sensed[metric], at=now)
        evaluation = evaluate(rules, readings, actuators, rule_states, now, safety=limits)
        rule_states.update(evaluation.rule_states)
        blocked += len(evaluation.blocked)
        for decision in evaluation.decisions:
            device = decision.actuator
            if decision.on != actuators[device].on:
                role = role_of[device]
                per_hour[role][min(int(t // 3600), hour_count - 1)] += 1
                switch_times[role].append(t)
            actuators[device] = apply_switch(actuators[device], decision.on, now)
        # Score the air the crop had during the step just simulated.
        ok_all = True
        for metric in BANDED_METRICS:
            value = getattr(state, metric)
            band = bands[metric]
            ok = band is None or band.contains(value)
            inside[metric] += ok
            ok_all = ok_all and ok
            lowest[metric] = min(lowest[metric], value)
            highest[metric] = max(highest[metric], value)
        all_inside += ok_all
        if observer is not None:
            observer(t, state, levels)
        for role in role_of.values():
            on_steps[role] += levels[role]

    return ControlReport(
        species=species,
        stage=stage,
        hours=hours,
        seed=seed,
        step_s=step_s,
        doors=tuple((round(s, 1), round(d, 1)) for s, d in doors),
        time_in_band={m: inside[m] / steps for m in BANDED_METRICS},
        overall_in_band=all_inside / steps,
        switches={
            role: SwitchStats(
                total=len(switch_times[role]),
                max_per_hour=max(per_hour[role]),
                max_rolling_hour=_max_in_window(switch_times[role], 3600.0),
                mean_per_hour=len(switch_times[role]) / hours,
            )
            for role in role_of.values()
        },
        duty={role: on_steps[role] / steps for role in role_of.values()},
        extremes={m: (round(lowest[m], 2), round(highest[m], 2)) for m in BANDED_METRICS},
        blocked=blocked,
    )


def _max_in_window(times: list[float], window_s: float) -> int:
    """The most events inside any half-open window of ``window_s`` (times sorted)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best

