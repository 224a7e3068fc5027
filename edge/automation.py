"""The edge's automation engine: readings and a timer in, commands out, state persisted.

It keeps the latest reading per (room, metric), runs the pure evaluator from
``shared.automation`` on every reading and every tick, turns decisions into commands, and
persists rule and actuator state so "for" timers and actuator states survive a restart. On start
(and on every broker reconnect) it re-asserts the desired state of every actuator.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from edge.alerts import AlertMonitor, Band
from edge.automation_actions import InvalidRequest as InvalidRequest
from edge.automation_actions import NotFound as NotFound
from edge.automation_actions import OperatorActions
from edge.automation_actions import RoomRuntime as RoomRuntime
from edge.automation_state import StateSaver, restore
from edge.commands import CommandOutcome, CommandTracker
from edge.config import DeviceConfig, EdgeSettings
from edge.store import readings as reading_rows
from edge.store import state as state_rows
from edge.store.db import Database
from shared.automation import apply_switch, evaluate
from shared.models import Status, Telemetry, utcnow
from shared.profiles import BANDED_METRICS, default_safety, profile_for, rules_for
from shared.rules import ActuatorState, Blocked, Reading, RuleState, Safety
from shared.topics import Topic

log = logging.getLogger(__name__)

# A room is evaluated at most this often on readings (a trailing evaluation catches the rest):
# twenty sensors in a room flat out would otherwise evaluate the same state hundreds of times.
EVAL_MIN_INTERVAL_S = 0.02


class Automation(OperatorActions):
    def __init__(
        self,
        settings: EdgeSettings,
        db: Database,
        commands: CommandTracker,
        alerts: AlertMonitor,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._db = db
        self._commands = commands
        self._alerts = alerts
        self._clock = clock
        self._tz = ZoneInfo(settings.automation.timezone)
        self._stale_after = timedelta(seconds=settings.automation.stale_after_s)
        self._override_for = timedelta(minutes=settings.automation.override_minutes)
        self.rooms: dict[str, RoomRuntime] = {}
        # Latest reading per (room, metric), grouped by room: an evaluation looks at one room.
        self._readings: dict[str, dict[tuple[str, str], Reading]] = {}
        # Newer (value, at) not yet made Readings: a burst of readings between two evaluations
        # builds one model per metric, not one per metric per message.
        self._fresh: dict[str, dict[tuple[str, str], tuple[float, datetime]]] = {}
        self._devices_key: tuple[int, int] | None = None
        self._by_id: dict[str, DeviceConfig] = {}
        self._room_actuators: dict[str, list[DeviceConfig]] = {}
        self._seen: dict[str, datetime] = {}
        self.actuators: dict[str, ActuatorState] = {}
        self.reported: dict[str, dict[str, Any]] = {}
        self._rule_states: dict[str, RuleState] = {}
        self._disabled: set[str] = set()
        self._saver = StateSaver()
        self._last_eval: dict[str, float] = {}
        self._trailing: dict[str, asyncio.Task[None]] = {}
        self.evaluations = 0
        # Rooms whose config (and rules) came from the cloud (edge.config_sync sets it).
        self.cloud_rooms: set[str] = set()
        # Per room, what a safety limit held back on the last evaluation; per actuator, why
        # automation last switched it (both for the cloud's "why" view).
        self.blocked: dict[str, dict[str, Blocked]] = {}
        self.why: dict[str, str] = {}
        self.hold_sources: dict[str, str] = {}  # actuator → where its manual hold came from

    @property
    def db(self) -> Database:
        return self._db

    # ---- configuration ----
    def devices(self) -> list[DeviceConfig]:
        return list(self._settings.devices)

    def _index_devices(self) -> None:
        # Rebuilt when the device list is replaced or grows (config reload, cloud config).
        devices = self._settings.devices
        key = (id(devices), len(devices))
        if key == self._devices_key:
            return
        self._devices_key = key
        self._by_id = {d.id: d for d in devices}
        self._room_actuators = {}
        for d in devices:
            if d.kind == "actuator":
                self._room_actuators.setdefault(d.room, []).append(d)

    def device(self, device_id: str) -> DeviceConfig | None:
        self._index_devices()
        return self._by_id.get(device_id)

    def actuators_in(self, room_id: str) -> list[DeviceConfig]:
        self._index_devices()
        return list(self._room_actuators.get(room_id, ()))

    def _room_readings(self, room_id: str) -> dict[tuple[str, str], Reading]:
        readings = self._readings.setdefault(room_id, {})
        fresh = self._fresh.pop(room_id, None)
        if fresh:
            for key, (value, at) in fresh.items():
                readings[key] = Reading(value=value, at=at)
        return readings

    def safety_of(self, device: DeviceConfig) -> Safety:
        assert device.actuator is not None
        return device.safety or default_safety(device.actuator)

    def _build_rules(self, room: RoomRuntime) -> None:
        roles = {d.actuator: d.id for d in self.actuators_in(room.config.id) if d.actuator}
        species, stage = room.config.species, room.stage
        rules = rules_for(
            room.config.id, species, stage, roles, overrides=room.config.rules,  # type: ignore[arg-type]
        )
        room.profile_ids = {
            r.id for r in rules_for(room.config.id, species, stage, roles)  # type: ignore[arg-type]
        }
        room.rules = [
            r.model_copy(update={"enabled": False}) if r.id in self._disabled else r
            for r in rules
        ]

    def rule_source(self, room_id: str, rule_id: str) -> Literal["profile", "cloud", "local"]:
        """Where a room's rule comes from: its profile, unless a configured rule of that id
        (pushed by the cloud, or from the edge's own config file) replaces it."""
        room = self._room(room_id)
        if any(r.id == rule_id for r in room.config.rules):
            return "cloud" if room_id in self.cloud_rooms else "local"
        return "profile"

    def bands(self, room_id: str) -> dict[str, Band]:
        room = self._room(room_id)
        profile = profile_for(room.config.species, room.stage)  # type: ignore[arg-type]
        out = {}
        for metric in BANDED_METRICS:
            band = profile.band(metric)
            if band is not None:
                out[metric] = Band(band.min, band.max)
        return out

    def _room(self, room_id: str) -> RoomRuntime:
        try:
            return self.rooms[room_id]
        except KeyError:
            raise NotFound(f"no room {room_id!r}") from None

    # ---- start-up ----
    async def load(self) -> None:
        """Restore persisted state and the latest readings, then build every room's rules."""
        saved = await self._db.read(restore)
        saved_rooms = saved.rooms
        self._disabled = saved.disabled
        self._rule_states.update(saved.rules)
        self.actuators.update(saved.actuators)
        for room in self._settings.rooms:
            saved = saved_rooms.get(room.id, {})
            runtime = RoomRuntime(
                config=room,
                stage=saved.get("stage", room.stage),
                stage_started=saved.get("stage_started", room.stage_started),
            )
            self._build_rules(runtime)
            running = room.id in self.rooms
            self.rooms[room.id] = runtime
            if not running:
                await self._restore_latest(room.id)
        for device in self._settings.devices:
            if device.kind == "actuator":
                self.actuators.setdefault(device.id, ActuatorState())
        await self._alerts.load()
        log.info(
            "automation loaded: %d rooms, %d rules, %d actuators, %d restored timers",
            len(self.rooms), sum(len(r.rules) for r in self.rooms.values()),
            len(self.actuators),
            sum(1 for s in self._rule_states.values() if s.pending_since is not None),
        )

    async def _restore_latest(self, room_id: str) -> None:
        """A room this edge starts running (at start, or moved here): its newest stored reading
        per metric. A room already running keeps what it holds: every reading reached it in
        memory, some not yet committed (a config reload must not set a room back to the store's
        older values, nor scan the store again while a backlog drains)."""
        latest = await self._db.read(reading_rows.latest_by_room, room_id)
        readings = self._room_readings(room_id)
        for metric, item in latest.items():
            at = datetime.fromtimestamp(item.ts, UTC)
            current = readings.get((room_id, metric))
            if current is None or current.at < at:
                readings[(room_id, metric)] = Reading(value=item.value, at=at)
            if at > self._seen.get(item.device_id, datetime.min.replace(tzinfo=UTC)):
                self._seen[item.device_id] = at

    async def reassert(self) -> None:
        """Boot-safe: send every actuator its desired state, whatever it was last told."""
        for room_id in self.rooms:
            evaluation = self._evaluate(room_id)
            for device in self.actuators_in(room_id):
                on = evaluation.desired.get(device.id, False)
                await self._switch(device, on, "boot", "re-assert desired state", force=True)
        await self._persist()

    # ---- inputs ----
    def on_reading(self, room_id: str, telemetry: Telemetry) -> Awaitable[None] | None:
        """Take one reading in. Returns the room's evaluation, for the caller to await, when one
        is due now (see _evaluate_soon), else None: a plain function, as it runs per reading."""
        if room_id not in self.rooms:
            return None
        now = self._clock()
        # A device clock running ahead must not pin a reading in the future (later readings,
        # stamped on receipt, would look older and be ignored): never later than now.
        at = min(telemetry.timestamp or now, now)
        readings = self._readings.setdefault(room_id, {})
        fresh = self._fresh.setdefault(room_id, {})
        for metric, value in telemetry.data.items():
            key = (room_id, metric)
            pending = fresh.get(key)
            if pending is not None:
                if pending[1] <= at:
                    fresh[key] = (value, at)
                continue
            current = readings.get(key)
            if current is None or current.at <= at:
                fresh[key] = (value, at)
        self._seen[telemetry.device_id] = max(at, self._seen.get(telemetry.device_id, at))
        return self._evaluate_soon(room_id)

    def _evaluate_soon(self, room_id: str) -> Awaitable[None] | None:
        """The room's evaluation to run now, unless it was evaluated less than
        EVAL_MIN_INTERVAL_S ago: then None, and one is scheduled at the end of that interval,
        with every reading that arrived meanwhile. A room's first reading after a quiet spell
        acts at once; a burst costs one evaluation."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = self._last_eval.get(room_id, -1e9) + EVAL_MIN_INTERVAL_S - now
        if wait <= 0:
            self._last_eval[room_id] = now
            return self.evaluate_room(room_id)
        if room_id not in self._trailing:
            self._trailing[room_id] = loop.create_task(
                self._evaluate_later(room_id, wait), name=f"evaluate-{room_id}"
            )
        return None

    async def _evaluate_later(self, room_id: str, wait: float) -> None:
        try:
            await asyncio.sleep(wait)
            self._last_eval[room_id] = asyncio.get_running_loop().time()
            await self.evaluate_room(room_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("evaluating room %s failed", room_id)
        finally:
            self._trailing.pop(room_id, None)

    async def close(self) -> None:
        """Cancel pending trailing evaluations (the edge is stopping)."""
        tasks = list(self._trailing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def on_status(self, topic: Topic, status: Status) -> None:
        if status.state:
            self.reported[topic.device_id] = dict(status.state)

    async def on_outcome(self, outcome: CommandOutcome) -> None:
        device = self.device(outcome.device_id)
        room_id = device.room if device else None
        key = f"noack:{outcome.device_id}"
        if outcome.state == "acked":
            await self._alerts.resolve(key)
            if outcome.ack is not None and outcome.ack.state:
                self.reported[outcome.device_id] = dict(outcome.ack.state)
        elif outcome.state == "timed_out":
            await self._alerts.raise_alert(
                key, kind="actuator_not_acking", room_id=room_id, device_id=outcome.device_id,
                severity="critical",
                message=f"actuator {outcome.device_id} did not ack command "
                        f"{outcome.command_id}: {outcome.error}",
            )
        elif outcome.state == "failed":
            await self._alerts.raise_alert(
                f"failed:{outcome.device_id}", kind="command_failed", room_id=room_id,
                device_id=outcome.device_id,
                message=f"actuator {outcome.device_id} refused command "
                        f"{outcome.command_id}: {outcome.error}",
            )

    async def tick(self) -> None:
        """Timer: schedules, staleness, safety limits, override expiry; then the alert checks."""
        for room_id in self.rooms:
            await self.evaluate_room(room_id)
        await self.check_alerts()

    async def check_alerts(self) -> None:
        now = self._clock()
        for room_id in self.rooms:
            latest = {
                metric: (r.value, r.at) for (_, metric), r in self._room_readings(room_id).items()
                if now - r.at <= self._stale_after
            }
            await self._alerts.check_bands(room_id, latest, self.bands(room_id))
        sensors = {
            d.id: (d.room, self._seen.get(d.id))
            for d in self._settings.devices if d.kind == "sensor"
        }
        await self._alerts.check_silent(sensors)
        for device in self._settings.devices:
            if device.kind != "actuator":
                continue
            state = self.actuators.get(device.id, ActuatorState())
            on_for = now - state.since if state.on and state.since else None
            max_on = self.safety_of(device).max_on_s
            await self._alerts.check_runaway(
                device.id, device.room, on_for,
                timedelta(seconds=max_on) + timedelta(minutes=1) if max_on else None,
            )

    # ---- evaluation ----
    def _evaluate(self, room_id: str) -> Any:
        room = self._room(room_id)
        devices = self.actuators_in(room_id)
        return evaluate(
            room.rules,
            self._room_readings(room_id),
            {d.id: self.actuators.get(d.id, ActuatorState()) for d in devices},
            self._rule_states,
            self._clock(),
            safety={d.id: self.safety_of(d) for d in devices},
            stale_after=self._stale_after,
            tz=self._tz,
        )

    async def evaluate_room(self, room_id: str) -> None:
        evaluation = self._evaluate(room_id)
        self.evaluations += 1
        self._rule_states.update(evaluation.rule_states)
        self.blocked[room_id] = {b.actuator: b for b in evaluation.blocked}
        for decision in evaluation.decisions:
            device = self.device(decision.actuator)
            if device is not None:
                await self._switch(device, decision.on, "automation", decision.reason)
        self._expire_overrides()
        await self._persist(room_id)

    def _expire_overrides(self) -> None:
        now = self._clock()
        for device_id, state in self.actuators.items():
            if state.override is not None and state.override.until <= now:
                log.info("manual override on %s expired: automation resumes", device_id)
                self.actuators[device_id] = state.model_copy(update={"override": None})

    async def _switch(
        self, device: DeviceConfig, on: bool, source: str, reason: str, *, force: bool = False
    ) -> str | None:
        state = self.actuators.get(device.id, ActuatorState())
        if state.on != on:
            self.actuators[device.id] = apply_switch(state, on, self._clock())
            # Why automation switched it; a manual switch is explained by its hold instead.
            if source == "automation":
                self.why[device.id] = reason
            else:
                self.why.pop(device.id, None)
        elif not force:
            return None
        return await self._commands.send(
            device_id=device.id, room_id=device.room, action="on" if on else "off",
            source=source, reason=reason,
        )

    async def _persist(self, room_id: str | None = None) -> None:
        """Queue the states that changed (of one room, or all) for the next group commit."""
        now = self._clock().timestamp()
        items: dict[str, Any] = {}
        if room_id is None:
            rule_ids: Any = list(self._rule_states)
            actuator_ids: Any = list(self.actuators)
        else:
            rule_ids = [r.id for r in self.rooms[room_id].rules]
            actuator_ids = [d.id for d in self.actuators_in(room_id)]
        for key in rule_ids:
            if (state := self._rule_states.get(key)) is not None:
                self._saver.stage(items, f"rule:{key}", state, now)
        for key in actuator_ids:
            if (actuator := self.actuators.get(key)) is not None:
                self._saver.stage(items, f"actuator:{key}", actuator, now)
        if items:
            self._db.write_nowait(state_rows.save_many, items, now)

    # ---- views ----
    def latest(self, room_id: str) -> dict[str, Reading]:
        return {m: r for (_, m), r in self._room_readings(room_id).items()}

    def in_band(self, room_id: str) -> dict[str, bool]:
        bands = self.bands(room_id)
        latest = self.latest(room_id)
        return {m: bands[m].contains(latest[m].value) for m in bands if m in latest}

    def last_seen(self) -> Mapping[str, datetime]:
        return dict(self._seen)

    async def reload_devices(self) -> None:
        """Devices changed in the config: rebuild every room's rules for its actuators."""
        for device in self._settings.devices:
            if device.kind == "actuator":
                self.actuators.setdefault(device.id, ActuatorState())
        for room in self.rooms.values():
            self._build_rules(room)
