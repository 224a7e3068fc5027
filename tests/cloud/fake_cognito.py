"""A stand-in Cognito user pool for tests: local RSA keys, a JWKS served by an aiohttp app, and
tokens minted with the claims Cognito puts in access and ID tokens."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from cloud.config import CognitoConfig

REGION = "eu-west-1"
POOL_ID = f"{REGION}_TestPool1"
CLIENT_ID = "test-app-client"
ISSUER = f"https://cognito-idp.{REGION}.amazonaws.com/{POOL_ID}"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakePool:
    """Keys by kid; ``published`` are the kids the JWKS endpoint serves right now."""

    def __init__(self, keys: dict[str, rsa.RSAPrivateKey]) -> None:
        self.keys = dict(keys)
        self.published = list(keys)
        self.requests = 0
        self.failing = False

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid in self.published:
            jwk = RSAAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
            out.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return {"keys": out}

    def app(self) -> web.Application:
        async def serve(request: web.Request) -> web.Response:
            self.requests += 1
            if self.failing:
                return web.Response(status=500, text="pool down")
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/jwks.json", serve)
        return app

    def token(
        self,
        sub: str,
        *,
        token_use: str = "access",
        kid: str | None = None,
        email: str | None = None,
        email_verified: Any = True,
        expires_in: int = 3600,
        sign_with: rsa.RSAPrivateKey | None = None,
        **overrides: Any,
    ) -> str:
        kid = kid or self.published[0]
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": sub,
            "iss": ISSUER,
            "token_use": token_use,
            "auth_time": now,
            "iat": now,
            "exp": now + expires_in,
            "jti": str(uuid.uuid4()),
            "origin_jti": str(uuid.uuid4()),
        }
        if token_use == "access":
            claims.update(client_id=CLIENT_ID, scope="aws.cognito.signin.user.admin", username=sub)
        else:
            claims.update(aud=CLIENT_ID, **{"cognito:username": sub})
            if email is not None:
                claims.update(email=email, email_verified=email_verified)
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        key = sign_with or self.keys[kid]
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    def headers(self, sub: str, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, **kwargs)}"}


def pool_config(jwks_url: str, **overrides: Any) -> CognitoConfig:
    values: dict[str, Any] = {
        "region": REGION,
        "user_pool_id": POOL_ID,
        "client_id": CLIENT_ID,
        "jwks_url": jwks_url,
    }
    values.update(overrides)
    return CognitoConfig(**values)
