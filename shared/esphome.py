"""A complete ESPHome node file for one smartfarm device: flash it and the node speaks the MQTT
contract of ``shared.models`` / ``shared.topics`` exactly (docs/devices.md).

One function, :func:`node_yaml`, used by ``smartfarm edge device add --esphome``, the edge page's
download (``GET /api/devices/{id}/esphome.yaml``) and the cloud's device download. What the node
does:

* Wi-Fi from ``secrets.yaml`` (``wifi_ssid``, ``wifi_password``, ``fallback_ap_password``), a
  fallback hotspot with a captive portal when the network is gone;
* MQTT to the edge's broker with the device's own username, password and client id (TLS with the
  edge's CA when the broker has it), ``discovery: false``, no MQTT log topic and only internal
  entities: the node publishes on its own four topics and nowhere else (the broker's ACL allows
  nothing more);
* status: a birth message ``{"device_id","online":true,"firmware"}``, a last-will
  ``{"device_id","online":false}`` and a heartbeat with state, RSSI and uptime every minute;
* a sensor node: SHT4x or SHT3x (temperature, humidity), SCD4x (CO₂), BH1750 (light), a
  capacitive substrate probe and the battery voltage, published as one telemetry JSON with the
  seed's metric names every ``interval_s`` — metrics whose sensor has no value are left out;
* an actuator node: commands from its command topic (``on``, ``off``, ``set`` 0–100 or a bool)
  applied to a relay (time-proportioned: ``set 40`` = on 40 % of each period) or a PWM output,
  each acked with its ``command_id`` and the new state; a repeated command id is acked again and
  not applied twice; boot-safe (off at power-up, the level is never restored from flash) and off
  after ``failsafe_s`` without the broker;
* time from SNTP on the edge; the timestamp is sent only once the clock is set, otherwise the edge
  stamps the reading with its receive time (``shared.models.parse_telemetry``).

Readings taken while the broker is unreachable are not buffered on the node (docs/devices.md,
"Offline behaviour"): the node publishes a fresh reading as soon as it is connected again.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shared.esphome_claim import NOT_CLAIMING, claim_boot_lambda, claim_globals, claim_hello
from shared.esphome_ota import ota_dispatch, ota_globals, ota_http_request, ota_platform, ota_script
from shared.topics import build_topic, check_id
from shared.vocabulary import ACTUATOR_LABELS, ACTUATOR_ROLES, ActuatorRole

FIRMWARE_VERSION: Final = "1.0.0"
FIRMWARE_PREFIX: Final = "smartfarm-esphome"
DEFAULT_BOARD: Final = "esp32dev"
DEFAULT_PORT: Final = 1884

ThSensor = Literal["sht4x", "sht3xd"]
TH_SENSORS: Final[tuple[ThSensor, ...]] = ("sht4x", "sht3xd")
Optional_ = Literal["co2", "light", "substrate", "battery"]
OPTIONAL_SENSORS: Final[tuple[Optional_, ...]] = ("co2", "light", "substrate", "battery")
Drive = Literal["relay", "pwm"]

# How each role is driven by default: mains devices through a relay (time-proportioned), a fan's
# speed and an LED driver's brightness through PWM.
DEFAULT_DRIVE: Final[dict[str, Drive]] = {
    "humidifier": "relay",
    "heater": "relay",
    "exhaust_fan": "pwm",
    "light": "pwm",
}
# 25 kHz: a 4-pin fan's PWM input (inaudible); 1 kHz: LED drivers and DC loads behind a MOSFET.
PWM_FREQUENCY_HZ: Final[dict[str, int]] = {
    "exhaust_fan": 25_000, "light": 1_000, "humidifier": 1_000, "heater": 1_000}
RELAY_PERIOD_S: Final = 60

# The metric each sensor reports (the seed's names, shared.vocabulary) and its ESPHome id.
SENSOR_METRICS: Final[dict[str, str]] = {
    "temperature_c": "air_temperature",
    "humidity_pct": "air_humidity",
    "co2_ppm": "co2",
    "light_lux": "illuminance",
    "substrate_moisture": "substrate_moisture",
    "battery_v": "battery_voltage",
}


@dataclass(frozen=True)
class Pins:
    """GPIOs of an ESP32 DevKit (esp32dev); none is a strapping pin that glitches at boot."""

    sda: str = "GPIO21"
    scl: str = "GPIO22"
    substrate: str = "GPIO34"  # ADC1 (ADC2 is unusable while Wi-Fi is on)
    battery: str = "GPIO35"  # ADC1, behind a 2:1 divider
    output: str = "GPIO26"  # relay driver / MOSFET gate, pulled down on the board


# The same roles on the other common dev boards: ADC1 pins for the analog inputs, no strapping
# pin (S3: 0, 3, 45, 46; C3: 2, 8, 9) and no flash/PSRAM pin for the output. Any other board
# gets the classic ESP32's (ESP32 DevKit, NodeMCU-32S, WEMOS D1 mini ESP32, …).
BOARD_PINS: Final[dict[str, Pins]] = {
    "esp32dev": Pins(),
    "esp32-s3-devkitc-1": Pins(sda="GPIO8", scl="GPIO9", substrate="GPIO4", battery="GPIO5",
                               output="GPIO7"),
    "esp32-c3-devkitm-1": Pins(sda="GPIO6", scl="GPIO7", substrate="GPIO0", battery="GPIO1",
                               output="GPIO10"),
}


def board_pins(board: str) -> Pins:
    return BOARD_PINS.get(board, Pins())


@dataclass(frozen=True)
class Node:
    """Everything the node file says about one device. ``password`` None: read from
    ``secrets.yaml`` as ``mqtt_password`` (the cloud keeps only its hash). ``broker_host`` None:
    ``secrets.yaml``'s ``edge_host``. ``ca_pem``: the edge's CA, required when ``tls``."""

    farm_id: str
    room_id: str
    device_id: str
    kind: Literal["sensor", "actuator"]
    actuator: str | None = None
    password: str | None = None
    broker_host: str | None = None
    broker_port: int = DEFAULT_PORT
    tls: bool = False
    ca_pem: str | None = None
    ntp_servers: tuple[str, ...] = ()
    board: str = DEFAULT_BOARD
    interval_s: int = 30
    th_sensor: ThSensor = "sht4x"
    sensors: frozenset[str] = field(default_factory=lambda: frozenset(OPTIONAL_SENSORS))
    drive: Drive | None = None
    inverted: bool = False
    failsafe_s: int = 600
    pins: Pins | None = None  # None: the board's (BOARD_PINS)
    firmware_version: str = FIRMWARE_VERSION
    # Claim mode (docs/onboarding.md): the farm's claim code instead of a password. The node
    # asks to join, takes the credentials the edge hands it once adopted, keeps them in flash.
    claim_code: str | None = None
    # Where it claims: the edge's embedded broker (the claim code and key as its password), or
    # an external Mosquitto (its shared claim account, hellos; edge.external_claims).
    claim_via: Literal["embedded", "mosquitto"] = "embedded"

    def __post_init__(self) -> None:
        check_id(self.farm_id, "farm_id")
        check_id(self.room_id, "room_id")
        check_id(self.device_id, "device_id")
        if self.kind not in ("sensor", "actuator"):
            raise ValueError(f"kind {self.kind!r}: sensor or actuator")
        if (self.kind == "actuator") != (self.actuator is not None):
            raise ValueError("an actuator needs its role; a sensor has none")
        if self.actuator is not None and self.actuator not in ACTUATOR_ROLES:
            raise ValueError(f"actuator {self.actuator!r}: one of {', '.join(ACTUATOR_ROLES)}")
        if self.th_sensor not in TH_SENSORS:
            raise ValueError(f"th_sensor {self.th_sensor!r}: one of {', '.join(TH_SENSORS)}")
        unknown = set(self.sensors) - set(OPTIONAL_SENSORS)
        if unknown:
            raise ValueError(f"unknown sensors {sorted(unknown)}: use {OPTIONAL_SENSORS}")
        if self.password is not None and ("$" in self.password or not self.password):
            # ESPHome would substitute ${…} / $name in it; generated passwords never have one.
            raise ValueError("password: empty or contains '$' (ESPHome substitutes it)")
        if not 1 <= self.broker_port <= 65535:
            raise ValueError(f"broker_port {self.broker_port}: 1-65535")
        if self.ca_pem is not None and "BEGIN CERTIFICATE" not in self.ca_pem:
            raise ValueError("ca_pem: the edge's CA certificate in PEM form")
        if not 5 <= self.interval_s <= 3600:
            raise ValueError(f"interval_s {self.interval_s}: 5-3600")
        if not 30 <= self.failsafe_s <= 86_400:
            raise ValueError(f"failsafe_s {self.failsafe_s}: 30-86400")
        if self.drive is not None and self.drive not in ("relay", "pwm"):
            raise ValueError(f"drive {self.drive!r}: relay or pwm")
        if self.broker_host is not None and not _HOST_RE.fullmatch(self.broker_host):
            raise ValueError(f"broker_host {self.broker_host!r}: a host name or IP address")
        for server in self.ntp_servers:
            if not _HOST_RE.fullmatch(server):
                raise ValueError(f"ntp server {server!r}: a host name or IP address")
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", self.board):
            raise ValueError(f"board {self.board!r}: a PlatformIO board id such as esp32dev")
        if self.claim_code is not None:
            if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z -]{3,39}", self.claim_code):
                raise ValueError("claim_code: the farm's claim code (letters, digits, dashes)")
            if self.password is not None:
                raise ValueError("password: a claim-mode node has none (the edge hands it one)")
        if not re.fullmatch(r"[0-9A-Za-z.+_-]{1,32}", self.firmware_version):
            raise ValueError(f"firmware_version {self.firmware_version!r}")

    def topic(self, kind: Literal["telemetry", "command", "status", "ack"]) -> str:
        return build_topic(self.farm_id, self.room_id, kind, self.device_id)

    @property
    def firmware(self) -> str:
        """What the node reports as ``firmware`` in its status messages."""
        return f"{FIRMWARE_PREFIX}/{self.firmware_version}"

    @property
    def gpio(self) -> Pins:
        return self.pins or board_pins(self.board)

    @property
    def output_drive(self) -> Drive:
        assert self.actuator is not None
        return self.drive or DEFAULT_DRIVE[self.actuator]


_HOST_RE: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9])?$")


HOST_PATTERN: Final = _HOST_RE.pattern
BOARD_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class BoardOptions(BaseModel):
    """What an installer chooses about a node's board: the query of both downloads (the edge
    page's and the cloud's ``GET …/esphome.yaml``). Every field has a default."""

    model_config = ConfigDict(extra="ignore", str_max_length=256)

    host: str | None = Field(default=None, pattern=HOST_PATTERN,
                             description="the edge's address on the farm network (default: the"
                                         " farm's device network; else secrets.yaml's edge_host)")
    board: str = Field(default=DEFAULT_BOARD, pattern=BOARD_PATTERN,
                       description="PlatformIO board id: esp32dev, esp32-s3-devkitc-1, …")
    th_sensor: ThSensor = Field(default="sht4x", description="temperature/humidity sensor")
    without: str = Field(default="", description="sensors the node lacks, comma-separated:"
                                                 " co2, light, substrate, battery")
    drive: Drive | None = Field(default=None, description="an actuator's output: relay or pwm"
                                                           " (default: by role)")
    inverted: bool = Field(default=False, description="an active-low relay module")
    interval_s: int = Field(default=30, ge=5, le=3600, description="seconds between readings")

    @field_validator("without")
    @classmethod
    def _known(cls, value: str) -> str:
        unknown = sorted({n.strip() for n in value.split(",") if n.strip()}
                         - set(OPTIONAL_SENSORS))
        if unknown:
            raise ValueError(f"unknown sensors {unknown}: use {', '.join(OPTIONAL_SENSORS)}")
        return value

    def sensors(self) -> frozenset[str]:
        return frozenset(OPTIONAL_SENSORS) - {n.strip() for n in self.without.split(",")}

    def node_options(self, kind: str) -> dict[str, object]:
        """Keyword arguments of ``Node`` (all but the host)."""
        return {"board": self.board, "th_sensor": self.th_sensor, "sensors": self.sensors(),
                "drive": self.drive if kind == "actuator" else None, "inverted": self.inverted,
                "interval_s": self.interval_s}


class ClaimFileOptions(BoardOptions):
    """The query of a claim-mode node file's download: the node's id, the room and role it is
    made for, and its board."""

    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                           description="the node's id, by convention esp- and the last 6 hex"
                                       " digits of its MAC (esp-3c71bf)")
    room_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                         description="the room it will be adopted into")
    kind: Literal["sensor", "actuator"]
    actuator: ActuatorRole | None = Field(default=None, validate_default=True,
                                          description="required for actuators")

    @field_validator("actuator")
    @classmethod
    def _role(cls, value: ActuatorRole | None, info: ValidationInfo) -> ActuatorRole | None:
        if (info.data.get("kind") == "actuator") != (value is not None):
            raise ValueError("an actuator needs its role; a sensor has none")
        return value


def node_name(device_id: str) -> str:
    """The ESPHome node name (its host name: lowercase letters, digits and '-', at most 31
    characters) for a device id; ids that had to change get a short hash, so two devices whose ids
    differ only in case or '_' vs '-' never share a host name."""
    name = device_id.lower().replace("_", "-").strip("-")
    if name == device_id and len(name) <= 31:
        return name
    digest = hashlib.sha256(device_id.encode()).hexdigest()[:6]
    return f"{name[:24].rstrip('-')}-{digest}"


def secrets_template(node: Node) -> str:
    """The ``secrets.yaml`` entries the node file reads, to fill in beside it."""
    lines = [
        "# secrets.yaml beside the node file (never commit it)",
        'wifi_ssid: "your farm Wi-Fi"',
        'wifi_password: "its password"',
        'fallback_ap_password: "8+ characters, for the set-up hotspot"',
        'ota_password: "a password for over-the-air updates"',
    ]
    if node.password is None and node.claim_code is None:
        lines.append('mqtt_password: "the device password shown once when it was added"')
    if node.broker_host is None:
        lines.append('edge_host: "the edge\'s address on the farm network, e.g. 192.168.1.10"')
    if node.tls and node.ca_pem is None:
        lines += ["edge_ca: |  # the edge's credentials/tls/ca.crt, indented like this",
                  "  -----BEGIN CERTIFICATE-----", "  ...", "  -----END CERTIFICATE-----"]
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def _c(text: str) -> str:
    """A C++ string literal."""
    return json.dumps(text, ensure_ascii=True)


def _block(text: str, indent: int) -> list[str]:
    pad = " " * indent
    return [pad + line if line else "" for line in text.strip("\n").split("\n")]


def node_yaml(node: Node) -> str:
    """The node's complete ESPHome YAML (``esphome config`` accepts it with a secrets.yaml)."""
    out: list[str] = []
    out += _header(node)
    out += _core(node)
    out += _network(node)
    out += _mqtt(node)
    out += _time(node)
    out += _health(node)
    if node.kind == "sensor":
        out += _sensor_node(node)
    else:
        out += _actuator_node(node)
    return "\n".join(out).rstrip("\n") + "\n"


def _header(node: Node) -> list[str]:
    what = (
        f"actuator ({ACTUATOR_LABELS[node.actuator]}, {node.output_drive})"  # type: ignore[index]
        if node.actuator
        else "sensor"
    )
    lines = [
        f"# smartfarm {what} node {node.device_id}: farm {node.farm_id}, room {node.room_id}",
        "# Generated by smartfarm; wiring, flashing and the MQTT contract: docs/devices.md.",
        "# Needs a secrets.yaml beside it with: wifi_ssid, wifi_password, fallback_ap_password,",
        "# ota_password"
        + (", mqtt_password" if node.password is None and node.claim_code is None else "")
        + (", edge_host" if node.broker_host is None else "")
        + (", edge_ca" if node.tls and node.ca_pem is None else "")
        + ".",
    ]
    if node.password is not None:
        lines.append("# It holds the device's MQTT password: keep it as private as secrets.yaml.")
    if node.claim_code is not None:
        lines += [
            "# Claim mode: it logs in with the farm's claim code and a key it draws on first boot,",
            "# waits to be adopted (edge page or cloud) into this room as this kind of node, then",
            "# takes its MQTT password from the edge, keeps it in flash and reboots with it.",
            "# It holds the farm's claim code: keep it as private as secrets.yaml.",
        ]
    return [
        *lines,
        "",
        "substitutions:",
        f"  device_id: {_q(node.device_id)}",
        f"  telemetry_topic: {_q(node.topic('telemetry'))}",
        f"  status_topic: {_q(node.topic('status'))}",
        f"  ack_topic: {_q(node.topic('ack'))}",
        f"  command_topic: {_q(node.topic('command'))}",
        "  # The version the node reports (its status's firmware field): raise it before you",
        "  # build an image to offer from the edge (docs/firmware-updates.md).",
        f"  firmware_version: {_q(node.firmware_version)}",
        "",
    ]


def _core(node: Node) -> list[str]:
    lines = [
        "esphome:",
        f"  name: {_q(node_name(node.device_id))}",
        f"  friendly_name: {_q(node.device_id)}",
        f"  comment: {_q(f'smartfarm {node.kind} in room {node.room_id}')}",
        "  project:",
        f"    name: {_q('smartfarm.' + node.kind + '-node')}",
        "    version: ${firmware_version}",
    ]
    boot: list[str] = []
    if node.kind == "actuator":
        boot += [
            "  # Boot-safe: the output is off from power-up until a command says otherwise.",
            "  - priority: 800",
            "    then:",
            "      - output.turn_off: drive",
            "      - lambda: 'id(level) = 0.0f;'",
        ]
    if node.claim_code is not None:
        boot += [
            "  # Before MQTT starts: its own password from flash, else claim mode.",
            "  - priority: 600",
            "    then:",
            "      - lambda: |-",
            *_block(claim_boot_lambda(node), 10),
        ]
    if node.claim_code is not None:
        lines += ["  on_boot:", *_block("\n".join(boot), 2)]
    elif boot:  # the actuator's alone: the mapping form
        lines += [
            "  on_boot:",
            "    # Boot-safe: the output is off from power-up until a command says otherwise.",
            "    priority: 800",
            "    then:",
            "      - output.turn_off: drive",
            "      - lambda: 'id(level) = 0.0f;'",
        ]
    lines += [
        "",
        "esp32:",
        f"  board: {_q(node.board)}",
        "  framework:",
        "    type: esp-idf",
        "",
        "logger:",
        "  level: INFO",
        "",
        "ota:",
        "  # `esphome run` on the LAN (ota_password), and the edge's `ota` command (below).",
        "  - platform: esphome",
        "    password: !secret ota_password",
        *_block(ota_platform("${ack_topic}", "${device_id}"), 2),
        "",
        *_block(ota_http_request(), 0),
    ]
    return [*lines, ""]


def _network(node: Node) -> list[str]:
    return [
        "wifi:",
        "  ssid: !secret wifi_ssid",
        "  password: !secret wifi_password",
        "  ap:",
        f"    ssid: {_q(('smartfarm ' + node_name(node.device_id))[:32])}",
        "    password: !secret fallback_ap_password",
        "",
        "captive_portal:",
        "",
    ]


def _mqtt(node: Node) -> list[str]:
    host = _q(node.broker_host) if node.broker_host else "!secret edge_host"
    password = (_q(node.password) if node.password is not None
                else _q(node.claim_code) if node.claim_code is not None
                else "!secret mqtt_password")
    client_id = (node.device_id if node.claim_code is None
                 else f"{node.device_id}@{node.room_id}")  # the room it was made for
    birth = json.dumps(
        {"device_id": node.device_id, "online": True,
         "firmware": f"{FIRMWARE_PREFIX}/${{firmware_version}}"},
        separators=(",", ":"),
    )
    will = json.dumps({"device_id": node.device_id, "online": False}, separators=(",", ":"))
    lines = [
        "mqtt:",
        "  id: mqtt_client",
        f"  broker: {host}",
        f"  port: {node.broker_port}",
        f"  username: {_q(node.device_id)}",
        f"  password: {password}",
        f"  client_id: {_q(client_id)}",
        "  # Only the device's own topics: no discovery, no log topic, every entity internal.",
        "  discovery: false",
        "  log_topic: null",
        "  keepalive: 30s",
        "  # No session kept across a reconnect: no stale command queued for hours is applied on",
        "  # return (the edge retries a command a few times, then its automation sends anew).",
        "  clean_session: true",
        "  reboot_timeout: 0s  # keep controlling locally (failsafe) rather than reboot-looping",
        "  birth_message:",
        "    topic: ${status_topic}",
        f"    payload: {_q(birth)}",
        "    qos: 1",
        "  will_message:",
        "    topic: ${status_topic}",
        f"    payload: {_q(will)}",
        "    qos: 1",
        "  shutdown_message:",
        "    topic: ${status_topic}",
        f"    payload: {_q(will)}",
        "    qos: 1",
    ]
    if node.tls:
        lines.append("  # TLS: trust only the edge's own CA (credentials/tls/ca.crt on the edge).")
        if node.ca_pem is not None:
            lines.append("  certificate_authority: |")
            lines += _block(node.ca_pem, 4)
        else:
            lines.append("  certificate_authority: !secret edge_ca")
    lines += ["  on_connect:", "    then:", "      - script.execute: publish_status"]
    if node.kind == "sensor":
        lines += ["      - script.execute: publish_telemetry"]
    else:
        lines += ["      - script.stop: failsafe", "  on_disconnect:", "    then:",
                  "      - script.execute: failsafe"]
    lines += [
        "  on_json_message:",
        "    - topic: ${command_topic}",
        "      qos: 1",
        "      then:",
        ota_dispatch("${ack_topic}", "${device_id}", 8).rstrip("\n"),
        "        - lambda: |-",
    ]
    lines += _block(command_lambda(node) if node.kind == "actuator" else _SENSOR_COMMAND_LAMBDA,
                    12)
    return [*lines, ""]


def _time(node: Node) -> list[str]:
    servers = node.ntp_servers or ((node.broker_host,) if node.broker_host else ())
    lines = [
        "time:",
        "  # The edge is the farm's clock (it serves NTP on the LAN; docs/devices.md). Until the",
        "  # clock is set the node sends no timestamp and the edge stamps its receive time.",
        "  - platform: sntp",
        "    id: sntp_time",
        "    timezone: UTC",
    ]
    if servers:
        lines += ["    servers:"] + [f"      - {_q(s)}" for s in servers[:3]]
    else:
        lines += ["    servers:", "      - !secret edge_host"]
    return [*lines, ""]


def _health(node: Node) -> list[str]:
    lines = [
        "sensor:",
        "  - platform: wifi_signal",
        "    id: wifi_rssi",
        "    internal: true",
        "    update_interval: 60s",
        "  - platform: uptime",
        "    id: uptime_s",
        "    internal: true",
        "    update_interval: 60s",
    ]
    if node.kind == "sensor":
        lines += _sensors(node)
    return [*lines, ""]


def _sensors(node: Node) -> list[str]:
    every = f"{node.interval_s}s"
    pins = node.gpio
    lines: list[str] = []
    if node.th_sensor == "sht4x":
        lines += [
            "  - platform: sht4x",
            "    address: 0x44",
            f"    update_interval: {every}",
            "    temperature:",
            "      id: air_temperature",
            "      internal: true",
            "    humidity:",
            "      id: air_humidity",
            "      internal: true",
            "      filters:",
            "        - clamp: {min_value: 0, max_value: 100}",
        ]
    else:
        lines += [
            "  - platform: sht3xd",
            "    address: 0x44",
            f"    update_interval: {every}",
            "    temperature:",
            "      id: air_temperature",
            "      internal: true",
            "    humidity:",
            "      id: air_humidity",
            "      internal: true",
            "      filters:",
            "        - clamp: {min_value: 0, max_value: 100}",
        ]
    if "co2" in node.sensors:
        lines += [
            "  - platform: scd4x",
            "    address: 0x62",
            f"    update_interval: {max(node.interval_s, 5)}s",
            "    co2:",
            "      id: co2",
            "      internal: true",
        ]
    if "light" in node.sensors:
        lines += [
            "  - platform: bh1750",
            "    id: illuminance",
            "    address: 0x23",
            "    internal: true",
            f"    update_interval: {every}",
        ]
    if "substrate" in node.sensors:
        lines += [
            "  # Capacitive probe v1.2 at 3.3 V: ~2.80 V in air (0 %), ~1.40 V in water (100 %).",
            "  # Calibrate: read the voltage dry and soaked, put both here (docs/devices.md).",
            "  - platform: adc",
            "    id: substrate_moisture",
            f"    pin: {pins.substrate}",
            "    attenuation: 12db",
            "    internal: true",
            f"    update_interval: {every}",
            "    filters:",
            "      - median: {window_size: 5, send_every: 1}",
            "      - calibrate_linear:",
            "          - 2.80 -> 0.0",
            "          - 1.40 -> 100.0",
            "      - clamp: {min_value: 0, max_value: 100}",
        ]
    if "battery" in node.sensors:
        lines += [
            "  # Li-ion cell through a 100 kΩ / 100 kΩ divider: the pin sees half its voltage.",
            "  - platform: adc",
            "    id: battery_voltage",
            f"    pin: {pins.battery}",
            "    attenuation: 12db",
            "    internal: true",
            f"    update_interval: {every}",
            "    filters:",
            "      - multiply: 2.0",
            "      - clamp: {min_value: 0, max_value: 6}",
        ]
    return lines


def _metrics(node: Node) -> list[tuple[str, str]]:
    """(metric, sensor id) this node reports, in the vocabulary's order."""
    fitted = {"temperature_c", "humidity_pct"}
    fitted |= {m for m, opt in (("co2_ppm", "co2"), ("light_lux", "light"),
                                ("substrate_moisture", "substrate"), ("battery_v", "battery"))
               if opt in node.sensors}
    return [(m, sid) for m, sid in SENSOR_METRICS.items() if m in fitted]


def _has_value(sensor_id: str) -> str:
    return f"(id({sensor_id}).has_state() && !std::isnan(id({sensor_id}).state))"


def _telemetry_lambda(node: Node) -> str:
    lines = [
        'root["device_id"] = "${device_id}";',
        "auto now = id(sntp_time).utcnow();",
        'if (now.is_valid()) root["timestamp"] = now.strftime("%Y-%m-%dT%H:%M:%SZ");',
        'JsonObject data = root["data"].to<JsonObject>();',
    ]
    for metric, sid in _metrics(node):
        lines.append(f'if {_has_value(sid)} data["{metric}"] = id({sid}).state;')
    return "\n".join(lines)


def _state_lambda(node: Node) -> str:
    """Statements filling ``state`` (a JsonObject) with the node's state, as the simulator's."""
    if node.kind == "sensor":
        if "battery" not in node.sensors:
            return ""
        return f'if {_has_value("battery_voltage")} state["battery_v"] = id(battery_voltage).state;'
    return "\n".join([
        'state["on"] = id(level) > 0.0f;',
        'state["level"] = roundf(id(level) * 1000.0f) / 10.0f;',
        'state["role"] = "' + str(node.actuator) + '";',
    ])


def _status_lambda(node: Node) -> str:
    return "\n".join([
        'root["device_id"] = "${device_id}";',
        'root["online"] = true;',
        "auto now = id(sntp_time).utcnow();",
        'if (now.is_valid()) root["timestamp"] = now.strftime("%Y-%m-%dT%H:%M:%SZ");',
        'JsonObject state = root["state"].to<JsonObject>();',
        _state_lambda(node),
        f'root["firmware"] = "{FIRMWARE_PREFIX}/${{firmware_version}}";',
        f'if {_has_value("wifi_rssi")} root["rssi_dbm"] = roundf(id(wifi_rssi).state);',
        f'if {_has_value("uptime_s")} root["uptime_s"] = roundf(id(uptime_s).state);',
    ])


# Runs for every JSON message on the command topic (``x`` is the parsed object). A command is
# {"command_id","device_id","action","value","timestamp"} (shared.models.Command).
_COMMAND_LAMBDA: Final = r"""
const char *cid_raw = x["command_id"] | "";
std::string cid(cid_raw);
bool cid_ok = !cid.empty() && cid.size() <= 64 && isalnum((unsigned char) cid[0]);
for (char c : cid) cid_ok = cid_ok && (isalnum((unsigned char) c) || c == '_' || c == '-');
if (!cid_ok) cid = "unknown";
std::string device(x["device_id"] | "");
std::string action(x["action"] | "");
if (action == "ota") return;  // the update script's (ota_dispatch)
JsonVariantConst value = x["value"];
std::string error;
bool repeated = false;
for (auto &seen : id(recent_commands)) repeated = repeated || (cid_ok && seen == cid);
float target = id(level);
if (repeated) {
  // QoS 1 redelivery or an edge retry: ack again, do not apply twice.
} else if (!cid_ok) {
  error = "command_id missing or invalid";
} else if (device != "${device_id}") {
  error = "command is for " + device;
} else if (action == "on") {
  target = 1.0f;
} else if (action == "off") {
  target = 0.0f;
} else if (action == "set") {
  if (value.is<bool>()) {
    target = value.as<bool>() ? 1.0f : 0.0f;
  } else if (value.is<float>() && value.as<float>() >= 0.0f && value.as<float>() <= 100.0f) {
    target = value.as<float>() / 100.0f;
  } else {
    error = "set needs a value 0-100 or a boolean";
  }
} else {
  error = "unknown action " + action.substr(0, 40);
}
if (!repeated && error.empty()) {
  id(level) = target;
  if (target <= 0.0f) {
    id(drive).turn_off();
  } else {
    id(drive).set_level(target);
  }
  id(recent_commands).push_back(cid);
  if (id(recent_commands).size() > 32) id(recent_commands).erase(id(recent_commands).begin());
}
id(mqtt_client).publish_json("${ack_topic}", [=](JsonObject root) {
  root["command_id"] = cid;
  root["status"] = error.empty() ? "ok" : "error";
  root["device_id"] = "${device_id}";
  if (!error.empty()) root["error"] = error;
  JsonObject state = root["state"].to<JsonObject>();
  __STATE__
  auto now = id(sntp_time).utcnow();
  if (now.is_valid()) root["timestamp"] = now.strftime("%Y-%m-%dT%H:%M:%SZ");
}, 1, false);
if (!repeated && error.empty()) id(publish_status).execute();
"""


# A sensor node takes no command but ``ota``: anything else is acked as an error, so the edge
# does not wait for it to time out.
_SENSOR_COMMAND_LAMBDA: Final = r"""
std::string action(x["action"] | "");
if (action == "ota") return;  // the update script's (ota_dispatch)
std::string cid(x["command_id"] | "unknown");
id(mqtt_client).publish_json("${ack_topic}", [=](JsonObject root) {
  root["command_id"] = cid.substr(0, 64);
  root["device_id"] = "${device_id}";
  root["status"] = "error";
  root["error"] = "a sensor node takes no command but ota";
}, 1, false);
"""


def _sensor_node(node: Node) -> list[str]:
    any_value = " || ".join(_has_value(sid) for _, sid in _metrics(node))
    not_claiming = NOT_CLAIMING[node.claim_code is None]
    lines = [
        "i2c:",
        f"  sda: {node.gpio.sda}",
        f"  scl: {node.gpio.scl}",
        "  scan: true",
        "",
        "script:",
        "  - id: publish_telemetry",
        "    mode: single",
        "    then:",
        "      - if:",
        "          condition:",
        "            lambda: |-",
        f"              return id(mqtt_client).is_connected(){not_claiming} && ({any_value});",
        "          then:",
        "            - mqtt.publish_json:",
        "                topic: ${telemetry_topic}",
        "                qos: 1",
        "                payload: |-",
    ]
    lines += _block(_telemetry_lambda(node), 18)
    lines += _status_script(node)
    lines += ["", "globals:", *_block(ota_globals(), 2), *claim_globals(node)]
    lines += [
        "",
        "interval:",
        f"  - interval: {node.interval_s}s",
        "    then:",
        "      - script.execute: publish_telemetry",
        "  - interval: 60s",
        "    then:",
        "      - script.execute: publish_status",
        *claim_hello(node),
    ]
    return lines


def _status_script(node: Node) -> list[str]:
    lines = [
        "  - id: publish_status",
        "    mode: queued",
        "    then:",
        "      - if:",
        "          condition:",
        *(["            mqtt.connected:"] if node.claim_code is None else [
            "            lambda: 'return id(mqtt_client).is_connected() && !id(sf_claiming);'"]),
        "          then:",
        "            - mqtt.publish_json:",
        "                topic: ${status_topic}",
        "                qos: 1",
        "                payload: |-",
    ]
    lines += _block(_status_lambda(node), 18)
    lines += _block(ota_script("${ack_topic}", "${device_id}"), 2)
    if node.claim_code is not None:
        lines += [
            "  # Adopted: the password is in flash; reboot into it (globals are saved first).",
            "  - id: sf_adopted",
            "    mode: single",
            "    then:",
            "      - delay: 2s",
            "      - lambda: 'App.safe_reboot();'",
        ]
    return lines


def _actuator_node(node: Node) -> list[str]:
    assert node.actuator is not None
    pin = [f"    pin: {node.gpio.output}"] if not node.inverted else [
        "    pin:", f"      number: {node.gpio.output}", "      inverted: true"]
    if node.output_drive == "relay":
        output = [
            "output:",
            "  # A relay, time-proportioned: level 40 % = on 24 s of every 60 s.",
            "  - platform: slow_pwm",
            "    id: drive",
            *pin,
            f"    period: {RELAY_PERIOD_S}s",
            "    restart_cycle_on_state_change: true",
        ]
    else:
        output = [
            "output:",
            f"  # PWM ({PWM_FREQUENCY_HZ[node.actuator]} Hz) into a fan's PWM input or a dimmable"
            " LED driver.",
            "  - platform: ledc",
            "    id: drive",
            *pin,
            f"    frequency: {PWM_FREQUENCY_HZ[node.actuator]}Hz",
        ]
    lines = [
        *output,
        "",
        "globals:",
        "  # The commanded level 0..1; never restored from flash (boot-safe).",
        "  - id: level",
        "    type: float",
        "    restore_value: false",
        "    initial_value: '0.0'",
        "  - id: recent_commands",
        "    type: std::vector<std::string>",
        "    restore_value: false",
        *_block(ota_globals(), 2),
        *claim_globals(node),
        "",
        "script:",
        "  # Without the broker for failsafe_s the output goes off (the edge cannot watch it).",
        "  - id: failsafe",
        "    mode: restart",
        "    then:",
        f"      - delay: {node.failsafe_s}s",
        "      - output.turn_off: drive",
        "      - lambda: 'id(level) = 0.0f;'",
    ]
    lines += _status_script(node)
    lines += [
        "",
        "interval:",
        "  - interval: 60s",
        "    then:",
        "      - script.execute: publish_status",
        *claim_hello(node),
    ]
    return lines


def command_lambda(node: Node) -> str:
    """The command handler's C++ with this node's state statements (for node_yaml and tests)."""
    return _COMMAND_LAMBDA.replace("__STATE__", _state_lambda(node).replace("\n", "\n  "))
