"""The built-in advisor (default, offline, deterministic): rules of thumb over a room's
``RoomContext``, each recommendation with the figures that triggered it and, where a click can
fix it, a command or a rule.

Targets come from ``shared.profiles`` (Stamets 2000). The combinations it looks for are the
ones a grower checks by hand: RH falling while the humidifier already runs nearly non-stop means
it is not delivering (empty reservoir, dry wick, blocked nozzle) — switching it on again will not
help; CO₂ above the ceiling while the fan cycles means the fresh-air exchange is too small;
temperature drifting down with the heater working hard means the heater (or the insulation) is
failing. Pins are expected within a few days to a week of pinning conditions; PINNING_DAYS holds
the day after which the advisor calls them overdue (our reading of the primordia-formation
durations in Stamets 2000 — defaults to tune per farm, not measured figures).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from cloud.ai.models import (
    Advice,
    CommandAction,
    MetricStats,
    RoomContext,
    RuleAction,
    Severity,
    Suggestion,
)
from shared.profiles import TUNING, profile_for, rules_for
from shared.rules import ActuatorRole
from shared.vocabulary import BANDED_METRICS, METRICS

NAME = "builtin"
# Days of pinning conditions after which missing primordia are worth a warning.
PINNING_DAYS = {"oyster": 5, "shiitake": 7, "lions_mane": 5}
HIGH_DUTY = 0.8  # "running nearly non-stop" over the last 6 h
CYCLING_SWITCHES = 8  # switches in the window that count as cycling
LOW_IN_BAND = 0.7
LOW_BATTERY_V = 3.4
# The advice's prose says "RH" where the pages say "Humidity".
LABELS = {m: METRICS[m].label for m in BANDED_METRICS} | {"humidity_pct": "RH"}
UNITS = {m: f" {METRICS[m].unit}" for m in BANDED_METRICS}


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    digits = METRICS[metric].decimals if metric in UNITS else 1
    return f"{value:.{digits}f}{UNITS.get(metric, '')}"


def _band(stats: MetricStats) -> str:
    band = stats.band
    if band is None:
        return "no band"
    if band.min is None:
        return f"at most {_fmt(stats.metric, band.max)}"
    return f"{_fmt(stats.metric, band.min)}–{_fmt(stats.metric, band.max)}"


def _side(stats: MetricStats) -> str | None:
    band = stats.band
    if band is None:
        return None
    if band.min is not None and stats.mean < band.min:
        return "low"
    if band.max is not None and stats.mean > band.max:
        return "high"
    return None


def _severity(stats: MetricStats) -> Severity:
    """Critical when the mean is off by more than the band's width (CO₂: 50 % over its ceiling)."""
    band = stats.band
    assert band is not None
    if band.min is None:
        assert band.max is not None
        return "critical" if stats.mean > 1.5 * band.max else "warning"
    assert band.max is not None
    width = band.max - band.min
    off = band.min - stats.mean if stats.mean < band.min else stats.mean - band.max
    return "critical" if off > width else "warning"


def _drift_threshold(stats: MetricStats) -> float:
    band = stats.band
    if band is None or band.min is None or band.max is None:
        return float("inf")
    return max(1.0, 0.2 * (band.max - band.min))


def _command(
    ctx: RoomContext, role: str, action: Literal["on", "off", "set"]
) -> CommandAction | None:
    actuator = ctx.actuator(role)
    if actuator is None:
        return None
    return CommandAction(device_id=actuator.device_id, actuator_role=actuator.role, action=action)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _summary(stats: MetricStats, hours: float) -> str:
    return (
        f"{hours:g} h mean {_fmt(stats.metric, stats.mean)} (min {_fmt(stats.metric, stats.min)},"
        f" max {_fmt(stats.metric, stats.max)}), in band {_pct(stats.time_in_band)} of the time;"
        f" target {_band(stats)}"
    )


class BuiltinAdvisor:
    """Deterministic: the same context always gives the same suggestions, in the same order."""

    name = NAME
    model = None

    async def advise(self, ctx: RoomContext) -> Advice:
        return Advice(provider=NAME, suggestions=advise(ctx))


def advise(ctx: RoomContext) -> list[Suggestion]:
    if ctx.readings == 0:
        return [
            Suggestion(
                key="no-readings",
                severity="warning",
                title="No readings from this room",
                reason=f"nothing was reported in the last {ctx.window_hours:g} h: check the "
                "sensor node, its battery and the edge gateway",
            )
        ]
    out: list[Suggestion] = []
    for check in CHECKS:
        out.extend(check(ctx))
    unique: dict[str, Suggestion] = {}
    for suggestion in out:
        unique.setdefault(suggestion.key, suggestion)
    if not unique:
        return [
            Suggestion(
                key="all-in-band",
                severity="info",
                title="All in band",
                reason=f"{ctx.species} {ctx.stage.replace('_', ' ')}: every measured metric "
                f"averaged inside its target over the last {ctx.window_hours:g} h "
                f"(all in band {_pct(ctx.time_in_band_all)} of the time)",
            )
        ]
    return list(unique.values())


def _humidity(ctx: RoomContext) -> list[Suggestion]:
    stats = ctx.metrics.get("humidity_pct")
    if stats is None or stats.band is None:
        return []
    humidifier = ctx.actuator("humidifier")
    side = _side(stats)
    falling = stats.drift is not None and stats.drift <= -_drift_threshold(stats)
    working = humidifier is not None and (humidifier.duty_recent or 0) >= HIGH_DUTY
    if (falling or side == "low") and working:
        assert humidifier is not None
        trend = (
            f"RH fell from {_fmt(stats.metric, stats.first_half_mean)} to "
            f"{_fmt(stats.metric, stats.last_half_mean)} (first vs last half)"
            if falling
            else f"RH stays low at {_fmt(stats.metric, stats.mean)}"
        )
        return [
            Suggestion(
                key="humidifier-not-delivering",
                severity="critical" if side == "low" else "warning",
                title="Humidifier running flat out while RH falls: check its water and wick",
                reason=f"{trend} while {humidifier.device_id} was on "
                f"{_pct(humidifier.duty_recent)} of the last 6 h; target {_band(stats)}. "
                "Refill the reservoir, check the float, wick and nozzle",
            )
        ]
    if side == "low":
        return [
            Suggestion(
                key="humidity-low",
                severity=_severity(stats),
                title="RH below the target band",
                reason=_summary(stats, ctx.window_hours),
                action=_command(ctx, "humidifier", "on"),
            )
        ]
    if side == "high":
        return [
            Suggestion(
                key="humidity-high",
                severity=_severity(stats),
                title="RH above the target band",
                reason=_summary(stats, ctx.window_hours) + "; more air exchange dries the room",
                action=_command(ctx, "exhaust_fan", "on"),
            )
        ]
    return _unsteady(ctx, stats)


def _co2(ctx: RoomContext) -> list[Suggestion]:
    stats = ctx.metrics.get("co2_ppm")
    if stats is None or stats.band is None or stats.band.max is None:
        return []
    ceiling = stats.band.max
    over = stats.mean > ceiling or (stats.time_in_band is not None and stats.time_in_band < 0.9)
    if not over:
        return []
    fan = ctx.actuator("exhaust_fan")
    if fan is not None and fan.switches >= CYCLING_SWITCHES:
        return [
            Suggestion(
                key="co2-raise-fresh-air",
                severity=_severity(stats) if stats.mean > ceiling else "warning",
                title="CO₂ above the ceiling with the fan cycling: raise the fresh-air exchange",
                reason=f"{_summary(stats, ctx.window_hours)}; {fan.device_id} switched "
                f"{fan.switches} times (on {_pct(fan.duty)} of the time): each run is too short "
                "to clear the room",
                action=_fresh_air_rule(ctx, fan.device_id),
            )
        ]
    if stats.mean <= ceiling:
        return []
    if fan is not None and (fan.duty_recent or 0) >= HIGH_DUTY:
        return [
            Suggestion(
                key="co2-fan-not-clearing",
                severity="critical",
                title="CO₂ above the ceiling although the fan runs: check the fan and the intake",
                reason=f"{_summary(stats, ctx.window_hours)}; {fan.device_id} was on "
                f"{_pct(fan.duty_recent)} of the last 6 h. A blocked intake or a failed fan "
                "motor leaves the room unventilated",
            )
        ]
    return [
        Suggestion(
            key="co2-high",
            severity=_severity(stats),
            title="CO₂ above the ceiling",
            reason=_summary(stats, ctx.window_hours),
            action=_command(ctx, "exhaust_fan", "on"),
        )
    ]


def _fresh_air_rule(ctx: RoomContext, fan_id: str) -> RuleAction:
    """The room's fresh-air cycle with runs 50 % longer (at most 60 % of each period), or the
    profile's cycle when the room has none."""
    current = next(
        (
            r
            for r in ctx.rules
            if r.get("type") == "schedule" and r.get("actuator") == fan_id and r.get("cycle")
        ),
        None,
    )
    if current is not None:
        cycle = dict(current["cycle"])
        cycle["on_s"] = round(min(cycle["on_s"] * 1.5, cycle["every_s"] * 0.6))
        rule = {**current, "cycle": cycle, "source": "user"}
        rule["description"] = (
            f"fresh air {cycle['on_s'] / 60:g} min every {cycle['every_s'] / 60:g} min (AI)"
        )
        return RuleAction(rule=rule)
    cycle = {"on_s": TUNING.fresh_air.on_s * 1.5, "every_s": TUNING.fresh_air.every_s}
    return RuleAction(
        rule={
            "type": "schedule",
            "id": f"{ctx.room_id}-fresh-air",
            "room_id": ctx.room_id,
            "actuator": fan_id,
            "source": "user",
            "cycle": cycle,
            "description": f"fresh air {cycle['on_s'] / 60:g} min every "
            f"{cycle['every_s'] / 60:g} min (AI)",
        }
    )


def _temperature(ctx: RoomContext) -> list[Suggestion]:
    stats = ctx.metrics.get("temperature_c")
    if stats is None or stats.band is None:
        return []
    heater = ctx.actuator("heater")
    side = _side(stats)
    falling = stats.drift is not None and stats.drift <= -_drift_threshold(stats)
    if heater is not None and (falling or side == "low") and (heater.duty_recent or 0) >= 0.5:
        return [
            Suggestion(
                key="heater-not-keeping-up",
                severity="critical" if side == "low" else "warning",
                title="Temperature drifting down although the heater works: check the heater",
                reason=f"temperature went from {_fmt(stats.metric, stats.first_half_mean)} to "
                f"{_fmt(stats.metric, stats.last_half_mean)} while {heater.device_id} was on "
                f"{_pct(heater.duty_recent)} of the last 6 h; target {_band(stats)}",
            )
        ]
    if side == "low":
        return [
            Suggestion(
                key="temperature-low",
                severity=_severity(stats),
                title="Temperature below the target band",
                reason=_summary(stats, ctx.window_hours)
                + ("" if heater else "; the room has no heater"),
                action=_command(ctx, "heater", "on"),
            )
        ]
    if side == "high":
        return [
            Suggestion(
                key="temperature-high",
                severity=_severity(stats),
                title="Temperature above the target band",
                reason=_summary(stats, ctx.window_hours),
                action=_command(ctx, "exhaust_fan", "on"),
            )
        ]
    if falling:
        return [
            Suggestion(
                key="temperature-drifting",
                severity="info",
                title="Temperature drifting down: check the heater",
                reason=f"from {_fmt(stats.metric, stats.first_half_mean)} to "
                f"{_fmt(stats.metric, stats.last_half_mean)} (first vs last half), still within "
                f"{_band(stats)}",
            )
        ]
    return _unsteady(ctx, stats)


def _unsteady(ctx: RoomContext, stats: MetricStats) -> list[Suggestion]:
    if stats.time_in_band is None or stats.time_in_band >= LOW_IN_BAND:
        return []
    return [
        Suggestion(
            key=f"{stats.metric.split('_')[0]}-unsteady",
            severity="info",
            title=f"{LABELS.get(stats.metric, stats.metric)} in band only "
            f"{_pct(stats.time_in_band)} of the time",
            reason=f"{_summary(stats, ctx.window_hours)}: the mean is fine but the swings are "
            "wide; check the controller's switching points and the door seal",
        )
    ]


def _pinning(ctx: RoomContext) -> list[Suggestion]:
    expected = PINNING_DAYS.get(ctx.species)
    if ctx.stage != "pinning" or expected is None or ctx.stage_day <= expected + 1:
        return []
    action: RuleAction | None = None
    light = ctx.actuator("light")
    if light is not None and not any(r.get("actuator") == light.device_id for r in ctx.rules):
        profile = profile_for(ctx.species, ctx.stage)  # type: ignore[arg-type]
        actuators: dict[ActuatorRole, str] = {"light": light.device_id}
        generated = rules_for(ctx.room_id, profile.species, profile.stage, actuators)
        action = RuleAction(rule=generated[0].model_dump(mode="json") | {"source": "user"})
    return [
        Suggestion(
            key="pinning-overdue",
            severity="warning",
            title=f"Day {ctx.stage_day:.0f} of pinning: primordia are overdue",
            reason=f"{ctx.species.replace('_', ' ')} usually pins within {expected} days of "
            f"pinning conditions; it is day {ctx.stage_day:.1f}. Check light "
            f"({ctx.light_hours:g} h a day"
            + (", no light rule in this room" if action else "")
            + "), fresh air and RH; or move the room to fruiting if pins are there",
            action=action,
        )
    ]


def _alerts(ctx: RoomContext) -> list[Suggestion]:
    out = []
    for alert in ctx.alerts:
        if alert.state != "active":
            continue
        if alert.kind == "actuator_runaway" and alert.device_id:
            out.append(
                Suggestion(
                    key=f"runaway-{alert.device_id}".lower()[:64],
                    severity="critical",
                    title=f"{alert.device_id} is running away: switch it off and inspect it",
                    reason=alert.message,
                    action=CommandAction(device_id=alert.device_id, action="off"),
                )
            )
        elif alert.kind == "sensor_silent" and alert.device_id:
            out.append(
                Suggestion(
                    key=f"silent-{alert.device_id}".lower()[:64],
                    severity="warning",
                    title=f"Sensor {alert.device_id} is silent",
                    reason=f"{alert.message}: check its power, battery and Wi-Fi",
                )
            )
    return out


def _battery(ctx: RoomContext) -> list[Suggestion]:
    stats = ctx.metrics.get("battery_v")
    if stats is None or stats.min >= LOW_BATTERY_V:
        return []
    return [
        Suggestion(
            key="battery-low",
            severity="warning",
            title="A sensor battery is low",
            reason=f"battery at {stats.min:.2f} V (lowest in {ctx.window_hours:g} h; replace "
            f"below {LOW_BATTERY_V:g} V)",
        )
    ]


CHECKS: tuple[Callable[[RoomContext], list[Suggestion]], ...] = (
    _alerts,
    _humidity,
    _co2,
    _temperature,
    _pinning,
    _battery,
)

__all__ = ["NAME", "BuiltinAdvisor", "advise"]
