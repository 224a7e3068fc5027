"""Session tokens, the failed-login throttle and the identity of a request (no aiohttp here)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from edge.api.problems import TooManyAttempts

SESSION_TTL_S: Final = 12 * 3600
_MAX_THROTTLE_KEYS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    via: Literal["cookie", "basic"]
    expires_at: float | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Stateless session tokens ``v1.<user>.<expiry>.<nonce>.<hmac>``, signed with a key made
    fresh in each edge process (a restart logs everyone out: acceptable for one local admin, and
    it keeps the admin password out of anything an attacker could brute-force offline)."""

    def __init__(
        self, *, ttl_s: float = SESSION_TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = secrets.token_bytes(32)
        self.ttl_s = ttl_s
        self._clock = clock
        self._revoked: dict[str, float] = {}  # nonce -> expiry, for logout

    def _sign(self, message: str) -> str:
        return _b64(hmac.new(self._key, message.encode(), hashlib.sha256).digest())

    def issue(self, user: str) -> tuple[str, float]:
        expires = int(self._clock() + self.ttl_s)
        message = f"v1.{_b64(user.encode())}.{expires}.{secrets.token_urlsafe(12)}"
        return f"{message}.{self._sign(message)}", float(expires)

    def verify(self, token: str) -> Identity | None:
        parts = token.split(".")
        if len(parts) != 5 or parts[0] != "v1":
            return None
        message, signature = ".".join(parts[:4]), parts[4]
        if not hmac.compare_digest(self._sign(message), signature):
            return None
        try:
            user = _unb64(parts[1]).decode()
            expires = float(int(parts[2]))
        except ValueError:
            return None
        if expires <= self._clock() or parts[3] in self._revoked:
            return None
        return Identity(user=user, via="cookie", expires_at=expires)

    def revoke(self, token: str) -> None:
        identity = self.verify(token)
        if identity is None or identity.expires_at is None:
            return
        now = self._clock()
        self._revoked = {n: exp for n, exp in self._revoked.items() if exp > now}
        self._revoked[token.split(".")[3]] = identity.expires_at


class LoginThrottle:
    """At most ``limit`` failed logins per client address in any ``window_s``; then 429."""

    def __init__(
        self,
        *,
        limit: int = 5,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float]:
        hits = self._failures.get(address)
        if hits is None:
            if len(self._failures) >= _MAX_THROTTLE_KEYS:
                # A spray of addresses: forget the idle ones (or everything) to bound memory.
                cutoff = now - self.window_s
                self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > cutoff}
                if len(self._failures) >= _MAX_THROTTLE_KEYS:
                    self._failures.clear()
            hits = self._failures[address] = deque()
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        return hits

    def check(self, address: str) -> None:
        """Raise TooManyAttempts (with Retry-After) when the address is locked out."""
        now = self._clock()
        hits = self._recent(address, now)
        if len(hits) >= self.limit:
            raise TooManyAttempts(hits[0] + self.window_s - now)

    def failed(self, address: str) -> None:
        now = self._clock()
        self._recent(address, now).append(now)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
