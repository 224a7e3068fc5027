"""What the simulator needs to know about a site: its rooms, devices and broker. The edge's
settings have this shape already; the simulator asks for the shape, not for the edge, so that
`firmware_sim` never imports `edge` (whoever wires the two, `demo/` or `smartfarm sim`, passes
the site in).
"""
from __future__ import annotations

import logging
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from shared.errors import SmartfarmError
from shared.profiles import Species, Stage
from shared.rules import ActuatorRole

log = logging.getLogger(__name__)


class SiteError(SmartfarmError):
    """The site cannot be simulated (bad secrets file, no port); the message says why."""


class BrokerSpec(Protocol):
    @property
    def mode(self) -> str: ...
    @property
    def url(self) -> str | None: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def keepalive_s(self) -> int: ...


class RoomSpec(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def species(self) -> Species: ...
    @property
    def stage(self) -> Stage: ...


class DeviceSpec(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def room(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def actuator(self) -> ActuatorRole | None: ...


class Site(Protocol):
    """A farm to simulate (``edge.config.EdgeSettings`` is one)."""

    @property
    def farm_id(self) -> str: ...
    @property
    def broker(self) -> BrokerSpec: ...
    @property
    def rooms(self) -> Sequence[RoomSpec]: ...
    @property
    def devices(self) -> Sequence[DeviceSpec]: ...
    @property
    def device_secrets_path(self) -> Path: ...
    @property
    def log_level(self) -> str: ...


def read_device_secrets(path: Path) -> dict[str, str]:
    """Device id → password from the device secrets file (``[devices.<id>] password``); {} when
    the file is missing (the devices then connect without a password)."""
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        log.warning("device secrets file %s not found: devices connect without a password", path)
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise SiteError(f"{path}: invalid TOML: {exc}") from None
    devices = doc.get("devices", {})
    if not isinstance(devices, dict):
        raise SiteError(f"{path}: [devices] must be a table")
    return {
        dev_id: str(entry["password"])
        for dev_id, entry in devices.items()
        if isinstance(entry, dict) and "password" in entry
    }
