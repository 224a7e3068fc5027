"""`smartfarm edge …`: init a site, add devices, register with a cloud, check the config, run."""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import logging.handlers
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.backup import add_backup_arguments, backup_main, run_lock
from edge.config import ConfigError, EdgeSettings, load_config
from edge.credentials import (
    CredentialsError,
    DeviceSecrets,
    generate_password,
    sync_broker_files,
    write_atomic,
)
from edge.registration import check_identity, fetch_identity
from edge.tls import TlsError, default_names, tls_files
from shared.errors import SmartfarmError
from shared.topics import is_valid_id
from shared.vocabulary import ACTUATOR_ROLES, SPECIES, STAGES

log = logging.getLogger(__name__)

DEMO_ROOMS = (
    ("oyster-a", "Oyster room A", "oyster", "fruiting"),
    ("lions-mane-b", "Lion's mane room B", "lions_mane", "pinning"),
)


def _config_text(farm_id: str, broker_port: int, api_port: int,
                 rooms: tuple[tuple[str, str, str, str], ...], *,
                 data_dir: str = "data", broker_files: str = "credentials",
                 tls: bool = False, tls_host: str | None = None,
                 api_host: str = "127.0.0.1") -> str:
    lines = [
        "# smartfarm edge configuration (written by `smartfarm edge init`).",
        "# Every key can be overridden from the environment: SMARTFARM_EDGE_<KEY>, nested keys",
        "# joined by `__`, e.g. SMARTFARM_EDGE_BROKER__PORT=1885 or SMARTFARM_EDGE_API__PORT=9000.",
        "# Relative paths are relative to this file.",
        "",
        f'farm_id = "{farm_id}"',
        f"data_dir = {json.dumps(data_dir)}",
        'device_secrets_file = "credentials/device-secrets.toml"',
        'log_level = "INFO"',
        '# log_file = "logs/edge.log"   # besides stderr; rotated at log_max_bytes × log_backups',
        "# log_max_bytes = 10485760",
        "# log_backups = 10",
        "",
        "[broker]",
        '# "embedded" runs amqtt inside the edge; "external" uses url = "mqtt://host:port".',
        'mode = "embedded"',
        'host = "127.0.0.1"   # 0.0.0.0 to let ESP32s on the LAN connect',
        f"port = {broker_port}",
        "# Written by the edge (hashes of the device passwords): must be writable by it.",
        f"password_file = {json.dumps(broker_files + '/passwd')}",
        "",
        "[broker.tls]",
        "# A TLS listener for devices, same logins and ACL; devices trust credentials/tls/ca.crt",
        "# (`smartfarm edge init --tls` makes the CA and the server certificate).",
        f"enabled = {json.dumps(tls)}",
        *([f"host = {json.dumps(tls_host)}"] if tls_host else
          ["# host = \"0.0.0.0\"   # default: broker.host"]),
        "port = 8883",
        'cert_file = "credentials/tls/server.crt"',
        'key_file = "credentials/tls/server.key"',
        'ca_file = "credentials/tls/ca.crt"',
        "",
        "[api]",
        f"host = {json.dumps(api_host)}",
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
    if not rooms:
        lines += [
            "# No rooms or devices here: a cloud-managed edge gets them from the cloud's config",
            "# (`smartfarm edge register`); otherwise add [[rooms]] tables below and devices with",
            "# `smartfarm edge device add`.",
            "",
        ]
    for room_id, name, species, stage in rooms:
        lines += [
            "[[rooms]]",
            f'id = "{room_id}"',
            f'name = "{name}"',
            f'species = "{species}"     # {" | ".join(SPECIES)}',
            f'stage = "{stage}"     # {" | ".join(STAGES)}',
            "",
        ]
    for room_id, *_ in rooms:
        lines += ["[[devices]]", f'id = "{room_id}-sensor"', f'room = "{room_id}"',
                  'kind = "sensor"', ""]
        for role in ACTUATOR_ROLES:
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
    data_dir: Path | None = None,
    tls_names: Sequence[str] = (),
    tls_host: str | None = None,
    api_host: str = "127.0.0.1",
) -> tuple[Path, str]:
    """Write a working config, device credentials and an admin password; returns
    (config path, admin password). ``data_dir`` (absolute) also holds the files the running edge
    rewrites (broker password hashes, ACL map), so the config folder may be read-only to it.
    ``tls_names`` (host names / addresses devices connect to) turn on the TLS listener and make
    its CA and server certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "edge.toml"
    if config_path.exists() and not force:
        raise ConfigError(f"{config_path} exists (use --force to overwrite)")
    layout = {"data_dir": "data", "broker_files": "credentials"}
    if data_dir is not None:
        layout = {"data_dir": str(data_dir), "broker_files": str(data_dir / "broker")}
    text = _config_text(farm_id, broker_port, api_port, rooms, **layout,
                        tls=bool(tls_names), tls_host=tls_host, api_host=api_host)
    write_atomic(config_path, text, mode=0o644)
    settings = load_config(config_path)
    if tls_names:
        from edge.certs import ensure_certificates  # cryptography: only here
        ensure_certificates(tls_files(settings), list(tls_names), farm_id=farm_id)
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
    if kind == "actuator" and actuator not in ACTUATOR_ROLES:
        raise ConfigError(f"--actuator must be one of {', '.join(ACTUATOR_ROLES)}")
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


def register_cloud(config_path: Path, url: str, token: str, edge_id: str | None = None, *,
                   check: bool = False) -> Path:
    """Point the edge at a cloud: write the `[cloud]` section (url, edge_id, token_file) and the
    token file (mode 0600); returns the token file.

    With ``check`` (what `smartfarm edge register` does unless --offline) the cloud is asked
    first whom the token belongs to: another edge or farm than this config's, an unknown token
    or an unreachable cloud raise RegistrationError and nothing is written; the edge id defaults
    to the token's. The check blocks (urllib): callers on an event loop that also serves the
    cloud (the all-in-one demo) leave it off. Unchecked, the edge id defaults to the farm id."""
    settings = load_config(config_path)
    if edge_id is not None and not is_valid_id(edge_id):
        raise ConfigError(f"edge id {edge_id!r}: use letters, digits, '_' or '-'")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--cloud {url!r}: must start with http:// or https://")
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ConfigError("--token: empty or contains whitespace")
    if check:
        identity = fetch_identity(url, token)
        check_identity(identity, edge_id=edge_id, farm_id=settings.farm_id,
                       farm_source=f"farm_id in {config_path.name}")
        edge_id = identity.edge_id
    edge_id = edge_id or settings.farm_id
    if not is_valid_id(edge_id):
        raise ConfigError(f"edge id {edge_id!r}: use letters, digits, '_' or '-'")
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


LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(
    level: str, *, log_file: Path | None = None, max_bytes: int = 10 * 2**20, backups: int = 10
) -> None:
    """Root logging: stderr, plus ``log_file`` rotated at ``max_bytes`` with ``backups`` kept."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=handlers, force=True)


def configure_edge_logging(settings: EdgeSettings) -> None:
    """``configure_logging`` from the log_* keys of the edge config."""
    configure_logging(
        settings.log_level,
        log_file=None if settings.log_file is None else settings.resolve(settings.log_file),
        max_bytes=settings.log_max_bytes, backups=settings.log_backups,
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


def _init_cloud(args: argparse.Namespace) -> tuple[str, tuple[str, str, str | None] | None]:
    """`init --cloud URL --token T`: (farm id, (url, token, edge id)), the token checked with the
    cloud before anything is written (unless --offline); the farm and edge ids default to the
    token's. Without --cloud: (farm id or demo-farm, None)."""
    if args.cloud is None:
        if args.token or args.edge_id or args.offline:
            raise ConfigError("--token, --edge-id and --offline go with --cloud URL")
        return args.farm_id or "demo-farm", None
    if not args.token:
        raise ConfigError("--cloud needs --token (the edge token the cloud showed once)")
    if not args.cloud.startswith(("http://", "https://")):
        raise ConfigError(f"--cloud {args.cloud!r}: must start with http:// or https://")
    token = (sys.stdin.readline() if args.token == "-" else args.token).strip()  # noqa: S105
    if not token or any(c.isspace() for c in token):
        raise ConfigError("--token: empty or contains whitespace")
    if args.offline:
        if not args.farm_id:
            raise ConfigError("--offline: give --farm-id (the cloud cannot be asked for it)")
        return args.farm_id, (args.cloud, token, args.edge_id)
    identity = fetch_identity(args.cloud, token)
    farm_id = args.farm_id or identity.farm_id
    check_identity(identity, edge_id=args.edge_id, farm_id=farm_id, farm_source="--farm-id")
    return farm_id, (args.cloud, token, identity.edge_id)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartfarm edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write a config and credentials into DIR (by default with"
                                     " two demo rooms and their devices)")
    p.add_argument("dir", type=Path)
    p.add_argument("--farm-id", help="default: demo-farm, or with --cloud the token's farm")
    p.add_argument("--empty", action="store_true",
                   help="no demo rooms or devices (a cloud-managed edge gets them from the cloud)")
    p.add_argument("--cloud", metavar="URL",
                   help="register with this cloud too (implies --empty; see `register`)")
    p.add_argument("--token", help="with --cloud: the edge token ('-': read it from stdin)")
    p.add_argument("--edge-id", help="with --cloud: the edge's id (default: the token's)")
    p.add_argument("--offline", action="store_true",
                   help="with --cloud: do not ask the cloud whom the token belongs to")
    p.add_argument("--broker-port", type=int, default=1884)
    p.add_argument("--api-port", type=int, default=8088)
    p.add_argument("--force", action="store_true")
    p.add_argument("--data-dir", type=Path,
                   help="absolute data folder (database, broker password files)")
    p.add_argument("--tls", action="store_true",
                   help="enable the broker's TLS listener (8883) and make its CA + certificate")
    p.add_argument("--tls-name", action="append", default=[], metavar="NAME",
                   help="host name or IP devices use for the broker (repeatable; default: this"
                        " host's name, name.local, localhost, 127.0.0.1)")
    p.add_argument("--api-host", default="127.0.0.1", metavar="ADDR",
                   help="address of the local page (0.0.0.0: reachable from the LAN)")
    p.add_argument("--tls-host", metavar="ADDR",
                   help="address the TLS listener binds (default: broker.host), e.g. 0.0.0.0")
    p = sub.add_parser("device", help="manage devices")
    dsub = p.add_subparsers(dest="device_command", required=True)
    p = dsub.add_parser("add", help="add a device and print its credentials once")
    p.add_argument("id")
    p.add_argument("--room", required=True)
    p.add_argument("--kind", choices=("sensor", "actuator"), required=True)
    p.add_argument("--actuator", choices=ACTUATOR_ROLES)
    p.add_argument("--config", type=Path, default=Path("edge.toml"))
    p = sub.add_parser("register", help="sync this edge with a cloud (writes [cloud] + token)")
    p.add_argument("--cloud", required=True, metavar="URL", help="e.g. https://farm.example.com")
    p.add_argument("--token", required=True,
                   help="the edge token the cloud showed once ('-': read it from stdin)")
    p.add_argument("--edge-id", help="the edge's id in the cloud (default: the one the cloud"
                                     " names for the token; with --offline, the farm id)")
    p.add_argument("--offline", action="store_true",
                   help="write the config without asking the cloud whom the token belongs to"
                        " (a cloud not reachable yet)")
    p.add_argument("--config", type=Path, default=Path("edge.toml"))
    p = sub.add_parser("tls-cert", help="add names to the broker's TLS certificate (keeps the CA)")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="host name or IP devices use (repeatable; default: this host's names)")
    p.add_argument("--config", type=Path, default=Path("edge.toml"))
    p = sub.add_parser("run", help="run the edge until SIGTERM/SIGINT")
    p.add_argument("--config", type=Path, default=Path("edge.toml"))
    p = sub.add_parser("check-config", help="validate and print the effective config")
    p.add_argument("--config", type=Path, default=Path("edge.toml"))
    add_backup_arguments(sub)
    return parser


def edge_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            if args.data_dir is not None and not args.data_dir.is_absolute():
                raise ConfigError(f"--data-dir {args.data_dir}: must be an absolute path")
            tls_names = (args.tls_name or default_names()) if args.tls or args.tls_name else []
            farm_id, cloud = _init_cloud(args)
            path, admin_pw = init_site(args.dir, farm_id=farm_id,
                                       broker_port=args.broker_port, api_port=args.api_port,
                                       rooms=() if args.empty or cloud else DEMO_ROOMS,
                                       force=args.force, data_dir=args.data_dir,
                                       tls_names=tls_names, tls_host=args.tls_host,
                                       api_host=args.api_host)
            print(f"wrote {path}" + (" (no rooms or devices)" if args.empty or cloud else
                                     " (two demo rooms and their devices; --empty: none)"))
            if cloud is not None:
                url, token, edge_id = cloud
                register_cloud(path, url, token, edge_id)  # checked above unless --offline
                print(f"edge {edge_id or farm_id} of farm {farm_id} will sync with {url}; the"
                      " cloud's config brings its rooms and devices")
            if tls_names:
                tls_cfg = load_config(path).broker.tls
                print(f"broker TLS on port {tls_cfg.port} for {', '.join(tls_names)};"
                      f" devices trust {load_config(path).resolve(tls_cfg.ca_file)}")
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
            token_path = register_cloud(args.config, args.cloud, token, args.edge_id,
                                        check=not args.offline)
            settings = load_config(args.config)
            checked = "unchecked (--offline)" if args.offline else "the cloud confirmed the token"
            print(f"edge {settings.cloud.edge_id} of farm {settings.farm_id} will sync with"
                  f" {settings.cloud.url} ({checked})")
            print(f"token saved in {token_path} (mode 0600); restart the edge to connect")
            return 0
        if args.command in ("backup", "restore"):
            return backup_main(args)
        settings = load_config(args.config)
        if args.command == "tls-cert":
            files = tls_files(settings)
            from edge.certs import ensure_certificates  # cryptography: only here
            if ensure_certificates(files, args.name or default_names(), farm_id=settings.farm_id):
                print(f"wrote {files.cert}; restart the edge to use it (devices keep trusting"
                      f" {files.ca_cert})")
            else:
                print(f"{files.cert} already covers those names; nothing changed")
            return 0
        if args.command == "check-config":
            print(effective_config(settings))
            return 0
        configure_edge_logging(settings)
        tune_malloc()
        with run_lock(settings.data_path):  # one edge per data dir; restore checks it
            asyncio.run(run_edge(settings))
        return 0
    except (ConfigError, CredentialsError, TlsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SmartfarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
