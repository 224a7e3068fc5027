"""argon2id password hashing, run off the event loop (a hash costs tens of milliseconds)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cloud.config import AuthConfig

# Verifying against this when the account does not exist keeps the timing of "no such user"
# equal to "wrong password", so login does not reveal which emails are registered.
_DUMMY_PASSWORD = "smartfarm-timing-equaliser"  # noqa: S105 - not a credential


class Passwords:
    def __init__(self, config: AuthConfig) -> None:
        self._hasher = PasswordHasher(
            time_cost=config.argon2_time_cost, memory_cost=config.argon2_memory_kib
        )
        self._dummy = self._hasher.hash(_DUMMY_PASSWORD)

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when ``password`` matches ``stored``; a None hash costs the same and is False."""
        return await asyncio.to_thread(self._verify, stored, password)
