"""Benchmark sites: an edge config with N rooms and devices, their credentials, a private Mosquitto.

A site is written the way ``smartfarm edge init`` + ``device add`` would leave it (TOML config,
secrets file, amqtt password file and ACL map), but in one pass: adding 200 devices one by one
would re-read and re-validate the config 400 times.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from edge.config import EdgeSettings, load_config
from edge.credentials import (
    DeviceSecrets,
    generate_password,
    sync_broker_files,
    write_atomic,
    write_mosquitto_acl,
    write_mosquitto_password_file,
)
from shared.ports import free_port
from shared.profiles import profile_for

MOSQUITTO = Path("/usr/sbin/mosquitto")
SHIPPED_MOSQUITTO_CONF = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / (
    "mosquitto.conf"
)
EDGE_USERNAME = "smartfarm-edge"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn for benchmark subprocesses: the kernel SIGTERMs them if the bench dies (Linux),
    so a killed run leaves no edge, simulator or broker behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class RoomSpec:
    """One room: ``sensors`` sensor nodes and the given actuators (device id → role)."""

    id: str
    sensors: int
    actuators: dict[str, str] = field(default_factory=dict)
    species: str = "oyster"
    stage: str = "fruiting"
    # device id → Safety fields, e.g. {"probe-hum": {"min_on_s": 0, "min_off_s": 0}}
    safety: dict[str, dict[str, Any]] = field(default_factory=dict)
    # user rules (shared.rules fields); one with a profile rule's id replaces it
    rules: list[dict[str, Any]] = field(default_factory=list)

    def sensor_ids(self) -> list[str]:
        return [f"{self.id}-s{i:03d}" for i in range(self.sensors)]


@dataclass(frozen=True, slots=True)
class Login:
    """What a simulated device needs to connect: its id, room and password."""

    device_id: str
    room_id: str
    password: str


@dataclass
class Site:
    directory: Path
    config_path: Path
    settings: EdgeSettings
    secrets: DeviceSecrets
    rooms: list[RoomSpec]

    @property
    def farm_id(self) -> str:
        return self.settings.farm_id

    def login(self, device_id: str) -> Login:
        device = self.settings.device(device_id)
        assert device is not None, device_id
        return Login(device_id, device.room, self.secrets.devices[device_id])

    def sensors(self, room_id: str | None = None) -> list[Login]:
        return [self.login(d.id) for d in self.settings.devices
                if d.kind == "sensor" and room_id in (None, d.room)]

    def actuators(self, room_id: str | None = None) -> list[Login]:
        return [self.login(d.id) for d in self.settings.devices
                if d.kind == "actuator" and room_id in (None, d.room)]


def write_site(
    directory: Path,
    rooms: list[RoomSpec],
    *,
    farm_id: str,
    broker_port: int = 0,
    api_port: int = 0,
    broker_url: str | None = None,
    store: dict[str, Any] | None = None,
    log_level: str = "WARNING",
) -> Site:
    """Write config + credentials for ``rooms`` into ``directory`` and return the loaded site.

    ``broker_url`` switches the edge to an external broker (then the Mosquitto files are written
    instead of amqtt's). ``store`` overrides [store] keys; omitted keys keep the edge's defaults.
    """
    directory.mkdir(parents=True, exist_ok=True)
    broker: dict[str, Any] = {"host": "127.0.0.1", "port": broker_port,
                              "password_file": "credentials/passwd"}
    if broker_url is not None:
        broker.update(mode="external", url=broker_url)
    doc: dict[str, Any] = {
        "farm_id": farm_id,
        "data_dir": "data",
        "device_secrets_file": "credentials/device-secrets.toml",
        "log_level": log_level,
        "broker": broker,
        "api": {"host": "127.0.0.1", "port": api_port, "admin_user": "admin",
                "admin_password_file": "credentials/admin-password"},
        "rooms": [{"id": r.id, "species": r.species, "stage": r.stage, "rules": r.rules}
                  for r in rooms],
        "devices": [],
    }
    if store:
        doc["store"] = dict(store)
    for room in rooms:
        for sensor in room.sensor_ids():
            doc["devices"].append({"id": sensor, "room": room.id, "kind": "sensor"})
        for device_id, role in room.actuators.items():
            entry: dict[str, Any] = {"id": device_id, "room": room.id, "kind": "actuator",
                                     "actuator": role}
            if device_id in room.safety:
                entry["safety"] = room.safety[device_id]
            doc["devices"].append(entry)
    config_path = directory / "edge.toml"
    write_atomic(config_path, tomli_w.dumps(doc), mode=0o644)
    settings = load_config(config_path)
    secrets = DeviceSecrets(path=settings.device_secrets_path, edge_username=EDGE_USERNAME,
                            devices={d.id: generate_password() for d in settings.devices})
    secrets.save()
    assert settings.api.admin_password_file is not None
    write_atomic(settings.resolve(settings.api.admin_password_file), generate_password() + "\n")
    if broker_url is None:
        sync_broker_files(settings, secrets)  # argon2: ~30 ms per device
    return Site(directory, config_path, load_config(config_path), secrets, rooms)


def band_center(species: str, stage: str) -> dict[str, float]:
    """Mid-band values of a profile, so background readings stay in band and switch nothing."""
    profile = profile_for(species, stage)  # type: ignore[arg-type]
    out = {"light_lux": 300.0, "substrate_moisture": 65.0, "battery_v": 4.1}
    defaults = {"temperature_c": 18.0, "humidity_pct": 88.0, "co2_ppm": 800.0}
    for metric, default in defaults.items():
        band = profile.band(metric)
        low = band.min if band is not None else None
        high = band.max if band is not None else None
        if low is not None and high is not None:
            out[metric] = (low + high) / 2
        elif high is not None:
            out[metric] = high * 0.6
        elif low is not None:
            out[metric] = low * 1.1
        else:
            out[metric] = default
    return out


# ---- a private Mosquitto ----------------------------------------------------------------------

class Mosquitto:
    """``mosquitto -c`` on a free loopback port with the shipped config, our password file and
    ACL; no persistence (each run starts clean). Use as a context manager."""

    def __init__(
        self, directory: Path, secrets: DeviceSecrets, farm_id: str, port: int | None = None
    ) -> None:
        self.directory = directory
        self.secrets = secrets
        self.farm_id = farm_id
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "mosquitto.log"

    @staticmethod
    def available() -> bool:
        return MOSQUITTO.exists() or shutil.which("mosquitto") is not None

    def _config(self, passwd: Path, acl: Path) -> str:
        keep = []
        for line in SHIPPED_MOSQUITTO_CONF.read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            if key in {"listener", "password_file", "acl_file", "persistence",
                       "persistence_location", "log_dest", "log_type"}:
                continue
            keep.append(line)
        if "max_queued_messages 0" not in keep:
            keep.append("max_queued_messages 0")  # the default 1000 drops QoS 1 under load
        keep += [f"listener {self.port} 127.0.0.1", f"password_file {passwd}",
                 f"acl_file {acl}", "persistence false", "log_dest stderr",
                 "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            keep.append("user root")  # else it drops to `mosquitto` and cannot read 0600 files
        return "\n".join(keep) + "\n"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        passwd, acl = self.directory / "passwd", self.directory / "acl"
        conf = self.directory / "mosquitto.conf"
        write_mosquitto_password_file(passwd, self.secrets.plaintext_entries())
        write_mosquitto_acl(acl, self.farm_id, self.secrets.edge_username)
        conf.write_text(self._config(passwd, acl))
        binary = str(MOSQUITTO if MOSQUITTO.exists() else shutil.which("mosquitto"))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log,
                                         preexec_fn=die_with_parent)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
