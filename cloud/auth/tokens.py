"""JWT access tokens (HS256) and opaque refresh/invite/edge tokens (stored only as sha256)."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass

import jwt

from cloud.config import CloudSettings
from cloud.errors import Unauthorized

log = logging.getLogger(__name__)

SECRET_FILE_NAME = "jwt-secret"  # noqa: S105 - a file name
_LEEWAY_S = 5


@dataclass(frozen=True)
class AccessClaims:
    user_id: int
    expires_at: int
    token_id: str
    issued_at: float = 0.0


def opaque_token(prefix: str = "") -> str:
    """256 bits from the OS CSPRNG, URL-safe."""
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """sha256 hex: enough for high-entropy random tokens (no need for a slow KDF)."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_jwt_secret(settings: CloudSettings) -> bytes:
    """From the settings, else from a secret file, else generated once into the data dir (0600)."""
    auth = settings.auth
    if auth.jwt_secret is not None:
        return auth.jwt_secret.get_secret_value().encode()
    path = settings.resolve(auth.jwt_secret_file) if auth.jwt_secret_file else None
    if path is None:
        path = settings.data_path / SECRET_FILE_NAME
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: two instances starting together must not overwrite each other's secret.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_urlsafe(48))
                log.info("generated a new JWT signing secret in %s", path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("JWT secret file %s is readable by others (mode %o); chmod 600 it", path, mode)
    secret = path.read_text().strip().encode()
    if len(secret) < 32:
        raise ValueError(f"JWT secret in {path} is shorter than 32 bytes")
    return secret


class AccessTokens:
    def __init__(self, secret: bytes, *, issuer: str, ttl_s: int) -> None:
        self._secret = secret
        self.issuer = issuer
        self.ttl_s = ttl_s

    def issue(self, user_id: int, *, now: float | None = None, ttl_s: int | None = None) -> str:
        now = time.time() if now is None else now
        claims = {
            "sub": str(user_id),
            "iss": self.issuer,
            # Milliseconds, so "sign out everywhere" can tell a token from just before it from one
            # issued just after (a sign-in again at once).
            "iat": round(now, 3),
            "exp": int(now) + (self.ttl_s if ttl_s is None else ttl_s),
            "jti": secrets.token_hex(8),
            "typ": "access",
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],  # never trust the token's own alg header
                issuer=self.issuer,
                leeway=_LEEWAY_S,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token") from None
        if claims.get("typ") != "access" or not str(claims["sub"]).isdigit():
            raise Unauthorized("invalid token")
        return AccessClaims(
            int(claims["sub"]),
            int(claims["exp"]),
            str(claims.get("jti", "")),
            float(claims["iat"]),
        )
