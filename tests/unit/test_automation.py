"""The pure evaluator: hysteresis, "for" timers over restarts, schedules, safety, override, PID."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.automation import apply_switch, duty_last_hour, evaluate
from shared.rules import (
    ActuatorState,
    Cycle,
    Evaluation,
    Override,
    PidRule,
    Reading,
    Rule,
    RuleState,
    Safety,
    ScheduleRule,
    ThresholdRule,
    TimeWindow,
)

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def at(seconds: float = 0, *, base: datetime = T0) -> datetime:
    return base + timedelta(seconds=seconds)


def rh_rule(**kw: Any) -> ThresholdRule:
    args: dict[str, Any] = {
        "id": "rh-raise", "room_id": "r1", "actuator": "hum-1", "metric": "humidity_pct",
        "on_below": 85, "off_above": 89,
    }
    return ThresholdRule(**(args | kw))


def co2_rule(**kw: Any) -> ThresholdRule:
    args: dict[str, Any] = {
        "id": "co2", "room_id": "r1", "actuator": "fan-1", "metric": "co2_ppm",
        "on_above": 900, "off_below": 700,
    }
    return ThresholdRule(**(args | kw))


def schedule(
    windows: Sequence[tuple[str, str]] | None = None, cycle: Cycle | None = None, **kw: Any
) -> ScheduleRule:
    args: dict[str, Any] = {"id": "sched", "room_id": "r1", "actuator": "light-1"}
    if windows is not None:
        args["windows"] = [TimeWindow(start=s, end=e) for s, e in windows]
    if cycle is not None:
        args["cycle"] = cycle
    return ScheduleRule(**(args | kw))


def pid_rule(**kw: Any) -> PidRule:
    args: dict[str, Any] = {
        "id": "rh-pid", "room_id": "r1", "actuator": "hum-1", "metric": "humidity_pct",
        "setpoint": 88, "kp": 0.05, "ki": 0.0002, "period_s": 120,
    }
    return PidRule(**(args | kw))


@dataclass
class Room:
    """Carries states between evaluations the way the edge does, switching on every decision."""

    rules: list[Rule]
    safety: dict[str, Safety] = field(default_factory=dict)
    actuators: dict[str, ActuatorState] = field(default_factory=dict)
    rule_states: dict[str, RuleState] = field(default_factory=dict)
    readings: dict[tuple[str, str], Reading] = field(default_factory=dict)
    tz: Any = UTC
    switches: int = 0

    def step(self, now: datetime, **values: float) -> Evaluation:
        for metric, value in values.items():
            self.readings[("r1", metric)] = Reading(value=value, at=now)
        ev = evaluate(
            self.rules, self.readings, self.actuators, self.rule_states, now,
            safety=self.safety, tz=self.tz,
        )
        self.rule_states = dict(ev.rule_states)
        for decision in ev.decisions:
            old = self.actuators.get(decision.actuator, ActuatorState())
            self.actuators[decision.actuator] = apply_switch(old, decision.on, now)
            self.switches += 1
        return ev

    def is_on(self, actuator: str) -> bool:
        return self.actuators.get(actuator, ActuatorState()).on

    def restart(self) -> None:
        """What survives an edge restart: the persisted JSON of every state, nothing else."""
        self.rule_states = {
            k: RuleState.model_validate_json(v.model_dump_json())
            for k, v in self.rule_states.items()
        }
        self.actuators = {
            k: ActuatorState.model_validate_json(v.model_dump_json())
            for k, v in self.actuators.items()
        }


# ---- threshold with hysteresis ----


def test_raise_mode_hysteresis() -> None:
    room = Room([rh_rule()])
    expected = [(90, False), (86, False), (84.9, True), (86, True), (88.9, True),
                (89.1, False), (87, False), (84, True)]
    for i, (value, on) in enumerate(expected):
        room.step(at(i * 10), humidity_pct=value)
        assert room.is_on("hum-1") is on, (i, value)
    assert room.switches == 3


def test_lower_mode_hysteresis() -> None:
    room = Room([co2_rule()])
    expected = [(800, False), (900, False), (950, True), (800, True), (700, True),
                (690, False), (850, False), (901, True)]
    for i, (value, on) in enumerate(expected):
        room.step(at(i * 10), co2_ppm=value)
        assert room.is_on("fan-1") is on, (i, value)


def test_decision_reason_and_only_changes_are_decided() -> None:
    room = Room([rh_rule()])
    ev = room.step(at(0), humidity_pct=82.1)
    assert [d.model_dump() for d in ev.decisions] == [
        {"actuator": "hum-1", "on": True, "reason": "humidity_pct 82.1 < 85 (rule rh-raise)",
         "rule_ids": ("rh-raise",)}
    ]
    again = room.step(at(5), humidity_pct=82.0)
    assert again.decisions == ()
    assert again.desired == {"hum-1": True}
    assert again.rule_states["rh-raise"].active


def test_for_duration_must_hold_continuously() -> None:
    room = Room([rh_rule(for_s=60)])
    room.step(at(0), humidity_pct=80)
    ev = room.step(at(30), humidity_pct=80)
    assert not room.is_on("hum-1")
    assert ev.rule_states["rh-raise"].pending_since == at(0)
    # Back inside the band: the timer resets.
    room.step(at(40), humidity_pct=86)
    assert room.rule_states["rh-raise"].pending_since is None
    room.step(at(50), humidity_pct=80)
    room.step(at(100), humidity_pct=80)
    assert not room.is_on("hum-1"), "only 50 s since the condition came back"
    ev = room.step(at(110), humidity_pct=80)
    assert room.is_on("hum-1")
    assert ev.decisions[0].reason == "humidity_pct 80.0 < 85 (rule rh-raise)"


def test_for_duration_also_delays_switching_off() -> None:
    room = Room([rh_rule(for_s=120)])
    room.step(at(0), humidity_pct=80)
    room.step(at(120), humidity_pct=80)
    assert room.is_on("hum-1")
    room.step(at(130), humidity_pct=95)
    room.step(at(200), humidity_pct=95)
    assert room.is_on("hum-1")
    room.step(at(250), humidity_pct=95)
    assert not room.is_on("hum-1")


def test_for_timer_resumes_after_restart() -> None:
    room = Room([rh_rule(for_s=300)])
    room.step(at(0), humidity_pct=80)
    room.step(at(100), humidity_pct=80)
    room.restart()  # the edge is killed here and comes back 150 s later
    assert room.rule_states["rh-raise"].pending_since == at(0)
    room.step(at(250), humidity_pct=80)
    assert not room.is_on("hum-1")
    room.step(at(300), humidity_pct=80)
    assert room.is_on("hum-1"), "the timer counts from before the restart, not from it"


def test_for_timer_of_a_restarted_edge_is_not_restarted_from_zero() -> None:
    # Same as above but fresh objects only (what a new process would have).
    rule = rh_rule(for_s=300)
    reading = {("r1", "humidity_pct"): Reading(value=80, at=at(0))}
    first = evaluate([rule], reading, {}, {}, at(0))
    persisted = first.rule_states["rh-raise"].model_dump_json()
    restored = {"rh-raise": RuleState.model_validate_json(persisted)}
    reading = {("r1", "humidity_pct"): Reading(value=79, at=at(299))}
    assert evaluate([rule], reading, {}, restored, at(299)).decisions == ()
    reading = {("r1", "humidity_pct"): Reading(value=79, at=at(301))}
    later = evaluate([rule], reading, {}, restored, at(301))
    assert [d.on for d in later.decisions] == [True]


# ---- stale and missing data: fail-safe off ----


def test_stale_reading_never_turns_on() -> None:
    rule = rh_rule()
    old = {("r1", "humidity_pct"): Reading(value=40, at=at(-181))}
    ev = evaluate([rule], old, {}, {}, at(0))
    assert ev.decisions == ()
    assert ev.desired == {"hum-1": False}
    fresh = {("r1", "humidity_pct"): Reading(value=40, at=at(-179))}
    assert evaluate([rule], fresh, {}, {}, at(0)).desired == {"hum-1": True}


def test_reading_going_stale_switches_off() -> None:
    room = Room([rh_rule()])
    room.step(at(0), humidity_pct=80)
    assert room.is_on("hum-1")
    ev = room.step(at(181))  # no new reading for 181 s
    assert not room.is_on("hum-1")
    assert "stale" in ev.decisions[0].reason and "fail-safe off" in ev.decisions[0].reason
    assert room.rule_states["rh-raise"] == RuleState()


def test_custom_stale_after() -> None:
    reading = {("r1", "humidity_pct"): Reading(value=80, at=at(-30))}
    rule = rh_rule()
    wide = evaluate([rule], reading, {}, {}, at(0))
    narrow = evaluate([rule], reading, {}, {}, at(0), stale_after=timedelta(seconds=20))
    assert (wide.desired["hum-1"], narrow.desired["hum-1"]) == (True, False)


@pytest.mark.parametrize(
    "readings",
    [
        {},
        {("r2", "humidity_pct"): Reading(value=10, at=T0)},  # another room's reading
        {("r1", "humidity_pct"): Reading(value=float("nan"), at=T0)},
    ],
    ids=["missing", "other-room", "nan"],
)
def test_missing_reading_is_off_not_an_exception(readings: dict[Any, Reading]) -> None:
    rules: list[Rule] = [rh_rule(), pid_rule(id="pid", actuator="hum-2")]
    ev = evaluate(rules, readings, {}, {}, T0)
    assert ev.desired == {"hum-1": False, "hum-2": False}
    assert ev.decisions == ()


def test_missing_data_resets_a_pending_timer() -> None:
    room = Room([rh_rule(for_s=60)])
    room.step(at(0), humidity_pct=80)
    room.step(at(200))  # stale: the condition is not known to hold
    room.step(at(210), humidity_pct=80)
    room.step(at(260), humidity_pct=80)
    assert not room.is_on("hum-1")
    room.step(at(270), humidity_pct=80)
    assert room.is_on("hum-1")


def test_naive_datetimes_in_persisted_state_are_utc() -> None:
    naive = T0.replace(tzinfo=None)
    reading = {("r1", "humidity_pct"): Reading(value=80, at=naive)}
    states = {"rh-raise": RuleState(pending_since=naive - timedelta(seconds=61))}
    actuators = {"hum-1": ActuatorState(on=False, since=naive - timedelta(hours=1))}
    ev = evaluate([rh_rule(for_s=60)], reading, actuators, states, at(0))
    assert ev.desired == {"hum-1": True}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=100),
            st.integers(min_value=0, max_value=600),  # age of the reading in seconds
            st.booleans(),  # whether there is a reading at all
        ),
        min_size=1,
        max_size=30,
    )
)
def test_property_threshold_turns_on_only_on_fresh_data(
    steps: list[tuple[float, int, bool]],
) -> None:
    rules: list[Rule] = [rh_rule(), rh_rule(id="lower", actuator="hum-2", on_below=None,
                                             off_above=None, on_above=60, off_below=40)]
    room = Room(rules)
    for i, (value, age, present) in enumerate(steps):
        now = at(i * 60)
        room.readings = (
            {("r1", "humidity_pct"): Reading(value=value, at=now - timedelta(seconds=age))}
            if present else {}
        )
        ev = room.step(now)
        fresh = present and age <= 180
        for decision in ev.decisions:
            if decision.on:
                assert fresh, (decision, age, present)
        if not fresh:
            assert not any(ev.desired.values())


# ---- schedules ----


def test_light_window_gives_twelve_hours() -> None:
    rule = schedule([("06:00", "18:00")])
    day = datetime(2024, 6, 1, tzinfo=UTC)

    def on(h: int, m: int) -> bool:
        return evaluate([rule], {}, {}, {}, day.replace(hour=h, minute=m)).desired["light-1"]

    assert [on(5, 59), on(6, 0), on(17, 59), on(18, 0)] == [False, True, True, False]
    minutes_on = sum(
        evaluate([rule], {}, {}, {}, day + timedelta(minutes=m)).desired["light-1"]
        for m in range(24 * 60)
    )
    assert minutes_on == 12 * 60


def test_window_across_midnight() -> None:
    rule = schedule([("22:00", "06:00")])
    day = datetime(2024, 6, 1, tzinfo=UTC)
    cases = {(21, 59): False, (22, 0): True, (23, 30): True, (0, 0): True, (3, 0): True,
             (5, 59): True, (6, 0): False, (12, 0): False}
    for (h, m), expected in cases.items():
        ev = evaluate([rule], {}, {}, {}, day.replace(hour=h, minute=m))
        assert ev.desired["light-1"] is expected, (h, m)


def test_several_windows() -> None:
    rule = schedule([("06:00", "08:00"), ("18:00", "20:00")])
    day = datetime(2024, 6, 1, tzinfo=UTC)
    states = [evaluate([rule], {}, {}, {}, day.replace(hour=h)).desired["light-1"]
              for h in range(24)]
    assert [h for h, on in enumerate(states) if on] == [6, 7, 18, 19]


def test_windows_are_in_the_farm_time_zone() -> None:
    rule = schedule([("06:00", "18:00")])
    # 04:30 UTC is 06:30 in UTC+2: lights on there, still off in UTC.
    now = datetime(2024, 6, 1, 4, 30, tzinfo=UTC)
    plus2 = timezone(timedelta(hours=2))
    assert not evaluate([rule], {}, {}, {}, now).desired["light-1"]
    assert evaluate([rule], {}, {}, {}, now, tz=plus2).desired["light-1"]
    berlin = ZoneInfo("Europe/Berlin")  # CEST in June: UTC+2
    assert evaluate([rule], {}, {}, {}, now, tz=berlin).desired["light-1"]


def test_fresh_air_cycle_five_minutes_every_thirty() -> None:
    rule = schedule(cycle=Cycle(on_s=300, every_s=1800), actuator="fan-1")
    day = datetime(2024, 6, 1, tzinfo=UTC)
    room = Room([rule])
    on_minutes = []
    for minute in range(24 * 60):
        room.step(day + timedelta(minutes=minute))
        if room.is_on("fan-1"):
            on_minutes.append(minute)
    assert len(on_minutes) == 48 * 5
    assert on_minutes[:10] == [0, 1, 2, 3, 4, 30, 31, 32, 33, 34]
    assert room.switches == 2 * 48


def test_cycle_offset() -> None:
    rule = schedule(cycle=Cycle(on_s=300, every_s=1800, offset_s=600))
    day = datetime(2024, 6, 1, tzinfo=UTC)
    on = [m for m in range(60)
          if evaluate([rule], {}, {}, {}, day + timedelta(minutes=m)).desired["light-1"]]
    assert on == [10, 11, 12, 13, 14, 40, 41, 42, 43, 44]


# ---- combination of rules and manual override ----


def test_rules_on_one_actuator_are_ored() -> None:
    rules: list[Rule] = [co2_rule(), schedule(cycle=Cycle(on_s=300, every_s=1800),
                                              id="fresh-air", actuator="fan-1")]
    readings = {("r1", "co2_ppm"): Reading(value=600, at=T0)}
    # 12:00 is the start of a cycle: fresh air wants on while CO₂ is fine.
    ev = evaluate(rules, readings, {}, {}, T0)
    assert ev.desired == {"fan-1": True}
    assert ev.decisions[0].rule_ids == ("fresh-air",)
    assert "cycle 300 s every 1800 s, on-phase" in ev.decisions[0].reason
    ev = evaluate(rules, readings, {}, {}, at(600))
    assert ev.desired == {"fan-1": False}
    readings = {("r1", "co2_ppm"): Reading(value=1200, at=at(600))}
    assert evaluate(rules, readings, {}, {}, at(600)).desired == {"fan-1": True}


def test_disabled_rule_does_not_vote_and_forgets_its_state() -> None:
    rule = rh_rule(enabled=False)
    readings = {("r1", "humidity_pct"): Reading(value=50, at=T0)}
    ev = evaluate([rule], readings, {}, {"rh-raise": RuleState(active=True)}, T0)
    assert ev.desired == {"hum-1": False}
    assert ev.rule_states["rh-raise"] == RuleState()


def test_actuator_with_state_but_no_rule_is_held_off() -> None:
    actuators = {"heater-9": ActuatorState(on=True, since=at(-600))}
    ev = evaluate([], {}, actuators, {}, T0)
    assert ev.desired == {"heater-9": False}
    assert ev.decisions[0].reason == "no enabled rule"


def test_override_wins_until_it_expires() -> None:
    room = Room([rh_rule()], safety={"hum-1": Safety(min_on_s=600, min_off_s=600)})
    override = Override(on=True, until=at(300), by="alice")
    room.actuators["hum-1"] = ActuatorState(on=False, since=at(0), override=override)
    ev = room.step(at(10), humidity_pct=95)
    # min_off (600 s) would hold it off; a manual override does not wait for it.
    assert room.is_on("hum-1")
    assert ev.decisions[0].reason.startswith("manual override on until 2024-06-01 12:05 UTC")
    assert ev.decisions[0].reason.endswith("by alice")
    room.step(at(299), humidity_pct=95)
    assert room.is_on("hum-1")
    ev = room.step(at(300), humidity_pct=95)
    # Expired: the rule (RH 95 > 89) wants off again, under the usual limits, so min_on holds
    # the humidifier until 600 s after the override switched it on.
    assert room.is_on("hum-1")
    assert ev.blocked[0].reason.startswith("min on 600 s")
    room.step(at(610), humidity_pct=95)
    assert not room.is_on("hum-1")


def test_override_off_beats_rule_and_min_on() -> None:
    safety = {"hum-1": Safety(min_on_s=600)}
    actuators = {"hum-1": ActuatorState(on=True, since=at(-10), on_intervals=((at(-10), None),),
                                        override=Override(on=False, until=at(60)))}
    readings = {("r1", "humidity_pct"): Reading(value=50, at=T0)}
    ev = evaluate([rh_rule()], readings, actuators, {}, T0, safety=safety)
    assert ev.desired == {"hum-1": False}
    assert ev.blocked == ()


def test_override_does_not_beat_max_runtime() -> None:
    safety = {"hum-1": Safety(max_on_s=1800, min_off_s=300)}
    override = Override(on=True, until=at(7200))
    actuators = {"hum-1": ActuatorState(on=True, since=at(-1800),
                                        on_intervals=((at(-1800), None),), override=override)}
    ev = evaluate([], {}, actuators, {}, T0, safety=safety)
    assert ev.desired == {"hum-1": False}
    assert ev.decisions[0].reason == "max runtime 1800 s reached (safety)"
    assert ev.blocked[0].wanted_on
    # It rests min_off even though the override still asks for on.
    rested = apply_switch(actuators["hum-1"], False, T0)
    assert evaluate([], {}, {"hum-1": rested}, {}, at(299), safety=safety).desired == {
        "hum-1": False
    }
    assert evaluate([], {}, {"hum-1": rested}, {}, at(300), safety=safety).desired == {
        "hum-1": True
    }


# ---- safety limits ----


def test_min_on_and_min_off() -> None:
    room = Room([rh_rule()], safety={"hum-1": Safety(min_on_s=120, min_off_s=300)})
    room.step(at(0), humidity_pct=80)
    assert room.is_on("hum-1")
    ev = room.step(at(30), humidity_pct=95)
    assert room.is_on("hum-1")
    assert ev.blocked[0].model_dump() == {
        "actuator": "hum-1", "wanted_on": False, "reason": "min on 120 s (on for 30 s)"
    }
    room.step(at(119), humidity_pct=95)
    assert room.is_on("hum-1")
    room.step(at(120), humidity_pct=95)
    assert not room.is_on("hum-1")
    ev = room.step(at(200), humidity_pct=80)
    assert not room.is_on("hum-1")
    assert ev.blocked[0].reason == "min off 300 s (off for 80 s)"
    assert ev.desired == {"hum-1": False}
    room.step(at(420), humidity_pct=80)
    assert room.is_on("hum-1")


def test_max_runtime_forces_off_then_rests_at_least_one_tick() -> None:
    room = Room([rh_rule()], safety={"hum-1": Safety(max_on_s=600)})
    room.step(at(0), humidity_pct=50)
    room.step(at(599), humidity_pct=50)
    assert room.is_on("hum-1")
    ev = room.step(at(600), humidity_pct=50)
    assert not room.is_on("hum-1")
    assert "max runtime 600 s reached" in ev.decisions[0].reason
    room.step(at(605), humidity_pct=50)  # no min_off: one tick of rest is enough
    assert room.is_on("hum-1")


def test_max_runtime_rest_is_min_off() -> None:
    room = Room([rh_rule()], safety={"hum-1": Safety(max_on_s=600, min_off_s=120)})
    room.step(at(0), humidity_pct=50)
    room.step(at(600), humidity_pct=50)
    ev = room.step(at(700), humidity_pct=50)
    assert not room.is_on("hum-1")
    assert ev.blocked[0].reason.startswith("resting 120 s after max runtime")
    room.step(at(720), humidity_pct=50)
    assert room.is_on("hum-1")


def test_max_duty_caps_on_time_in_every_rolling_hour() -> None:
    safety = {"hum-1": Safety(max_duty=0.5, min_on_s=60)}
    room = Room([rh_rule()], safety=safety)
    timeline: list[bool] = []
    for step in range(0, 3 * 3600, 10):  # a room that never gets humid enough: always wants on
        room.step(at(step), humidity_pct=50)
        timeline.append(room.is_on("hum-1"))
        assert duty_last_hour(room.actuators["hum-1"], at(step)) <= 0.5 + 1e-9
    per_hour = 360  # ten-second ticks
    worst = max(sum(timeline[i:i + per_hour]) for i in range(len(timeline) - per_hour))
    assert worst <= per_hour // 2 + 1
    assert sum(timeline[-per_hour:]) >= per_hour // 2 - 12  # it still uses its budget
    blocked = room.step(at(3 * 3600), humidity_pct=50).blocked
    assert not blocked or "max duty 50%" in blocked[0].reason


def test_duty_refuses_a_start_without_room_for_min_on() -> None:
    state = ActuatorState(on=False, since=at(-10), on_intervals=((at(-3600), at(-10)),))
    safety = {"hum-1": Safety(max_duty=0.9, min_on_s=300)}
    readings = {("r1", "humidity_pct"): Reading(value=50, at=T0)}
    ev = evaluate([rh_rule()], readings, {"hum-1": state}, {}, T0, safety=safety)
    assert ev.desired == {"hum-1": False}
    assert ev.blocked[0].reason == "max duty 90% of the last hour reached"


def test_duty_and_apply_switch() -> None:
    state = ActuatorState()
    state = apply_switch(state, True, at(0))
    assert state.on and state.since == at(0) and state.on_intervals == ((at(0), None),)
    assert duty_last_hour(state, at(900)) == pytest.approx(0.25)
    same = apply_switch(state, True, at(100))  # re-asserting keeps since and the open interval
    assert same.since == at(0) and same.on_intervals == ((at(0), None),)
    state = apply_switch(state, False, at(1800))
    assert not state.on and state.since == at(1800)
    assert state.on_intervals == ((at(0), at(1800)),)
    assert duty_last_hour(state, at(3600)) == pytest.approx(0.5)
    assert duty_last_hour(state, at(4500)) == pytest.approx(0.25)  # half of it slid out
    state = apply_switch(state, True, at(5500))
    assert state.on_intervals == ((at(5500), None),), "intervals older than an hour are pruned"
    override = Override(on=True, until=at(9000))
    assert apply_switch(state.model_copy(update={"override": override}), False,
                        at(5600)).override == override


def test_duty_counts_an_unrecorded_on_period() -> None:
    state = ActuatorState(on=True, since=at(-600))
    assert duty_last_hour(state, T0) == pytest.approx(600 / 3600)


# ---- PID with time proportioning ----


class HumidityPlant:
    """First-order room: RH relaxes toward ambient with time constant tau; the humidifier adds
    ``gain`` %/s while on. Equilibrium at on-fraction u is ambient + gain·tau·u."""

    def __init__(self, rh: float = 70, ambient: float = 60, tau: float = 1800,
                 gain: float = 0.05) -> None:
        self.rh, self.ambient, self.tau, self.gain = rh, ambient, tau, gain

    def advance(self, dt: float, on: bool) -> float:
        self.rh += ((self.ambient - self.rh) / self.tau + (self.gain if on else 0.0)) * dt
        self.rh = min(max(self.rh, 0.0), 100.0)
        return self.rh


def run_pid(rule: PidRule, plant: HumidityPlant, seconds: int, room: Room | None = None,
            start: int = 0, step: int = 5) -> tuple[Room, list[float]]:
    room = room or Room([rule])
    trace = []
    for t in range(start, start + seconds, step):
        room.step(at(t), humidity_pct=plant.rh)
        plant.advance(step, room.is_on("hum-1"))
        trace.append(plant.rh)
    return room, trace


def test_pid_converges_near_setpoint() -> None:
    plant = HumidityPlant(rh=70)
    room, trace = run_pid(pid_rule(), plant, 8 * 3600)
    last_two_hours = trace[-2 * 720:]
    mean = sum(last_two_hours) / len(last_two_hours)
    assert abs(mean - 88) < 0.3, mean
    assert max(abs(v - 88) for v in last_two_hours) < 1.5  # the ripple of 120 s cycles
    # At most two switches per 120 s cycle, whatever the reading rate.
    assert room.switches <= 2 * (8 * 3600 // 120) + 1


def test_pid_without_integral_settles_below_setpoint() -> None:
    # The test above can fail: P alone leaves a steady-state error that the integral removes.
    plant = HumidityPlant(rh=70)
    _, trace = run_pid(pid_rule(ki=0), plant, 8 * 3600)
    mean = sum(trace[-1440:]) / 1440
    assert mean < 87, mean


def test_pid_first_evaluation_has_no_derivative_kick() -> None:
    rule = pid_rule(kp=0.01, ki=0, kd=1000, period_s=600)
    readings = {("r1", "humidity_pct"): Reading(value=80, at=T0)}
    ev = evaluate([rule], readings, {}, {}, T0)
    state = ev.rule_states["rh-pid"]
    assert state.output == pytest.approx(0.08)  # kp · 8, nothing from kd
    assert state.last_error == 8 and state.last_at == T0 and state.cycle_start == T0


def test_pid_anti_windup() -> None:
    rule = pid_rule(kp=0.05, ki=0.001, period_s=120)
    dead = HumidityPlant(rh=50, gain=0.0)  # humidifier broken: error stays at 38 for two hours
    room, _ = run_pid(rule, dead, 2 * 3600)
    assert room.rule_states["rh-pid"].integral == pytest.approx(1.0)  # not 0.001·38·7200 ≈ 274
    # Repaired, and the room overshoots: the output must drop within minutes, not hours.
    t = 2 * 3600
    for dt in range(0, 600, 5):
        room.step(at(t + dt), humidity_pct=90)
    assert room.rule_states["rh-pid"].output == 0.0
    assert not room.is_on("hum-1")


def test_pid_output_limits_bound_the_on_fraction() -> None:
    rule = pid_rule(kp=1, ki=0, period_s=600, output_max=0.6)
    room = Room([rule])
    on_seconds = 0
    for t in range(0, 1800, 10):
        room.step(at(t), humidity_pct=40)
        on_seconds += 10 if room.is_on("hum-1") else 0
    assert on_seconds == pytest.approx(0.6 * 1800, abs=20)


def test_time_proportioning_fixes_the_output_for_a_cycle() -> None:
    rule = pid_rule(kp=0.05, ki=0, period_s=600)
    room = Room([rule])
    on_seconds = 0
    for t in range(0, 1800, 10):
        # error 5 → 25 % on; the reading jumps mid-cycle but the cycle's fraction holds.
        value = 83 if t % 600 < 300 else 70
        room.step(at(t), humidity_pct=value)
        on_seconds += 10 if room.is_on("hum-1") else 0
        if t % 600 == 590:
            assert room.rule_states["rh-pid"].output == pytest.approx(0.25)
    assert on_seconds == 3 * 150
    assert room.switches == 6


def test_pid_reverse_acting_fan() -> None:
    rule = PidRule(id="co2-pid", room_id="r1", actuator="fan-1", metric="co2_ppm",
                   setpoint=800, kp=0.002, reverse=True, period_s=300)
    high = evaluate([rule], {("r1", "co2_ppm"): Reading(value=1000, at=T0)}, {}, {}, T0)
    low = evaluate([rule], {("r1", "co2_ppm"): Reading(value=600, at=T0)}, {}, {}, T0)
    assert high.rule_states["co2-pid"].output == pytest.approx(0.4)
    assert high.desired == {"fan-1": True}
    assert low.rule_states["co2-pid"].output == 0.0
    assert low.desired == {"fan-1": False}


def test_pid_resumes_after_restart_without_a_jump() -> None:
    plant = HumidityPlant(rh=70)
    room, _ = run_pid(pid_rule(), plant, 4 * 3600)
    integral = room.rule_states["rh-pid"].integral
    room.restart()
    # Down for an hour: the gap counts as at most one period, so the integral barely moves.
    room.step(at(5 * 3600), humidity_pct=plant.rh)
    assert room.rule_states["rh-pid"].integral == pytest.approx(integral, abs=0.05)
    assert room.rule_states["rh-pid"].cycle_start == at(5 * 3600)


def test_pid_stale_reading_is_off_and_keeps_the_integral() -> None:
    room = Room([pid_rule(ki=0.001)])
    room.step(at(0), humidity_pct=70)  # error 18: 90 % of the 120 s cycle
    room.step(at(60), humidity_pct=70)
    assert room.is_on("hum-1")
    integral = room.rule_states["rh-pid"].integral
    ev = room.step(at(400))
    assert not room.is_on("hum-1")
    assert "fail-safe off" in ev.decisions[0].reason
    assert room.rule_states["rh-pid"].integral == integral
    assert room.rule_states["rh-pid"].last_at is None
