"""Device and edge MQTT credentials: the secrets TOML, the broker password file and ACL files.

The same secrets feed both brokers: amqtt (argon2id password file + a device→room JSON map read by
``edge.broker_acl``) and an external Mosquitto (PBKDF2-SHA512 password file + ``pattern`` ACL).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.errors import SmartfarmError
from shared.topics import UPLINK_KINDS, is_valid_id

if TYPE_CHECKING:
    from edge.config import EdgeSettings

log = logging.getLogger(__name__)

DEFAULT_EDGE_USERNAME = "smartfarm-edge"
ACL_FILE_NAME = "device-acl.json"

# OWASP's minimum argon2id profile (19 MiB, t=2, p=1). The passwords are random (>= 144 bits), so a
# heavier profile buys nothing, while it would cost the Pi RAM and CPU on every reconnect storm.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
# Mosquitto's own `mosquitto_passwd` (2.0) writes $7$ with 101 PBKDF2 rounds and a 12-byte salt.
_MOSQ_ITERATIONS = 101
_MOSQ_SALT_BYTES = 12


class CredentialsError(SmartfarmError):
    """A secrets or password file is missing, malformed, or asked for something impossible."""


# ---- passwords --------------------------------------------------------------------------------

def generate_password() -> str:
    """A fresh random password: 32 url-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str) -> str:
    """An argon2id hash (``$argon2id$v=19$m=…``), the format amqtt's FileAuthPlugin verifies."""
    return _HASHER.hash(password)


def verify_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches the argon2 ``hashed``; False on mismatch or a bad hash."""
    try:
        return _HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def mosquitto_hash(password: str, *, salt: bytes | None = None) -> str:
    """Mosquitto's ``$7$`` hash: PBKDF2-HMAC-SHA512 over the raw salt, base64 fields.

    Computed here rather than with ``mosquitto_passwd -b`` so a plaintext never appears on a
    command line (visible to every local user in /proc) and the edge works without the tool.
    """
    salt = salt if salt is not None else secrets.token_bytes(_MOSQ_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _MOSQ_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${_MOSQ_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


# ---- files ------------------------------------------------------------------------------------

def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o600) -> None:
    """Write atomically (temp file + fsync + rename) so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (power cuts are routine on a farm).
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_password_file(path: Path) -> dict[str, str]:
    """``user:hash`` lines (comments and blanks skipped); a missing file reads as empty."""
    entries: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return entries
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if sep and user and hashed:
            entries[user] = hashed
    return entries


def write_password_file(path: Path, entries: Mapping[str, str]) -> None:
    """Write ``user:hash`` lines (mode 0600, atomic). Used for amqtt and Mosquitto files alike."""
    for user, hashed in entries.items():
        if not is_valid_id(user) or ":" in hashed or "\n" in hashed:
            raise CredentialsError(f"refusing to write a bad password entry for {user!r}")
    body = "".join(f"{user}:{hashed}\n" for user, hashed in sorted(entries.items()))
    write_atomic(path, body)


# ---- the secrets file -------------------------------------------------------------------------

@dataclass
class DeviceSecrets:
    """The plaintext secrets (TOML, mode 0600): the edge's broker login and one per device."""

    path: Path
    edge_username: str = DEFAULT_EDGE_USERNAME
    edge_password: str = field(default_factory=generate_password, repr=False)
    devices: dict[str, str] = field(default_factory=dict, repr=False)
    # Accounts whose password changed in this process and whose hash must be redone on sync.
    rotated: set[str] = field(default_factory=set, repr=False, compare=False)

    @classmethod
    def load(cls, path: Path) -> DeviceSecrets:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CredentialsError(f"device secrets file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise CredentialsError(f"{path}: invalid TOML: {exc}") from None
        edge = data.get("edge")
        if not isinstance(edge, dict) or not isinstance(edge.get("password"), str):
            raise CredentialsError(f"{path}: [edge] needs a `password`")
        username = edge.get("username", DEFAULT_EDGE_USERNAME)
        if not is_valid_id(username):
            raise CredentialsError(f"{path}: edge.username {username!r} is not a valid id")
        raw_devices = data.get("devices") or {}
        if not isinstance(raw_devices, dict):
            raise CredentialsError(f"{path}: `devices` must be a table")
        devices: dict[str, str] = {}
        for dev_id, entry in raw_devices.items():
            if not is_valid_id(dev_id) or not isinstance(entry, dict):
                raise CredentialsError(f"{path}: bad device entry {dev_id!r}")
            if not isinstance(entry.get("password"), str) or not entry["password"]:
                raise CredentialsError(f"{path}: devices.{dev_id} needs a `password`")
            devices[dev_id] = entry["password"]
        return cls(path=path, edge_username=username, edge_password=edge["password"],
                   devices=devices)

    @classmethod
    def load_or_create(
        cls, path: Path, *, edge_username: str = DEFAULT_EDGE_USERNAME
    ) -> DeviceSecrets:
        """Load the file, or create it with a fresh edge password when it does not exist."""
        path = Path(path)
        if path.exists():
            return cls.load(path)
        if not is_valid_id(edge_username):
            raise CredentialsError(f"edge username {edge_username!r} is not a valid id")
        created = cls(path=path, edge_username=edge_username)
        created.save()
        return created

    def save(self) -> None:
        doc = {
            "edge": {"username": self.edge_username, "password": self.edge_password},
            "devices": {dev: {"password": pw} for dev, pw in sorted(self.devices.items())},
        }
        write_atomic(self.path, tomli_w.dumps(doc))

    def add_device(self, device_id: str, *, rotate: bool = False) -> str:
        """Create (or with ``rotate`` replace) a device's password, save, return it once."""
        if not is_valid_id(device_id):
            raise CredentialsError(f"device id {device_id!r} is not a valid id")
        if device_id == self.edge_username:
            raise CredentialsError(f"device id {device_id!r} is the edge's own username")
        if device_id in self.devices and not rotate:
            raise CredentialsError(f"device {device_id!r} already has credentials")
        password = generate_password()
        if device_id in self.devices:
            self.rotated.add(device_id)
        self.devices[device_id] = password
        self.save()
        return password

    def remove_device(self, device_id: str) -> bool:
        """Forget a device's password and save; False when it had none."""
        if self.devices.pop(device_id, None) is None:
            return False
        self.save()
        return True

    def plaintext_entries(self) -> dict[str, str]:
        """{username: plaintext} for every broker account: the edge and each device."""
        return {self.edge_username: self.edge_password, **self.devices}


# ---- amqtt broker files -----------------------------------------------------------------------

def sync_password_file(
    path: Path,
    secrets_: DeviceSecrets,
    *,
    changed: Iterable[str] = (),
    extra_hashes: Mapping[str, str] | None = None,
) -> None:
    """Make the argon2 password file match the secrets, hashing only what is new or changed.

    Hashing every account on each device add would cost seconds on a Pi with 200 devices, so an
    existing hash is kept unless its user is in ``changed`` or ``secrets_.rotated`` (a password
    replaced by ``add_device(rotate=True)``), or it no longer verifies for the edge account (whose
    password may come from the environment).

    ``extra_hashes`` ({username: argon2 hash}, e.g. devices registered in the cloud, whose
    plaintext never reaches the edge) go into the same file in the same atomic write. A user in
    both keeps the secrets file's password: a device flashed with its local password must not be
    locked out (and its room left without automation) because someone also registered it in the
    cloud. The edge's own account is never taken from them.
    """
    current = read_password_file(path)
    redo = set(changed) | secrets_.rotated
    extra = dict(extra_hashes or {})
    for user, hashed in extra.items():
        if user == secrets_.edge_username:
            raise CredentialsError(f"{user!r} is the edge's own broker account")
        if not hashed.startswith("$argon2"):
            raise CredentialsError(f"the password hash for {user!r} is not an argon2 hash")
    entries: dict[str, str] = dict(extra)
    for user, password in secrets_.plaintext_entries().items():
        old = current.get(user)
        # The cloud's hash in the file for a user the secrets file now has: not this password.
        if (old is None or user in redo or not old.startswith("$argon2")
                or old == extra.get(user)):
            entries[user] = hash_password(password)
        elif user == secrets_.edge_username and not verify_password(password, old):
            entries[user] = hash_password(password)
        else:
            entries[user] = old
    if entries != current:
        write_password_file(path, entries)
    secrets_.rotated.clear()


def write_device_acl(path: Path, device_rooms: Mapping[str, str]) -> None:
    """Write the device→room map ``edge.broker_acl`` enforces (reloaded when the file changes)."""
    for dev, room in device_rooms.items():
        if not (is_valid_id(dev) and is_valid_id(room)):
            raise CredentialsError(f"bad device/room in ACL: {dev!r} → {room!r}")
    doc = {"devices": dict(sorted(device_rooms.items()))}
    write_atomic(path, json.dumps(doc, indent=2) + "\n", mode=0o644)


def device_acl_path(settings: EdgeSettings) -> Path:
    """The ACL map lives next to the password file (``credentials/device-acl.json``)."""
    return settings.password_file_path.with_name(ACL_FILE_NAME)


def edge_login(settings: EdgeSettings, secrets_: DeviceSecrets | None = None) -> tuple[str, str]:
    """(username, password) the edge's own MQTT clients log in with.

    ``broker.edge_password`` (env/config) wins; otherwise the secrets file's ``[edge]`` password.
    """
    username = settings.broker.edge_username
    if settings.broker.edge_password is not None:
        return username, settings.broker.edge_password.get_secret_value()
    secrets_ = secrets_ or DeviceSecrets.load(settings.device_secrets_path)
    if secrets_.edge_username != username:
        raise CredentialsError(
            f"broker.edge_username {username!r} differs from the secrets file's "
            f"{secrets_.edge_username!r}"
        )
    return username, secrets_.edge_password


def sync_broker_files(
    settings: EdgeSettings,
    secrets_: DeviceSecrets | None = None,
    *,
    extra_hashes: Mapping[str, str] | None = None,
) -> None:
    """(Re)build the amqtt password file and device ACL map from the secrets and the config,
    plus ``extra_hashes`` (accounts known only by their argon2 hash: devices registered in the
    cloud) merged into the same atomic write, so no reader ever sees the file without them.

    A running embedded broker notices both files within about a second (see edge.broker_acl).
    """
    secrets_ = secrets_ or DeviceSecrets.load_or_create(
        settings.device_secrets_path, edge_username=settings.broker.edge_username
    )
    rooms = {d.id: d.room for d in settings.devices}
    # A device removed from the config (by hand, or by the cloud's config sync, which shrinks
    # settings.devices before calling here) loses its account: its secret, its password entry
    # (the file is rebuilt from the secrets) and its ACL entry. Pruned before the edge password
    # may be replaced by the environment's below, which must never reach the file.
    if removed := sorted(set(secrets_.devices) - set(rooms)):
        for device_id in removed:
            del secrets_.devices[device_id]
        secrets_.save()
        log.info("broker accounts of devices no longer in the config removed: %s",
                 ", ".join(removed))
    _, edge_password = edge_login(settings, secrets_)
    if edge_password != secrets_.edge_password:
        # The environment supplied the edge password: hash that one, keep the file untouched.
        secrets_ = replace(secrets_, edge_password=edge_password)
    extra = dict(extra_hashes or {})
    if unplaced := sorted(set(extra) - set(rooms)):
        # A login with no topics is no use to anyone: no account for it.
        log.warning("password hashes for devices not in the config ignored: %s",
                    ", ".join(unplaced))
        extra = {user: hashed for user, hashed in extra.items() if user in rooms}
    sync_password_file(settings.password_file_path, secrets_, extra_hashes=extra)
    write_device_acl(device_acl_path(settings), rooms)
    if missing := sorted(set(rooms) - set(secrets_.devices) - set(extra)):
        log.warning("devices without credentials (cannot log in): %s", ", ".join(missing))


# ---- external Mosquitto -----------------------------------------------------------------------

def write_mosquitto_password_file(path: Path, passwords: Mapping[str, str]) -> None:
    """A Mosquitto ``password_file`` from {username: plaintext} (e.g. plaintext_entries())."""
    write_password_file(path, {user: mosquitto_hash(pw) for user, pw in passwords.items()})


def render_mosquitto_acl(farm_id: str, edge_username: str,
                         ha_discovery_prefix: str | None = None,
                         claim_account: str = "smartfarm-claim") -> str:
    """The Mosquitto ``acl_file``: each device (username = device id) writes only its own uplink
    topics and reads only its own command topic, in any room; the edge reads/writes the farm.

    ``pattern`` lines use ``%u`` so the file never changes when a device is added (only the
    password file does). The room level stays ``+`` here; the embedded broker pins the room.
    """
    if not (is_valid_id(farm_id) and is_valid_id(edge_username)):
        raise CredentialsError("farm id and edge username must be valid ids")
    base = f"farm/{farm_id}/room/+"
    lines = [
        "# smartfarm Mosquitto ACL (generated by edge.credentials.render_mosquitto_acl).",
        "# Anything not granted here is denied. Reload with SIGHUP after editing.",
        "",
        "# Every device: username = device id.",
        *(f"pattern write {base}/{kind}/%u" for kind in UPLINK_KINDS),
        f"pattern read {base}/command/%u",
        "",
        "# Claim mode (docs/onboarding.md; edge.external_claims): every client may read the",
        "# claim topic named by its own client id, <id>.<claim key>, where the edge hands an",
        "# adopted node its password; the shared claim account (password: the claim code) may",
        "# only say hello besides.",
        f"pattern read farm/{farm_id}/claim/%c",
        f"user {claim_account}",
        f"topic write farm/{farm_id}/claim/hello",
        "",
        "# The edge process: the whole farm.",
        f"user {edge_username}",
        f"topic readwrite farm/{farm_id}/#",
        *([f"topic readwrite {ha_discovery_prefix}/#"] if ha_discovery_prefix else []),
        "",
    ]
    return "\n".join(lines)


def write_mosquitto_acl(path: Path, farm_id: str, edge_username: str,
                        ha_discovery_prefix: str | None = None) -> None:
    text = render_mosquitto_acl(farm_id, edge_username, ha_discovery_prefix)
    write_atomic(path, text, mode=0o644)
