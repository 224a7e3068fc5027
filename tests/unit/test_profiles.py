"""Grow profiles: every species × stage is there and sane, and a room's rules follow its profile."""
from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from shared.automation import evaluate
from shared.profiles import (
    BANDED_METRICS,
    DEFAULT_SAFETY,
    PROFILES,
    SPECIES,
    STAGES,
    Band,
    Species,
    Stage,
    Tuning,
    default_safety,
    in_band,
    profile_for,
    rules_for,
)
from shared.rules import (
    ACTUATOR_ROLES,
    ActuatorRole,
    Reading,
    Rule,
    Safety,
    ScheduleRule,
    ThresholdRule,
    TimeWindow,
)

ALL_ACTUATORS: dict[ActuatorRole, str] = {
    "humidifier": "hum-1", "exhaust_fan": "fan-1", "heater": "heat-1", "light": "light-1",
}
PAIRS = list(itertools.product(SPECIES, STAGES))
RULES = TypeAdapter(list[Rule])


def test_every_species_and_stage_has_a_profile() -> None:
    assert set(PROFILES) == set(PAIRS)
    assert len(PAIRS) == 9
    for species, stage in PAIRS:
        profile = profile_for(species, stage)
        assert (profile.species, profile.stage) == (species, stage)


def test_unknown_pair_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="truffle"):
        profile_for("truffle", "fruiting")  # type: ignore[arg-type]


@pytest.mark.parametrize(("species", "stage"), PAIRS)
def test_bands_are_physically_sane(species: Species, stage: Stage) -> None:
    p = profile_for(species, stage)
    assert p.temperature_c.min is not None and p.temperature_c.max is not None
    assert 5 <= p.temperature_c.min < p.temperature_c.max <= 30
    assert p.humidity_pct.min is not None and p.humidity_pct.max is not None
    assert 50 <= p.humidity_pct.min < p.humidity_pct.max <= 100
    assert p.humidity_pct.max - p.humidity_pct.min >= 5, "a humidifier cannot hold a 1 % band"
    assert p.co2_ppm.max is not None
    assert 600 <= p.co2_ppm.max <= 40_000, "outdoor air is ~420 ppm: a fan cannot go below it"
    assert 0 <= p.light_hours < 24


@pytest.mark.parametrize("species", SPECIES)
def test_stages_differ_the_way_cultivation_says(species: Species) -> None:
    spawn, pinning, fruiting = (profile_for(species, stage) for stage in STAGES)
    # Spawn run: dark, warm, tolerant of CO₂, not vented. Pinning: cold shock, high RH, fresh air.
    assert spawn.light_hours == 0 and not spawn.fresh_air
    assert pinning.light_hours > 0 and fruiting.light_hours > 0
    assert pinning.fresh_air and fruiting.fresh_air
    assert spawn.co2_ppm.max is not None and fruiting.co2_ppm.max is not None
    assert spawn.co2_ppm.max >= 5 * fruiting.co2_ppm.max
    assert pinning.temperature_c.max is not None and spawn.temperature_c.min is not None
    assert pinning.temperature_c.max < spawn.temperature_c.min
    assert pinning.humidity_pct.min is not None and fruiting.humidity_pct.min is not None
    assert pinning.humidity_pct.min >= fruiting.humidity_pct.min


def test_band_validation_and_in_band() -> None:
    with pytest.raises(ValidationError):
        Band()
    with pytest.raises(ValidationError):
        Band(min=90, max=85)
    p = profile_for("oyster", "fruiting")  # 10–21 °C, 85–90 %, CO₂ ≤ 1000
    assert in_band(p, "humidity_pct", 85) and in_band(p, "humidity_pct", 90)
    assert not in_band(p, "humidity_pct", 84.9) and not in_band(p, "humidity_pct", 90.1)
    assert in_band(p, "co2_ppm", 420) and in_band(p, "co2_ppm", 1000)
    assert not in_band(p, "co2_ppm", 1001)
    assert in_band(p, "temperature_c", 15) and not in_band(p, "temperature_c", 9.9)
    assert in_band(p, "light_lux", 12_000), "a metric without a band is never out of it"
    assert not in_band(p, "humidity_pct", float("nan"))
    assert not in_band(p, "light_lux", float("nan"))


@pytest.mark.parametrize(("species", "stage"), PAIRS)
def test_rules_reference_the_given_actuators_and_stay_inside_the_band(
    species: Species, stage: Stage
) -> None:
    p = profile_for(species, stage)
    rules = rules_for("room-a", species, stage, ALL_ACTUATORS)
    # Valid through the same discriminated union the edge loads from config and JSON.
    assert RULES.validate_json(RULES.dump_json(rules)) == rules
    by_id = {r.id: r for r in rules}
    assert len(by_id) == len(rules)
    expected = {"room-a-rh", "room-a-co2", "room-a-heat"}
    if stage != "spawn_run":
        expected |= {"room-a-fresh-air", "room-a-light"}
    assert set(by_id) == expected
    for rule in rules:
        assert rule.room_id == "room-a"
        assert rule.source == "profile"
        assert rule.actuator in ALL_ACTUATORS.values()
        assert rule.description

    rh = by_id["room-a-rh"]
    assert isinstance(rh, ThresholdRule) and rh.actuator == "hum-1" and rh.raises
    assert rh.on_below is not None and rh.off_above is not None
    assert p.humidity_pct.min is not None and p.humidity_pct.max is not None
    assert p.humidity_pct.min < rh.on_below < rh.off_above < p.humidity_pct.max

    co2 = by_id["room-a-co2"]
    assert isinstance(co2, ThresholdRule) and co2.actuator == "fan-1" and not co2.raises
    assert co2.on_above is not None and co2.off_below is not None
    assert p.co2_ppm.max is not None
    assert 420 < co2.off_below < co2.on_above < p.co2_ppm.max

    heat = by_id["room-a-heat"]
    assert isinstance(heat, ThresholdRule) and heat.actuator == "heat-1" and heat.raises
    assert heat.on_below is not None and heat.off_above is not None
    assert p.temperature_c.min is not None and p.temperature_c.max is not None
    assert p.temperature_c.min < heat.on_below < heat.off_above < p.temperature_c.max

    if stage != "spawn_run":
        fresh = by_id["room-a-fresh-air"]
        assert isinstance(fresh, ScheduleRule) and fresh.actuator == "fan-1"
        assert fresh.cycle == Tuning().fresh_air
        # Fresh air is a minority of the time (the CO₂ rule adds what respiration needs).
        assert fresh.cycle is not None and fresh.cycle.on_s <= fresh.cycle.every_s / 2


@pytest.mark.parametrize(("species", "stage"), PAIRS)
def test_generated_rules_push_the_right_way(species: Species, stage: Stage) -> None:
    p = profile_for(species, stage)
    rules = [r for r in rules_for("r1", species, stage, ALL_ACTUATORS)
             if r.id != "r1-fresh-air"]
    now = datetime(2024, 6, 1, 3, 0, tzinfo=UTC)  # night: lights off
    assert p.humidity_pct.min is not None and p.humidity_pct.max is not None
    assert p.temperature_c.min is not None and p.co2_ppm.max is not None

    def desired(rh: float, temp: float, co2: float) -> dict[str, bool]:
        # Evaluated twice, the second time after every rule's "for" duration has passed.
        later = now + timedelta(seconds=max(getattr(r, "for_s", 0.0) for r in rules))
        first = evaluate(rules, readings(rh, temp, co2, now), {}, {}, now)
        return evaluate(rules, readings(rh, temp, co2, later), {}, first.rule_states,
                        later).desired

    def readings(rh: float, temp: float, co2: float, at: datetime) -> dict[Any, Reading]:
        return {
            ("r1", "humidity_pct"): Reading(value=rh, at=at),
            ("r1", "temperature_c"): Reading(value=temp, at=at),
            ("r1", "co2_ppm"): Reading(value=co2, at=at),
        }

    low = desired(p.humidity_pct.min - 1, p.temperature_c.min - 1, p.co2_ppm.max + 100)
    assert low == {"hum-1": True, "heat-1": True, "fan-1": True, **({"light-1": False}
                   if stage != "spawn_run" else {})}
    high = desired(p.humidity_pct.max, p.temperature_c.min + 10, 450)
    assert not any(high.values())


def test_rules_only_for_the_roles_a_room_has() -> None:
    rules = rules_for("r1", "oyster", "fruiting", {"humidifier": "hum-7"})
    assert [(r.id, r.actuator) for r in rules] == [("r1-rh", "hum-7")]
    assert rules_for("r1", "oyster", "fruiting", {}) == []


def test_override_replaces_by_id_and_adds_the_rest() -> None:
    mine = ThresholdRule(id="r1-rh", room_id="r1", actuator="hum-1", metric="humidity_pct",
                         on_below=80, off_above=84, for_s=30)
    extra = ScheduleRule(id="r1-night-fog", room_id="r1", actuator="hum-1",
                         windows=[TimeWindow(start="23:00", end="23:10")])
    off = ScheduleRule(id="r1-light", room_id="r1", actuator="light-1", enabled=False,
                       windows=[TimeWindow(start="00:00", end="01:00")])
    base = rules_for("r1", "oyster", "fruiting", ALL_ACTUATORS)
    rules = rules_for("r1", "oyster", "fruiting", ALL_ACTUATORS, overrides=[mine, extra, off])
    assert [r.id for r in rules] == [r.id for r in base] + ["r1-night-fog"]
    by_id = {r.id: r for r in rules}
    assert by_id["r1-rh"] is mine and by_id["r1-rh"].source == "user"
    assert by_id["r1-light"] is off
    assert by_id["r1-co2"] == {r.id: r for r in base}["r1-co2"]


def count_light_minutes(rules: list[Rule]) -> int:
    day = datetime(2024, 6, 1, tzinfo=UTC)
    return sum(
        evaluate(rules, {}, {}, {}, day + timedelta(minutes=m)).desired.get("light-1", False)
        for m in range(24 * 60)
    )


@pytest.mark.parametrize(("species", "stage"), PAIRS)
def test_light_rule_gives_the_profile_hours(species: Species, stage: Stage) -> None:
    rules = [r for r in rules_for("r1", species, stage, ALL_ACTUATORS) if r.id == "r1-light"]
    hours = profile_for(species, stage).light_hours
    assert count_light_minutes(rules) == round(hours * 60)
    assert (rules == []) == (hours == 0)


def test_light_window_can_cross_midnight() -> None:
    tuning = Tuning(lights_on_at="20:30")
    rules = rules_for("r1", "shiitake", "fruiting", {"light": "light-1"}, tuning=tuning)
    rule = rules[0]
    assert isinstance(rule, ScheduleRule) and rule.windows is not None
    assert (rule.windows[0].start, rule.windows[0].end) == ("20:30", "08:30")
    assert count_light_minutes(rules) == 12 * 60


@pytest.mark.parametrize(
    "bad",
    [{"co2_on_fraction": 0.7, "co2_off_fraction": 0.8}, {"heat_on_margin": 0.4, "heat_off_at": 0.3},
     {"lights_on_at": "6:00"}, {"rh_on_margin": 0.6}],
    ids=repr,
)
def test_tuning_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Tuning(**bad)


def test_tuning_moves_the_thresholds() -> None:
    wide = rules_for("r1", "oyster", "fruiting", {"humidifier": "h"},
                     tuning=Tuning(rh_on_margin=0.1, rh_off_margin=0.1))[0]
    assert isinstance(wide, ThresholdRule)
    assert (wide.on_below, wide.off_above) == (85.5, 89.5)


def test_default_safety_per_role() -> None:
    assert set(DEFAULT_SAFETY) == set(ACTUATOR_ROLES)
    assert default_safety("humidifier") == Safety(min_on_s=180, min_off_s=120, max_on_s=7200)
    assert default_safety("exhaust_fan") == Safety(min_on_s=600, min_off_s=600)
    assert default_safety("heater") == Safety(min_on_s=600, min_off_s=600, max_on_s=3600)
    assert default_safety("light") == Safety()
    # min_on + min_off of 20 min: no more than 6 switches in any hour, whatever the rules ask.
    for role in ("exhaust_fan", "heater"):
        limits = default_safety(role)  # type: ignore[arg-type]
        assert limits.min_on_s + limits.min_off_s >= 1200
    # A fan's minimum run fits inside the fresh-air pulse, or the cycle would be stretched.
    assert default_safety("exhaust_fan").min_on_s <= Tuning().fresh_air.on_s


def test_banded_metrics_match_the_profile() -> None:
    p = profile_for("lions_mane", "pinning")
    assert all(p.band(m) is not None for m in BANDED_METRICS)
    assert p.band("battery_v") is None
