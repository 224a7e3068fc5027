"""Grow profiles (species × stage target bands) and the rules a room gets from its profile.

Every tunable number lives in two tables below, ``PROFILES`` and ``Tuning``, so the
control-quality test can tune them in one place.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.rules import (
    ActuatorRole,
    Cycle,
    Rule,
    Safety,
    ScheduleRule,
    ThresholdRule,
    TimeWindow,
)
from shared.vocabulary import BANDED_METRICS as BANDED_METRICS
from shared.vocabulary import SPECIES as SPECIES
from shared.vocabulary import STAGES as STAGES
from shared.vocabulary import Species as Species
from shared.vocabulary import Stage as Stage


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Band(_Model):
    """An inclusive target range; an open side (None) is not constrained."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("a band needs a min or a max")
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError("band min must be less than max")
        return self

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class Profile(_Model):
    species: Species
    stage: Stage
    temperature_c: Band
    humidity_pct: Band
    co2_ppm: Band
    light_hours: float = Field(ge=0, lt=24, description="hours of light per day")
    fresh_air: bool = Field(description="run the periodic fresh-air cycle on the exhaust fan")

    def band(self, metric: str) -> Band | None:
        band: Band | None = getattr(self, metric) if metric in BANDED_METRICS else None
        return band


def _profile(
    species: Species,
    stage: Stage,
    temp: tuple[float, float],
    rh: tuple[float, float],
    co2_max: float,
    light_hours: float,
) -> Profile:
    return Profile(
        species=species,
        stage=stage,
        temperature_c=Band(min=temp[0], max=temp[1]),
        humidity_pct=Band(min=rh[0], max=rh[1]),
        # CO₂ gets only a ceiling: a fan can lower CO₂ but nothing here raises it, and the high
        # spawn-run figures are what mycelium tolerates in its bags, not a level to maintain.
        co2_ppm=Band(max=co2_max),
        light_hours=light_hours,
        fresh_air=stage != "spawn_run",  # spawn run wants 0–1 air exchanges/h: no venting
    )


# Bands from P. Stamets, "Growing Gourmet and Medicinal Mushrooms", 3rd ed. (Ten Speed Press,
# 2000): each species' "Growth Parameters" table, °F converted to °C, where one figure is given
# (oyster spawn run 24 °C) a ±2 °C band around it. Light hours are not in those tables (they give
# lux): 12 h on / 12 h off is the usual indoor photoperiod, and spawn run is kept dark.
PROFILES: Final[Mapping[tuple[Species, Stage], Profile]] = MappingProxyType({
    (p.species, p.stage): p
    for p in (
        #        species       stage        temp °C       RH %        CO₂ max  light h
        # Pleurotus ostreatus, oyster (Stamets; his table is reproduced at jonasgru.sk/mushy):
        # spawn run 75 °F, 85–95 %, 5–20k ppm; primordia 50–60 °F, 95–100 %, <1000 ppm;
        # fruitbodies 50–70 °F, 85–90 %, <1000 ppm.
        _profile("oyster", "spawn_run", (22.0, 26.0), (85.0, 95.0), 20_000, 0),
        _profile("oyster", "pinning", (10.0, 15.6), (95.0, 100.0), 1_000, 12),
        _profile("oyster", "fruiting", (10.0, 21.0), (85.0, 90.0), 1_000, 12),
        # Lentinula edodes, shiitake (Stamets; reproduced at shroomery.org/8751), cold-weather
        # strains: spawn run 70–80 °F, 95–100 %, >10k ppm (its 50–100 lx browning light is left
        # to the operator); primordia 50–60 °F, 95–100 %, <1000 ppm; fruitbodies 50–70 °F,
        # 60–80 %, <1000 ppm.
        _profile("shiitake", "spawn_run", (21.0, 27.0), (95.0, 100.0), 40_000, 0),
        _profile("shiitake", "pinning", (10.0, 16.0), (95.0, 100.0), 1_000, 12),
        _profile("shiitake", "fruiting", (10.0, 21.0), (60.0, 80.0), 1_000, 12),
        # Hericium erinaceus, lion's mane (Stamets): spawn run 70–75 °F, 95–100 %,
        # 5–40k ppm; primordia 50–60 °F, 95–100 %, 500–700 ppm; fruitbodies 65–75 °F, 85–90 %,
        # 500–1000 ppm.
        _profile("lions_mane", "spawn_run", (21.0, 24.0), (95.0, 100.0), 40_000, 0),
        _profile("lions_mane", "pinning", (10.0, 16.0), (95.0, 100.0), 700, 12),
        _profile("lions_mane", "fruiting", (18.0, 24.0), (85.0, 90.0), 1_000, 12),
    )
})


class Tuning(_Model):
    """Where the generated controllers switch, relative to the profile's bands. The defaults are
    tuned by the closed-loop simulation (``firmware_sim.closed_loop``, ``bench.control_quality``):
    ≥ 95 % of a day in band with door openings, no actuator switching more than 6 times an hour."""

    # Humidifier: on below min + 10 % of the band's width, off above max − 10 % (85.5–89.5 in an
    # 85–90 band). A fogger acts within seconds, so the switching points can sit near the edges:
    # the wider the hysteresis, the longer each cycle and the fewer switches; half a point of
    # margin covers the sensor's noise (±0.3 %) and the 10 s until the next reading.
    rh_on_margin: float = Field(default=0.1, ge=0, lt=0.5)
    rh_off_margin: float = Field(default=0.1, ge=0, lt=0.5)
    # A band that reaches saturation (95–100 %) cannot be overshot (fog stops evaporating), so the
    # humidifier switches on well inside it and runs until the air is all but saturated.
    rh_saturated_on_margin: float = Field(default=0.3, ge=0, lt=0.5)
    rh_saturated_off_below: float = Field(default=0.1, gt=0, le=1, description="RH points")
    # A switching condition must hold this long (two readings), so one noisy reading does not
    # switch the fogger early and shorten its cycle. Near saturation the sensor reads 100 % on
    # noise alone, so there the humidifier goes off only after two minutes of saturated air.
    rh_for_s: float = Field(default=10, ge=0, le=600)
    rh_saturated_for_s: float = Field(default=120, ge=0, le=600)
    # Heater: on below min + 15 % of the width, off above 60 % of it. A wide hysteresis means few
    # heater cycles, and each switch jolts RH by 2–3 points (it warms or cools the air at once).
    heat_on_margin: float = Field(default=0.15, ge=0, lt=0.5)
    heat_off_at: float = Field(default=0.6, gt=0, le=1)
    # Exhaust fan: on above 90 % of the CO₂ ceiling, off below 70 %.
    co2_on_fraction: float = Field(default=0.9, gt=0, le=1)
    co2_off_fraction: float = Field(default=0.7, gt=0, lt=1)
    # Fresh air in pinning and fruiting: 15 min every hour, on top of the CO₂ rule on the same
    # fan. Every fan run dries the room and costs the humidifier a cycle, so a few long runs beat
    # many short ones (5 min every 30 min alone made 4 fan and 4 humidifier switches an hour).
    fresh_air: Cycle = Cycle(on_s=900, every_s=3600)
    lights_on_at: str = Field(default="06:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.co2_off_fraction < self.co2_on_fraction:
            raise ValueError("co2_off_fraction must be below co2_on_fraction")
        if not self.heat_on_margin < self.heat_off_at:
            raise ValueError("heat_on_margin must be below heat_off_at")
        return self


TUNING: Final = Tuning()

DEFAULT_SAFETY: Final[Mapping[ActuatorRole, Safety]] = MappingProxyType({
    # A fogger wears with short cycles. In a 95–100 % room it runs nearly all day, so no duty cap
    # (saturation, not a timer, limits it there); it still rests 2 min after 2 h non-stop, which
    # bounds the flooding a sensor stuck low could cause in an 85–90 % room.
    "humidifier": Safety(min_on_s=180, min_off_s=120, max_on_s=7_200),
    # min_on + min_off ≥ 20 min: at most 6 switches in any hour, whatever CO₂ and the fresh-air
    # cycle ask for together.
    "exhaust_fan": Safety(min_on_s=600, min_off_s=600),
    # Resistive heaters and their relays dislike short cycling (and the same 20 min bound holds);
    # an hour on means something broke.
    "heater": Safety(min_on_s=600, min_off_s=600, max_on_s=3_600),
    "light": Safety(),
})


def profile_for(species: Species, stage: Stage) -> Profile:
    """The profile of a species in a stage; KeyError names an unknown pair."""
    try:
        return PROFILES[(species, stage)]
    except KeyError:
        raise KeyError(f"no profile for species {species!r} in stage {stage!r}") from None


def default_safety(role: ActuatorRole) -> Safety:
    return DEFAULT_SAFETY.get(role, Safety())


def in_band(profile: Profile, metric: str, value: float) -> bool:
    """True when ``value`` is inside the profile's band for ``metric``; a metric without a band
    (light_lux, battery_v, …) is always in band, a non-finite value never is."""
    band = profile.band(metric)
    if band is None:
        return math.isfinite(value)
    return band.contains(value)


def rules_for(
    room_id: str,
    species: Species,
    stage: Stage,
    actuators: Mapping[ActuatorRole, str],
    *,
    overrides: Sequence[Rule] = (),
    tuning: Tuning = TUNING,
) -> list[Rule]:
    """The rules for a room from its profile, for the actuator roles present in ``actuators``
    (role → device id). A rule in ``overrides`` with the id of a profile rule replaces it; the
    others are appended. Ids are ``{room_id}-rh|-co2|-fresh-air|-heat|-light``."""
    profile = profile_for(species, stage)
    label = f"{species} {stage.replace('_', ' ')}"
    rules: list[Rule] = []
    if (humidifier := actuators.get("humidifier")) is not None:
        rules.append(_humidity_rule(room_id, humidifier, profile, tuning, label))
    if (fan := actuators.get("exhaust_fan")) is not None:
        rules.append(_co2_rule(room_id, fan, profile, tuning, label))
        if profile.fresh_air:
            rules.append(
                ScheduleRule(
                    id=f"{room_id}-fresh-air",
                    room_id=room_id,
                    actuator=fan,
                    source="profile",
                    cycle=tuning.fresh_air,
                    description=f"fresh air {tuning.fresh_air.on_s / 60:g} min every "
                    f"{tuning.fresh_air.every_s / 60:g} min ({label})",
                )
            )
    if (heater := actuators.get("heater")) is not None:
        rules.append(_heat_rule(room_id, heater, profile, tuning, label))
    if (light := actuators.get("light")) is not None and profile.light_hours > 0:
        rules.append(_light_rule(room_id, light, profile, tuning, label))
    return _merge(rules, overrides)


def _humidity_rule(
    room_id: str, actuator: str, profile: Profile, tuning: Tuning, label: str
) -> ThresholdRule:
    low, high = _bounds(profile.humidity_pct)
    width = high - low
    if high >= 100:
        on_below = low + tuning.rh_saturated_on_margin * width
        off_above = high - tuning.rh_saturated_off_below
        for_s = tuning.rh_saturated_for_s
    else:
        on_below = low + tuning.rh_on_margin * width
        off_above = high - tuning.rh_off_margin * width
        for_s = tuning.rh_for_s
    return ThresholdRule(
        id=f"{room_id}-rh",
        room_id=room_id,
        actuator=actuator,
        source="profile",
        metric="humidity_pct",
        on_below=round(on_below, 1),
        off_above=round(off_above, 1),
        for_s=for_s,
        description=f"keep RH in {low:g}–{high:g} % ({label})",
    )


def _co2_rule(
    room_id: str, actuator: str, profile: Profile, tuning: Tuning, label: str
) -> ThresholdRule:
    ceiling = profile.co2_ppm.max
    assert ceiling is not None  # every profile has a CO₂ ceiling (see _profile)
    return ThresholdRule(
        id=f"{room_id}-co2",
        room_id=room_id,
        actuator=actuator,
        source="profile",
        metric="co2_ppm",
        on_above=round(ceiling * tuning.co2_on_fraction),
        off_below=round(ceiling * tuning.co2_off_fraction),
        description=f"keep CO₂ under {ceiling:g} ppm ({label})",
    )


def _heat_rule(
    room_id: str, actuator: str, profile: Profile, tuning: Tuning, label: str
) -> ThresholdRule:
    low, high = _bounds(profile.temperature_c)
    width = high - low
    return ThresholdRule(
        id=f"{room_id}-heat",
        room_id=room_id,
        actuator=actuator,
        source="profile",
        metric="temperature_c",
        on_below=round(low + tuning.heat_on_margin * width, 1),
        off_above=round(low + tuning.heat_off_at * width, 1),
        description=f"keep temperature above {low:g} °C ({label})",
    )


def _light_rule(
    room_id: str, actuator: str, profile: Profile, tuning: Tuning, label: str
) -> ScheduleRule:
    start_h, start_m = (int(part) for part in tuning.lights_on_at.split(":"))
    end_minutes = (start_h * 60 + start_m + round(profile.light_hours * 60)) % (24 * 60)
    end = f"{end_minutes // 60:02d}:{end_minutes % 60:02d}"
    return ScheduleRule(
        id=f"{room_id}-light",
        room_id=room_id,
        actuator=actuator,
        source="profile",
        windows=[TimeWindow(start=tuning.lights_on_at, end=end)],
        description=f"light {profile.light_hours:g} h a day ({label})",
    )


def _bounds(band: Band) -> tuple[float, float]:
    assert band.min is not None and band.max is not None  # temperature and RH bands are closed
    return band.min, band.max


def _merge(generated: Sequence[Rule], overrides: Sequence[Rule]) -> list[Rule]:
    by_id = {rule.id: rule for rule in overrides}
    merged = [by_id.pop(rule.id, rule) for rule in generated]
    return merged + list(by_id.values())
