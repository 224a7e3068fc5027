"""Onboarding: the farm's claim code, devices waiting for adoption, and adopting them.

A new device is flashed with the farm's *claim code* as its MQTT password and its own id (e.g.
``smartfarm-a1b2c3``) as its username. The embedded broker (``edge.broker``) refuses the login —
nothing the device sends is accepted before adoption — but when the id is not a device of this
farm and the password is the claim code, it reports the attempt here (``knock``) and the device
is listed as *pending*: on the edge's page (``/api/onboarding``) and, through the outbox
(``pending_device`` records), in the cloud.

An operator then adopts it into a room: on the edge page (the device is appended to the edge's
TOML config, its password is created and returned once, the broker accounts are rebuilt, so it
can log in about a second later with that password) or in the cloud (the cloud registers the
device; its config push brings the device and its password hash to the edge, and ``settle``
marks the pending entry adopted). Or dismisses it: it stays refused and is no longer listed.

The claim code only ever lets a device *ask*; it never grants a topic. A leaked code lets
someone fill the pending list (capped at ``MAX_PENDING``) and nothing else; rotate it with
``smartfarm edge claim-code --rotate`` or on the page.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import string
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edge.claim_code import (
    CLAIM_FILE_NAME,
    CLAIM_KEY_RE,
    claim_code_path,
    ensure_claim_code,
    key_hash,
    new_claim_code,
    normalise_code,
    read_claim_code,
    room_hint,
    split_claim,
)
from edge.config import ConfigError, load_config
from edge.credentials import CredentialsError, DeviceSecrets
from edge.site_init import add_device
from edge.store import pending as pending_rows
from edge.store.db import Database
from shared.errors import SmartfarmError
from shared.sync import PendingState
from shared.topics import claim_topic, is_valid_id
from shared.vocabulary import ACTUATOR_ROLES

if TYPE_CHECKING:
    from edge.commands import Publisher
    from edge.config import EdgeSettings

# The claim code's helpers live in edge.claim_code; importable from here as before.
__all__ = [
    "CLAIM_FILE_NAME", "CLAIM_KEY_RE", "MAX_PENDING", "Onboarding", "OnboardingError",
    "claim_code_path", "ensure_claim_code", "key_hash", "new_claim_code", "normalise_code",
    "read_claim_code", "room_hint", "split_claim",
]

log = logging.getLogger(__name__)

# At most this many devices wait at once; further unknown ids are refused without a record.
MAX_PENDING: Final = 200
# A device retries every few seconds: its row is rewritten at most this often, and the cloud
# hears of its new last_seen at most every REPORT_EVERY_S (state changes are reported at once).
TOUCH_EVERY_S: Final = 30.0
REPORT_EVERY_S: Final = 600.0
_CLIENT_ID_MAX: Final = 64
_PRINTABLE: Final = frozenset(string.ascii_letters + string.digits + "-_.:@/+")
# After an adoption, the edge hands the credentials to the node's claim session: at most every
# DELIVER_EVERY_S while the session is connected, for at most DELIVER_FOR_S after it logged in.
DELIVER_EVERY_S: Final = 2.0
DELIVER_FOR_S: Final = 120.0


class OnboardingError(SmartfarmError):
    """An adoption that cannot be done; ``field`` names the offending input when there is one."""

    def __init__(self, message: str, field: str | None = None, *, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def _clean_client_id(client_id: str | None) -> str:
    text = (client_id or "")[:_CLIENT_ID_MAX]
    return "".join(c if c in _PRINTABLE else "?" for c in text)


# ---- pending devices --------------------------------------------------------------------------

class Onboarding:
    """Pending devices of this edge: recorded from the broker's refused claim logins, adopted or
    dismissed by an operator. ``reload`` is the edge's "config changed, rebuild the broker
    accounts and the automation" (``EdgeApp.reload_config``)."""

    def __init__(
        self,
        settings: EdgeSettings,
        db: Database,
        reload: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.reload = reload
        self._path = claim_code_path(settings)
        self._stamp: tuple[int, int] | None = None
        self._digest: bytes | None = None
        # device id → (last row write, last cloud report), monotonic; bounds the writes.
        self._touched: dict[str, tuple[float, float]] = {}
        self._lock = asyncio.Lock()
        self.refused = 0  # claim logins refused because the pending list is full
        # Keyed claim logins of a known id with another key (someone else with the code).
        self.conflicts = 0
        self._publisher: Publisher | None = None
        # Adopted nodes whose claim session is logged in: id → (logged in, last delivery).
        self._sessions: dict[str, tuple[float, float]] = {}
        self.delivered = 0  # credential messages published to claim sessions
        # {device id: when} dismissed in the cloud (edge.config_sync.ConfigSync.cloud_dismissed).
        self.cloud_dismissed: Callable[[], dict[str, float]] = dict

    # -- the code --
    def claim_code(self) -> str:
        return ensure_claim_code(self.settings)

    def rotate(self) -> str:
        code = ensure_claim_code(self.settings, rotate=True)
        self._stamp = None
        return code

    def _code_digest(self) -> bytes | None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            self._stamp, self._digest = None, None
            return None
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._stamp:
            code = read_claim_code(self._path)
            self._digest = (None if code is None else
                            hashlib.sha256(normalise_code(code).encode()).digest())
            self._stamp = stamp
        return self._digest

    def is_claim_code(self, password: str | None) -> bool:
        """The password is the claim code, alone or followed by ``:<claim key>``."""
        expected = self._code_digest()
        parts = split_claim(password)
        if expected is None or parts is None or not parts[0]:
            return False
        given = hashlib.sha256(normalise_code(parts[0][:128]).encode()).digest()
        return hmac.compare_digest(given, expected)

    # -- the broker's side --
    def is_candidate(self, username: str | None) -> bool:
        """An id that could be onboarded: valid, not the edge's, not a device of this farm."""
        return (is_valid_id(username) and username != self.settings.broker.edge_username
                and self.settings.device(str(username)) is None)

    async def knock(self, username: str | None, password: str | None, address: str,
                    client_id: str | None) -> bool:
        """A login the broker refused: True when it was a claim (unknown id, the farm's claim
        code), now recorded as pending (or already dismissed). The login stays refused."""
        if not self.is_candidate(username) or not self.is_claim_code(password):
            return False
        assert username is not None
        parts = split_claim(password)
        key = parts[1] if parts is not None else None
        async with self._lock:
            return await self._record(username, address[:64], _clean_client_id(client_id),
                                      None if key is None else key_hash(key))

    async def _record(self, device_id: str, address: str, client_id: str,
                      key_digest: str | None) -> bool:
        now_wall, now = time.time(), time.monotonic()
        row = await self.db.read(pending_rows.get, device_id)
        if (row is not None and row.state == "pending" and row.claim_key_hash is not None
                and not _same(row.claim_key_hash, key_digest)):
            # The id is taken by the node that knocked first with its own key: someone else
            # with the claim code (or a re-flashed node) is refused and not recorded.
            self.conflicts += 1
            log.warning("claim login as %s from %s with another claim key than its first: "
                        "refused, not listed (dismiss the entry to start over)",
                        device_id, address)
            return True
        if row is None or row.state == "adopted":
            # New (or adopted once, then removed from the config: it asks again).
            if await self.db.read(pending_rows.count_pending) >= MAX_PENDING:
                self.refused += 1
                log.warning("claim login from %s (%s) refused: %d devices already pending",
                            device_id, address, MAX_PENDING)
                return True
            fresh = pending_rows.PendingDevice(
                device_id=device_id, state="pending", first_seen=now_wall, last_seen=now_wall,
                attempts=1, address=address, client_id=client_id, room_id=None,
                updated_at=now_wall, claim_key_hash=key_digest)
            await self.db.write(pending_rows.save, fresh, True, urgent=True)
            self._touched[device_id] = (now, now)
            log.info("device %s (%s, client id %r) is waiting for adoption", device_id,
                     address, client_id)
            return True
        written, reported = self._touched.get(device_id, (float("-inf"), float("-inf")))
        if now - written < TOUCH_EVERY_S and row.address == address:
            return True
        report = now - reported >= REPORT_EVERY_S or row.address != address
        bumped = dataclasses.replace(
            row, last_seen=now_wall, attempts=row.attempts + 1, address=address,
            client_id=client_id or row.client_id, updated_at=now_wall,
            # A dismissed entry is disowned: the next keyed claim's key replaces its key.
            claim_key_hash=(key_digest or row.claim_key_hash) if row.state == "dismissed"
            else row.claim_key_hash or key_digest)
        await self.db.write(pending_rows.save, bumped, report)
        self._touched[device_id] = (now, now if report else reported)
        return True

    # -- the operator's side --
    async def listing(self) -> list[pending_rows.PendingDevice]:
        await self.settle()
        return await self.db.read(pending_rows.listing)

    async def adopt(self, device_id: str, room_id: str, kind: str,
                    actuator: str | None) -> str:
        """Adopt a pending (or dismissed) device into ``room_id``: appended to the config with a
        fresh password (returned, once); broker accounts and automation reloaded."""
        if kind not in ("sensor", "actuator"):
            raise OnboardingError("must be 'sensor' or 'actuator'", "kind")
        if kind == "actuator" and actuator not in ACTUATOR_ROLES:
            raise OnboardingError(f"must be one of {', '.join(ACTUATOR_ROLES)}", "actuator")
        if kind == "sensor" and actuator is not None:
            raise OnboardingError("only an actuator has a role", "actuator")
        async with self._lock:
            row = await self.db.read(pending_rows.get, device_id)
            if row is None or row.state == "adopted":
                raise OnboardingError(f"no device {device_id!r} is waiting for adoption",
                                      status=404)
            if self.settings.device(device_id) is not None:
                raise OnboardingError(f"device {device_id!r} already exists", status=409)
            config = self.settings.config_path
            if config is None:
                raise OnboardingError("this edge has no config file to add the device to",
                                      status=409)
            try:
                file_rooms = await asyncio.to_thread(_file_rooms, config)
            except ConfigError as exc:
                raise OnboardingError(f"the edge config cannot be read: {exc}",
                                      status=409) from None
            hint = room_hint(row.client_id)
            if row.claim_key_hash is not None and hint is not None and hint != room_id:
                raise OnboardingError(
                    f"this node's firmware was made for room {hint!r}: adopt it into that room"
                    " (or flash it with a node file for this one)", "room_id")
            if room_id not in file_rooms:
                if self.settings.room(room_id) is not None:
                    raise OnboardingError(
                        f"room {room_id!r} is managed by the cloud: adopt the device on the "
                        "cloud's page", "room_id")
                raise OnboardingError(f"no room {room_id!r} on this edge", "room_id")
            try:
                password = await asyncio.to_thread(
                    add_device, config, device_id, room_id, kind, actuator, sync=False)
            except ConfigError as exc:
                raise OnboardingError(str(exc), status=409) from None
            await self._mark(row, "adopted", room_id, kind, actuator)
        if self.reload is not None:
            await self.reload()
        log.info("device %s adopted into room %s", device_id, room_id)
        return password

    async def dismiss(self, device_id: str) -> None:
        async with self._lock:
            row = await self.db.read(pending_rows.get, device_id)
            if row is None or row.state != "pending":
                raise OnboardingError(f"no device {device_id!r} is waiting for adoption",
                                      status=404)
            await self._mark(row, "dismissed")
        log.info("pending device %s dismissed", device_id)

    async def _mark(self, row: pending_rows.PendingDevice, state: PendingState,
                    room_id: str | None = None, kind: str | None = None,
                    actuator: str | None = None) -> None:
        now = time.time()
        changed = dataclasses.replace(row, state=state, room_id=room_id, updated_at=now,
                                      kind=kind, actuator=actuator)
        await self.db.write(pending_rows.save, changed, True, urgent=True)
        self._touched.pop(row.device_id, None)

    async def settle(self) -> int:
        """Mark adopted the pending devices that are now devices of this edge (registered in
        the cloud, or added with ``smartfarm edge device add``); how many were."""
        rows = await self.db.read(pending_rows.listing, ("pending", "dismissed"))
        done = 0
        minted = False
        dismissed = self.cloud_dismissed()
        async with self._lock:
            for row in rows:
                at = dismissed.get(row.device_id)
                if row.state == "pending" and at is not None and row.first_seen <= at:
                    # Dismissed in the cloud after it first knocked: dismissed here too.
                    await self._mark(row, "dismissed")
                    log.info("pending device %s dismissed in the cloud", row.device_id)
                    continue
                device = self.settings.device(row.device_id)
                if device is not None:
                    if row.claim_key_hash is not None and self.password_of(device.id) is None:
                        # Adopted in the cloud, whose password only reaches the edge as a hash:
                        # the edge makes its own (it wins at the edge's broker), to hand over.
                        await asyncio.to_thread(_mint_password, self.settings, device.id)
                        minted = True
                    await self._mark(row, "adopted", device.room, device.kind, device.actuator)
                    done += 1
        if minted and self.reload is not None:
            await self.reload()
        return done

    # -- handing an adopted node its credentials (keyed claims) --
    def password_of(self, device_id: str) -> str | None:
        """The device's MQTT password when this edge holds it in plain (it made it)."""
        try:
            return DeviceSecrets.load(self.settings.device_secrets_path).devices.get(device_id)
        except CredentialsError:
            return None

    async def claim_session(self, username: str | None, password: str | None) -> bool:
        """A login the broker's accounts refused that may log in as a *claim session*: an
        adopted device (in the config, with a password this edge holds) knocking with the claim
        code and the same claim key it first knocked with. Such a session may only read its
        claim topic, where :meth:`deliver` hands it its credentials."""
        parts = split_claim(password)
        if (parts is None or parts[1] is None or not is_valid_id(username)
                or not self.is_claim_code(password)):
            return False
        assert username is not None
        device = self.settings.device(username)
        if device is None:
            return False
        row = await self.db.read(pending_rows.get, username)
        if (row is None or row.state != "adopted" or row.claim_key_hash is None
                or not _same(row.claim_key_hash, key_hash(parts[1]))):
            return False
        return await asyncio.to_thread(self.password_of, username) is not None

    async def takes_credentials(self, device_id: str) -> bool:
        """The device knocked with a claim key: once adopted, its claim session is handed its
        credentials (no re-flash)."""
        row = await self.db.read(pending_rows.get, device_id)
        return row is not None and row.claim_key_hash is not None

    def session_started(self, device_id: str) -> None:
        """The broker let ``device_id``'s claim session in (see :meth:`claim_session`)."""
        self._sessions[device_id] = (time.monotonic(), float("-inf"))
        log.info("adopted device %s is in claim mode: handing it its credentials", device_id)

    def attach(self, publisher: Publisher | None) -> None:
        """The edge's own MQTT connection (None while it is down)."""
        self._publisher = publisher

    def credentials(self, device_id: str) -> dict[str, Any] | None:
        """What the claim topic carries for an adopted device (None: nothing to hand over)."""
        device = self.settings.device(device_id)
        password = self.password_of(device_id)
        if device is None or password is None:
            return None
        return {"device_id": device_id, "room_id": device.room, "kind": device.kind,
                "actuator": device.actuator, "username": device_id, "password": password}

    async def deliver(self) -> int:
        """Publish the credentials to each claim session logged in lately (not retained, QoS 1,
        every DELIVER_EVERY_S: the node subscribes right after it logs in, then takes them,
        stores them and reconnects with them). How many were published."""
        publisher, now, sent = self._publisher, time.monotonic(), 0
        for device_id, (since, last) in list(self._sessions.items()):
            if now - since > DELIVER_FOR_S:
                del self._sessions[device_id]
                continue
            if publisher is None or now - last < DELIVER_EVERY_S:
                continue
            doc = await asyncio.to_thread(self.credentials, device_id)
            if doc is None:
                del self._sessions[device_id]
                continue
            payload = json.dumps(doc, separators=(",", ":")).encode()
            await publisher.publish(claim_topic(self.settings.farm_id, device_id), payload,
                                    qos=1, retain=False)
            self._sessions[device_id] = (since, now)
            sent += 1
        self.delivered += sent
        return sent

    async def run(self, interval_s: float = 2.0) -> None:
        """Settle now and then (a cloud push can adopt a device at any time); hand claim
        sessions their credentials."""
        ticks = 0
        while True:
            try:
                if ticks % 4 == 0:
                    await self.settle()
                await self.deliver()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("settling or delivering to pending devices failed; trying again")
            ticks += 1
            await asyncio.sleep(interval_s / 4)


def _same(stored: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(stored, given)


def _mint_password(settings: EdgeSettings, device_id: str) -> str:
    secrets_ = DeviceSecrets.load_or_create(settings.device_secrets_path,
                                            edge_username=settings.broker.edge_username)
    return secrets_.add_device(device_id, rotate=True)


def _file_rooms(config: Path) -> set[str]:
    """The rooms of the TOML file itself (not the cloud's overlay)."""
    return {room.id for room in load_config(config).rooms}
