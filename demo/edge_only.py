"""`smartfarm demo --edge-only`: sets up a demo site and runs the edge with a simulated farm.

Two rooms (oyster fruiting, lion's mane pinning) on the embedded broker; prints the local page's
URL and login and runs until Ctrl-C. Ports already taken (1883 by a system Mosquitto, say) are
never used: the demo moves to a free port and says so.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from pathlib import Path

from edge.config import EdgeSettings, load_config
from edge.logs import configure_logging
from edge.site_init import init_site
from shared.ports import free_port

log = logging.getLogger(__name__)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(preferred: int, what: str) -> int:
    if port_free(preferred):
        return preferred
    port = free_port()
    print(f"demo: port {preferred} ({what}) is in use; using {port} instead")
    return port


def prepare(directory: Path) -> tuple[EdgeSettings, str]:
    """Create the demo site on first use; on later runs keep it (and its data)."""
    config_path = directory / "edge.toml"
    if not config_path.exists():
        init_site(directory, farm_id="demo-farm", broker_port=1884, api_port=8088)
    settings = load_config(config_path)
    settings.broker.port = pick_port(settings.broker.port, "edge MQTT broker")
    settings.api.port = pick_port(settings.api.port, "edge local page")
    password = settings.api.admin_password.get_secret_value() if settings.api.admin_password else ""
    return settings, password


async def run_demo(settings: EdgeSettings, admin_password: str, *, speed: float,
                   interval_s: float) -> None:
    from edge.app import EdgeApp
    from firmware_sim.farm import run_farm

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    edge = EdgeApp(settings)
    async with asyncio.TaskGroup() as tasks:
        edge_task = tasks.create_task(edge.run(stop), name="demo-edge")
        await asyncio.wait_for(edge.broker_connected.wait(), timeout=60)
        tasks.create_task(
            run_farm(settings, speed=speed, telemetry_interval_s=interval_s, stop=stop),
            name="demo-sim",
        )
        print()
        print("=" * 66)
        print(f"  smartfarm edge demo: open http://{settings.api.host}:{edge.api_port}/")
        print(f"  login: {settings.api.admin_user} / {admin_password}")
        print(f"  MQTT broker (amqtt, embedded): {settings.broker.host}:{edge.broker.port}"
              if edge.broker else "")
        print(f"  simulated farm: {len(settings.rooms)} rooms, {len(settings.devices)} devices, "
              f"physics at {speed:g}x real time")
        print("  Ctrl-C to stop")
        print("=" * 66, flush=True)
        await stop.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await edge_task


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartfarm demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".demo"),
                        help="folder for the demo's site, database and logs (kept between runs)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="how much faster than real time the rooms' air evolves")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between sensor readings (real time)")
    return parser


def demo_main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings, password = prepare(args.dir)
    configure_logging(settings.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(run_demo(settings, password, speed=args.speed, interval_s=args.interval))
    return 0
