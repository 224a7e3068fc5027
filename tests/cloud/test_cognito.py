"""Cognito mode: pool tokens verified against a JWKS served by a local aiohttp server (locally
generated RSA keys), mapped to local users so farm roles apply; key cache, rotation, rate limit."""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import pytest

from cloud.app import init_app
from cloud.auth.cognito import CognitoVerifier, parse_jwks
from cloud.errors import Unauthorized
from tests.cloud import world as w
from tests.cloud.conftest import JWT_SECRET, make_settings
from tests.cloud.fake_cognito import CLIENT_ID, ISSUER, POOL_ID, REGION, new_key, pool_config

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pool_client(aiohttp_client, world_dsn, tmp_path, cognito_auth):  # type: ignore[no-untyped-def]
    async def make(**cognito: Any):  # type: ignore[no-untyped-def]
        settings = make_settings(world_dsn, tmp_path, auth=cognito_auth(**cognito))
        return await aiohttp_client(init_app(settings))

    return make


async def _me(client, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:  # type: ignore[no-untyped-def]
    resp = await client.get("/api/users/me", headers=headers)
    return resp.status, await resp.json()


async def test_an_access_token_maps_to_the_linked_user_and_their_roles(  # type: ignore[no-untyped-def]
    pool_client, cognito_pool, world
) -> None:
    client = await pool_client()
    headers = cognito_pool.headers(w.COGNITO_SUB)
    status, me = await _me(client, headers)
    assert status == 200 and me["id"] == world.user_ids["cognito"]
    # An operator of farm F: may send commands there, sees nothing of farm G.
    resp = await client.post(
        f"/api/rooms/{w.ROOM_B}/commands",
        json={"device_id": w.ACTUATOR_B, "action": "on"},
        headers=headers,
    )
    assert resp.status == 201, await resp.text()
    assert (await client.get(f"/api/rooms/{w.OTHER_ROOM}", headers=headers)).status == 404
    resp = await client.post(f"/api/farms/{w.FARM}/rooms", json={}, headers=headers)
    assert resp.status == 403  # an operator, not an owner
    # Local tokens keep working beside the pool's.
    local = w.bearer(w.tokens_for(JWT_SECRET), world.user_ids["viewer"])
    assert (await _me(client, local))[0] == 200


async def test_an_id_token_with_a_verified_email_claims_an_invited_account(  # type: ignore[no-untyped-def]
    pool_client, cognito_pool, auth
) -> None:
    client = await pool_client()
    resp = await client.post(
        f"/api/farms/{w.FARM}/members",
        json={"email": "grower@example.com", "role": "viewer", "room_ids": [w.ROOM_A]},
        headers=auth("owner"),
    )
    member = await resp.json()
    assert resp.status == 201 and member["activated"] is False
    sub = "11111111-2222-3333-4444-555555555555"
    # Before linking, an access token (no email in it) has nobody to map to.
    status, body = await _me(client, cognito_pool.headers(sub))
    assert status == 401 and "ID token" in body["detail"]
    id_token = cognito_pool.headers(sub, token_use="id", email="Grower@Example.com")
    status, me = await _me(client, id_token)
    assert status == 200 and me["id"] == member["user_id"]
    # From now on the access token maps by sub, and the room grant applies.
    headers = cognito_pool.headers(sub)
    rooms = await (await client.get(f"/api/farms/{w.FARM}/rooms", headers=headers)).json()
    assert [r["id"] for r in rooms["items"]] == [w.ROOM_A]
    assert (await client.get(f"/api/rooms/{w.ROOM_B}", headers=headers)).status == 404
    members = await (
        await client.get(f"/api/farms/{w.FARM}/members", headers=auth("owner"))
    ).json()
    grower = next(m for m in members["items"] if m["email"] == "grower@example.com")
    assert grower["activated"] is True
    # The invitation is spent: the account belongs to the pool identity now.
    resp = await client.post(
        "/api/auth/accept-invite",
        json={"token": member["invite_token"], "password": "a long new password"},
    )
    assert resp.status == 401


async def test_an_email_linked_to_another_identity_is_not_taken_over(  # type: ignore[no-untyped-def]
    pool_client, cognito_pool
) -> None:
    client = await pool_client()
    other_sub = "99999999-0000-0000-0000-000000000000"
    headers = cognito_pool.headers(other_sub, token_use="id", email=w.World().email("cognito"))
    assert (await _me(client, headers))[0] == 401


async def test_unverified_emails_do_not_link(pool_client, cognito_pool) -> None:  # type: ignore[no-untyped-def]
    client = await pool_client()
    for verified in (False, "false", None):
        headers = cognito_pool.headers(
            "unverified-sub", token_use="id", email="owner@example.com", email_verified=verified
        )
        assert (await _me(client, headers))[0] == 401


async def test_a_new_pool_user_gets_an_account_unless_disabled(pool_client, cognito_pool) -> None:  # type: ignore[no-untyped-def]
    id_token = cognito_pool.headers("new-sub", token_use="id", email="new@example.com")
    closed = await pool_client(create_users=False)
    assert (await _me(closed, id_token))[0] == 401
    client = await pool_client()
    status, me = await _me(client, id_token)
    assert status == 200 and me["email"] == "new@example.com"
    farms = await (await client.get("/api/farms", headers=id_token)).json()
    assert farms["items"] == []
    assert (await _me(client, cognito_pool.headers("new-sub")))[1]["id"] == me["id"]


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("expired", {"expires_in": -120}),
        ("wrong issuer", {"iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other"}),
        ("access token for another client", {"client_id": "another-client"}),
        ("id token for another client", {"token_use": "id", "aud": "another-client"}),
        ("unknown token_use", {"token_use": "refresh"}),
        ("no token_use", {"token_use": None}),
        ("no expiry", {"exp": None}),
    ],
)
async def test_bad_pool_tokens_are_refused(pool_client, cognito_pool, case, kwargs) -> None:  # type: ignore[no-untyped-def]
    client = await pool_client()
    status, body = await _me(client, cognito_pool.headers(w.COGNITO_SUB, **kwargs))
    assert status == 401, case
    assert body["type"] == "/problems/unauthorized"


async def test_token_use_can_be_restricted(pool_client, cognito_pool) -> None:  # type: ignore[no-untyped-def]
    client = await pool_client(token_use=["access"])
    id_token = cognito_pool.headers(w.COGNITO_SUB, token_use="id", email="cognito@example.com")
    status, body = await _me(client, id_token)
    assert status == 401 and "id tokens are not accepted" in body["detail"]
    assert (await _me(client, cognito_pool.headers(w.COGNITO_SUB)))[0] == 200


async def test_forged_signatures_and_algorithms_are_refused(pool_client, cognito_pool) -> None:  # type: ignore[no-untyped-def]
    client = await pool_client()
    # A published kid, but signed by a key the pool never had.
    forged = cognito_pool.headers(w.COGNITO_SUB, sign_with=new_key())
    assert (await _me(client, forged))[0] == 401
    claims = jwt.decode(
        cognito_pool.token(w.COGNITO_SUB), options={"verify_signature": False}
    )
    public_pem = cognito_pool.jwks()["keys"][0]["n"]
    # HS256 keyed with public material, and alg "none": both refused, never "verified".
    hs = jwt.encode(claims, public_pem, algorithm="HS256", headers={"kid": "k1"})
    none = jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})
    for token in (hs, none):
        assert (await _me(client, {"Authorization": f"Bearer {token}"}))[0] == 401


async def test_rotated_keys_are_fetched_on_an_unknown_kid(pool_client, cognito_pool) -> None:  # type: ignore[no-untyped-def]
    client = await pool_client(jwks_refresh_min_s=0)
    assert (await _me(client, cognito_pool.headers(w.COGNITO_SUB)))[0] == 200
    assert (await _me(client, cognito_pool.headers(w.COGNITO_SUB)))[0] == 200
    assert cognito_pool.requests == 1  # cached
    cognito_pool.published = ["k2", "k1"]  # the pool rotates in a new key
    assert (await _me(client, cognito_pool.headers(w.COGNITO_SUB, kid="k2")))[0] == 200
    assert cognito_pool.requests == 2


async def test_unknown_kids_refetch_at_most_once_per_interval(cognito_pool, cognito_url) -> None:  # type: ignore[no-untyped-def]
    now = [1000.0]
    verifier = CognitoVerifier(
        pool_config(cognito_url, jwks_refresh_min_s=60), clock=lambda: now[0]
    )
    await verifier.verify(cognito_pool.token("a"))
    assert cognito_pool.requests == 1
    cognito_pool.published = ["k1", "k2"]
    # A burst of tokens with kids the cache lacks: one coalesced fetch at most.
    forged = [cognito_pool.token("a", kid=f"forged-{i}", sign_with=new_key()) for i in range(2)]
    for token in forged * 5:
        with pytest.raises(Unauthorized):
            await verifier.verify(token)
    # k2 is published now, but within the interval the verifier does not ask again.
    assert cognito_pool.requests == 1
    with pytest.raises(Unauthorized, match="unknown key"):
        await verifier.verify(cognito_pool.token("a", kid="k2"))
    now[0] += 61
    results = await asyncio.gather(
        *(verifier.verify(cognito_pool.token("a", kid="k2")) for _ in range(5))
    )
    assert {r.sub for r in results} == {"a"}
    assert cognito_pool.requests == 2  # five concurrent callers, one fetch


async def test_an_unreachable_pool_refuses_tokens_then_recovers(cognito_pool, cognito_url) -> None:  # type: ignore[no-untyped-def]
    now = [0.0]
    verifier = CognitoVerifier(pool_config(cognito_url), clock=lambda: now[0])
    cognito_pool.failing = True
    with pytest.raises(Unauthorized):
        await verifier.verify(cognito_pool.token("a"))
    with pytest.raises(Unauthorized):
        await verifier.verify(cognito_pool.token("a"))
    assert cognito_pool.requests == 1  # failures are rate limited too
    cognito_pool.failing = False
    now[0] += 60
    identity = await verifier.verify(cognito_pool.token("a", token_use="id", email="a@b.co"))
    assert identity.sub == "a" and identity.email == "a@b.co" and identity.token_use == "id"


def test_jwks_parsing_skips_what_it_cannot_use(cognito_pool) -> None:  # type: ignore[no-untyped-def]
    good = cognito_pool.jwks()["keys"][0]
    document = {
        "keys": [
            good,
            {**good, "kid": "enc", "use": "enc"},
            {**good, "kid": "hs", "alg": "HS256"},
            {"kid": "ec", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kid": "broken", "kty": "RSA", "n": "!!", "e": "AQAB"},
            {"kty": "RSA"},
            "junk",
        ]
    }
    assert set(parse_jwks(document)) == {"k1"}
    assert parse_jwks({"keys": "nope"}) == {} and parse_jwks([]) == {}


def test_cognito_config_is_all_or_nothing() -> None:
    from cloud.config import CognitoConfig, ConfigError, load_settings

    with pytest.raises(ConfigError, match="client_id"):
        load_settings(auth={"cognito": {"region": "eu-west-1", "user_pool_id": "eu-west-1_X"}})
    with pytest.raises(ConfigError, match="not in region"):
        load_settings(
            auth={
                "cognito": {"region": "eu-west-1", "user_pool_id": "us-east-1_X", "client_id": "c"}
            }
        )
    config = CognitoConfig(region=REGION, user_pool_id=POOL_ID, client_id=CLIENT_ID)
    assert config.issuer == ISSUER
    assert config.jwks_endpoint == f"{ISSUER}/.well-known/jwks.json"
