"""What an operator can do to the automation (the local page, the cloud, Home Assistant): a
manual command that beats automation for a while, ending it, turning a rule off or on, moving a
room to its next stage. A mixin of ``edge.automation.Automation``: these are its methods, kept
apart from the evaluation loop they steer.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from edge.config import DeviceConfig, RoomConfig
from edge.store import state as state_rows
from shared.automation import apply_switch
from shared.rules import ActuatorState, Override, Rule
from shared.vocabulary import STAGES

if TYPE_CHECKING:
    from edge.commands import CommandTracker
    from edge.store.db import Database

log = logging.getLogger("edge.automation")


class NotFound(LookupError):
    """A room, device or rule the caller named does not exist."""


class InvalidRequest(ValueError):
    """A manual command or change the engine refuses (wrong kind of device, bad value)."""


@dataclass(slots=True)
class RoomRuntime:
    config: RoomConfig
    stage: str
    stage_started: str | None
    rules: list[Rule] = field(default_factory=list)
    profile_ids: set[str] = field(default_factory=set)  # ids of the rules its profile makes


class OperatorActions:
    """The operator's side of the engine; the state it changes is the engine's."""

    rooms: dict[str, RoomRuntime]
    actuators: dict[str, ActuatorState]
    _db: Database
    _commands: CommandTracker
    _clock: Callable[[], datetime]
    _override_for: timedelta
    _disabled: set[str]
    why: dict[str, str]
    hold_sources: dict[str, str]

    # The engine's, used here (edge.automation.Automation defines them).
    def device(self, device_id: str) -> DeviceConfig | None:
        raise NotImplementedError

    def _room(self, room_id: str) -> RoomRuntime:
        raise NotImplementedError

    def _build_rules(self, room: RoomRuntime) -> None:
        raise NotImplementedError

    async def evaluate_room(self, room_id: str) -> None:
        raise NotImplementedError

    async def _persist(self, room_id: str | None = None) -> None:
        raise NotImplementedError

    async def manual_command(
        self,
        device_id: str,
        action: str,
        *,
        value: float | bool | None = None,
        hold_minutes: float | None = None,
        by: str = "operator",
        source: str = "manual",
        cloud_command_id: str | None = None,
    ) -> str:
        """An operator's command wins over automation on that actuator for a set time.

        ``source`` is recorded with the command ("manual" from the local page, "cloud" for a
        command a cloud user made, then linked to its ``cloud_command_id``)."""
        device = self.device(device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r}")
        if device.kind != "actuator":
            raise InvalidRequest(f"{device_id} is a sensor; only actuators take commands")
        if action not in ("on", "off"):
            raise InvalidRequest("action must be 'on' or 'off'")
        on = action == "on"
        hold = timedelta(minutes=hold_minutes) if hold_minutes else self._override_for
        now = self._clock()
        state = self.actuators.get(device_id, ActuatorState())
        if state.on != on:
            state = apply_switch(state, on, now)
            self.why.pop(device_id, None)  # explained by the hold now
        self.actuators[device_id] = state.model_copy(
            update={"override": Override(on=on, until=now + hold, by=by)}
        )
        self.hold_sources[device_id] = source
        cid = await self._commands.send(
            device_id=device_id, room_id=device.room, action=action, value=value,
            source=source, reason=f"manual by {by} for {hold.total_seconds() / 60:g} min",
            cloud_command_id=cloud_command_id,
        )
        await self._persist()
        return cid

    async def clear_override(self, device_id: str) -> None:
        state = self.actuators.get(device_id)
        if state is None:
            raise NotFound(f"no actuator {device_id!r}")
        self.actuators[device_id] = state.model_copy(update={"override": None})
        device = self.device(device_id)
        if device is not None:
            await self.evaluate_room(device.room)

    def rules(self, room_id: str | None = None) -> list[Rule]:
        return [r for rid, room in self.rooms.items() if room_id in (None, rid) for r in room.rules]

    async def set_rule_enabled(self, rule_id: str, enabled: bool) -> Rule:
        room = next((r for r in self.rooms.values() if any(x.id == rule_id for x in r.rules)), None)
        if room is None:
            raise NotFound(f"no rule {rule_id!r}")
        if enabled:
            self._disabled.discard(rule_id)
            await self._db.write(state_rows.delete, f"rule_disabled:{rule_id}")
        else:
            self._disabled.add(rule_id)
            await self._db.write(
                state_rows.save_many, {f"rule_disabled:{rule_id}": True}, self._clock().timestamp()
            )
        self._build_rules(room)
        await self.evaluate_room(room.config.id)
        log.info("rule %s %s", rule_id, "enabled" if enabled else "disabled")
        return next(r for r in room.rules if r.id == rule_id)

    async def set_stage(self, room_id: str, stage: str) -> RoomRuntime:
        room = self._room(room_id)
        if stage not in STAGES:
            raise InvalidRequest(f"stage must be {', '.join(STAGES[:-1])} or {STAGES[-1]}")
        if stage == room.stage:
            return room
        room.stage = stage
        room.stage_started = self._clock().date().isoformat()
        await self._db.write(
            state_rows.save_many,
            {f"room:{room_id}": {"stage": stage, "stage_started": room.stage_started}},
            self._clock().timestamp(),
        )
        self._build_rules(room)
        await self.evaluate_room(room_id)
        log.info("room %s now in stage %s", room_id, stage)
        return room
