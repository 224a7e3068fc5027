"""amqtt plugins for the embedded broker: per-device argon2 login and a least-privilege topic ACL.

amqtt builds plugins itself from dotted paths (see edge.broker), so both read files that
``edge.credentials`` writes and reload them when they change; a device added by another process
(``smartfarm edge device add``) can connect about a second later without a restart.

Policy (username = device id; the edge has its own username):
- anonymous, unknown users and wrong passwords are refused at CONNECT;
- the edge user may publish, subscribe and receive anything under ``farm/<farm_id>/``;
- a device may publish only ``farm/<farm_id>/room/<its room>/{telemetry,status,ack}/<its id>``
  and subscribe to / receive only ``farm/<farm_id>/room/<its room>/command/<its id>`` — the room
  is pinned (not ``+``) so a sensor cannot feed another room's automation;
- a device missing from the ACL map may log in but is denied every topic (fail closed);
- an adopted node still logging in with the farm's claim code (edge.onboarding) is let in by the
  broker under the account name ``~claim/<its id>`` with a one-time token: it may subscribe to
  and receive only ``farm/<farm_id>/claim/<its id>`` (where the edge hands it its credentials)
  and publish nothing.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from edge.credentials import read_password_file, verify_password
from shared.topics import UPLINK_KINDS, claim_topic, is_valid_id

log = logging.getLogger(__name__)

# Not a valid device id (ids start with a letter or digit), so no account can be named so.
CLAIM_USER_PREFIX = "~claim/"
_CLAIM_TOKENS_MAX = 1024
_DENIAL_WINDOW_S = 10.0
_DENIAL_KEYS_MAX = 1024
_FileStamp = tuple[int, int, int]


def _stamp(path: Path) -> _FileStamp | None:
    """Identity of the file's current version; an atomic replace changes the inode."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class _DenialLog:
    """One WARNING per (user, what) per window, with the count suppressed since the last one."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}

    def warn(self, username: str, what: str, topic: str | None = None) -> None:
        now = time.monotonic()
        username = username[:80]
        key = (username, what)
        start, suppressed = self._windows.get(key, (float("-inf"), 0))
        if now - start < _DENIAL_WINDOW_S:
            self._windows[key] = (start, suppressed + 1)
            return
        if len(self._windows) >= _DENIAL_KEYS_MAX:
            self._windows.clear()  # bounded memory against username churn
        self._windows[key] = (now, 0)
        more = f" ({suppressed} more denied in the last burst)" if suppressed else ""
        where = "" if topic is None else f" on {topic[:200]!r}"
        log.warning("MQTT %s denied for user %r%s%s", what, username, where, more)


def claim_username(device_id: str) -> str:
    """The broker's name for an adopted node's claim session."""
    return CLAIM_USER_PREFIX + device_id


def claimed_id(username: str) -> str | None:
    """The device id of a claim session's account name (None: not a claim session)."""
    if not username.startswith(CLAIM_USER_PREFIX):
        return None
    device_id = username[len(CLAIM_USER_PREFIX):]
    return device_id if is_valid_id(device_id) else None


class DeviceAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Username/password login against an argon2 ``user:hash`` file, re-read when it changes."""

    @dataclass
    class Config:
        password_file: str = ""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._path = Path(self.config.password_file)
        self._users: dict[str, str] = {}
        self._stamp: _FileStamp | None = None
        # argon2 runs in a thread, one at a time: a reconnect storm of 200 devices must neither
        # block the event loop nor allocate 200 × 19 MiB at once.
        self._hash_lock = asyncio.Lock()
        # Successful logins are remembered as a keyed digest (key never leaves this process), so
        # a device reconnecting after a Wi-Fi blip costs no argon2 run and no plaintext is kept.
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, tuple[str, bytes]] = {}
        self._denials = _DenialLog()
        # Claim sessions the broker's CONNECT vetting let in: account name → digest of the
        # one-time token it put in the CONNECT it hands to amqtt.
        self._claims: dict[str, bytes] = {}
        self.reload()

    def admit_claim(self, device_id: str) -> tuple[str, str]:
        """(account name, one-time password) for a claim session the broker has vetted
        (edge.onboarding.Onboarding.claim_session); the login with them succeeds once."""
        if len(self._claims) >= _CLAIM_TOKENS_MAX:
            self._claims.clear()  # unused tokens of logins that never reached amqtt
        username, token = claim_username(device_id), secrets.token_urlsafe(24)
        self._claims[username] = hmac.digest(self._key, token.encode(), hashlib.sha256)
        return username, token

    def reload(self, *, force: bool = True) -> None:
        stamp = _stamp(self._path)
        if not force and stamp == self._stamp:
            return
        if stamp is None:
            log.warning("broker password file %s is missing: every login is refused", self._path)
            self._users = {}
        else:
            self._users = read_password_file(self._path)
            self._verified = {u: v for u, v in self._verified.items()
                              if self._users.get(u) == v[0]}
            log.info("broker: %d account(s) loaded from %s", len(self._users), self._path)
        self._stamp = stamp

    async def authenticate(self, *, session: Session) -> bool:
        return await self.check(session.username if session else None,
                                session.password if session else None)

    async def check(self, username: str | None, password: str | None) -> bool:
        """True when ``username`` exists and ``password`` verifies against its hash."""
        if not username:
            self._denials.warn("(anonymous)", "login")
            return False
        if username.startswith(CLAIM_USER_PREFIX):
            expected = self._claims.pop(username, None)
            given = hmac.digest(self._key, (password or "").encode(), hashlib.sha256)
            return expected is not None and hmac.compare_digest(expected, given)
        self.reload(force=False)
        hashed = self._users.get(username)
        if hashed is None:
            self._denials.warn(username, "login (unknown user)")
            return False
        password = password or ""
        digest = hmac.digest(self._key, password.encode(), hashlib.sha256)
        known = self._verified.get(username)
        if known is not None and known[0] == hashed and hmac.compare_digest(known[1], digest):
            return True
        async with self._hash_lock:
            ok = await asyncio.to_thread(verify_password, password, hashed)
        if ok:
            self._verified[username] = (hashed, digest)
        else:
            self._denials.warn(username, "login (bad password)")
        return ok


@dataclass(frozen=True, slots=True)
class _Grant:
    publish: frozenset[str]
    command: str


class DeviceTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """Topic ACL: the edge owns its farm's tree; each device only its own topics in its room."""

    @dataclass
    class Config:
        farm_id: str = ""
        edge_username: str = ""
        acl_file: str = ""
        reload_interval_s: float = 1.0

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        cfg = self.config
        if not (is_valid_id(cfg.farm_id) and is_valid_id(cfg.edge_username)):
            raise ValueError("DeviceTopicPlugin needs a valid farm_id and edge_username")
        self._farm_prefix = f"farm/{cfg.farm_id}/"
        self._edge = cfg.edge_username
        self._path = Path(cfg.acl_file)
        self._interval = cfg.reload_interval_s
        self._grants: dict[str, _Grant] = {}
        self._stamp: _FileStamp | None = None
        self._next_check = 0.0
        self._denials = _DenialLog()
        self.reload()

    def reload(self, *, force: bool = True) -> None:
        """Re-read the device→room map (JSON ``{"devices": {id: room}}``) if it changed."""
        stamp = _stamp(self._path)
        if not force and stamp == self._stamp:
            return
        self._stamp = stamp
        if stamp is None:
            log.warning("broker ACL file %s is missing: devices may not use any topic", self._path)
            self._grants = {}
            return
        try:
            devices = json.loads(self._path.read_text(encoding="utf-8"))["devices"]
            grants = {dev: self._grant(dev, room) for dev, room in devices.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Keep the last good map: a half-edited file must not lock every device out.
            log.error("broker ACL file %s unusable (%s); keeping the previous map", self._path, exc)
            return
        self._grants = grants
        log.info("broker ACL: %d device(s) loaded from %s", len(grants), self._path)

    def _grant(self, device_id: str, room_id: str) -> _Grant:
        if not (is_valid_id(device_id) and is_valid_id(room_id)) or device_id == self._edge:
            raise ValueError(f"bad ACL entry {device_id!r}: {room_id!r}")
        base = f"{self._farm_prefix}room/{room_id}"
        return _Grant(
            publish=frozenset(f"{base}/{kind}/{device_id}" for kind in UPLINK_KINDS),
            command=f"{base}/command/{device_id}",
        )

    def _refresh(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._interval
            self.reload(force=False)

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        return self.allowed(session.username if session else None, topic, action)

    def allowed(self, username: str | None, topic: str | None, action: Action | None) -> bool:
        """The ACL decision itself, synchronous (the broker's intake checks each PUBLISH with
        it without yielding, so one client's messages keep their order)."""
        if not username or not topic:
            return False
        if username == self._edge:
            allowed = topic.startswith(self._farm_prefix)
        elif username.startswith(CLAIM_USER_PREFIX):
            device_id = claimed_id(username)
            allowed = (device_id is not None and action != Action.PUBLISH
                       and topic == claim_topic(self._farm_prefix.split("/")[1], device_id))
        else:
            self._refresh()
            grant = self._grants.get(username)
            if grant is None:
                allowed = False
            elif action == Action.PUBLISH:
                allowed = topic in grant.publish
            else:  # SUBSCRIBE (a filter) and RECEIVE (a concrete topic) alike
                allowed = topic == grant.command
        if not allowed:
            self._denials.warn(username, str(action or "access"), topic)
        return allowed
