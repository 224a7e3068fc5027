"""Room climate from minute means: vapour-pressure deficit, dew point, means and time in band
against a grow profile. Pure functions, shared by the hourly rollup job (``cloud.jobs.derived``)
and the AI context (``cloud.ai.context``).

VPD and dew point are computed per minute (from that minute's temperature and RH) and then
averaged: both are non-linear, so a VPD of the hour's mean temperature and RH would be biased.
Both formulas are shared's (``shared.vocabulary``: Tetens as in FAO-56 for the saturation
pressure, Magnus with Alduchov & Eskridge's coefficients for the dew point).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.profiles import BANDED_METRICS, Profile
from shared.vocabulary import dew_point_c, vpd_kpa

HOUR = timedelta(hours=1)
_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
# room_hourly's in-band column per metric.
IN_BAND_COLUMN = {
    "temperature_c": "in_band_temperature",
    "humidity_pct": "in_band_humidity",
    "co2_ppm": "in_band_co2",
}


def floor_hour(at: datetime) -> datetime:
    return at - (at - _ORIGIN) % HOUR


@dataclass
class Summary:
    """Means and time in band over a span of minutes (one hour for room_hourly, 24 h for AI)."""

    minutes: int = 0
    samples: int = 0
    means: dict[str, float] = field(default_factory=dict)
    vpd_kpa: float | None = None
    dew_point_c: float | None = None
    in_band: dict[str, float] = field(default_factory=dict)  # metric → share of its minutes
    in_band_all: float | None = None

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "samples": self.samples,
            "minutes": self.minutes,
            "vpd_kpa": self.vpd_kpa,
            "dew_point_c": self.dew_point_c,
            "in_band_all": self.in_band_all,
        }
        for metric in BANDED_METRICS:
            row[metric] = self.means.get(metric)
            row[IN_BAND_COLUMN[metric]] = self.in_band.get(metric)
        return row


def by_minute(rows: Iterable[Mapping[str, Any]]) -> tuple[dict[datetime, dict[str, float]], int]:
    """Minute rows (minute, metric, value, n) → {minute: {metric: mean}}, and the reading count."""
    out: dict[datetime, dict[str, float]] = {}
    samples = 0
    for row in rows:
        out.setdefault(row["minute"], {})[row["metric"]] = float(row["value"])
        samples += int(row.get("n", 1))
    return out, samples


def summarize(minutes: Mapping[datetime, Mapping[str, float]], profile: Profile) -> Summary:
    """Means, VPD, dew point and time in band of minute means against ``profile``'s bands."""
    out = Summary(minutes=len(minutes))
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    inside: dict[str, int] = {}
    vpds: list[float] = []
    dews: list[float] = []
    all_in = 0
    for values in minutes.values():
        every = True
        for metric, value in values.items():
            sums[metric] = sums.get(metric, 0.0) + value
            counts[metric] = counts.get(metric, 0) + 1
            band = profile.band(metric)
            ok = band is None or band.contains(value)
            inside[metric] = inside.get(metric, 0) + ok
            every = every and ok
        all_in += every
        temperature, rh = values.get("temperature_c"), values.get("humidity_pct")
        if temperature is not None and rh is not None:
            vpds.append(vpd_kpa(temperature, rh))
            dew = dew_point_c(temperature, rh)
            if dew is not None:
                dews.append(dew)
    out.means = {m: sums[m] / counts[m] for m in sums}
    out.in_band = {m: inside[m] / counts[m] for m in counts}
    out.vpd_kpa = sum(vpds) / len(vpds) if vpds else None
    out.dew_point_c = sum(dews) / len(dews) if dews else None
    out.in_band_all = all_in / len(minutes) if minutes else None
    return out
