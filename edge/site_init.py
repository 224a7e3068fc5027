"""`smartfarm edge init` and `device add`: write a site's config, device credentials and admin
password, and append devices to it (credentials and broker files kept in step)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from edge.config import ConfigError, check_config_text, load_config
from edge.credentials import DeviceSecrets, generate_password, sync_broker_files, write_atomic
from edge.tls import tls_files
from shared.topics import is_valid_id
from shared.vocabulary import ACTUATOR_ROLES, SPECIES, STAGES

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
               actuator: str | None, *, sync: bool = True) -> str:
    """Append a device to the config, create its credentials; return its password (once).

    ``sync=False`` leaves the broker files to the caller (a running edge rebuilds them with the
    cloud's accounts too, see ``EdgeApp.reload_config``)."""
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
    check_config_text(config_path, text)
    secrets = DeviceSecrets.load_or_create(
        settings.device_secrets_path, edge_username=settings.broker.edge_username
    )
    password = secrets.add_device(device_id, rotate=True)
    write_atomic(config_path, text, mode=0o644)
    if sync:
        sync_broker_files(load_config(config_path), secrets)
    return password

