"""The ESPHome node file of one of this edge's devices (``shared.esphome``), with what only the
edge knows: the farm, the device's room and role, its password (``credentials/devices.toml``),
the broker's port, TLS and CA. Used by ``smartfarm edge device add --esphome``, ``smartfarm edge
device esphome`` and the local page's download (``GET /api/devices/{id}/esphome.yaml``); and the
claim-mode file of a node not adopted yet (``smartfarm edge device claim-file``, ``GET
/api/onboarding/claim-file.yaml``)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from edge.config import ConfigError, DeviceConfig, EdgeSettings
from edge.credentials import CredentialsError, DeviceSecrets
from shared.esphome import OPTIONAL_SENSORS, BoardOptions, Node, ThSensor, node_yaml

_WILDCARD = {"", "0.0.0.0", "::", "localhost"}  # noqa: S104 - names, not a bind


@dataclass(frozen=True)
class NodeOptions:
    """What the installer chooses about the board (the rest comes from the edge)."""

    host: str | None = None
    board: str = "esp32dev"
    th_sensor: ThSensor = "sht4x"
    sensors: frozenset[str] = frozenset(OPTIONAL_SENSORS)
    drive: Literal["relay", "pwm"] | None = None
    inverted: bool = False
    interval_s: int = 30

    @classmethod
    def of(cls, query: BoardOptions) -> NodeOptions:
        """The options a download's query asked for."""
        return cls(host=query.host, board=query.board, th_sensor=query.th_sensor,
                   sensors=query.sensors(), drive=query.drive, inverted=query.inverted,
                   interval_s=query.interval_s)


def advertised_host(settings: EdgeSettings) -> str | None:
    """The broker address devices can use, when the config names one (a LAN address or name the
    broker binds); None when it listens on all addresses or loopback only (the installer says)."""
    broker = settings.broker
    if broker.mode == "external":
        host = urlsplit(broker.url or "").hostname or ""
    elif broker.tls.enabled and broker.tls.host:
        host = broker.tls.host
    else:
        host = broker.host
    if host in _WILDCARD:
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return host


def broker_port(settings: EdgeSettings) -> tuple[int, bool]:
    """(port, tls) a device connects to."""
    broker = settings.broker
    if broker.mode == "external":
        url = urlsplit(broker.url or "")
        tls = url.scheme in ("mqtts", "ssl")
        return url.port or (8883 if tls else 1883), tls
    if broker.tls.enabled:
        return broker.tls.port, True
    return broker.port, False


def device_password(settings: EdgeSettings, device_id: str) -> str | None:
    """The device's MQTT password when this edge made it (None: the cloud made it, only its hash
    is here; the node file then reads it from secrets.yaml)."""
    try:
        return DeviceSecrets.load(settings.device_secrets_path).devices.get(device_id)
    except CredentialsError:
        return None


def device_node(settings: EdgeSettings, device: DeviceConfig, options: NodeOptions) -> Node:
    """The node description; ValueError naming the field when an option does not fit."""
    return _node(settings, device.id, device.room, device.kind, device.actuator, options,
                 password=device_password(settings, device.id))


def claim_node(settings: EdgeSettings, device_id: str, room_id: str, kind: str,
               actuator: str | None, options: NodeOptions, claim_code: str) -> Node:
    """A claim-mode node (docs/onboarding.md) for a device this edge does not have yet, made for
    ``room_id`` as ``kind``/``actuator`` (through Mosquitto's claim account when the broker is
    external): ValueError naming the field when the id is taken, the room unknown or an option
    does not fit."""
    if settings.device(device_id) is not None:
        raise ValueError(f"device_id {device_id!r} is already a device of this edge: use its"
                         " own node file")
    if settings.room(room_id) is None:
        raise ValueError(f"room_id {room_id!r}: not a room of this edge")
    return _node(settings, device_id, room_id, kind, actuator, options,
                 claim_code=claim_code.strip().upper(),
                 claim_via="mosquitto" if settings.broker.mode == "external" else "embedded")


def _node(settings: EdgeSettings, device_id: str, room_id: str, kind: str,
          actuator: str | None, options: NodeOptions, *, password: str | None = None,
          claim_code: str | None = None,
          claim_via: Literal["embedded", "mosquitto"] = "embedded") -> Node:
    if kind not in ("sensor", "actuator"):
        raise ValueError(f"kind {kind!r}: sensor or actuator")
    port, tls = broker_port(settings)
    ca_pem: str | None = None
    if tls:
        ca_path = settings.resolve(settings.broker.tls.ca_file)
        try:
            ca_pem = ca_path.read_text()
        except OSError as exc:
            raise ConfigError(f"broker TLS is on but its CA {ca_path} cannot be read: {exc}"
                              " (smartfarm edge tls-cert makes it)") from None
    host = options.host or advertised_host(settings)
    return Node(
        farm_id=settings.farm_id,
        room_id=room_id,
        device_id=device_id,
        kind=kind,  # type: ignore[arg-type]  # checked above
        actuator=actuator,
        password=password,
        claim_code=claim_code,
        claim_via=claim_via,
        broker_host=host,
        broker_port=port,
        tls=tls,
        ca_pem=ca_pem,
        board=options.board,
        th_sensor=options.th_sensor,
        sensors=options.sensors,
        drive=options.drive if kind == "actuator" else None,
        inverted=options.inverted,
        interval_s=options.interval_s,
    )


def device_yaml(settings: EdgeSettings, device_id: str, options: NodeOptions) -> str:
    """The node file of a device in ``settings``; ConfigError when there is no such device."""
    device = settings.device(device_id)
    if device is None:
        raise ConfigError(f"device {device_id!r} is not in {settings.config_path}")
    return node_yaml(device_node(settings, device, options))
