"""The farm's vocabulary, spelled once: species, grow stages, actuator roles, metrics (name,
label, unit, physical range, display decimals, banded or not) and the metrics derived from them.

Everything else (edge, cloud, database checks, simulator, Home Assistant, both web pages through
``GET /api/vocabulary``) imports these; adding an actuator role or a metric starts here.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

Species = Literal["oyster", "shiitake", "lions_mane"]
Stage = Literal["spawn_run", "pinning", "fruiting"]
ActuatorRole = Literal["humidifier", "exhaust_fan", "heater", "light"]

SPECIES: Final[tuple[Species, ...]] = get_args(Species)
STAGES: Final[tuple[Stage, ...]] = get_args(Stage)
ACTUATOR_ROLES: Final[tuple[ActuatorRole, ...]] = get_args(ActuatorRole)
# The stages a room bears a crop in (yield predictions, harvest expectations).
CROPPING_STAGES: Final[tuple[Stage, ...]] = ("pinning", "fruiting")

SPECIES_LABELS: Final[Mapping[Species, str]] = MappingProxyType({
    "oyster": "Oyster",
    "shiitake": "Shiitake",
    "lions_mane": "Lion's mane",
})
STAGE_LABELS: Final[Mapping[Stage, str]] = MappingProxyType({
    "spawn_run": "Spawn run",
    "pinning": "Pinning",
    "fruiting": "Fruiting",
})
ACTUATOR_LABELS: Final[Mapping[ActuatorRole, str]] = MappingProxyType({
    "humidifier": "Humidifier",
    "exhaust_fan": "Exhaust fan",
    "heater": "Heater",
    "light": "Light",
})


@dataclass(frozen=True, slots=True)
class Metric:
    """A reported quantity. ``low``/``high`` is the physically possible range (inclusive): the
    edge rejects readings outside it. ``banded`` metrics have a target band in every grow profile;
    ``room`` is False for a node's own health (its battery), which is no property of the room."""

    name: str
    label: str
    unit: str
    low: float
    high: float
    decimals: int
    banded: bool = False
    room: bool = True


# Sensor limits: SHT3x/DS18B20 −40…125 °C (we cap at 85 °C, beyond any grow room), SCD30/SCD4x CO₂
# 0…40 000 ppm, BH1750 light 0…65 535 lx (sunlight tops out near 120 000 lx), Li-ion cell ≤ 4.35 V.
METRICS: Final[Mapping[str, Metric]] = MappingProxyType({
    m.name: m
    for m in (
        Metric("temperature_c", "Temperature", "°C", -40.0, 85.0, 1, banded=True),
        Metric("humidity_pct", "Humidity", "%", 0.0, 100.0, 1, banded=True),
        Metric("co2_ppm", "CO₂", "ppm", 0.0, 40_000.0, 0, banded=True),
        Metric("light_lux", "Light", "lx", 0.0, 150_000.0, 0),
        Metric("substrate_moisture", "Substrate moisture", "%", 0.0, 100.0, 1),
        Metric("battery_v", "Battery", "V", 0.0, 6.0, 2, room=False),
    )
})
METRIC_NAMES: Final[tuple[str, ...]] = tuple(METRICS)
BANDED_METRICS: Final[tuple[str, ...]] = tuple(m.name for m in METRICS.values() if m.banded)


def saturation_vapour_pressure_kpa(temperature_c: float) -> float:
    """Tetens' equation as in FAO-56 (Allen et al. 1998, eq. 11)."""
    return 0.6108 * math.exp(17.27 * temperature_c / (temperature_c + 237.3))


def vpd_kpa(temperature_c: float, humidity_pct: float) -> float:
    """Vapour-pressure deficit of air at this temperature and relative humidity."""
    rh = min(max(humidity_pct, 0.0), 100.0)
    return saturation_vapour_pressure_kpa(temperature_c) * (1 - rh / 100)


def dew_point_c(temperature_c: float, humidity_pct: float) -> float | None:
    """Magnus formula with Alduchov & Eskridge's (1996) coefficients; None for RH 0 (no dew
    point exists)."""
    if humidity_pct <= 0:
        return None
    a, b = 17.625, 243.04
    gamma = math.log(min(humidity_pct, 100.0) / 100) + a * temperature_c / (b + temperature_c)
    return b * gamma / (a - gamma)


@dataclass(frozen=True, slots=True)
class DerivedMetric:
    """A quantity computed from a room's temperature and RH (never reported by a device)."""

    name: str
    label: str
    unit: str
    decimals: int
    compute: Callable[[float, float], float | None]


DERIVED_METRICS: Final[Mapping[str, DerivedMetric]] = MappingProxyType({
    d.name: d
    for d in (
        DerivedMetric("vpd_kpa", "VPD", "kPa", 2, vpd_kpa),
        DerivedMetric("dew_point_c", "Dew point", "°C", 1, dew_point_c),
    )
})


def derive(temperature_c: float, humidity_pct: float) -> dict[str, float | None]:
    """Every derived metric of one temperature and RH pair."""
    return {name: d.compute(temperature_c, humidity_pct) for name, d in DERIVED_METRICS.items()}


def vocabulary_document() -> dict[str, Any]:
    """The vocabulary as JSON for the web pages (``GET /api/vocabulary`` on edge and cloud)."""
    return {
        "species": [{"id": s, "label": SPECIES_LABELS[s]} for s in SPECIES],
        "stages": [{"id": s, "label": STAGE_LABELS[s]} for s in STAGES],
        "actuator_roles": [{"id": r, "label": ACTUATOR_LABELS[r]} for r in ACTUATOR_ROLES],
        "metrics": [
            {
                "name": m.name, "label": m.label, "unit": m.unit, "min": m.low, "max": m.high,
                "decimals": m.decimals, "banded": m.banded, "room": m.room,
            }
            for m in METRICS.values()
        ],
        "derived_metrics": [
            {"name": d.name, "label": d.label, "unit": d.unit, "decimals": d.decimals}
            for d in DERIVED_METRICS.values()
        ],
    }
