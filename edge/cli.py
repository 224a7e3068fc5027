"""`smartfarm edge …`: init a site, add devices, register with a cloud, check the config, run."""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import errno
import ipaddress
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edge.backup import add_backup_arguments, backup_main, run_lock
from edge.config import ConfigError, EdgeSettings, load_config
from edge.credentials import CredentialsError, write_atomic
from edge.esphome_files import NodeOptions, claim_node, device_node, device_yaml
from edge.firmware import FirmwareError, FirmwareStore
from edge.logs import configure_edge_logging
from edge.registration import check_identity, fetch_identity, register_cloud
from edge.site_init import DEMO_ROOMS, add_device, init_site
from edge.tls import TlsError, default_names, tls_files
from shared.about import version_line
from shared.errors import SmartfarmError
from shared.esphome import OPTIONAL_SENSORS, TH_SENSORS, Node, node_yaml, secrets_template
from shared.vocabulary import ACTUATOR_ROLES


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


def config_summary(settings: EdgeSettings) -> str:
    """One line for a config that loads: ``OK: /site/edge.toml — 2 rooms, 10 devices …``."""
    sensors = sum(1 for d in settings.devices if d.kind == "sensor")
    actuators = len(settings.devices) - sensors
    rooms = len(settings.rooms)
    broker = settings.broker
    where = (f"broker {broker.host}:{broker.port}" if broker.mode == "embedded"
             else f"external broker {broker.url}")
    if broker.mode == "embedded" and broker.tls.enabled:
        where += f" (+TLS :{broker.tls.port})"
    cloud = (f"syncs with {settings.cloud.url} as edge {settings.cloud.edge_id}"
             if settings.cloud.enabled else "no cloud sync")
    if settings.api.admin_password is None:
        cloud += ("; no admin password (SMARTFARM_EDGE_API__ADMIN_PASSWORD or"
                  " api.admin_password_file): the local page cannot be logged into")
    return (f"OK: {settings.config_path} — farm {settings.farm_id}, {rooms} room"
            f"{'s' if rooms != 1 else ''}, {len(settings.devices)} device"
            f"{'s' if len(settings.devices) != 1 else ''} ({sensors} sensor"
            f"{'s' if sensors != 1 else ''}, {actuators} actuator"
            f"{'s' if actuators != 1 else ''}), {where}, local page"
            f" http://{settings.api.host}:{settings.api.port}/, {cloud}")


# Help for the options whose parsers other modules build (edge/backup.py), so that every option
# of every command explains itself (tests/integration/test_cli.py walks them all).
EXTRA_HELP: dict[tuple[str, str], str] = {
    ("backup", "--config"): "the edge's TOML config (default: edge.toml)",
    ("restore", "--config"): "the edge's TOML config (default: edge.toml)",
    ("restore", "backup"): "a file `smartfarm edge backup` wrote (gzipped or not)",
}


def fill_help(sub: argparse._SubParsersAction[argparse.ArgumentParser],
              extra: dict[tuple[str, str], str]) -> None:
    """Give the options in ``extra`` (subcommand, option or positional name) their help text
    when the module that added them gave none."""
    for name, parser in sub.choices.items():
        for action in parser._actions:
            key = action.option_strings[-1] if action.option_strings else action.dest
            if not action.help and (name, key) in extra:
                action.help = extra[(name, key)]


def start_failure(settings: EdgeSettings, exc: BaseException) -> str:
    """What to tell the grower when the edge cannot start: a port taken names the setting and
    the environment variable that change it."""
    text = str(exc)
    ports = [("api.port", settings.api.port, "SMARTFARM_EDGE_API__PORT")]
    if settings.broker.mode == "embedded":
        ports.append(("broker.port", settings.broker.port, "SMARTFARM_EDGE_BROKER__PORT"))
        if settings.broker.tls.enabled:
            ports.append(("broker.tls.port", settings.broker.tls.port,
                          "SMARTFARM_EDGE_BROKER__TLS__PORT"))
    in_use = (getattr(exc, "errno", None) == errno.EADDRINUSE or "address already in use" in text
              or "Address already in use" in text)
    for key, port, env in ports:
        if in_use and (f", {port})" in text or f":{port}:" in text or f":{port} " in text):
            return (f"{key} {port} is already in use (another edge, or another program?): stop it,"
                    f" or choose another port ({key} in {settings.config_path} or {env}) — {text}")
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
        return f"permission denied: {text} (does the edge's user own {settings.data_path}?)"
    return text


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


def add_firmware_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                        config_help: str) -> None:
    p = sub.add_parser("firmware", help="firmware images the edge serves its devices (LAN updates)")
    fsub = p.add_subparsers(dest="firmware_command", required=True)
    p = fsub.add_parser("add", help="store an image (ESP32/ESP8266 .ota.bin) under a version")
    p.add_argument("file", type=Path, help="the firmware image (ESPHome: firmware.ota.bin)")
    p.add_argument("--version", required=True, dest="fw_version",
                   help="the version the device will report once it runs it (e.g. 1.3.0)")
    p.add_argument("--device", action="append", default=[], metavar="ID",
                   help="only for this device (repeatable; an ESPHome image holds its device's"
                        " secrets, so give its id); default: any device")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    p = fsub.add_parser("list", help="the stored images")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    p = fsub.add_parser("offer", help="offer a stored image to a device (through the running"
                                      " edge's local API; api.firmware_base_url must be set)")
    p.add_argument("device", help="the device's id")
    p.add_argument("--version", required=True, dest="fw_version", help="a stored image's version")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    p = fsub.add_parser("status", help="what each device runs and where its update stands"
                                       " (from the running edge)")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    p = fsub.add_parser("remove", help="delete an image (its pending offers stop downloading)")
    p.add_argument("image", help="a version, or the first 8+ hex digits of the image's sha256")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)


def firmware_main(args: argparse.Namespace, settings: EdgeSettings) -> int:
    """`smartfarm edge firmware add|list|remove`: the image folder, while the edge runs or not
    (offering an image to a device is the local page's, or POST /api/devices/{id}/firmware)."""
    store = FirmwareStore(settings.data_path / "firmware")
    if args.firmware_command == "add":
        unknown = [d for d in args.device if settings.device(d) is None]
        if unknown:
            raise ConfigError(f"--device {', '.join(unknown)}: not a device of"
                              f" {settings.config_path}")
        image = store.add(args.file, version=args.fw_version, devices=tuple(args.device))
        who = ", ".join(image.devices) if image.devices else "any device"
        print(f"stored firmware {image.version} for {who}: {image.size} bytes,"
              f" sha256 {image.sha256}, md5 {image.md5}")
        print("offer it to a device on the local page (Devices), or:"
              f" POST /api/devices/<id>/firmware {{\"version\": \"{image.version}\"}}")
        return 0
    if args.firmware_command == "list":
        images = store.images()
        if args.json:
            print(json.dumps([i.view() for i in images], indent=2))
            return 0
        if not images:
            print("no firmware images (add one: smartfarm edge firmware add FILE --version V)")
        for i in images:
            who = ", ".join(i.devices) if i.devices else "any device"
            print(f"{i.version:<16} {i.sha256[:12]}  {i.size:>9} bytes  {who}  ({i.filename})")
        return 0
    if args.firmware_command == "offer":
        answer = local_api(settings, "POST", f"/api/devices/{args.device}/firmware",
                           {"version": args.fw_version})
        print(f"firmware {answer['version']} offered to {answer['device_id']} (command"
              f" {answer['command_id']}); it downloads from {answer['url_base']}. Follow it:"
              " smartfarm edge firmware status")
        return 0
    if args.firmware_command == "status":
        doc = local_api(settings, "GET", "/api/firmware")
        if args.json:
            print(json.dumps(doc, indent=2))
            return 0
        updates = {u["device_id"]: u for u in doc["updates"]}
        for device in settings.devices:
            runs = (doc["devices"].get(device.id) or {}).get("firmware") or "not reported"
            u = updates.get(device.id)
            where = (f"{u['version']} {u['state']}" + (f" ({u['detail']})" if u["detail"] else "")
                     if u else "")
            print(f"{device.id:<28} {runs:<28} {where}".rstrip())
        return 0
    for image in store.remove(args.image):
        print(f"removed firmware {image.version} ({image.sha256[:12]})")
    return 0


def local_api(settings: EdgeSettings, method: str, path: str,
              body: dict[str, str] | None = None) -> dict[str, Any]:
    """Call the running edge's local API as its admin (HTTP Basic, the configured password);
    a problem it answers becomes a ConfigError with its message."""
    password = settings.api.admin_password
    if password is None:
        raise ConfigError("no admin password is set (api.admin_password): cannot call the edge")
    host = settings.api.host
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_unspecified:  # it listens on every address
            host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.api.port}{path}"
    token = base64.b64encode(
        f"{settings.api.admin_user}:{password.get_secret_value()}".encode()).decode()
    request = urllib.request.Request(
        url, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json",
                 "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
            doc: dict[str, Any] = json.loads(response.read() or b"{}")
            return doc
    except urllib.error.HTTPError as exc:
        try:
            problem = json.loads(exc.read())
        except ValueError:
            problem = {}
        errors = problem.get("errors") or []
        detail = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors) or (
            problem.get("detail") or str(exc))
        raise ConfigError(f"the edge refused: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(f"the edge's local API at {url} does not answer ({exc}); is the edge"
                          " running (smartfarm edge run)?") from None


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


def _esphome_arguments(p: argparse.ArgumentParser) -> None:
    """The board options of an ESPHome node file (docs/devices.md)."""
    p.add_argument("--host", metavar="ADDR",
                   help="ESPHome: the edge's address on the farm network (default: broker.host"
                        " when it names one; else the node reads edge_host from secrets.yaml)")
    p.add_argument("--board", default="esp32dev", help="ESPHome: the ESP32 board (default:"
                                                        " esp32dev)")
    p.add_argument("--th-sensor", choices=TH_SENSORS, default="sht4x",
                   help="ESPHome: the temperature/humidity sensor (default: sht4x)")
    p.add_argument("--without", action="append", default=[], choices=OPTIONAL_SENSORS,
                   help="ESPHome: a sensor the node does not have (repeatable)")
    p.add_argument("--drive", choices=("relay", "pwm"),
                   help="ESPHome: how an actuator is driven (default: relay for humidifier and"
                        " heater, pwm for exhaust_fan and light)")
    p.add_argument("--inverted", action="store_true",
                   help="ESPHome: the relay module switches on a low pin (active-low)")
    p.add_argument("--interval", type=int, default=30, metavar="S",
                   help="ESPHome: seconds between readings (default: 30)")


def _esphome_options(args: argparse.Namespace) -> NodeOptions:
    return NodeOptions(host=args.host, board=args.board, th_sensor=args.th_sensor,
                       sensors=frozenset(OPTIONAL_SENSORS) - set(args.without),
                       drive=args.drive, inverted=args.inverted, interval_s=args.interval)


def write_claim_file(settings: EdgeSettings, args: argparse.Namespace,
                     options: NodeOptions) -> str:
    """``device claim-file``: a claim-mode node file with this farm's claim code."""
    from edge.onboarding import ensure_claim_code

    try:
        node = claim_node(settings, args.id, args.room, args.kind, args.actuator, options,
                          ensure_claim_code(settings))
    except ValueError as exc:
        raise ConfigError(f"ESPHome claim-mode node file: {exc}") from None
    return write_esphome(settings, args.id, options, args.output, node=node)


def write_esphome(settings: EdgeSettings, device_id: str, options: NodeOptions,
                  output: str | None, *, node: Node | None = None) -> str:
    """Write the node file (and a secrets.yaml template beside it when there is none); return
    what was done, for the terminal. ``node``: that one (a claim-mode node), else the
    device's."""
    try:
        text = device_yaml(settings, device_id, options) if node is None else node_yaml(node)
    except ValueError as exc:
        raise ConfigError(f"ESPHome node file: {exc}") from None
    if output == "-":
        sys.stdout.write(text)
        return ""
    path = Path(output or f"{device_id}.yaml")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from None
    write_atomic(path, text, mode=0o600)  # it may hold the device's password
    done = f"ESPHome node file: {path} (validate: esphome config {path}; flash: esphome run {path})"
    secrets_path = path.parent / "secrets.yaml"
    if not secrets_path.exists():
        if node is None:
            device = settings.device(device_id)
            assert device is not None
            node = device_node(settings, device, options)
        write_atomic(secrets_path, secrets_template(node), mode=0o600)
        done += f"\n  fill in {secrets_path} (Wi-Fi and the other secrets it names)"
    return done


def _check_options(options: NodeOptions, kind: str, actuator: str | None) -> None:
    try:
        Node(farm_id="check", room_id="check", device_id="check", kind=kind,  # type: ignore[arg-type]
             actuator=actuator if kind == "actuator" else None, broker_host=options.host,
             board=options.board, th_sensor=options.th_sensor, sensors=options.sensors,
             drive=options.drive, interval_s=options.interval_s)
    except ValueError as exc:
        raise ConfigError(f"ESPHome node file: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartfarm edge", description=__doc__)
    parser.add_argument("-V", "--version", action="version", version=version_line(),
                        help="print the installed smartfarm version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "the edge's TOML config (default: edge.toml)"
    p = sub.add_parser("init", help="write a config and credentials into DIR (by default with"
                                     " two demo rooms and their devices)")
    p.add_argument("dir", type=Path, help="folder for edge.toml and credentials/ (made if missing)")
    p.add_argument("--farm-id", help="default: demo-farm, or with --cloud the token's farm")
    p.add_argument("--empty", action="store_true",
                   help="no demo rooms or devices (a cloud-managed edge gets them from the cloud)")
    p.add_argument("--cloud", metavar="URL",
                   help="register with this cloud too (implies --empty; see `register`)")
    p.add_argument("--token", help="with --cloud: the edge token ('-': read it from stdin)")
    p.add_argument("--edge-id", help="with --cloud: the edge's id (default: the token's)")
    p.add_argument("--offline", action="store_true",
                   help="with --cloud: do not ask the cloud whom the token belongs to")
    p.add_argument("--broker-port", type=int, default=1884, metavar="PORT",
                   help="MQTT port devices connect to (default: 1884; 1883 is often Mosquitto's)")
    p.add_argument("--api-port", type=int, default=8088, metavar="PORT",
                   help="port of the local page (default: 8088)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing edge.toml (new device passwords and admin password)")
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
    p.add_argument("id", help="the device's id, also its MQTT user name (letters, digits, _ or -)")
    p.add_argument("--room", required=True, help="id of the room it is in (a [[rooms]] id)")
    p.add_argument("--kind", choices=("sensor", "actuator"), required=True,
                   help="sensor (reports readings) or actuator (switches something)")
    p.add_argument("--actuator", choices=ACTUATOR_ROLES,
                   help="with --kind actuator: what it switches")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    p.add_argument("--esphome", nargs="?", const="", metavar="FILE", type=str,
                   help="also write the device's ESPHome node file (default FILE: ID.yaml) and a"
                        " secrets.yaml template beside it when there is none")
    _esphome_arguments(p)
    p = dsub.add_parser("esphome", help="write an existing device's ESPHome node file (with its"
                                         " password when this edge made it)")
    p.add_argument("id", help="the device's id")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="where to write it (default: ID.yaml; '-': standard output)")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    _esphome_arguments(p)
    p = dsub.add_parser("claim-file", help="write a claim-mode ESPHome node file: the node asks"
                                            " to join with the farm's claim code and takes its"
                                            " password from the edge once adopted")
    p.add_argument("id", help="the node's id, by convention esp- and the last 6 hex digits of"
                              " its MAC (esp-3c71bf)")
    p.add_argument("--room", required=True, help="the room it will be adopted into")
    p.add_argument("--kind", choices=("sensor", "actuator"), required=True,
                   help="what the node is: a sensor node or an actuator")
    p.add_argument("--actuator", choices=ACTUATOR_ROLES, help="with --kind actuator: its role")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="where to write it (default: ID.yaml; '-': standard output)")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    _esphome_arguments(p)
    add_firmware_parser(sub, config_help)
    p = sub.add_parser("register", help="sync this edge with a cloud (writes [cloud] + token)")
    p.add_argument("--cloud", required=True, metavar="URL", help="e.g. https://farm.example.com")
    p.add_argument("--token", required=True,
                   help="the edge token the cloud showed once ('-': read it from stdin)")
    p.add_argument("--edge-id", help="the edge's id in the cloud (default: the one the cloud"
                                     " names for the token; with --offline, the farm id)")
    p.add_argument("--offline", action="store_true",
                   help="write the config without asking the cloud whom the token belongs to"
                        " (a cloud not reachable yet)")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    p = sub.add_parser("tls-cert", help="add names to the broker's TLS certificate (keeps the CA)")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="host name or IP devices use (repeatable; default: this host's names)")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    p = sub.add_parser("claim-code",
                       help="print the farm's claim code (new nodes log in with it to ask to"
                            " join; adopt them on the local page)")
    p.add_argument("--rotate", action="store_true",
                   help="make a new code: nodes flashed with the old one can no longer ask")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    p = sub.add_parser("run", help="run the edge until SIGTERM/SIGINT")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    p = sub.add_parser("check-config",
                       help="check the config (file + SMARTFARM_EDGE_* environment): one OK line,"
                            " or every problem; exit status 2 when there is one")
    p.add_argument("--config", type=Path, default=Path("edge.toml"), help=config_help)
    p.add_argument("--print", action="store_true", dest="print_config",
                   help="print the full effective config as JSON (secrets masked)")
    add_backup_arguments(sub)
    fill_help(sub, EXTRA_HELP)
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
        if args.command == "device" and args.device_command == "claim-file":
            done = write_claim_file(load_config(args.config), args, _esphome_options(args))
            if done:
                print(done)
            return 0
        if args.command == "device" and args.device_command == "esphome":
            done = write_esphome(load_config(args.config), args.id, _esphome_options(args),
                                 args.output)
            if done:
                print(done)
            return 0
        if args.command == "device":
            options = _esphome_options(args)
            if args.esphome is not None:  # bad board options fail before the device is added
                _check_options(options, args.kind, args.actuator)
            password = add_device(args.config, args.id, args.room, args.kind, args.actuator)
            settings = load_config(args.config)
            print(f"device {args.id} added to room {args.room}")
            print(f"  mqtt username: {args.id}")
            print(f"  mqtt password: {password}   (shown once; flash it onto the device)")
            print(f"  topics: farm/{settings.farm_id}/room/{args.room}/"
                  f"{{telemetry,status,ack}}/{args.id}")
            if args.esphome is not None:
                print(write_esphome(settings, args.id, options, args.esphome or None))
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
        if args.command == "claim-code":
            from edge.onboarding import claim_code_path, ensure_claim_code

            code = ensure_claim_code(settings, rotate=args.rotate)
            print(f"farm claim code: {code}" + ("   (new; the old one no longer works)"
                                                 if args.rotate else ""))
            print(f"  kept in {claim_code_path(settings)} (mode 0600)")
            print(f"  a new node logs in to port {settings.broker.port} with its own id as"
                  " username and this code as password; it is refused and listed under"
                  " New devices on the local page until adopted")
            return 0
        if args.command == "firmware":
            return firmware_main(args, settings)
        if args.command == "check-config":
            print(effective_config(settings) if args.print_config else config_summary(settings))
            return 0
        from edge.broker import BrokerError  # amqtt: only to run

        configure_edge_logging(settings)
        tune_malloc()
        try:
            with run_lock(settings.data_path):  # one edge per data dir; restore checks it
                asyncio.run(run_edge(settings))
        except (OSError, BrokerError) as exc:  # a port taken, a folder it may not write
            print(f"error: the edge could not start: {start_failure(settings, exc)}",
                  file=sys.stderr)
            return 2
        return 0
    except (ConfigError, CredentialsError, TlsError, FirmwareError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SmartfarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
