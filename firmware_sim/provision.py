"""One simulated node "flashed" with the credentials the cloud showed once for a new device: the
provisioning document (the QR code's content, ``cloud.device_setup``) names the device, its
password, the broker and its topics. ``smartfarm sim node --provisioning FILE`` runs it;
``smartfarm sim node --claim CODE --device-id ID --host H --port P --flash FILE`` runs a node
flashed with the farm's claim code instead (``firmware_sim.claim``): it waits for adoption, takes
its credentials from the edge and then runs like the other.

The node logs in with exactly those credentials and publishes on exactly those topics (they are
checked against the scheme: a document whose topics do not belong to its device is refused), in
a room of its own whose physics start settled in the given species' and stage's bands.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from firmware_sim.claim import ClaimNode, Credentials, Flash
from firmware_sim.clock import Clock, make_clock
from firmware_sim.closed_loop import initial_state, scenario_params
from firmware_sim.farm import SimFarm
from firmware_sim.nodes import ActuatorNode, SensorNode
from firmware_sim.physics import ROLES, ActuatorBank, Room
from shared.errors import SmartfarmError
from shared.profiles import Species, Stage, profile_for
from shared.topics import build_topic, is_valid_id

FORMAT = "device/1"


class ProvisioningError(SmartfarmError):
    """The provisioning document cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class Provisioning:
    farm_id: str
    room_id: str
    device_id: str
    kind: str
    actuator: str | None
    username: str
    password: str
    host: str | None
    port: int
    tls: bool


def _field(doc: Mapping[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = doc.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProvisioningError(f"provisioning: `{name}` must be a {kind.__name__}")
    return value


def parse_provisioning(doc: Any) -> Provisioning:
    """A Provisioning from the parsed document; ProvisioningError naming the bad field."""
    if not isinstance(doc, dict):
        raise ProvisioningError("provisioning: expected a JSON object")
    if doc.get("smartfarm") != FORMAT:
        raise ProvisioningError(f"provisioning: `smartfarm` must be {FORMAT!r} (not a device's)")
    ids = {name: _field(doc, name, str) for name in ("farm", "room", "device", "username")}
    for name, value in ids.items():
        if not is_valid_id(value):
            raise ProvisioningError(f"provisioning: `{name}` {value!r} is not a valid id")
    if ids["username"] != ids["device"]:
        raise ProvisioningError("provisioning: `username` must be the device id")
    kind = _field(doc, "kind", str)
    if kind not in ("sensor", "actuator"):
        raise ProvisioningError("provisioning: `kind` must be sensor or actuator")
    actuator = _field(doc, "actuator", str, optional=True)
    if kind == "actuator" and actuator not in ROLES:
        raise ProvisioningError(f"provisioning: `actuator` must be one of {', '.join(ROLES)}")
    port = _field(doc, "port", int)
    if not 1 <= port <= 65535:
        raise ProvisioningError("provisioning: `port` must be 1-65535")
    farm, room, device = ids["farm"], ids["room"], ids["device"]
    publish = _field(doc, "publish", dict)
    subscribe = _field(doc, "subscribe", dict)
    for kind_name, topics in (("telemetry", publish), ("status", publish), ("ack", publish),
                              ("command", subscribe)):
        expected = build_topic(farm, room, kind_name, device)  # type: ignore[arg-type]
        if topics.get(kind_name) != expected:
            raise ProvisioningError(
                f"provisioning: the {kind_name} topic must be {expected!r}, not"
                f" {topics.get(kind_name)!r}"
            )
    return Provisioning(
        farm_id=farm, room_id=room, device_id=device, kind=kind,
        actuator=actuator if kind == "actuator" else None, username=ids["username"],
        password=_field(doc, "password", str), host=_field(doc, "host", str, optional=True),
        port=port, tls=bool(doc.get("tls", False)),
    )


def load_provisioning(source: str | Path) -> Provisioning:
    """From a file, or the JSON text itself (what the page shows and the QR code holds)."""
    text = str(source)
    if not text.lstrip().startswith("{"):
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise ProvisioningError(f"cannot read {source}: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ProvisioningError(f"provisioning: not JSON ({exc})") from None
    return parse_provisioning(doc)


def claimed_provisioning(farm_id: str, creds: Credentials, host: str, port: int) -> Provisioning:
    """The provisioning a claimed node runs with: what the edge handed it, on the same broker."""
    return Provisioning(farm_id=farm_id, room_id=creds.room_id, device_id=creds.device_id,
                        kind=creds.kind, actuator=creds.actuator, username=creds.device_id,
                        password=creds.password, host=host, port=port, tls=False)


def build_node(
    prov: Provisioning,
    *,
    host: str | None = None,
    port: int | None = None,
    species: Species = "oyster",
    stage: Stage = "fruiting",
    speed: float = 1.0,
    seed: int = 1,
    telemetry_interval_s: float = 10.0,
    clock: Clock | None = None,
) -> SimFarm:
    """A one-node farm: the device in a simulated room of its own, not started yet."""
    if prov.tls:
        raise ProvisioningError("the simulator speaks plain MQTT: give a device network without"
                                " TLS, or --port of the edge's plain listener")
    host = host or prov.host
    if not host:
        raise ProvisioningError("the provisioning has no broker host (the farm's device network"
                                " is not set): pass --host")
    clock = clock if clock is not None else make_clock(speed)
    rng = random.Random(f"{seed}:{prov.room_id}")  # noqa: S311 - simulation, not crypto
    room = Room(species, stage, params=scenario_params(species, stage),
                state=initial_state(profile_for(species, stage)), seed=rng.randrange(2**31),
                start=clock.now())
    bank = ActuatorBank()
    farm = SimFarm(prov.farm_id, clock, rooms={prov.room_id: room}, banks={prov.room_id: bank})
    common: dict[str, Any] = dict(
        farm_id=prov.farm_id, room_id=prov.room_id, device_id=prov.device_id,
        password=prov.password, host=host, port=port if port is not None else prov.port,
        clock=clock, seed=seed,
    )
    if prov.kind == "sensor":
        farm.sensors[prov.device_id] = SensorNode(
            room=room, interval_s=telemetry_interval_s, **common)
    else:
        assert prov.actuator is not None
        farm.actuators[prov.device_id] = ActuatorNode(role=prov.actuator, bank=bank, **common)
    return farm


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartfarm sim node",
        description="Run one simulated ESP32 with the credentials the cloud showed for a new"
                    " device (its provisioning text, as a file or inline JSON).",
    )
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--provisioning", help="the provisioning file (or its JSON text)")
    how.add_argument("--claim", metavar="CODE",
                     help="claim mode: the farm's claim code (with --device-id, --farm-id,"
                          " --host, --port, --flash)")
    parser.add_argument("--device-id", help="claim mode: the node's id, e.g. esp-3c71bf")
    parser.add_argument("--farm-id", help="claim mode: the farm's id")
    parser.add_argument("--flash", type=Path,
                        help="claim mode: the node's flash (its claim key, then its credentials)")
    parser.add_argument("--host", help="broker host (default: the provisioning's)")
    parser.add_argument("--port", type=int, help="broker port (default: the provisioning's)")
    parser.add_argument("--species", default="oyster", choices=get_args(Species))
    parser.add_argument("--stage", default="fruiting", choices=get_args(Stage))
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    parser.add_argument("--interval", type=float, default=10.0,
                        help="telemetry interval, simulated seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-level", default="INFO")
    return parser


def node_main(argv: Sequence[str]) -> int:
    """``smartfarm sim node --provisioning FILE [--host H] [--port P]``; the exit status."""
    args = _parser().parse_args(list(argv))
    if args.speed <= 0 or args.interval <= 0:
        print("smartfarm sim node: --speed and --interval must be > 0", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.claim is not None:
            if not (args.device_id and args.farm_id and args.host and args.port and args.flash):
                print("smartfarm sim node: --claim needs --device-id, --farm-id, --host, --port"
                      " and --flash", file=sys.stderr)
                return 2
            claimer = ClaimNode(farm_id=args.farm_id, device_id=args.device_id,
                                claim_code=args.claim, flash=Flash(args.flash), host=args.host,
                                port=args.port)
            creds = asyncio.run(claimer.credentials())
            prov = claimed_provisioning(args.farm_id, creds, args.host, args.port)
        else:
            prov = load_provisioning(args.provisioning)
        farm = build_node(prov, host=args.host, port=args.port, species=args.species,
                          stage=args.stage, speed=args.speed, seed=args.seed,
                          telemetry_interval_s=args.interval)
    except SmartfarmError as exc:
        print(f"smartfarm sim node: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    node = farm.nodes[0]
    logging.getLogger(__name__).info(
        "device %s (%s) of farm %s, room %s → %s:%s", prov.device_id, prov.kind, prov.farm_id,
        prov.room_id, node.host, node.port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await farm.run(stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0
