"""A deterministic grow-room model: air that dries, fills with CO₂ and drifts toward the outside
unless the humidifier, exhaust fan and heater act. Pure (no I/O, no clock); seeded randomness only.

Humidity is carried as absolute humidity (g/m³) so heating the air lowers RH and fresh air brings
the outside's moisture, as in a real room. Each process is a first-order relaxation integrated
exactly over the step (``x_eq + (x - x_eq)·e^(-k·dt)``), so large steps stay stable.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from shared.vocabulary import ACTUATOR_ROLES

ROLES: Final[tuple[str, ...]] = ACTUATOR_ROLES
FailureMode = Literal["no_effect", "stuck_on"]

# Respiration of colonised substrate, mg CO₂ per kg substrate per hour, by species and stage.
# Fruiting bodies respire faster than resting mycelium (post-harvest oyster mushrooms respire
# ~100-300 mg CO₂/kg/h at 20 °C), so a room respires more in fruiting than in spawn run. Tuned so
# an unattended fruiting oyster room of 30 m³ with 300 kg of blocks climbs from 800 to 2,000 ppm
# in about 1.5 h, as growers see without fresh air.
RESPIRATION_MG_PER_KG_H: Final[dict[tuple[str, str], float]] = {
    ("oyster", "spawn_run"): 80.0,
    ("oyster", "pinning"): 135.0,
    ("oyster", "fruiting"): 185.0,
    ("shiitake", "spawn_run"): 65.0,
    ("shiitake", "pinning"): 100.0,
    ("shiitake", "fruiting"): 130.0,
    ("lions_mane", "spawn_run"): 70.0,
    ("lions_mane", "pinning"): 120.0,
    ("lions_mane", "fruiting"): 160.0,
}

CO2_G_PER_L: Final = 1.83  # at 20 °C, 1 atm
# Aerobic respiration of glucose releases ~2,805 kJ per mol, i.e. ~467 kJ per mol of CO₂.
RESPIRATION_J_PER_G_CO2: Final = 467_000 / 44.01
AIR_J_PER_M3_K: Final = 1_206.0  # ρ·c_p of air, 1.2 kg/m³ × 1,005 J/(kg·K)


def saturation_g_m3(temp_c: float) -> float:
    """Water vapour density at saturation (Magnus formula, ±0.5 % over 0-50 °C)."""
    es_hpa = 6.112 * math.exp(17.62 * temp_c / (243.12 + temp_c))
    return 216.7 * es_hpa / (temp_c + 273.15)


def respiration_mg_per_kg_h(species: str, stage: str) -> float:
    try:
        return RESPIRATION_MG_PER_KG_H[(species, stage)]
    except KeyError:
        raise ValueError(f"no respiration figure for species {species!r} stage {stage!r}") from None


@dataclass(frozen=True, slots=True)
class RoomParams:
    """The knobs of one room. Defaults: a 30 m³ room (≈ 4 × 3 × 2.5 m) with 300 kg of blocks.

    With them an unattended fruiting oyster room at 20 °C goes from 90 % to 70 % RH in ~56 min
    and from 800 to 2,000 ppm CO₂ in ~95 min; the humidifier adds ~2.7 RH points/min; the fan
    takes 2,000 ppm down by ~250 ppm in 3 min (and dries the air: it brings outside air in).
    Drying and switching trade off: ``moisture_sink_per_h``/``leak_ach`` set how fast RH falls
    between humidifier runs, ``humidifier_pct_per_min`` how short those runs are.
    """

    volume_m3: float = 30.0
    substrate_kg: float = 300.0
    respiration_factor: float = 1.0  # scales RESPIRATION_MG_PER_KG_H (CO₂ and its heat)
    # Outside (the corridor or the open air the room exchanges with); temperature follows a daily
    # cosine peaking at `outside_peak_hour` UTC.
    outside_temp_c: float = 14.0
    outside_temp_amplitude_c: float = 3.0
    outside_peak_hour: float = 15.0
    outside_rh_pct: float = 75.0
    outside_co2_ppm: float = 420.0
    # Air exchange through leaks with the door shut, in air changes per hour.
    leak_ach: float = 0.25
    # Moisture lost to cold surfaces, packaging and dry materials: relaxation toward `sink_rh_pct`.
    moisture_sink_per_h: float = 0.4
    sink_rh_pct: float = 15.0
    # Evaporation from the substrate into the air, m³/h of air brought to saturation.
    substrate_evaporation_m3_h: float = 15.0
    # Heat: the air node (air, fixtures) is coupled to the mass node (blocks, racks, walls) by
    # internal circulation; the mass loses heat to the outside through the walls.
    air_heat_capacity_kj_k: float = 60.0
    mass_heat_capacity_kj_k: float = 1_500.0
    air_mass_coupling_w_k: float = 1_000.0
    wall_ua_w_k: float = 80.0
    # Actuators at full level.
    humidifier_pct_per_min: float = 3.0  # RH points per minute into dry air, tapering at saturation
    humidifier_tank_l: float | None = None  # None: mains fed; else runs dry when the tank empties
    fan_ach: float = 4.0
    heater_w: float = 1_000.0
    light_lux: float = 1_000.0
    light_w: float = 60.0
    ambient_lux: float = 2.0
    # Doors: while open the room exchanges air fast; random openings follow a Poisson rate.
    door_ach: float = 15.0
    door_open_s: float = 90.0
    door_openings_per_h: float = 0.0


@dataclass(slots=True)
class RoomState:
    temperature_c: float = 18.0
    humidity_pct: float = 88.0
    co2_ppm: float = 800.0
    light_lux: float = 2.0
    substrate_moisture: float = 65.0
    mass_temp_c: float | None = None  # None: same as the air at start


@dataclass(slots=True)
class _Door:
    start_s: float
    duration_s: float


@dataclass(slots=True)
class Room:
    """One grow room. ``step`` advances it; ``sensors`` reads it as a sensor node would."""

    species: str
    stage: str
    params: RoomParams = field(default_factory=RoomParams)
    state: RoomState = field(default_factory=RoomState)
    seed: int = 1
    start: datetime = field(default_factory=lambda: datetime(2024, 1, 1, tzinfo=UTC))
    elapsed_s: float = 0.0
    failures: dict[str, FailureMode] = field(default_factory=dict)
    doors: list[_Door] = field(default_factory=list)
    tank_l: float | None = None
    water_added_g: float = 0.0
    _rng: random.Random = field(init=False, repr=False)
    _ah: float = field(init=False, repr=False)
    _mass_c: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        respiration_mg_per_kg_h(self.species, self.stage)  # fail early on an unknown pair
        self._rng = random.Random(self.seed)  # noqa: S311 - simulation, not crypto
        self._ah = self.state.humidity_pct / 100 * saturation_g_m3(self.state.temperature_c)
        mass = self.state.mass_temp_c
        self._mass_c = self.state.temperature_c if mass is None else mass
        self.state.mass_temp_c = self._mass_c
        if self.tank_l is None:
            self.tank_l = self.params.humidifier_tank_l

    # ---- disturbances ----
    def open_door(self, duration_s: float | None = None, *, at_s: float | None = None) -> None:
        """Open the door now (or at simulated second ``at_s`` since start) for a while."""
        start = self.elapsed_s if at_s is None else at_s
        duration = self.params.door_open_s if duration_s is None else duration_s
        self.doors.append(_Door(start, duration))

    def door_open(self) -> bool:
        t = self.elapsed_s
        return any(d.start_s <= t < d.start_s + d.duration_s for d in self.doors)

    def fail(self, role: str, mode: FailureMode = "no_effect") -> None:
        """Break an actuator: ``no_effect`` (runs dry, dead motor, open relay: on but does
        nothing) or ``stuck_on`` (welded relay: acts as on whatever it is told)."""
        if role not in ROLES:
            raise ValueError(f"unknown actuator role {role!r}")
        self.failures[role] = mode

    def repair(self, role: str) -> None:
        self.failures.pop(role, None)

    def set_stage(self, species: str, stage: str) -> None:
        respiration_mg_per_kg_h(species, stage)
        self.species, self.stage = species, stage

    # ---- time ----
    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed_s)

    def outside_temp_c(self) -> float:
        p = self.params
        hour = (self.start.timestamp() + self.elapsed_s) / 3600.0 % 24.0
        return p.outside_temp_c + p.outside_temp_amplitude_c * math.cos(
            2 * math.pi * (hour - p.outside_peak_hour) / 24.0
        )

    def effective_levels(self, actuators: Mapping[str, float | bool]) -> dict[str, float]:
        """What each actuator really does: commanded level (bool → 0/1), failures applied."""
        levels: dict[str, float] = {}
        for role in ROLES:
            level = max(0.0, float(actuators.get(role, 0.0)))
            mode = self.failures.get(role)
            if mode == "no_effect":
                level = 0.0
            elif mode == "stuck_on":
                level = max(level, 1.0)
            levels[role] = level
        if self.tank_l is not None and self.tank_l <= 0:
            levels["humidifier"] = 0.0
        return levels

    def step(self, dt_s: float, actuators: Mapping[str, float | bool]) -> RoomState:
        """Advance ``dt_s`` simulated seconds with the given actuator levels (role → on/off or a
        level 0..1; two devices of one role may sum past 1). Returns the (live) state."""
        if dt_s <= 0:
            return self.state
        p, s = self.params, self.state
        lv = self.effective_levels(actuators)
        hours = dt_s / 3600.0
        self._random_doors(hours)
        door = 1.0 if self.door_open() else 0.0

        t_out = self.outside_temp_c()
        ach = p.leak_ach + p.fan_ach * lv["exhaust_fan"] + p.door_ach * door

        # CO₂: respiration (ppm/h) against dilution with outside air.
        co2_mg_h = respiration_mg_per_kg_h(self.species, self.stage) * p.substrate_kg
        co2_l_h = co2_mg_h * p.respiration_factor / 1000.0
        co2_l_h /= CO2_G_PER_L
        gen_ppm_h = co2_l_h * 1000.0 / p.volume_m3
        co2_eq = p.outside_co2_ppm + gen_ppm_h / ach
        s.co2_ppm = _relax(s.co2_ppm, co2_eq, ach, hours)

        # Water vapour (g/m³): exchange with outside, sink to surfaces, substrate, humidifier.
        sat = saturation_g_m3(s.temperature_c)
        rh = min(100.0, 100.0 * self._ah / sat)
        ah_out = p.outside_rh_pct / 100.0 * saturation_g_m3(t_out)
        ah_sink = p.sink_rh_pct / 100.0 * sat
        deficit = max(0.0, sat - self._ah)
        evap_g_h = p.substrate_evaporation_m3_h * deficit * s.substrate_moisture / 100.0
        # A fogger's output is fixed until the air is all but saturated (pinning rooms run at
        # 95-100 % in visible fog); only the last point or two stops taking up water.
        taper = min(1.0, max(0.0, (100.0 - rh) / 1.5))
        hum_g_m3_h = lv["humidifier"] * p.humidifier_pct_per_min / 100.0 * sat * 60.0 * taper
        k_w = ach + p.moisture_sink_per_h
        source = hum_g_m3_h + evap_g_h / p.volume_m3
        ah_eq = (ach * ah_out + p.moisture_sink_per_h * ah_sink + source) / k_w
        self._ah = _relax(self._ah, ah_eq, k_w, hours)
        self.water_added_g += hum_g_m3_h * p.volume_m3 * hours
        if self.tank_l is not None:
            self.tank_l = max(0.0, self.tank_l - hum_g_m3_h * p.volume_m3 * hours / 1000.0)
        s.substrate_moisture = max(
            0.0, s.substrate_moisture - evap_g_h * hours / (p.substrate_kg * 1000.0) * 100.0
        )

        # Heat: air node (heater, lights, ventilation) ↔ mass node (respiration, walls).
        vent_w_k = ach / 3600.0 * p.volume_m3 * AIR_J_PER_M3_K
        h = p.air_mass_coupling_w_k
        p_air = lv["heater"] * p.heater_w + lv["light"] * p.light_w
        k_air = (vent_w_k + h) / (p.air_heat_capacity_kj_k * 1000.0) * 3600.0
        t_air_eq = (vent_w_k * t_out + h * self._mass_c + p_air) / (vent_w_k + h)
        t_air = _relax(s.temperature_c, t_air_eq, k_air, hours)
        p_resp = co2_l_h * CO2_G_PER_L * RESPIRATION_J_PER_G_CO2 / 3600.0
        k_mass = (p.wall_ua_w_k + h) / (p.mass_heat_capacity_kj_k * 1000.0) * 3600.0
        t_mass_eq = (p.wall_ua_w_k * t_out + h * t_air + p_resp) / (p.wall_ua_w_k + h)
        self._mass_c = _relax(self._mass_c, t_mass_eq, k_mass, hours)
        s.temperature_c = t_air
        s.mass_temp_c = self._mass_c

        # Vapour beyond saturation at the new temperature condenses.
        self._ah = min(self._ah, saturation_g_m3(t_air))
        s.humidity_pct = 100.0 * self._ah / saturation_g_m3(t_air)
        s.light_lux = p.ambient_lux + p.light_lux * lv["light"]
        self.elapsed_s += dt_s
        return s

    def run(
        self, duration_s: float, actuators: Mapping[str, float | bool], dt_s: float = 5.0
    ) -> RoomState:
        """Step repeatedly with fixed actuator levels (convenience for tests and tuning)."""
        steps = max(1, round(duration_s / dt_s))
        for _ in range(steps):
            self.step(duration_s / steps, actuators)
        return self.state

    def set_humidity(self, humidity_pct: float) -> None:
        """Force the RH (test set-up), keeping the temperature."""
        self._ah = humidity_pct / 100.0 * saturation_g_m3(self.state.temperature_c)
        self.state.humidity_pct = humidity_pct

    def snapshot(self) -> RoomState:
        return replace(self.state)

    def sensors(self, rng: random.Random) -> dict[str, float]:
        """Readings as an ESP32 reports them: SHT3x/SCD4x-like noise, rounded, within range."""
        s = self.state
        return {
            "temperature_c": round(s.temperature_c + rng.gauss(0.0, 0.05), 2),
            "humidity_pct": round(min(100.0, max(0.0, s.humidity_pct + rng.gauss(0.0, 0.3))), 1),
            "co2_ppm": float(round(max(0.0, s.co2_ppm * (1 + rng.gauss(0.0, 0.01))))),
            "light_lux": round(max(0.0, s.light_lux * (1 + rng.gauss(0.0, 0.01))), 1),
            "substrate_moisture": round(
                min(100.0, max(0.0, s.substrate_moisture + rng.gauss(0.0, 0.2))), 1
            ),
        }

    def _random_doors(self, hours: float) -> None:
        rate = self.params.door_openings_per_h
        if rate > 0 and not self.door_open() and self._rng.random() < rate * hours:
            # Someone harvesting or checking: 30 s to a few minutes.
            self.doors.append(_Door(self.elapsed_s, self._rng.uniform(30.0, 180.0)))
        if len(self.doors) > 64:  # forget doors long closed
            self.doors = [d for d in self.doors if d.start_s + d.duration_s > self.elapsed_s]


def _relax(value: float, target: float, rate_per_h: float, hours: float) -> float:
    return target + (value - target) * math.exp(-rate_per_h * hours)


class ActuatorBank:
    """The commanded levels (0..1) of a room's actuator devices, summed per role for
    ``Room.step``: two humidifiers in one room add their output."""

    def __init__(self) -> None:
        self._levels: dict[str, tuple[str, float]] = {}

    def set(self, device_id: str, role: str, level: float | bool) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown actuator role {role!r}")
        self._levels[device_id] = (role, min(1.0, max(0.0, float(level))))

    def level(self, device_id: str) -> float:
        entry = self._levels.get(device_id)
        return 0.0 if entry is None else entry[1]

    def by_role(self) -> dict[str, float]:
        out = dict.fromkeys(ROLES, 0.0)
        for role, level in self._levels.values():
            out[role] += level
        return out
