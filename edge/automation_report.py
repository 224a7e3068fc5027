"""The room's effective automation, reported to the cloud through the outbox (kind "automation").

Per room: every rule the edge runs with where it came from, every actuator's state, manual hold
and safety hold (with when it ends), and when each of the room's devices was last heard from (any
message kind). A room's report goes out when it changes (at most every MIN_INTERVAL_S) and every
EVERY_S otherwise, so last-seen times and the remaining time of holds stay fresh in the cloud.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Final

import msgspec

from edge.store import devices as device_rows
from edge.store.outbox import cursor as outbox_cursor
from shared.rules import ActuatorState, Blocked, Safety
from shared.sync import (
    ActuatorReport,
    AutomationData,
    HoldReport,
    RuleReport,
    SafetyHoldReport,
    SafetyReason,
)

if TYPE_CHECKING:
    from edge.automation import Automation

log = logging.getLogger(__name__)

MIN_INTERVAL_S: Final = 2.0
EVERY_S: Final = 60.0

# The evaluator's words for a limit (shared.automation._apply_safety) → the limit.
_REASONS: Final[tuple[tuple[str, SafetyReason], ...]] = (
    ("min on", "min_on"),
    ("min off", "min_off"),
    ("resting", "rest_after_max_on"),
    ("max runtime", "max_on"),
    ("max duty", "max_duty"),
)


def safety_hold(
    blocked: Blocked | None, state: ActuatorState, limits: Safety, now: datetime
) -> SafetyHoldReport | None:
    """The safety limit holding the actuator against what automation (or a hold) wants, and
    until when; None when nothing is held back."""
    if blocked is None:
        return None
    reason = next((r for prefix, r in _REASONS if blocked.reason.startswith(prefix)), None)
    if reason is None:
        return None
    until: float | None = None
    since = state.since.timestamp() if state.since is not None else None
    if reason == "min_on" and since is not None:
        until = since + limits.min_on_s
    elif reason == "min_off" and since is not None:
        until = since + limits.min_off_s
    elif reason == "rest_after_max_on" and state.on_intervals:
        end = state.on_intervals[-1][1]
        until = end.timestamp() + limits.min_off_s if end is not None else None
    elif reason == "max_on" and since is not None and limits.max_on_s is not None:
        # Forced off at the end of its longest run; it rests min_off_s before it may run again
        # (from the run's start, so the report stays the same while nothing changes).
        until = since + limits.max_on_s + limits.min_off_s
    return SafetyHoldReport(on=state.on, reason=reason, until=until, detail=blocked.reason)


def room_report(
    automation: Automation, room_id: str, seen: Mapping[str, float], now: datetime
) -> AutomationData:
    """The effective automation of one room, as the cloud is told it."""
    room = automation.rooms[room_id]
    rules = [
        RuleReport(
            id=rule.id,
            actuator=rule.actuator,
            type=rule.type,
            enabled=rule.enabled,
            source=automation.rule_source(room_id, rule.id),
            rule=rule.model_dump(mode="json"),
            overrides=rule.id in room.profile_ids and rule.source != "profile",
        )
        for rule in room.rules
    ]
    blocked = automation.blocked.get(room_id, {})
    actuators = []
    for device in automation.actuators_in(room_id):
        state = automation.actuators.get(device.id, ActuatorState())
        limits = automation.safety_of(device)
        override = state.override
        hold = None
        if override is not None and override.until > now:
            hold = HoldReport(on=override.on, until=override.until.timestamp(), by=override.by,
                              source=automation.hold_sources.get(device.id))
        actuators.append(
            ActuatorReport(
                device_id=device.id,
                on=state.on,
                since=state.since.timestamp() if state.since is not None else None,
                hold=hold,
                safety_hold=safety_hold(blocked.get(device.id), state, limits, now),
                safety=limits.model_dump(mode="json"),
                reason=automation.why.get(device.id),
            )
        )
    in_room = {d.id for d in automation.devices() if d.room == room_id}
    return AutomationData(
        room_id=room_id,
        stage=room.stage,
        rules=rules,
        actuators=actuators,
        seen={d: round(t, 3) for d, t in sorted(seen.items()) if d in in_room},
        at=round(now.timestamp(), 3),
    )


def _shape(data: AutomationData) -> bytes:
    """What makes a report worth sending at once: all of it but the times that move by
    themselves (last seen, report time)."""
    return msgspec.json.encode(msgspec.structs.replace(data, seen={}, at=0.0))


class AutomationReporter:
    """Sends each room's report when it changed (looked at every MIN_INTERVAL_S), and every
    EVERY_S anyway."""

    def __init__(
        self,
        automation: Automation,
        *,
        clock: Callable[[], datetime],
        min_interval_s: float = MIN_INTERVAL_S,
        every_s: float = EVERY_S,
    ) -> None:
        self._automation = automation
        self._clock = clock
        self.min_interval_s = min_interval_s
        self._every_s = every_s
        self._sent: dict[str, tuple[bytes, float]] = {}  # room → (shape, when sent)
        self.sent = 0

    async def seen(self) -> dict[str, float]:
        """Each device's last message of any kind: the device table's last_seen (status, acks,
        telemetry; written at most once a minute) or the automation's newer reading time."""
        rows = await self._automation.db.read(device_rows.all_status)
        out = {row.device_id: row.last_seen for row in rows}
        for device_id, at in self._automation.last_seen().items():
            out[device_id] = max(out.get(device_id, 0.0), at.timestamp())
        return out

    async def report(self, *, force: bool = False) -> int:
        """Queue the reports that are due; how many were queued."""
        automation = self._automation
        now = self._clock()
        at = now.timestamp()
        due: list[AutomationData] = []
        for room_id in list(automation.rooms):
            data = room_report(automation, room_id, {}, now)
            shape = _shape(data)
            last = self._sent.get(room_id)
            if not force and last is not None and last[0] == shape and at - last[1] < self._every_s:
                continue
            self._sent[room_id] = (shape, at)
            due.append(data)
        if not due:
            return 0
        seen = await self.seen()
        for i, data in enumerate(due):
            in_room = {d.id for d in automation.devices() if d.room == data.room_id}
            due[i] = msgspec.structs.replace(
                data, seen={d: round(t, 3) for d, t in sorted(seen.items()) if d in in_room}
            )
        await automation.db.write(_append_all, due, at)
        self.sent += len(due)
        return len(due)

    async def run(self) -> None:
        """Report every MIN_INTERVAL_S what changed (the edge's task group runs this)."""
        while True:
            try:
                await self.report()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reporting the automation state failed")
            await asyncio.sleep(self.min_interval_s)

    def forget(self, room_id: str | None = None) -> None:
        """Send the room's (or every room's) next report whatever it holds."""
        if room_id is None:
            self._sent.clear()
        else:
            self._sent.pop(room_id, None)


def _append_all(conn: sqlite3.Connection, reports: list[AutomationData], at: float) -> None:
    for data in reports:
        outbox_cursor.append(conn, data, at)
