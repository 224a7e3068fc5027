"""Firmware images the edge serves to its own devices over the LAN, and the updates it offers.

No internet is involved: an installer copies an image to the edge (``smartfarm edge firmware add
FILE --version V``), the operator offers it to a device (the local page, or ``POST
/api/devices/{id}/firmware``), the device downloads it from the edge's own HTTP server, flashes
it, reboots and reports the new version in the ``firmware`` field of its status messages.

Images live in ``<data_dir>/firmware/``: ``<sha256>.bin`` plus ``index.json`` (version, sha256,
md5, size, when added, the devices it is for). An ESPHome image embeds the node's Wi-Fi and MQTT
secrets, so it is built for one device: ``--device`` pins it to it. An image without devices may
go to any device. The index is rewritten atomically under a lock (the CLI may add an image while
the edge runs).

The offer is a command on the device's command topic (the MQTT contract, ``shared.models``)::

    {"command_id": "…", "device_id": "…", "action": "ota", "timestamp": "…",
     "firmware": {"version": "1.3.0", "url": "http://edge:8088/firmware/<token>.bin",
                  "md5": "<32 hex>", "md5_url": "http://edge:8088/firmware/<token>.md5",
                  "sha256": "<64 hex>", "size": 912384}}

The URL carries a random token valid for that device's current offer only (until it is replaced,
cancelled or expires): whoever does not hold the command cannot fetch a device's image and the
secrets in it. ESPHome's ``ota.http_request.flash`` takes ``url`` and ``md5`` (or ``md5_url``)
as they are. The device acks the command when it starts (``ok``) or refuses it (``error`` with
the reason); the update is ``installed`` once a status message reports the offered version.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from shared.errors import SmartfarmError
from shared.topics import check_id

VERSION_RE: Final = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,39}$")
SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_-]{32}$")
# The largest ESP32 flash is 16 MiB; an app (OTA) partition is at most half of it.
MAX_IMAGE_BYTES: Final = 8 * 1024 * 1024
MIN_IMAGE_BYTES: Final = 256
# Every ESP32/ESP8266 application image starts with this byte (esp_image_header_t.magic).
ESP_IMAGE_MAGIC: Final = 0xE9
OFFER_TTL_S: Final = 24 * 3600.0
INDEX_NAME: Final = "index.json"


class FirmwareError(SmartfarmError):
    """An image that cannot be added, found or offered; ``field`` names the input at fault."""

    def __init__(self, message: str, *, field: str = "version") -> None:
        super().__init__(message)
        self.field = field


def check_version(value: object) -> str:
    if not isinstance(value, str) or VERSION_RE.fullmatch(value) is None:
        raise FirmwareError(
            f"invalid firmware version {str(value)[:60]!r}: 1-40 letters, digits, '.', '_', '+'"
            " or '-', starting with a letter or digit", field="version")
    return value


def running_version(firmware: str | None) -> str | None:
    """The version in a status message's ``firmware`` field: the whole field, or what follows
    its last '/' or space (``smartfarm-esphome/1.3.0``, ``smartfarm 1.3.0``)."""
    if not firmware:
        return None
    return re.split(r"[/ ]", firmware.strip())[-1] or None


@dataclass(frozen=True, slots=True)
class FirmwareImage:
    version: str
    sha256: str
    md5: str
    size: int
    added_at: float
    devices: tuple[str, ...]  # empty: any device
    filename: str  # the file it was added from (for people; never used as a path)

    def fits(self, device_id: str) -> bool:
        return not self.devices or device_id in self.devices

    def view(self) -> dict[str, Any]:
        out = asdict(self)
        out["devices"] = list(self.devices)
        return out


def _image_from(doc: dict[str, Any]) -> FirmwareImage:
    return FirmwareImage(
        version=str(doc["version"]), sha256=str(doc["sha256"]), md5=str(doc["md5"]),
        size=int(doc["size"]), added_at=float(doc["added_at"]),
        devices=tuple(str(d) for d in doc.get("devices") or ()),
        filename=str(doc.get("filename", "")),
    )


def check_image(data_head: bytes, size: int) -> None:
    """Refuse what cannot be an ESP32/ESP8266 application image."""
    if size < MIN_IMAGE_BYTES:
        raise FirmwareError(f"the file is {size} bytes: too small to be a firmware image",
                            field="file")
    if size > MAX_IMAGE_BYTES:
        raise FirmwareError(f"the file is {size} bytes; an OTA image is at most"
                            f" {MAX_IMAGE_BYTES} bytes", field="file")
    if not data_head or data_head[0] != ESP_IMAGE_MAGIC:
        raise FirmwareError(
            "not an ESP32/ESP8266 application image (first byte is not 0xE9): give the"
            " firmware's .ota.bin / firmware.bin (ESPHome: .pioenvs/<node>/firmware.ota.bin),"
            " not a factory image, a YAML or an archive", field="file")


class FirmwareStore:
    """The image folder: add, list, find, remove. Safe across processes (a lock file)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> list[FirmwareImage]:
        try:
            doc = json.loads((self.root / INDEX_NAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise FirmwareError(f"{self.root / INDEX_NAME} is unreadable: {exc}") from exc
        return [_image_from(item) for item in doc.get("images", [])]

    def _write(self, images: list[FirmwareImage]) -> None:
        doc = {"images": [i.view() for i in images]}
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".index-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.root / INDEX_NAME)

    def images(self) -> list[FirmwareImage]:
        """Newest first."""
        return sorted(self._read(), key=lambda i: i.added_at, reverse=True)

    def path(self, image: FirmwareImage) -> Path:
        return self.root / f"{image.sha256}.bin"

    def by_sha256(self, sha256: str) -> FirmwareImage | None:
        return next((i for i in self._read() if i.sha256 == sha256), None)

    def for_device(self, device_id: str, version: str) -> FirmwareImage:
        """The image of ``version`` for ``device_id``: one pinned to it, else a generic one."""
        fitting = [i for i in self.images() if i.version == version and i.fits(device_id)]
        if not fitting:
            others = sorted({i.version for i in self.images() if i.fits(device_id)})
            raise FirmwareError(
                f"no firmware {version!r} for {device_id}"
                + (f" (it can take: {', '.join(others)})" if others
                   else " (add one: smartfarm edge firmware add FILE --version V"
                        f" --device {device_id})"), field="version")
        fitting.sort(key=lambda i: (not i.devices, -i.added_at))
        return fitting[0]

    def add(self, source: Path, *, version: str, devices: tuple[str, ...] = (),
            filename: str | None = None) -> FirmwareImage:
        """Store the image at ``source`` (copied; checksums computed here), refusing what
        cannot be an application image or clashes with a stored one; ``filename``: what to
        call it (default: the source's name)."""
        check_version(version)
        for device in devices:
            check_id(device, "device id")
        try:
            size = source.stat().st_size
            with open(source, "rb") as src:
                head = src.read(1)
        except OSError as exc:
            raise FirmwareError(f"cannot read {source}: {exc.strerror or exc}",
                                field="file") from exc
        check_image(head, size)
        with self._locked():
            images = self._read()
            sha, md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324 - ESPHome's OTA check
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".image-", suffix=".bin")
            try:
                with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                    while chunk := src.read(64 * 1024):
                        sha.update(chunk)
                        md5.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                digest = sha.hexdigest()
                clash = [i for i in images if i.version == version
                         and (not i.devices or not devices or set(i.devices) & set(devices))]
                same = next((i for i in images if i.sha256 == digest), None)
                if same is not None:
                    raise FirmwareError(f"this image is already stored as version {same.version}"
                                        f" ({digest[:12]})", field="file")
                if clash:
                    raise FirmwareError(
                        f"version {version} is already stored for "
                        + (", ".join(clash[0].devices) if clash[0].devices else "any device")
                        + f" ({clash[0].sha256[:12]}): remove it first or use another version",
                        field="version")
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.root / f"{digest}.bin")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            image = FirmwareImage(version=version, sha256=digest, md5=md5.hexdigest(), size=size,
                                  added_at=time.time(), devices=tuple(sorted(set(devices))),
                                  filename=(filename or source.name)[:120])
            self._write([*images, image])
            return image

    @contextlib.contextmanager
    def staging(self) -> Iterator[tuple[Path, BinaryIO]]:
        """A private temporary file in the image folder for an upload being received (the
        caller then ``add``s it); removed on the way out."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-", suffix=".bin")
        try:
            with os.fdopen(fd, "wb") as out:
                yield Path(tmp), out
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def remove(self, ref: str) -> list[FirmwareImage]:
        """Remove the images whose sha256 starts with ``ref`` (8+ hex digits) or whose version
        is ``ref``; FirmwareError when none matches."""
        with self._locked():
            images = self._read()
            gone = [i for i in images if i.version == ref
                    or (len(ref) >= 8 and re.fullmatch(r"[0-9a-f]+", ref) is not None
                        and i.sha256.startswith(ref))]
            if not gone:
                raise FirmwareError(f"no stored image is version or sha256 {ref[:64]!r}",
                                    field="image")
            self._write([i for i in images if i not in gone])
            for image in gone:
                with contextlib.suppress(FileNotFoundError):
                    self.path(image).unlink()
            return gone


# ---- offers (edge store table firmware_updates, migration 5) ----
@dataclass(frozen=True, slots=True)
class Offer:
    device_id: str
    version: str
    sha256: str
    command_id: str
    offered_at: float
    offered_by: str
    expires_at: float
    from_firmware: str | None
    downloaded_at: float | None
    installed_at: float | None
    error: str | None = None


def new_token() -> tuple[str, str]:
    """A download token (32 URL-safe characters) and the hash the store keeps of it."""
    token = secrets.token_urlsafe(24)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _offer(row: sqlite3.Row) -> Offer:
    return Offer(
        device_id=row["device_id"], version=row["version"], sha256=row["sha256"],
        command_id=row["command_id"], offered_at=row["offered_at"],
        offered_by=row["offered_by"], expires_at=row["expires_at"],
        from_firmware=row["from_firmware"], downloaded_at=row["downloaded_at"],
        installed_at=row["installed_at"], error=row["error"],
    )


_OFFER_COLUMNS: Final = ("device_id, version, sha256, command_id, offered_at, offered_by,"
                         " expires_at, from_firmware, downloaded_at, installed_at, error")


def save_offer(conn: sqlite3.Connection, offer: Offer, token_digest: str) -> None:
    """Record an offer; it replaces the device's previous one (and its token)."""
    conn.execute(
        f"INSERT OR REPLACE INTO firmware_updates ({_OFFER_COLUMNS}, token_hash)"  # noqa: S608
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (offer.device_id, offer.version, offer.sha256, offer.command_id, offer.offered_at,
         offer.offered_by, offer.expires_at, offer.from_firmware, None, None, None,
         token_digest),
    )


def offers(conn: sqlite3.Connection) -> dict[str, Offer]:
    rows = conn.execute(f"SELECT {_OFFER_COLUMNS} FROM firmware_updates").fetchall()  # noqa: S608
    return {r["device_id"]: _offer(r) for r in rows}


def offer_for_token(conn: sqlite3.Connection, token: str, now: float) -> Offer | None:
    """The live offer a download token belongs to (None: unknown, replaced or expired)."""
    row = conn.execute(
        f"SELECT {_OFFER_COLUMNS} FROM firmware_updates"  # noqa: S608
        " WHERE token_hash = ? AND expires_at > ? AND installed_at IS NULL",
        (token_hash(token), now),
    ).fetchone()
    return _offer(row) if row is not None else None


def mark_downloaded(conn: sqlite3.Connection, device_id: str, at: float) -> None:
    conn.execute("UPDATE firmware_updates SET downloaded_at = ? WHERE device_id = ?",
                 (at, device_id))


def mark_installed(conn: sqlite3.Connection, device_id: str, firmware: str | None,
                   at: float) -> bool:
    """A status message reported ``firmware``: settle the device's open offer when it is the
    offered version. True when that happened."""
    version = running_version(firmware)
    if version is None:
        return False
    cur = conn.execute(
        "UPDATE firmware_updates SET installed_at = ? WHERE device_id = ? AND version = ?"
        " AND installed_at IS NULL",
        (at, device_id, version),
    )
    return cur.rowcount > 0


def mark_failed(conn: sqlite3.Connection, device_id: str, command_id: str, error: str) -> bool:
    """The device acked its ``ota`` command with an error, possibly after an ``ok`` (the
    download or the MD5 check failed): the offer failed, its link dies."""
    cur = conn.execute(
        "UPDATE firmware_updates SET error = ?, expires_at = min(expires_at, offered_at)"
        " WHERE device_id = ? AND command_id = ? AND installed_at IS NULL",
        (error[:200], device_id, command_id),
    )
    return cur.rowcount > 0


def cancel_offer(conn: sqlite3.Connection, device_id: str) -> bool:
    cur = conn.execute("DELETE FROM firmware_updates WHERE device_id = ?", (device_id,))
    return cur.rowcount > 0


def offer_state(offer: Offer, command_state: str | None, command_error: str | None,
                running: str | None, now: float) -> tuple[str, str | None]:
    """(state, detail) of an offer for the pages: ``installed``, ``failed``, ``downloading``,
    ``offered`` or ``expired``."""
    if offer.installed_at is not None or running_version(running) == offer.version:
        return "installed", None
    if offer.error is not None:
        return "failed", offer.error
    if command_state in ("failed", "timed_out"):
        return "failed", command_error or command_state.replace("_", " ")
    if command_state == "superseded":
        return "failed", "another command replaced the offer before the device took it"
    if offer.expires_at <= now:
        return "expired", "the device did not report the new version in time"
    if offer.downloaded_at is not None:
        return "downloading", None
    return "offered", None


# The ESPHome side of the contract (the ``ota`` command's handler in every generated node file)
# is ``shared.esphome``: ota_platform, ota_script, ota_dispatch and ota_fragment.
