"""Edge configuration: a TOML file plus ``SMARTFARM_EDGE_…`` environment overrides.

Every key can be overridden from the environment, nested keys joined by ``__``:
``SMARTFARM_EDGE_BROKER__PORT=1884``, ``SMARTFARM_EDGE_API__ADMIN_PASSWORD=…``; lists (rooms,
devices) take JSON. Relative paths are resolved against the config file's folder.
"""
from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shared.config_problems import Problem, problems_from_validation, report, toml_lines
from shared.errors import SmartfarmError
from shared.models import Id
from shared.rules import Rule, Safety
from shared.sync import MAX_BATCH_RECORDS
from shared.vocabulary import ACTUATOR_ROLES, ActuatorRole, Species, Stage


class ConfigError(SmartfarmError):
    """The configuration cannot be used; the message names the bad key (every problem found, one
    a line, when there are several: ``problems`` holds them)."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerTlsConfig(_Section):
    """The embedded broker's TLS listener for devices: same logins and ACL as the plain one.
    ``smartfarm edge init --tls`` writes a private CA and a server certificate signed by it;
    devices trust ``ca_file``."""

    enabled: bool = False
    host: str | None = Field(default=None, description="default: broker.host")
    port: int = Field(default=8883, ge=0, le=65535, description="0 = free port")
    cert_file: Path = Path("credentials/tls/server.crt")
    key_file: Path = Path("credentials/tls/server.key")
    ca_file: Path = Path("credentials/tls/ca.crt")  # what devices trust; the broker never reads it
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"


class BrokerConfig(_Section):
    mode: Literal["embedded", "external"] = "embedded"
    host: str = "127.0.0.1"
    port: int = Field(default=1884, ge=0, le=65535, description="embedded listener (0 = free port)")
    # External broker (Mosquitto, …): mqtt://host:port; the edge logs in as `edge_username`.
    url: str | None = None
    edge_username: Id = "smartfarm-edge"
    edge_password: SecretStr | None = None
    password_file: Path = Path("credentials/passwd")
    keepalive_s: int = Field(default=30, ge=5, le=600)
    tls: BrokerTlsConfig = Field(default_factory=BrokerTlsConfig)
    # Embedded: acknowledge a device's message (PUBACK) only once it is committed to SQLite. Off,
    # the broker acknowledges on receipt (as before) and a SIGKILL can lose up to one
    # store.commit_interval_ms of readings the devices already deleted; it exists to measure
    # that trade-off (bench/edge_ingest.py), not to be turned off on a farm.
    durable_acks: bool = True


class ApiConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8088, ge=0, le=65535)  # what `edge init` writes (README)
    admin_user: str = "admin"
    # Prefer the environment (SMARTFARM_EDGE_API__ADMIN_PASSWORD) or the file `edge init` writes
    # (mode 0600); the file is read at load time when no password is given otherwise.
    admin_password: SecretStr | None = None
    admin_password_file: Path | None = Path("credentials/admin-password")
    # GET /metrics: unset = answered to loopback clients only; set = every client must send
    # "Authorization: Bearer <token>" (prefer SMARTFARM_EDGE_API__METRICS_TOKEN).
    metrics_token: SecretStr | None = None
    # Where devices download firmware updates from (edge/firmware.py), e.g.
    # http://192.168.1.10:8088: this page's address as the devices' LAN sees it. Unset: the
    # address the browser (or script) that offers an update used, unless that is loopback.
    firmware_base_url: str | None = Field(default=None, pattern=r"^https?://[^/\s?#]+/?$")


class AutomationConfig(_Section):
    tick_s: float = Field(default=5, gt=0, le=300)
    stale_after_s: float = Field(default=180, gt=0)
    command_timeout_s: float = Field(default=10, gt=0)
    command_retries: int = Field(default=3, ge=0, le=20)
    override_minutes: float = Field(default=30, gt=0)
    timezone: str = "UTC"


class AlertConfig(_Section):
    out_of_band_minutes: float = Field(default=15, gt=0)
    silent_minutes: float = Field(default=5, gt=0)
    reminder_minutes: float = Field(default=60, gt=0)


class StoreConfig(_Section):
    # Group commit: the writer commits when either bound is reached (SD-card friendly).
    # 1 s (not 200 ms): with 200 devices it halves the bytes written per reading (bench
    # edge_footprint: ~1.1 KB -> ~0.6 KB); a crash may lose up to 1 s of accepted readings.
    commit_interval_ms: float = Field(default=1_000, ge=0, le=10_000)
    commit_max_items: int = Field(default=2_000, ge=1)
    quarantine_max_payload: int = Field(default=4_096, ge=64)


class HomeAssistantConfig(_Section):
    """MQTT discovery for Home Assistant on the same (external) broker (edge/homeassistant.py)."""

    enabled: bool = False
    discovery_prefix: str = Field(default="homeassistant", pattern=r"^[\w-]+(/[\w-]+)*$")


IOT_TOPIC_FIELDS = ("farm_id", "edge_id")
IotTopic = Literal["batches", "acks", "commands", "replies"]
IOT_TOPICS: tuple[IotTopic, ...] = ("batches", "acks", "commands", "replies")


class AwsIotConfig(_Section):
    """The optional AWS IoT Core transport (edge/iot_uplink.py): batches go up over MQTT 5 with
    an X.509 client certificate instead of HTTPS, and commands and config come down on the
    command topic (the cloud publishes them there when its ``sync.iot_data_endpoint`` is set).
    ``smartfarm cloud provision-device --aws`` makes the thing, certificate and policy and prints
    the endpoint. cloud.url, edge_id and token stay required: the topic rule forwards the token
    to the same ingest endpoint, and the downlink WebSocket keeps running too (a command that
    arrives both ways runs once)."""

    enabled: bool = False
    endpoint: str | None = Field(default=None, description="xxxx-ats.iot.REGION.amazonaws.com")
    port: int = Field(default=8883, ge=1, le=65535)
    client_id: Id | None = Field(default=None, description="the thing name; default: edge_id")
    cert_file: Path = Path("credentials/aws-iot/certificate.pem.crt")
    key_file: Path = Path("credentials/aws-iot/private.pem.key")
    # None: the system trust store (it holds Amazon Root CA 1).
    ca_file: Path | None = None
    # {farm_id} and {edge_id} are filled in; provisioning writes its policy for these defaults.
    batches_topic: str = "smartfarm/{farm_id}/edge/{edge_id}/batches"
    acks_topic: str = "smartfarm/{farm_id}/edge/{edge_id}/acks"
    commands_topic: str = "smartfarm/{farm_id}/edge/{edge_id}/commands"
    replies_topic: str = "smartfarm/{farm_id}/edge/{edge_id}/replies"
    # AWS IoT Core refuses payloads over 128 KiB; bigger batches are split.
    max_message_bytes: int = Field(default=128 * 1024, ge=8 * 1024, le=128 * 1024)
    compress: bool = True
    ack_timeout_s: float = Field(default=30.0, gt=0, description="no answer: publish again")
    # AWS IoT Core throttles a connection past 512 KiB/s.
    max_bytes_per_s: int = Field(default=480 * 1024, ge=1024)
    keepalive_s: int = Field(default=60, ge=30, le=1200)
    session_expiry_s: int = Field(default=3600, ge=0)
    # Keep the WebSocket downlink as well (config pushes; commands arrive on both, run once).
    downlink_stream: bool = True

    @field_validator("batches_topic", "acks_topic", "commands_topic", "replies_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        try:
            filled = value.format(**dict.fromkeys(IOT_TOPIC_FIELDS, "x"))
        except (KeyError, IndexError, ValueError):
            raise ValueError("only {farm_id} and {edge_id} may be filled in") from None
        if not filled or set(filled) & {"+", "#", "$"} or "//" in filled:
            raise ValueError("must be a plain topic (no wildcards, no $, no empty level)")
        return value

    @model_validator(mode="after")
    def _endpoint(self) -> Self:
        if self.enabled and not self.endpoint:
            raise ValueError("endpoint is required when aws_iot is enabled")
        return self

    def topic(self, name: IotTopic, farm_id: str, edge_id: str) -> str:
        template: str = getattr(self, f"{name}_topic")
        return template.format(farm_id=farm_id, edge_id=edge_id)


class CloudConfig(_Section):
    """The cloud this edge syncs with (issue 4); sync is off until url, edge_id and a token are
    set (``smartfarm edge register``). The token comes from SMARTFARM_EDGE_CLOUD__TOKEN or the
    token file (mode 0600), never from the TOML itself."""

    url: str | None = None
    edge_id: Id | None = None
    token: SecretStr | None = None
    token_file: Path | None = Path("credentials/cloud-token")
    # Up: a batch goes when it is full, when its oldest record waited this long, or at once for
    # commands, their states, acks and alerts.
    batch_max_records: int = Field(default=MAX_BATCH_RECORDS, ge=1, le=MAX_BATCH_RECORDS)
    batch_max_bytes: int = Field(default=4 * 1024 * 1024, ge=16 * 1024)
    batch_max_age_s: float = Field(default=2.0, ge=0)
    poll_interval_s: float = Field(default=0.1, gt=0, le=10)
    request_timeout_s: float = Field(default=30.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    # Bounded disk: rows the cloud confirmed are kept this long (local history), then pruned.
    retention_days: float = Field(default=30.0, gt=0)
    prune_interval_s: float = Field(default=60.0, gt=0)
    # Past this many unconfirmed records, the oldest unsent readings are merged into 1-minute
    # means and an alert is raised (edge/outbox.py); nothing is ever dropped silently.
    max_unsynced_rows: int = Field(default=20_000_000, ge=1_000)
    # Down: cloud commands older than this (or past their expires_at) are not executed.
    command_ttl_s: float = Field(default=300.0, gt=0)
    ws_heartbeat_s: float = Field(default=20.0, gt=0)
    ws_failures_before_poll: int = Field(default=3, ge=1)
    pending_poll_s: float = Field(default=5.0, gt=0)
    aws_iot: AwsIotConfig = Field(default_factory=AwsIotConfig)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url

    @property
    def enabled(self) -> bool:
        return bool(self.url and self.edge_id and self.token is not None)

    def endpoint(self, path: str) -> str:
        assert self.url is not None
        return self.url.rstrip("/") + path


class DeviceConfig(_Section):
    id: Id
    room: Id
    kind: Literal["sensor", "actuator"]
    actuator: ActuatorRole | None = None
    safety: Safety | None = None
    name: str = ""

    @model_validator(mode="after")
    def _role(self) -> Self:
        if self.kind == "actuator" and self.actuator is None:
            raise ValueError(f"an actuator device needs `actuator` ({', '.join(ACTUATOR_ROLES)})")
        if self.kind == "sensor" and self.actuator is not None:
            raise ValueError("a sensor device has no `actuator`")
        return self


class RoomConfig(_Section):
    id: Id
    name: str = ""
    species: Species
    stage: Stage
    stage_started: str | None = None
    # User rules: a rule with the id of a profile rule replaces it; others are added.
    rules: list[Rule] = Field(default_factory=list)


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SMARTFARM_EDGE_", env_nested_delimiter="__", extra="forbid"
    )

    farm_id: Id = "demo-farm"  # what `edge init` writes without --farm-id (README)
    data_dir: Path = Path("data")
    device_secrets_file: Path = Path("credentials/device-secrets.toml")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Besides stderr (journald under systemd): a file rotated at log_max_bytes, log_backups kept.
    log_file: Path | None = None
    log_max_bytes: int = Field(default=10 * 2**20, ge=1024)
    log_backups: int = Field(default=10, ge=1, le=1000)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    automation: AutomationConfig = Field(default_factory=AutomationConfig)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)
    home_assistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    rooms: list[RoomConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    config_path: Path | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (passed as init kwargs).
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = cross_problems(
            [r.id for r in self.rooms], [(d.id, d.room) for d in self.devices],
            edge_username=self.broker.edge_username,
            home_assistant=self.home_assistant.enabled, broker_mode=self.broker.mode,
        )
        if problems:
            # One line per problem; load_config reports each (shared.config_problems).
            raise ValueError("\n".join(problems))
        return self

    # ---- paths resolved against the config file's folder ----
    def resolve(self, path: Path) -> Path:
        if path.is_absolute() or self.config_path is None:
            return path
        return (self.config_path.parent / path).resolve()

    @property
    def data_path(self) -> Path:
        return self.resolve(self.data_dir)

    @property
    def db_path(self) -> Path:
        return self.data_path / "edge.db"

    @property
    def password_file_path(self) -> Path:
        return self.resolve(self.broker.password_file)

    @property
    def device_secrets_path(self) -> Path:
        return self.resolve(self.device_secrets_file)

    def room(self, room_id: str) -> RoomConfig | None:
        return next((r for r in self.rooms if r.id == room_id), None)

    def device(self, device_id: str) -> DeviceConfig | None:
        return next((d for d in self.devices if d.id == device_id), None)


def cross_problems(
    room_ids: Sequence[object], devices: Sequence[tuple[object, object]], *,
    edge_username: object = "smartfarm-edge", home_assistant: object = False,
    broker_mode: object = "embedded",
) -> list[str]:
    """What no single room or device can be checked for alone: unique ids, devices in rooms
    that exist, the edge's own login not taken by a device. One line per problem."""
    problems: list[str] = []
    for room_id in sorted({r for r in room_ids if room_ids.count(r) > 1}, key=str):
        problems.append(f"room `{room_id}`: {room_ids.count(room_id)} rooms have this id;"
                        " room ids must be unique")
    dev_ids = [d for d, _ in devices]
    for dev_id in sorted({d for d in dev_ids if dev_ids.count(d) > 1}, key=str):
        problems.append(f"device `{dev_id}`: {dev_ids.count(dev_id)} devices have this id;"
                        " device ids must be unique")
    if edge_username in dev_ids:
        problems.append(f"device `{edge_username}`: this id is the edge's own MQTT login"
                        " (broker.edge_username); give the device another id")
    known = ", ".join(str(r) for r in room_ids) or "none"
    for dev_id, room in devices:
        if room not in room_ids:
            problems.append(f"device `{dev_id}`: room {room!r} is not a room of this config"
                            f" (rooms: {known})")
    if home_assistant is True and broker_mode != "external":
        # The embedded broker admits only the farm's devices and the edge (no HA login).
        problems.append('home_assistant.enabled needs broker.mode = "external"')
    return problems


def _name_item(key: str, item: Any, root: Mapping[str, Any]) -> str | None:
    """``room `oyster-a```, ``device `fan-1` (room `oyster-a`)``, ``rule `rh-1```."""
    if not isinstance(item, Mapping) or not isinstance(item.get("id"), str) or not item["id"]:
        return None
    if key == "rooms":
        return f"room `{item['id']}`"
    if key == "devices":
        room = item.get("room")
        return f"device `{item['id']}`" + (f" (room `{room}`)" if isinstance(room, str) else "")
    if key == "rules":
        return f"rule `{item['id']}`"
    return None


def _raw_cross_problems(data: Mapping[str, Any]) -> list[str]:
    """cross_problems on the raw data, for when field errors kept the model from checking."""
    rooms = data.get("rooms")
    devices = data.get("devices")
    room_ids = [r.get("id") for r in rooms if isinstance(r, Mapping)] \
        if isinstance(rooms, list) else []
    pairs = [(d.get("id"), d.get("room")) for d in devices if isinstance(d, Mapping)] \
        if isinstance(devices, list) else []
    broker = data.get("broker") if isinstance(data.get("broker"), Mapping) else {}
    ha = data.get("home_assistant") if isinstance(data.get("home_assistant"), Mapping) else {}
    assert isinstance(broker, Mapping) and isinstance(ha, Mapping)
    return cross_problems(
        [r for r in room_ids if isinstance(r, str)],
        [(d, r) for d, r in pairs if isinstance(d, str) and isinstance(r, str)],
        edge_username=broker.get("edge_username", "smartfarm-edge"),
        home_assistant=ha.get("enabled", False), broker_mode=broker.get("mode", "embedded"),
    )


def _env_data(env: Mapping[str, str]) -> dict[str, Any]:
    """Rooms and devices given as JSON in the environment, for naming problems by id."""
    out: dict[str, Any] = {}
    upper = {k.upper(): v for k, v in env.items()}
    for key in ("rooms", "devices"):
        raw = upper.get(f"{ENV_PREFIX}{key.upper()}")
        if raw is not None:
            try:
                out[key] = json.loads(raw)
            except ValueError:
                continue
    return out


ENV_PREFIX = "SMARTFARM_EDGE_"


def validation_problems(
    exc: ValidationError, data: Mapping[str, Any], text: str | None,
    env: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Every problem of a failed EdgeSettings validation, named by room/device id."""
    env = dict(os.environ) if env is None else env
    merged = {**data, **_env_data(env)}
    problems = problems_from_validation(
        exc, model=EdgeSettings, data=merged, env=env, env_prefix=ENV_PREFIX, text=text,
        namer=_name_item,
    )
    crossed = any(err["type"] == "value_error" and not err["loc"]
                  for err in exc.errors(include_url=False))
    if not crossed:
        problems += [Problem("", line) for line in _raw_cross_problems(merged)]
    return [_located(p, merged, text, env) for p in problems]


_NAMED = re.compile(r"^(room|device) `([^`]+)`")


def _located(problem: Problem, data: Mapping[str, Any], text: str | None,
             env: Mapping[str, str]) -> Problem:
    """A cross-check problem ("device `x`: …") gets the source of the item it names."""
    if problem.source is not None or problem.where or not (named := _NAMED.match(problem.message)):
        return problem
    key = f"{named.group(1)}s"
    env_name = f"{ENV_PREFIX}{key.upper()}"
    if any(name.upper() == env_name for name in env):
        return Problem(problem.where, problem.message, f"from {env_name}")
    items = data.get(key)
    if text is None or not isinstance(items, list):
        return problem
    lines = toml_lines(text)
    for index, item in enumerate(items):
        if isinstance(item, Mapping) and item.get("id") == named.group(2):
            number = lines.get((key, index, "id")) or lines.get((key, index))
            if number is not None:
                return Problem(problem.where, problem.message, f"line {number}")
    return problem


def _semantic_problems(settings: EdgeSettings, lines: Mapping[tuple[str | int, ...], int],
                       env: Mapping[str, str]) -> list[Problem]:
    """Checks the models leave to start-up (so constructing them stays cheap), done up front."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    def where(*path: str) -> str | None:
        name = ENV_PREFIX + "__".join(p.upper() for p in path)
        if name in env:
            return f"from {name}={env[name]}"
        for size in range(len(path), 0, -1):  # the key, else the table it belongs in
            if (number := lines.get(path[:size])) is not None:
                return f"line {number}"
        return None

    problems: list[Problem] = []
    tz = settings.automation.timezone
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(Problem("", f"automation.timezone {tz!r} is not a time zone (use a name"
                                    " such as Europe/Berlin or America/New_York)",
                                where("automation", "timezone")))
    broker = settings.broker
    if broker.mode == "external" and not (broker.url or "").startswith("mqtt://"):
        given = f"broker.url {broker.url!r}" if broker.url else "broker.url is not set"
        problems.append(Problem("", f'{given}: broker.mode = "external" needs'
                                    ' url = "mqtt://host:port"', where("broker", "url")))
    return problems


def check_config_text(config_path: Path, text: str) -> None:
    """Raise ConfigError (naming the key) if ``text`` would not load as ``config_path``: it is
    written beside it, loaded (relative paths resolve the same) and removed, before anything is
    replaced on disk."""
    candidate = config_path.with_suffix(".toml.new")
    candidate.write_text(text)
    try:
        load_config(candidate)
    finally:
        candidate.unlink(missing_ok=True)


def load_config(path: Path | str, **overrides: Any) -> EdgeSettings:
    """Read the TOML file, apply env overrides, validate; raise ConfigError naming every problem
    (room and device ids, the value given, the line or environment variable it came from)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except FileNotFoundError:
        hint = "create one with `smartfarm edge init DIR`"
        raise ConfigError(f"config file {path} not found ({hint})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    data.update(overrides)
    env = dict(os.environ)
    try:
        settings = EdgeSettings(**data, config_path=path.resolve())
    except ValidationError as exc:
        problems = validation_problems(exc, data, text, env)
        raise ConfigError(report(str(path), problems), problems) from None
    problems = _semantic_problems(settings, toml_lines(text), env)
    if problems:
        raise ConfigError(report(str(path), problems), problems)
    api = settings.api
    if api.admin_password is None and api.admin_password_file is not None:
        pw_path = settings.resolve(api.admin_password_file)
        if pw_path.is_file():
            api.admin_password = SecretStr(pw_path.read_text().strip())
    cloud = settings.cloud
    if cloud.token is None and cloud.token_file is not None:
        token_path = settings.resolve(cloud.token_file)
        if token_path.is_file():
            if token_path.stat().st_mode & 0o077:
                raise ConfigError(
                    f"cloud.token_file: {token_path} is readable by others (chmod 600 it)"
                )
            cloud.token = SecretStr(token_path.read_text().strip())
    return settings
