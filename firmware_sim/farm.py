"""The simulator runner: a whole farm from a site (the edge's config) — one physics model per
room, one simulated ESP32 per device — and the ``smartfarm sim`` command line.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from firmware_sim.clock import Clock, make_clock
from firmware_sim.closed_loop import initial_state, scenario_params
from firmware_sim.faults import FaultPlan
from firmware_sim.nodes import ActuatorNode, Node, SensorNode
from firmware_sim.physics import ActuatorBank, Room, RoomParams, RoomState
from firmware_sim.site import Site, SiteError, read_device_secrets
from shared.errors import SmartfarmError
from shared.profiles import profile_for

log = logging.getLogger(__name__)

PHYSICS_STEP_S = 5.0  # simulated seconds per physics step, whatever the message rate
REPORT_EVERY_S = 600.0  # simulated seconds between room summaries in the log


def broker_address(
    settings: Site, host: str | None = None, port: int | None = None
) -> tuple[str, int]:
    """Where the devices connect: the external broker's URL, or the edge's embedded listener."""
    broker = settings.broker
    if broker.mode == "external" and broker.url:
        url = urlsplit(broker.url if "://" in broker.url else f"mqtt://{broker.url}")
        cfg_host, cfg_port = url.hostname or "127.0.0.1", url.port or 1883
    else:
        cfg_host, cfg_port = broker.host, broker.port
        if cfg_host in ("", "0.0.0.0", "::"):  # noqa: S104 - a listen-anywhere address, not a bind
            cfg_host = "127.0.0.1"
    host, port = host or cfg_host, port if port is not None else cfg_port
    if port == 0:
        raise SiteError("broker.port is 0 (a free port chosen at start): pass the real port")
    return host, port


@dataclass
class SimFarm:
    """A built farm: rooms (physics), the actuator banks that drive them, and the nodes."""

    farm_id: str
    clock: Clock
    rooms: dict[str, Room]
    banks: dict[str, ActuatorBank]
    sensors: dict[str, SensorNode] = field(default_factory=dict)
    actuators: dict[str, ActuatorNode] = field(default_factory=dict)

    @property
    def nodes(self) -> list[Node]:
        return [*self.sensors.values(), *self.actuators.values()]

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run physics and nodes until ``stop`` is set (or forever); then cancel them all."""
        stop = stop if stop is not None else asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._advance(room_id), name=f"physics-{room_id}")
                for room_id in self.rooms
            ]
            tasks += [
                tg.create_task(node.run(), name=f"node-{node.device_id}") for node in self.nodes
            ]
            tasks.append(tg.create_task(self._report(), name="room-report"))
            await stop.wait()
            for task in tasks:
                task.cancel()

    async def _advance(self, room_id: str) -> None:
        # The room follows the clock, not the message rate: each tick steps it by the simulated
        # time that really passed, in slices no longer than PHYSICS_STEP_S.
        room, bank = self.rooms[room_id], self.banks[room_id]
        last = self.clock.elapsed()
        while True:
            await self.clock.sleep(PHYSICS_STEP_S)
            now = self.clock.elapsed()
            dt, last = now - last, now
            levels = bank.by_role()
            while dt > 1e-9:
                h = min(dt, PHYSICS_STEP_S)
                room.step(h, levels)
                dt -= h

    async def _report(self) -> None:
        while True:
            await self.clock.sleep(REPORT_EVERY_S)
            for room_id, room in self.rooms.items():
                s = room.state
                on = [role for role, level in self.banks[room_id].by_role().items() if level > 0]
                log.info(
                    "room %s: %.1f °C, %.1f %% RH, %.0f ppm CO₂, %.0f lx; on: %s",
                    room_id, s.temperature_c, s.humidity_pct, s.co2_ppm, s.light_lux,
                    ", ".join(on) or "nothing",
                )


def build_farm(
    settings: Site,
    *,
    speed: float = 1.0,
    seed: int = 1,
    telemetry_interval_s: float = 10.0,
    host: str | None = None,
    port: int | None = None,
    faults: FaultPlan | None = None,
    clock: Clock | None = None,
    room_params: RoomParams | None = None,
    door_openings_per_h: float = 0.25,
) -> SimFarm:
    """One Room per configured room, one node per configured device, nothing started yet."""
    clock = clock if clock is not None else make_clock(speed)
    host, port = broker_address(settings, host, port)
    secrets = read_device_secrets(settings.device_secrets_path)
    farm = SimFarm(settings.farm_id, clock, rooms={}, banks={})
    for room_cfg in settings.rooms:
        room_rng = random.Random(f"{seed}:{room_cfg.id}")  # noqa: S311 - simulation, not crypto
        if room_params is None:
            # The room each profile is grown in (closed_loop.SCENARIOS: a cool corridor for
            # pinning, a heated building for spawn run…), starting settled in its bands.
            params = replace(scenario_params(room_cfg.species, room_cfg.stage),
                             door_openings_per_h=door_openings_per_h)
            start = initial_state(profile_for(room_cfg.species, room_cfg.stage))
        else:
            params = replace(room_params, door_openings_per_h=door_openings_per_h)
            start = RoomState(
                temperature_c=round(room_rng.uniform(17.0, 19.0), 2),
                humidity_pct=round(room_rng.uniform(86.0, 92.0), 1),
                co2_ppm=round(room_rng.uniform(700.0, 900.0)),
            )
        farm.rooms[room_cfg.id] = Room(
            room_cfg.species, room_cfg.stage, params=params, state=start,
            seed=room_rng.randrange(2**31), start=clock.now(),
        )
        farm.banks[room_cfg.id] = ActuatorBank()
    for dev in settings.devices:
        password = secrets.get(dev.id)
        if password is None:
            log.warning("no password for device %s in %s", dev.id, settings.device_secrets_path)
        common: dict[str, Any] = dict(
            farm_id=settings.farm_id, room_id=dev.room, device_id=dev.id, password=password,
            host=host, port=port, clock=clock, seed=seed, keepalive_s=settings.broker.keepalive_s,
        )
        if dev.kind == "sensor":
            farm.sensors[dev.id] = SensorNode(
                room=farm.rooms[dev.room], interval_s=telemetry_interval_s, faults=faults, **common
            )
        else:
            assert dev.actuator is not None  # the site's config guarantees a role for actuators
            farm.actuators[dev.id] = ActuatorNode(
                role=dev.actuator, bank=farm.banks[dev.room], **common
            )
    return farm


async def run_farm(
    settings: Site,
    *,
    speed: float = 1.0,
    seed: int = 1,
    telemetry_interval_s: float = 10.0,
    host: str | None = None,
    port: int | None = None,
    faults: FaultPlan | None = None,
    stop: asyncio.Event | None = None,
    clock: Clock | None = None,
    room_params: RoomParams | None = None,
    door_openings_per_h: float = 0.25,
) -> None:
    """Simulate the farm described by the edge config until ``stop`` is set."""
    farm = build_farm(
        settings, speed=speed, seed=seed, telemetry_interval_s=telemetry_interval_s, host=host,
        port=port, faults=faults, clock=clock, room_params=room_params,
        door_openings_per_h=door_openings_per_h,
    )
    log.info(
        "simulating farm %s: %d rooms, %d sensors, %d actuators, %gx speed",
        farm.farm_id, len(farm.rooms), len(farm.sensors), len(farm.actuators), farm.clock.speed,
    )
    await farm.run(stop)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartfarm sim",
        description="Simulate the ESP32 nodes and rooms of the farm described by an edge config.",
    )
    parser.add_argument("--config", required=True, type=Path, help="the edge's TOML config")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    parser.add_argument("--seed", type=int, default=1, help="random seed (same seed, same farm)")
    parser.add_argument(
        "--interval", type=float, default=10.0, help="telemetry interval, simulated seconds"
    )
    parser.add_argument("--host", help="broker host (default: from the config)")
    parser.add_argument("--port", type=int, help="broker port (default: from the config)")
    parser.add_argument(
        "--doors", type=float, default=0.25, help="random door openings per hour per room"
    )
    parser.add_argument(
        "--faults", type=float, default=0.0, help="probability of each fault per message (0-1)"
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: config)")
    return parser


def sim_main(argv: Sequence[str], load_site: Callable[[Path], Site]) -> int:
    """``smartfarm sim --config FILE [--speed N] [--seed N] [--interval S]``; returns the exit
    status. ``load_site`` reads the config (the edge's loader: its file, its environment
    overrides, its validation), raising a SmartfarmError with one clear line.

    (``smartfarm sim node --provisioning FILE`` is ``firmware_sim.provision``'s.)"""
    args = _parser().parse_args(list(argv))
    if args.speed <= 0 or args.interval <= 0 or not 0 <= args.faults <= 1:
        print("smartfarm sim: --speed, --interval > 0 and --faults in 0..1", file=sys.stderr)
        return 2
    try:
        settings = load_site(args.config)
    except SmartfarmError as exc:
        print(f"smartfarm sim: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level or settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    faults = FaultPlan.everything(args.faults, args.seed) if args.faults else None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_farm(
            settings, speed=args.speed, seed=args.seed, telemetry_interval_s=args.interval,
            host=args.host, port=args.port, faults=faults, stop=stop,
            door_openings_per_h=args.doors,
        )

    try:
        asyncio.run(main())
    except SmartfarmError as exc:
        print(f"smartfarm sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0

