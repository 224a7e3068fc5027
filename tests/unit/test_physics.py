"""The room model: deterministic, plausible in magnitude, and answering every actuator."""
from __future__ import annotations

import random
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from firmware_sim.physics import ActuatorBank, Room, RoomParams, RoomState
from shared.models import METRIC_LIMITS, Telemetry

# A 20 °C room whose outside stays at 17 °C, so temperature drift does not blur RH and CO₂ figures.
STEADY = RoomParams(outside_temp_c=17.0, outside_temp_amplitude_c=0.0)


def room(species: str = "oyster", stage: str = "fruiting", **state: float) -> Room:
    start = {"temperature_c": 20.0, "humidity_pct": 90.0, "co2_ppm": 800.0} | state
    return Room(species, stage, params=STEADY, state=RoomState(**start))


def minutes_until(r: Room, predicate, limit_min: float, actuators=None) -> float | None:
    for i in range(int(limit_min * 12)):
        r.step(5.0, actuators or {})
        if predicate(r.state):
            return (i + 1) * 5 / 60
    return None


def test_same_seed_same_room_different_seed_different_doors():
    def trace(seed: int) -> list[tuple[float, ...]]:
        r = Room("oyster", "fruiting", params=replace(STEADY, door_openings_per_h=2.0), seed=seed)
        rng = random.Random(7)
        out = []
        for i in range(2_000):
            r.step(5.0, {"humidifier": i % 40 < 10, "exhaust_fan": i % 90 < 20})
            if i % 100 == 0:
                out.append(tuple(r.sensors(rng).values()))
        return out

    assert trace(3) == trace(3)
    assert trace(3) != trace(4)


def test_unattended_fruiting_room_dries_and_fills_with_co2_at_plausible_rates():
    r = room()
    to_70 = minutes_until(room(), lambda s: s.humidity_pct <= 70.0, 180)
    to_2000 = minutes_until(r, lambda s: s.co2_ppm >= 2_000.0, 240)
    assert to_70 is not None and 30 <= to_70 <= 65, to_70
    assert to_2000 is not None and 45 <= to_2000 <= 120, to_2000


def test_fruiting_respires_more_than_spawn_run():
    fruiting, spawn = room(stage="fruiting"), room(stage="spawn_run")
    fruiting.run(3_600, {})
    spawn.run(3_600, {})
    assert fruiting.state.co2_ppm > spawn.state.co2_ppm + 300
    # Respiration heat too: the fruiting room ends warmer.
    assert fruiting.state.temperature_c > spawn.state.temperature_c
    assert spawn.state.humidity_pct < 85.0  # spawn-run rooms dry out as well


def test_humidifier_raises_rh_a_few_points_per_minute():
    r = room(humidity_pct=70.0)
    r.run(300, {"humidifier": True})
    gain = r.state.humidity_pct - 70.0
    assert 2 * 5 <= gain <= 8 * 5, gain
    r.run(1_800, {"humidifier": True})
    assert 95.0 <= r.state.humidity_pct <= 100.0  # tapers toward saturation, never past it


def test_humidifier_level_scales_its_output():
    full, half = room(humidity_pct=70.0), room(humidity_pct=70.0)
    full.run(300, {"humidifier": 1.0})
    half.run(300, {"humidifier": 0.5})
    assert 70.0 < half.state.humidity_pct < full.state.humidity_pct


def test_exhaust_fan_pulls_co2_toward_outside_and_dries_the_air():
    r = room(co2_ppm=2_000.0)
    r.run(180, {"exhaust_fan": True})
    assert r.state.co2_ppm < 2_000.0 - 200.0
    r.run(3_600, {"exhaust_fan": True})
    assert r.state.co2_ppm < 700.0  # settles a little above the outside 420 ppm
    assert r.state.humidity_pct < 80.0


def test_heater_warms_the_room():
    heated, cold = room(temperature_c=16.0), room(temperature_c=16.0)
    heated.run(1_800, {"heater": True})
    cold.run(1_800, {})
    assert heated.state.temperature_c > cold.state.temperature_c + 1.0
    # Same water, warmer air: RH is lower in the heated room.
    assert heated.state.humidity_pct < cold.state.humidity_pct


def test_light_sets_lux():
    r = room()
    r.step(5.0, {"light": True})
    assert r.state.light_lux > 500.0
    r.step(5.0, {"light": False})
    assert r.state.light_lux < 10.0


def test_open_door_drops_rh_co2_and_temperature_for_a_while():
    opened = room(co2_ppm=1_500.0, temperature_c=19.0)
    shut = room(co2_ppm=1_500.0, temperature_c=19.0)
    opened.open_door(120)
    assert opened.door_open()
    opened.run(120, {})
    shut.run(120, {})
    assert not opened.door_open()
    assert opened.state.humidity_pct < shut.state.humidity_pct - 3.0
    assert opened.state.co2_ppm < shut.state.co2_ppm - 150.0
    assert opened.state.temperature_c < shut.state.temperature_c - 0.15
    # Door shut again: the temperature recovers toward its twin as the warm mass reheats the air.
    gap = shut.state.temperature_c - opened.state.temperature_c
    opened.run(600, {})
    shut.run(600, {})
    assert shut.state.temperature_c - opened.state.temperature_c < gap / 2


def test_scheduled_door_opens_at_its_time():
    r = room()
    r.open_door(60, at_s=600)
    r.run(300, {})
    assert not r.door_open()
    r.run(305, {})
    assert r.door_open()


def test_failed_humidifier_has_no_effect_and_a_stuck_relay_keeps_going():
    dry, idle = room(), room()
    dry.fail("humidifier")
    dry.run(900, {"humidifier": True})
    idle.run(900, {})
    assert dry.state.humidity_pct == pytest.approx(idle.state.humidity_pct)

    stuck, normal = room(), room()
    stuck.fail("exhaust_fan", "stuck_on")
    stuck.run(600, {"exhaust_fan": False})
    normal.run(600, {"exhaust_fan": False})
    assert stuck.state.co2_ppm < normal.state.co2_ppm - 150.0
    stuck.repair("exhaust_fan")
    assert stuck.effective_levels({"exhaust_fan": False})["exhaust_fan"] == 0.0


def test_humidifier_runs_dry_when_its_tank_empties():
    r = Room("oyster", "fruiting", params=replace(STEADY, humidifier_tank_l=0.2))
    r.set_humidity(70.0)
    r.run(120, {"humidifier": True})
    assert r.state.humidity_pct > 74.0
    r.run(7_200, {"humidifier": True})
    assert r.tank_l == 0.0
    assert r.state.humidity_pct < 80.0  # on, but with no water the room dries out again


def test_outside_temperature_follows_the_day():
    params = replace(STEADY, outside_temp_c=14.0, outside_temp_amplitude_c=3.0)
    r = Room("oyster", "fruiting", params=params, start=datetime(2024, 6, 1, tzinfo=UTC))
    r.run(15 * 3_600, {}, dt_s=60.0)
    assert r.outside_temp_c() == pytest.approx(17.0)
    r.run(12 * 3_600, {}, dt_s=60.0)
    assert r.outside_temp_c() == pytest.approx(11.0)


def test_sensor_readings_are_noisy_plausible_and_valid_telemetry():
    r = room()
    rng = random.Random(1)
    readings = [r.sensors(rng) for _ in range(200)]
    assert len({x["humidity_pct"] for x in readings}) > 5  # there is noise...
    for x in readings:
        assert abs(x["humidity_pct"] - r.state.humidity_pct) < 2.0  # ...and it is small
        assert abs(x["co2_ppm"] - r.state.co2_ppm) < 100.0
        for metric, value in x.items():
            low, high = METRIC_LIMITS[metric]
            assert low <= value <= high
    Telemetry(device_id="s-1", data=readings[0])


def test_unknown_species_or_stage_is_refused():
    with pytest.raises(ValueError, match="no respiration figure"):
        Room("button", "fruiting")
    with pytest.raises(ValueError, match="unknown actuator role"):
        room().fail("sprinkler")


def test_actuator_bank_sums_devices_per_role():
    bank = ActuatorBank()
    bank.set("h1", "humidifier", True)
    bank.set("h2", "humidifier", 0.5)
    bank.set("f1", "exhaust_fan", 3.0)  # clamped to full
    assert bank.by_role() == {"humidifier": 1.5, "exhaust_fan": 1.0, "heater": 0.0, "light": 0.0}
    assert bank.level("h2") == 0.5
    assert bank.level("missing") == 0.0


def test_simple_hysteresis_keeps_a_fruiting_oyster_room_in_band_with_doors():
    """The physics is controllable: plain on/off rules hold RH 85-95 % and CO₂ under 1,000 ppm
    for 95 % of a day with random door openings."""
    r = Room(
        "oyster", "fruiting", params=RoomParams(door_openings_per_h=0.25), seed=5,
        state=RoomState(temperature_c=18.0, humidity_pct=90.0, co2_ppm=800.0),
    )
    rng = random.Random(5)
    on = {"humidifier": False, "exhaust_fan": False, "heater": False}
    in_band = steps = 0
    for i in range(24 * 720):
        x = r.sensors(rng)
        on["humidifier"] = x["humidity_pct"] < 86.5 or (on["humidifier"] and x["humidity_pct"] < 94)
        on["exhaust_fan"] = x["co2_ppm"] > 950 or (on["exhaust_fan"] and x["co2_ppm"] > 650)
        on["heater"] = x["temperature_c"] < 16 or (on["heater"] and x["temperature_c"] < 17.5)
        r.step(5.0, on | {"light": i % 17_280 < 8_640})
        s = r.state
        in_band += 85 <= s.humidity_pct <= 95 and s.co2_ppm <= 1_000 and 15 <= s.temperature_c <= 21
        steps += 1
    assert len(r.doors) >= 2
    assert in_band / steps >= 0.95, in_band / steps


def test_a_simulated_day_at_5_s_steps_is_fast():
    r = Room("lions_mane", "pinning", params=RoomParams(door_openings_per_h=0.5))
    t0 = time.perf_counter()
    for i in range(24 * 720):
        r.step(5.0, {"humidifier": i % 30 < 8, "exhaust_fan": i % 360 < 40, "light": True})
    assert time.perf_counter() - t0 < 1.5
    assert r.elapsed_s == pytest.approx(86_400.0)
