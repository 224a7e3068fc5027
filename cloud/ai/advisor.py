"""Built-in heuristic advisor (placeholder provider): compares a room's last 24 h with its
species × stage target band and flags what is out of band or drifting.

Deterministic and offline. The AI issue replaces the band table with ``shared`` grow profiles and
adds duty-cycle and pinning-day heuristics and the Bedrock provider behind the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# (low, high) targets per species and stage: temperature °C, RH %, CO₂ ppm (max only).
# Source: P. Stamets, "Growing Gourmet and Medicinal Mushrooms", 3rd ed. (2000), the growth
# parameter tables for Pleurotus ostreatus, Lentinula edodes and Hericium erinaceus.
BANDS: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    ("oyster", "spawn_run"): {
        "temperature_c": (20, 27),
        "humidity_pct": (85, 95),
        "co2_ppm": (0, 20_000),
    },
    ("oyster", "pinning"): {
        "temperature_c": (10, 16),
        "humidity_pct": (95, 100),
        "co2_ppm": (0, 1_000),
    },
    ("oyster", "fruiting"): {
        "temperature_c": (10, 21),
        "humidity_pct": (85, 90),
        "co2_ppm": (0, 1_000),
    },
    ("shiitake", "spawn_run"): {
        "temperature_c": (21, 27),
        "humidity_pct": (95, 100),
        "co2_ppm": (0, 20_000),
    },
    ("shiitake", "pinning"): {
        "temperature_c": (10, 16),
        "humidity_pct": (95, 100),
        "co2_ppm": (0, 1_000),
    },
    ("shiitake", "fruiting"): {
        "temperature_c": (16, 18),
        "humidity_pct": (85, 90),
        "co2_ppm": (0, 1_000),
    },
    ("lions_mane", "spawn_run"): {
        "temperature_c": (21, 24),
        "humidity_pct": (95, 100),
        "co2_ppm": (0, 20_000),
    },
    ("lions_mane", "pinning"): {
        "temperature_c": (10, 18),
        "humidity_pct": (95, 100),
        "co2_ppm": (0, 1_000),
    },
    ("lions_mane", "fruiting"): {
        "temperature_c": (18, 24),
        "humidity_pct": (85, 95),
        "co2_ppm": (0, 1_000),
    },
}
ACTUATOR_FOR = {
    ("humidity_pct", "low"): ("humidifier", "on"),
    ("humidity_pct", "high"): ("exhaust_fan", "on"),
    ("co2_ppm", "high"): ("exhaust_fan", "on"),
    ("temperature_c", "low"): ("heater", "on"),
    ("temperature_c", "high"): ("exhaust_fan", "on"),
}
# A drift between the two halves of the window larger than this share of the band is a trend.
TREND_SHARE = 0.25


@dataclass(frozen=True)
class Advice:
    severity: str
    title: str
    reason: str
    action: dict[str, Any] | None

    def as_row(self) -> dict[str, Any]:
        return {
            "source": "builtin",
            "severity": self.severity,
            "title": self.title,
            "reason": self.reason,
            "action": self.action,
        }


def advise(species: str, stage: str, stats: list[dict[str, Any]]) -> list[Advice]:
    """Advice for one room from per-metric stats (avg/min/max/count/first_avg/last_avg)."""
    band = BANDS.get((species, stage), {})
    if not stats:
        return [
            Advice(
                "warning",
                "No readings in the last 24 hours",
                "the room reported nothing: check the sensor node, its battery and the edge",
                None,
            )
        ]
    out: list[Advice] = []
    for row in stats:
        metric = row["metric"]
        if metric not in band:
            continue
        low, high = band[metric]
        avg = float(row["avg"])
        side = "low" if avg < low else "high" if avg > high else None
        if side is not None:
            severity = (
                "critical" if (avg < low - (high - low) or avg > high + (high - low)) else "warning"
            )
            actuator, command = ACTUATOR_FOR.get((metric, side), (None, None))
            out.append(
                Advice(
                    severity,
                    f"{metric} {'below' if side == 'low' else 'above'} the {stage} band",
                    f"24 h mean {avg:.1f} (min {row['min']:.1f}, max {row['max']:.1f}) vs target "
                    f"{low:g}–{high:g} for {species} {stage}",
                    {"kind": "command", "actuator_role": actuator, "action": command}
                    if actuator
                    else None,
                )
            )
            continue
        first, last = row.get("first_avg"), row.get("last_avg")
        if first is not None and last is not None and high > low:
            drift = float(last) - float(first)
            if abs(drift) > TREND_SHARE * (high - low):
                out.append(
                    Advice(
                        "info",
                        f"{metric} drifting {'up' if drift > 0 else 'down'}",
                        f"mean moved {drift:+.1f} between the first and last 12 h "
                        f"({float(first):.1f} → {float(last):.1f}); still within {low:g}–{high:g}",
                        None,
                    )
                )
    if not out:
        out.append(Advice("info", "All in band", f"{species} {stage}: every metric in band", None))
    return out
