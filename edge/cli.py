"""`smartfarm edge …`: init a site, add devices, register with a cloud, check the config, run."""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import re
import signal
import sys
from pathlib import Path

from edge.config import ConfigError, EdgeSettings, load_config
from edge.credentials import (
    CredentialsError,
    DeviceSecrets,
    generate_password,
    sync_broker_files,
    write_atomic,
)
from shared.errors import SmartfarmError
from shared.topics import is_valid_id

log = logging.getLogger(__name__)

ROLES = ("humidifier", "exhaust_fan", "heater", "light")
DEMO_ROOMS = (
    ("oyster-a", "Oyster room A", "oyster", "fruiting"),
    ("lions-mane-b", "Lion's mane room B", "lions_mane", "pinning"),
)


def _config_text(farm_id: str, broker_port: int, api_port: int,
                 rooms: tuple[tuple[str, str, str, str], ...]) -> str:
    lines = [
        "# smartfarm edge configuration (written by `smartfarm edge init`).",
        "# Every key can be overridden from the environment: SMARTFARM_EDGE_<KEY>, nested keys",
        "# joined by `__`, e.g. SMARTFARM_EDGE_BROKER__PORT=1885 or SMARTFARM_EDGE_API__PORT=9000.",
        "# Relative paths are relative to this file.",
        "",
        f'farm_id = "{farm_id}"',
        'data_dir = "data"',
        'device_secrets_file = "credentials/device-secrets.toml"',
        'log_level = "INFO"',
        "",
        "[broker]",
        '# "embedded" runs amqtt inside the edge; "external" uses url = "mqtt://host:port".',
        'mode = "embedded"',
        'host = "127.0.0.1"   # 0.0.0.0 to let ESP32s on the LAN connect',
        f"port = {broker_port}",
        'password_file = "credentials/passwd"',
        "",
        "[api]",
        'host = "127.0.0.1"',
        f"port = {api_port}",
        'admin_user = "admin"',
        "# The password is read from this file (mode 0600) unless",
        "# SMARTFARM_EDGE_API__ADMIN_PASSWORD is set.",
        'admin_password_file = "credentials/admin-password"',
        "",
        "[automation]",
        "tick_s = 5                # schedules, staleness and safety limits are checked this often",
        "stale_after_s = 180       # a reading older than this never switches anything on",
        "command_timeout_s = 10    # wait this long for an ack before retrying",
        "command_retries = 3",
        "override_minutes = 30     # how long a manual command beats automation",
        'timezone = "UTC"          # local time of the farm, for light schedules',
        "",
        "[alerts]",
        "out_of_band_minutes = 15",
        "silent_minutes = 5",
        "",
        "[store]",
        "commit_interval_ms = 1000  # group commit: fewer, larger writes spare the SD card",
        "commit_max_items = 2000",
        "",
    ]
    for room_id, name, species, stage in rooms:
        lines += [
            "[[rooms]]",
            f'id = "{room_id}"',
            f'name = "{name}"',
            f'species = "{species}"     # oyster | shiitake | lions_mane',
            f'stage = "{stage}"     # spawn_run | pinning | fruiting',
            "",
        ]
    for room_id, *_ in rooms:
        lines += ["[[devices]]", f'id = "{room_id}-sensor"', f'room = "{room_id}"',
                  'kind = "sensor"', ""]
        for role in ROLES:
            short = {"exhaust_fan": "fan"}.get(role, role)
            lines += ["[[devices]]", f'id = "{room_id}-{short}"', f'room = "{room_id}"',
                      'kind = "actuator"', f'actuator = "{role}"', ""]
    return "\n".join(lines)


def init_site(
    directory: Path,
    *,
    farm_id: str = "demo-farm",
    broker_port: int = 1884,
    api_port: int = 8088,
    rooms: tuple[tuple[str, str, str, str], ...] = DEMO_ROOMS,
    force: bool = False,
) -> tuple[Path, str]:
    """Write a working config, device credentials and an admin password; returns
    (config path, admin password)."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "edge.toml"
    if config_path.exists() and not force:
        raise ConfigError(f"{config_path} exists (use --force to overwrite)")
    write_atomic(config_path, _config_text(farm_id, broker_port, api_port, rooms), mode=0o644)
    settings = load_config(config_path)
    secrets_path = settings.device_secrets_path
    if force and secrets_path.exists():
        secrets_path.unlink()
    secrets = DeviceSecrets.load_or_create(
        secrets_path, edge_username=settings.broker.edge_username
    )
    for device in settings.devices:
        if device.id not in secrets.devices:
            secrets.add_device(device.id)
    sync_broker_files(settings, secrets)
    admin_password = generate_password()
    assert settings.api.admin_password_file is not None
    write_atomic(settings.resolve(settings.api.admin_password_file), admin_password + "\n")
    return config_path, admin_password


def add_device(config_path: Path, device_id: str, room: str, kind: str,
               actuator: str | None) -> str:
    """Append a device to the config, create its credentials; return its password (once)."""
    settings = load_config(config_path)
    if not is_valid_id(device_id):
        raise ConfigError(f"device id {device_id!r}: use letters, digits, '_' or '-'")
    if settings.device(device_id) is not None:
        raise ConfigError(f"device {device_id!r} already exists")
    if settings.room(room) is None:
        raise ConfigError(f"room {room!r} is not in {config_path}")
    if kind == "actuator" and actuator not in ROLES:
        raise ConfigError(f"--actuator must be one of {', '.join(ROLES)}")
    block = ["", "[[devices]]", f'id = "{device_id}"', f'room = "{room}"', f'kind = "{kind}"']
    if kind == "actuator":
        block.append(f'actuator = "{actuator}"')
    # Validate the new config before touching anything on disk.
    text = config_path.read_text().rstrip("\n") + "\n" + "\n".join(block) + "\n"
    candidate = config_path.with_suffix(".toml.new")
    candidate.write_text(text)
    try:
        load_config(candidate)
    finally:
        candidate.unlink(missing_ok=True)
    secrets = DeviceSecrets.load_or_create(
        settings.device_secrets_path, edge_username=settings.broker.edge_username
    )
    password = secrets.add_device(device_id, rotate=True)
    write_atomic(config_path, text, mode=0o644)
    sync_broker_files(load_config(config_path), secrets)
    return password


_TABLE_RE = re.compile(r"^\s*\[")


def register_cloud(config_path: Path, url: str, token: str, edge_id: str | None = None) -> Path:
    """Point the edge at a cloud: write the `[cloud]` section (url, edge_id, token_file) and the
    token file (mode 0600); returns the token file. The edge id defaults to the farm id and must
    be the id the edge was registered under in the cloud."""
    settings = load_config(config_path)
    edge_id = edge_id or settings.farm_id
    if not is_valid_id(edge_id):
        raise ConfigError(f"edge id {edge_id!r}: use letters, digits, '_' or '-'")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--cloud {url!r}: must start with http:// or https://")
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ConfigError("--token: empty or contains whitespace")
    token_file = settings.cloud.token_file or Path("credentials/cloud-token")
    section = [
        "[cloud]",
        "# Written by `smartfarm edge register`; the token is read from token_file (mode 0600)",
        "# or from SMARTFARM_EDGE_CLOUD__TOKEN.",
        f"url = {json.dumps(url.rstrip('/'))}",
        f"edge_id = {json.dumps(edge_id)}",
        f"token_file = {json.dumps(str(token_file))}",
    ]
    # Keep every other line of the file (and its comments); replace an existing [cloud] table.
    kept: list[str] = []
    skipping = False
    for line in config_path.read_text().splitlines():
        if _TABLE_RE.match(line):
            skipping = line.strip() == "[cloud]"
        if not skipping:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    text = "\n".join([*kept, "", *section]) + "\n"
    candidate = config_path.with_suffix(".toml.new")
    candidate.write_text(text)
    try:
        load_config(candidate)
    finally:
        candidate.unlink(missing_ok=True)
    token_path = settings.resolve(token_file)
    write_atomic(token_path, token + "\n")
    write_atomic(config_path, text, mode=0o644)
    return token_path


def effective_config(settings: EdgeSettings) -> str:
    """The effective configuration as JSON, secrets masked."""
    doc = json.loads(settings.model_dump_json())
    doc["config_path"] = str(settings.config_path)
    for section, key in (("api", "admin_password"), ("broker", "edge_password"),
                         ("cloud", "token")):
        if doc.get(section, {}).get(key):
            doc[section][key] = "********"
    doc["resolved"] = {
        "data_dir": str(settings.data_path),
        "database": str(settings.db_path),
        "password_file": str(settings.password_file_path),
        "device_secrets_file": str(settings.device_secrets_path),
    }
    return json.dumps(doc, indent=2)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def tune_malloc() -> None:
    """Return big freed blocks to the OS. Each broker login verifies an argon2 hash with a
    19 MiB buffer on a worker thread; glibc would keep those in per-thread arenas for good
    (measured: ~30 MB of a Pi edge's RSS). Allocations over 128 KiB are mmapped and unmapped on
    free instead, and at most two arenas exist. No-op where glibc isn't the allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold, m_arena_max = -3, -8  # from glibc's <malloc.h>
    mallopt(m_mmap_threshold, 128 * 1024)
    mallopt(m_arena_max, 2)


async def run_edge(settings: EdgeSettings) -> None:
    from edge.app import EdgeApp

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await EdgeApp(settings).run(stop)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartfarm edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write an example config and credentials into DIR")
    p.add_argument("dir", type=Path)
    p.add_argument("--farm-id", default="demo-farm")
    p.add_argument("--broker-port", type=int, default=1884)
    p.add_argument("--api-port", type=int, default=8088)
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("device", help="manage devices")
    dsub = p.add_subparsers(dest="device_command", required=True)
    p = dsub.add_parser("add", help="add a device and print its credentials once")
    p.add_argument("id")
    p.add_argument("--room", required=True)
    p.add_argument("--kind", choices=("sensor", "actuator"), required=True)
    p.add_argument("--actuator", choices=ROLES)
    p.add_argument("--config", type=Path, default=Path("edge.toml"))
    p = sub.add_parser("register", help="sync this edge with a cloud (writes [cloud] + token)")
    p.add_argument("--cloud", required=True, metavar="URL", help="e.g. https://farm.example.com")
    p.add_argument("--token", required=True,
                   help="the edge token the cloud showed once ('-': read it from stdin)")
    p.add_argument("--edge-id", help="the edge's id in the cloud (default: the farm id)")
    p.add_argument("--config", type=Path, default=Path("edge.toml"))
    p = sub.add_parser("run", help="run the edge until SIGTERM/SIGINT")
    p.add_argument("--config", type=Path, default=Path("edge.toml"))
    p = sub.add_parser("check-config", help="validate and print the effective config")
    p.add_argument("--config", type=Path, default=Path("edge.toml"))
    return parser


def edge_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            path, admin_pw = init_site(args.dir, farm_id=args.farm_id,
                                       broker_port=args.broker_port, api_port=args.api_port,
                                       force=args.force)
            print(f"wrote {path}")
            print(f"device credentials: {load_config(path).device_secrets_path} (mode 0600)")
            print(f"local page login: admin / {admin_pw}")
            print(f"run it: smartfarm edge run --config {path}")
            return 0
        if args.command == "device":
            password = add_device(args.config, args.id, args.room, args.kind, args.actuator)
            settings = load_config(args.config)
            print(f"device {args.id} added to room {args.room}")
            print(f"  mqtt username: {args.id}")
            print(f"  mqtt password: {password}   (shown once; flash it onto the device)")
            print(f"  topics: farm/{settings.farm_id}/room/{args.room}/"
                  f"{{telemetry,status,ack}}/{args.id}")
            return 0
        if args.command == "register":
            token = sys.stdin.readline() if args.token == "-" else args.token  # noqa: S105
            token_path = register_cloud(args.config, args.cloud, token, args.edge_id)
            settings = load_config(args.config)
            print(f"edge {settings.cloud.edge_id} of farm {settings.farm_id} will sync with"
                  f" {settings.cloud.url}")
            print(f"token saved in {token_path} (mode 0600); restart the edge to connect")
            return 0
        settings = load_config(args.config)
        if args.command == "check-config":
            print(effective_config(settings))
            return 0
        configure_logging(settings.log_level)
        tune_malloc()
        asyncio.run(run_edge(settings))
        return 0
    except (ConfigError, CredentialsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SmartfarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
