"""AWS Cognito bearer tokens: RS256 JWTs checked against the user pool's JWKS.

Keys are cached by ``kid``; a token signed with an unknown ``kid`` (the pool rotated its keys)
refetches the JWKS, at most once per ``jwks_refresh_min_s`` so that forged kids cannot make us
hammer the pool. Which local user a pool identity is decides ``cloud.db.users.for_cognito``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from cloud.auth.tokens import token_hash
from cloud.config import CognitoConfig
from cloud.errors import Unauthorized

log = logging.getLogger(__name__)

_LEEWAY_S = 5
_ALGORITHM = "RS256"  # what Cognito signs with; never trust the token's own alg header
_MAX_EMAIL = 254


@dataclass(frozen=True)
class CognitoIdentity:
    sub: str
    token_use: str
    token_id: str
    # Only from an ID token whose email Cognito has verified: the one claim safe to link by.
    email: str | None = None


def _verified(value: Any) -> bool:
    # Cognito sends email_verified as a JSON boolean, some pools (imported users) as "true".
    return value is True or value == "true"


class CognitoVerifier:
    """Verifies pool tokens; one per app (it owns the key cache)."""

    def __init__(
        self, config: CognitoConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        assert config.enabled, "Cognito is not configured"
        self.config = config
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    @staticmethod
    def claims(token: str) -> bool:
        """Whether a bearer token looks like a pool token (RS256 with a kid) rather than ours."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            return False
        return header.get("alg") == _ALGORITHM and isinstance(header.get("kid"), str)

    async def verify(self, token: str) -> CognitoIdentity:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token") from None
        if not isinstance(kid, str):
            raise Unauthorized("invalid token")
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[_ALGORITHM],
                issuer=self.config.issuer,
                leeway=_LEEWAY_S,
                # ID tokens carry `aud`, access tokens `client_id`: checked below per token_use.
                options={"require": ["exp", "iat", "sub", "iss", "token_use"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token") from None
        use = claims["token_use"]
        if use not in self.config.token_use:
            raise Unauthorized(f"{use!s:.20} tokens are not accepted")
        client = claims.get("aud") if use == "id" else claims.get("client_id")
        if client != self.config.client_id:
            raise Unauthorized("token issued for another app client")
        email = claims.get("email") if use == "id" else None
        if not isinstance(email, str) or len(email) > _MAX_EMAIL:
            email = None
        if not _verified(claims.get("email_verified")):
            email = None
        token_id = claims.get("jti") or claims.get("origin_jti") or token_hash(token)[:32]
        return CognitoIdentity(
            sub=str(claims["sub"]), token_use=use, token_id=str(token_id), email=email
        )

    async def _key(self, kid: str) -> Any:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            # Another request may have refreshed while this one waited.
            if kid not in self._keys and self._may_refresh():
                await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            raise Unauthorized("token signed with an unknown key")
        return key

    def _may_refresh(self) -> bool:
        if self._fetched_at is None:
            return True
        return self._clock() - self._fetched_at >= self.config.jwks_refresh_min_s

    async def _refresh(self) -> None:
        # A failed fetch counts against the rate limit too: an unreachable pool is not retried
        # on every request.
        self._fetched_at = self._clock()
        self.fetches += 1
        url = self.config.jwks_endpoint
        timeout = aiohttp.ClientTimeout(total=self.config.jwks_timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, allow_redirects=False) as resp,
            ):
                resp.raise_for_status()
                document = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("cannot fetch Cognito JWKS from %s: %s", url, exc)
            return
        keys = parse_jwks(document)
        if not keys:
            log.warning("Cognito JWKS at %s has no usable RS256 signing keys", url)
            return
        self._keys = keys
        log.info("loaded %d Cognito signing keys from %s", len(keys), url)


def parse_jwks(document: Any) -> dict[str, Any]:
    """``kid`` → public key for every RSA signing key in a JWKS document; others are skipped."""
    keys: dict[str, Any] = {}
    entries = document.get("keys") if isinstance(document, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
            continue
        if entry.get("alg", _ALGORITHM) != _ALGORITHM:
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry, algorithm=_ALGORITHM).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, ValueError, TypeError):
            log.warning("skipping a malformed key %s in the Cognito JWKS", entry["kid"][:40])
    return keys
