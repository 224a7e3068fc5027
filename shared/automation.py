"""The pure automation evaluator: (rules, readings, actuator and rule states, now) → decisions.

No I/O and no clock: the caller passes ``now`` and persists the returned states. Fail-safe off:
a missing or stale reading makes its rule vote "off", so bad data never switches anything on.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo

from shared.rules import (
    ActuatorState,
    Blocked,
    Decision,
    Evaluation,
    PidRule,
    Reading,
    Rule,
    RuleState,
    Safety,
    ScheduleRule,
    ThresholdRule,
    TimeWindow,
)

DUTY_WINDOW = timedelta(hours=1)
DEFAULT_STALE_AFTER = timedelta(seconds=180)
_NO_LIMITS = Safety()


@dataclass(frozen=True, slots=True)
class _Vote:
    """What one rule wants for its actuator right now, why, and the rule's next state."""

    on: bool
    reason: str
    state: RuleState


@dataclass(frozen=True, slots=True)
class _Env:
    readings: Mapping[tuple[str, str], Reading]
    now: datetime
    stale_after: timedelta
    tz: tzinfo

    def value(self, room_id: str, metric: str) -> tuple[float | None, str]:
        """The fresh value of a metric, or None and why not (missing, stale, not a number)."""
        reading = self.readings.get((room_id, metric))
        if reading is None:
            return None, f"no {metric} reading"
        age = self.now - reading.at
        if age > self.stale_after:
            return None, f"{metric} stale ({age.total_seconds():.0f} s old)"
        if not math.isfinite(reading.value):
            return None, f"{metric} is not a number"
        return reading.value, ""


def evaluate(
    rules: Sequence[Rule],
    readings: Mapping[tuple[str, str], Reading],
    actuators: Mapping[str, ActuatorState],
    rule_states: Mapping[str, RuleState],
    now: datetime,
    *,
    safety: Mapping[str, Safety] | None = None,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    tz: tzinfo = UTC,
) -> Evaluation:
    """Decide every actuator that has rules or state.

    ``readings`` are keyed by (room_id, metric). Per actuator the rules are OR-ed: on when any
    enabled rule wants it on. An actuator with state but no enabled rule is held off, so pass only
    the states of the actuators these rules govern. A live manual override beats the rules and
    min_on/min_off, but never max_on_s or max_duty: those protect hardware and crop whoever asks.
    ``decisions`` lists only actuators whose state must change; ``desired`` has every actuator.
    """
    now = _aware(now)
    env = _Env(readings, now, stale_after, tz)
    limits = safety or {}
    votes: dict[str, list[tuple[Rule, _Vote]]] = {actuator: [] for actuator in actuators}
    new_states: dict[str, RuleState] = {}
    for rule in rules:
        votes.setdefault(rule.actuator, [])
        if not rule.enabled:
            # A disabled rule forgets its latch and timers, so re-enabling starts from scratch.
            new_states[rule.id] = RuleState()
            continue
        vote = _vote(rule, rule_states.get(rule.id, RuleState()), env)
        new_states[rule.id] = vote.state
        votes[rule.actuator].append((rule, vote))

    decisions: list[Decision] = []
    blocked: list[Blocked] = []
    desired: dict[str, bool] = {}
    for actuator in sorted(votes):
        state = actuators.get(actuator, ActuatorState())
        wanted, reason, rule_ids, bypass = _wanted(votes[actuator], state, now)
        final, note = _apply_safety(wanted, state, limits.get(actuator, _NO_LIMITS), now, bypass)
        desired[actuator] = final
        if note is not None and final != wanted:
            blocked.append(Blocked(actuator=actuator, wanted_on=wanted, reason=note))
        if final != state.on:
            why = reason if final == wanted else f"{note} (safety)"
            decisions.append(Decision(actuator=actuator, on=final, reason=why, rule_ids=rule_ids))
    return Evaluation(
        decisions=tuple(decisions),
        desired=desired,
        rule_states=new_states,
        blocked=tuple(blocked),
    )


def _vote(rule: Rule, state: RuleState, env: _Env) -> _Vote:
    if isinstance(rule, ThresholdRule):
        return _threshold(rule, state, env)
    if isinstance(rule, ScheduleRule):
        return _schedule(rule, env)
    return _pid(rule, state, env)


def _wanted(
    votes: Sequence[tuple[Rule, _Vote]], state: ActuatorState, now: datetime
) -> tuple[bool, str, tuple[str, ...], bool]:
    """(wanted on, reason, rule ids, override active) before safety limits."""
    override = state.override
    if override is not None and override.until > now:
        word = "on" if override.on else "off"
        reason = f"manual override {word} until {override.until:%Y-%m-%d %H:%M} UTC"
        return override.on, f"{reason} by {override.by}", (), True
    on_votes = [(rule, vote) for rule, vote in votes if vote.on]
    chosen = on_votes or list(votes)
    reason = "; ".join(vote.reason for _, vote in chosen) or "no enabled rule"
    return bool(on_votes), reason, tuple(rule.id for rule, _ in chosen), False


# ---- rule types: each turns (rule, its state, the environment) into a vote ----


def _threshold(rule: ThresholdRule, state: RuleState, env: _Env) -> _Vote:
    value, problem = env.value(rule.room_id, rule.metric)
    if value is None:
        return _Vote(False, f"{problem}: fail-safe off (rule {rule.id})", RuleState())
    target, why = _hysteresis(rule, value, state.active)
    if target == state.active:
        kept = state.model_copy(update={"pending_since": None})
        return _Vote(target, f"{why} (rule {rule.id})", kept)
    if rule.for_s > 0:
        # pending_since is absolute, so a timer persisted by the edge resumes after a restart.
        since = min(state.pending_since or env.now, env.now)
        held = (env.now - since).total_seconds()
        if held < rule.for_s:
            pending = state.model_copy(update={"pending_since": since})
            reason = f"{why} for {held:.0f} of {rule.for_s:g} s (rule {rule.id})"
            return _Vote(state.active, reason, pending)
    return _Vote(target, f"{why} (rule {rule.id})", RuleState(active=target))


def _hysteresis(rule: ThresholdRule, value: float, active: bool) -> tuple[bool, str]:
    """The latched target for ``value`` and a human reason like "humidity_pct 82.1 < 85"."""
    shown = f"{rule.metric} {value:.1f}"
    if rule.on_below is not None and rule.off_above is not None:
        low, high = rule.on_below, rule.off_above
        if value < low:
            return True, f"{shown} < {low:g}"
        if value > high:
            return False, f"{shown} > {high:g}"
    else:
        assert rule.off_below is not None and rule.on_above is not None
        low, high = rule.off_below, rule.on_above
        if value > high:
            return True, f"{shown} > {high:g}"
        if value < low:
            return False, f"{shown} < {low:g}"
    return active, f"{shown} within {low:g}–{high:g}, holding {'on' if active else 'off'}"


def _schedule(rule: ScheduleRule, env: _Env) -> _Vote:
    local = env.now.astimezone(env.tz)
    if rule.windows is not None:
        hit = next((w for w in rule.windows if _in_window(local.time(), w)), None)
        if hit is not None:
            reason = f"in window {hit.start}–{hit.end}"
        else:
            reason = "outside " + ", ".join(f"{w.start}–{w.end}" for w in rule.windows)
        on = hit is not None
        return _Vote(on, f"{reason} (rule {rule.id})", RuleState(active=on))
    cycle = rule.cycle
    assert cycle is not None
    # Wall-clock seconds since local midnight: the cycle restarts each day at midnight + offset.
    of_day = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
    on = (of_day - cycle.offset_s) % cycle.every_s < cycle.on_s
    phase = "on" if on else "off"
    reason = f"cycle {cycle.on_s:g} s every {cycle.every_s:g} s, {phase}-phase (rule {rule.id})"
    return _Vote(on, reason, RuleState(active=on))


def _in_window(now: time, window: TimeWindow) -> bool:
    start, end = window.parsed()
    if start < end:
        return start <= now < end
    return now >= start or now < end  # crosses midnight, e.g. 22:00–06:00


def _pid(rule: PidRule, state: RuleState, env: _Env) -> _Vote:
    value, problem = env.value(rule.room_id, rule.metric)
    if value is None:
        # Keep the learned integral; forget timing so the next fresh reading gives no kick.
        forgot = RuleState(integral=state.integral)
        return _Vote(False, f"{problem}: fail-safe off (rule {rule.id})", forgot)
    now = env.now
    error = value - rule.setpoint if rule.reverse else rule.setpoint - value
    dt = 0.0
    if state.last_at is not None:
        # A long gap (edge restart) counts as one period at most, so one step cannot saturate.
        dt = min(max((now - state.last_at).total_seconds(), 0.0), rule.period_s)
    # The integral is kept in output units and clamped to the output range: anti-windup.
    integral = _clamp(state.integral + rule.ki * error * dt, rule.output_min, rule.output_max)
    derivative = 0.0
    if state.last_error is not None and dt > 0:
        derivative = (error - state.last_error) / dt
    computed = _clamp(
        rule.kp * error + integral + rule.kd * derivative, rule.output_min, rule.output_max
    )
    # Time proportioning: the on-fraction is fixed at the start of each cycle so the actuator
    # switches at most twice per period however often readings arrive.
    start, output = _cycle(state.cycle_start, now, rule.period_s), state.output
    if start != state.cycle_start:
        output = computed
    on = (now - start).total_seconds() < output * rule.period_s
    new_state = RuleState(
        active=on,
        integral=integral,
        last_error=error,
        last_at=now,
        output=output,
        cycle_start=start,
    )
    reason = (
        f"PID {rule.metric} {value:.1f} → {rule.setpoint:g}: {output:.0%} of "
        f"{rule.period_s:g} s, {'on' if on else 'off'}-phase (rule {rule.id})"
    )
    return _Vote(on, reason, new_state)


def _cycle(start: datetime | None, now: datetime, period_s: float) -> datetime:
    """The start of the time-proportioning cycle ``now`` falls in: the current one, the next one
    back to back, or a fresh one at ``now`` after a gap or a clock jump."""
    if start is not None:
        elapsed = (now - start).total_seconds()
        if 0 <= elapsed < period_s:
            return start
        if period_s <= elapsed < 2 * period_s:
            return start + timedelta(seconds=period_s)
    return now


# ---- actuator safety ----


def _apply_safety(
    wanted: bool, state: ActuatorState, limits: Safety, now: datetime, bypass_min: bool
) -> tuple[bool, str | None]:
    """The state the actuator may take, and why it differs from ``wanted`` (None when it
    doesn't). ``bypass_min`` (a manual override) skips min_on/min_off, never max_on/max_duty."""
    since = None if state.since is None else (now - state.since).total_seconds()
    budget = None if limits.max_duty is None else limits.max_duty * DUTY_WINDOW.total_seconds()
    used = _on_seconds(state, now)
    if state.on:
        if limits.max_on_s is not None and since is not None and since >= limits.max_on_s:
            return False, f"max runtime {limits.max_on_s:g} s reached"
        if budget is not None and used >= budget:
            return False, f"max duty {limits.max_duty:.0%} of the last hour reached"
        if not wanted and not bypass_min and since is not None and since < limits.min_on_s:
            return True, f"min on {limits.min_on_s:g} s (on for {since:.0f} s)"
        return wanted, None
    if not wanted:
        return False, None
    rest_after_max = _resting_after_max_on(state, limits, now)
    if rest_after_max is not None:
        return False, rest_after_max
    if not bypass_min and since is not None and since < limits.min_off_s:
        return False, f"min off {limits.min_off_s:g} s (off for {since:.0f} s)"
    # Switch on only with room for at least a min_on run, or it would just be forced off again.
    if budget is not None and budget - used < max(limits.min_on_s, 1e-9):
        return False, f"max duty {limits.max_duty:.0%} of the last hour reached"
    return True, None


def _resting_after_max_on(state: ActuatorState, limits: Safety, now: datetime) -> str | None:
    """After a run as long as max_on_s the actuator rests min_off_s, even under override."""
    if limits.max_on_s is None or not state.on_intervals:
        return None
    start, end = state.on_intervals[-1]
    if end is None:
        return None
    run = (end - start).total_seconds()
    rested = (now - end).total_seconds()
    if run >= limits.max_on_s and rested < limits.min_off_s:
        return f"resting {limits.min_off_s:g} s after max runtime (rested {rested:.0f} s)"
    return None


def _on_seconds(state: ActuatorState, now: datetime) -> float:
    """Seconds on within the rolling window ending at ``now``."""
    window_start = now - DUTY_WINDOW
    intervals = list(state.on_intervals)
    if state.on and state.since is not None and all(end is not None for _, end in intervals):
        intervals.append((state.since, None))  # on, but nobody recorded the interval
    total = 0.0
    for start, end in intervals:
        lo = max(start, window_start)
        hi = min(now if end is None else end, now)
        total += max((hi - lo).total_seconds(), 0.0)
    return total


def duty_last_hour(state: ActuatorState, now: datetime) -> float:
    """The fraction (0..1) of the last hour the actuator was on."""
    return _on_seconds(state, _aware(now)) / DUTY_WINDOW.total_seconds()


def apply_switch(state: ActuatorState, on: bool, now: datetime) -> ActuatorState:
    """The actuator state after switching it to ``on`` at ``now`` (or re-asserting it): updates
    ``since``, opens or closes the current on-interval, drops intervals older than an hour."""
    now = _aware(now)
    intervals = list(state.on_intervals)
    since = state.since
    if on != state.on or since is None:
        since = now
    if on and not any(end is None for _, end in intervals):
        intervals.append((since, None))
    if not on:
        intervals = [(start, now if end is None else end) for start, end in intervals]
    cutoff = now - DUTY_WINDOW
    kept = tuple((s, e) for s, e in intervals if e is None or e > cutoff)
    return ActuatorState(on=on, since=since, on_intervals=kept, override=state.override)


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
