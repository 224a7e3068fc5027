"""Login, refresh rotation, logout, invitations, rate limits and room-level grants."""

from __future__ import annotations

import pytest

from cloud.app import init_app
from cloud.config import AuthConfig
from tests.cloud import world as w
from tests.cloud.conftest import JWT_SECRET, make_settings

pytestmark = pytest.mark.postgres


async def _login(client, email: str, password: str = w.PASSWORD):  # type: ignore[no-untyped-def]
    return await client.post("/api/auth/login", json={"email": email, "password": password})


async def test_login_me_refresh_logout(world_client, world) -> None:  # type: ignore[no-untyped-def]
    resp = await _login(world_client, "Owner@Example.com")  # email is case-insensitive
    assert resp.status == 200
    tokens = await resp.json()
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
    me = await world_client.get(
        "/api/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert (await me.json())["id"] == world.user_ids["owner"]

    resp = await world_client.post(
        "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert resp.status == 200
    rotated = await resp.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    # The spent token is refused, and replaying it revokes the whole family.
    resp = await world_client.post(
        "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert resp.status == 401
    resp = await world_client.post(
        "/api/auth/refresh", json={"refresh_token": rotated["refresh_token"]}
    )
    assert resp.status == 401


async def test_logout_revokes_the_refresh_token(world_client) -> None:  # type: ignore[no-untyped-def]
    tokens = await (await _login(world_client, "viewer@example.com")).json()
    resp = await world_client.post(
        "/api/auth/logout", json={"refresh_token": tokens["refresh_token"]}
    )
    assert resp.status == 204
    resp = await world_client.post(
        "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert resp.status == 401


async def test_wrong_password_and_unknown_user_look_the_same(world_client) -> None:  # type: ignore[no-untyped-def]
    bad = await _login(world_client, "owner@example.com", "wrong password")
    unknown = await _login(world_client, "nobody@example.com", "wrong password")
    assert bad.status == unknown.status == 401
    assert (await bad.json())["detail"] == (await unknown.json())["detail"]


async def test_login_is_rate_limited_per_account(aiohttp_client, world_dsn, tmp_path) -> None:  # type: ignore[no-untyped-def]
    auth = AuthConfig(
        jwt_secret=JWT_SECRET, argon2_time_cost=1, argon2_memory_kib=64, login_per_account=3
    )
    client = await aiohttp_client(init_app(make_settings(world_dsn, tmp_path, auth=auth)))
    for _ in range(3):
        assert (await _login(client, "owner@example.com", "nope")).status == 401
    resp = await _login(client, "owner@example.com")  # even the right password now waits
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.content_type == "application/problem+json"
    assert (await _login(client, "viewer@example.com")).status == 200  # other accounts unaffected


async def test_login_is_rate_limited_per_ip(aiohttp_client, world_dsn, tmp_path) -> None:  # type: ignore[no-untyped-def]
    auth = AuthConfig(
        jwt_secret=JWT_SECRET, argon2_time_cost=1, argon2_memory_kib=64, login_per_ip=4
    )
    client = await aiohttp_client(init_app(make_settings(world_dsn, tmp_path, auth=auth)))
    for role in ("owner", "operator", "viewer", "limited"):
        assert (await _login(client, f"{role}@example.com")).status == 200
    resp = await _login(client, "stranger@example.com")
    assert resp.status == 429 and "Retry-After" in resp.headers


async def test_invite_then_accept_then_access(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    resp = await world_client.post(
        f"/api/farms/{w.FARM}/members",
        json={"email": "Grower@Example.com", "role": "viewer", "room_ids": [w.ROOM_A]},
        headers=auth("owner"),
    )
    assert resp.status == 201, await resp.text()
    member = await resp.json()
    assert member["activated"] is False and member["room_ids"] == [w.ROOM_A]
    token = member["invite_token"]
    resp = await world_client.post(
        "/api/auth/accept-invite", json={"token": token, "password": "a long new password"}
    )
    assert resp.status == 200
    access = (await resp.json())["access_token"]
    headers = {"Authorization": f"Bearer {access}"}
    rooms = await (await world_client.get(f"/api/farms/{w.FARM}/rooms", headers=headers)).json()
    assert [r["id"] for r in rooms["items"]] == [w.ROOM_A]
    assert (await world_client.get(f"/api/rooms/{w.ROOM_B}", headers=headers)).status == 404
    # An invitation works once.
    resp = await world_client.post(
        "/api/auth/accept-invite", json={"token": token, "password": "another password"}
    )
    assert resp.status == 401


async def test_granting_a_room_of_another_farm_is_refused(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    resp = await world_client.post(
        f"/api/farms/{w.FARM}/members",
        json={"email": "x@example.com", "role": "operator", "room_ids": [w.OTHER_ROOM]},
        headers=auth("owner"),
    )
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "body.room_ids"
    members = await (
        await world_client.get(f"/api/farms/{w.FARM}/members", headers=auth("owner"))
    ).json()
    assert "x@example.com" not in {m["email"] for m in members["items"]}  # rolled back


async def test_the_last_owner_cannot_leave_or_be_demoted(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    owner = world.user_ids["owner"]
    url = f"/api/farms/{w.FARM}/members/{owner}"
    resp = await world_client.patch(url, json={"role": "viewer"}, headers=auth("owner"))
    assert resp.status == 409
    assert (await world_client.delete(url, headers=auth("owner"))).status == 409


async def test_a_room_limited_operator_acts_only_in_granted_rooms(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    ok = await world_client.post(
        f"/api/rooms/{w.ROOM_A}/commands",
        json={"device_id": w.ACTUATOR_A, "action": "off"},
        headers=auth("limited"),
    )
    assert ok.status == 201
    hidden = await world_client.post(
        f"/api/rooms/{w.ROOM_B}/commands",
        json={"device_id": w.ACTUATOR_B, "action": "off"},
        headers=auth("limited"),
    )
    assert hidden.status == 404


async def test_expired_and_forged_tokens_are_refused(world_client, world, tokens) -> None:  # type: ignore[no-untyped-def]
    from cloud.auth.tokens import AccessTokens

    expired = w.bearer(tokens, world.user_ids["owner"], expired=True)
    assert (await world_client.get("/api/users/me", headers=expired)).status == 401
    forged = AccessTokens(b"another-secret-" * 4, issuer="smartfarm", ttl_s=900)
    headers = w.bearer(forged, world.user_ids["owner"])
    assert (await world_client.get("/api/users/me", headers=headers)).status == 401


async def test_the_api_is_rate_limited_per_token(  # type: ignore[no-untyped-def]
    aiohttp_client, world_dsn, tmp_path, world, tokens
) -> None:
    auth = AuthConfig(
        jwt_secret=JWT_SECRET, argon2_time_cost=1, argon2_memory_kib=64, api_per_token=3
    )
    client = await aiohttp_client(init_app(make_settings(world_dsn, tmp_path, auth=auth)))
    first = w.bearer(tokens, world.user_ids["viewer"])
    for _ in range(3):
        assert (await client.get("/api/users/me", headers=first)).status == 200
    resp = await client.get(f"/api/farms/{w.FARM}", headers=first)  # any route counts
    assert resp.status == 429
    assert resp.content_type == "application/problem+json"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert (await resp.json())["type"] == "/problems/rate-limited"
    # The limit is per token: the same user's next token, and other users, go on.
    second = w.bearer(tokens, world.user_ids["viewer"])
    assert (await client.get("/api/users/me", headers=second)).status == 200
    other = w.bearer(tokens, world.user_ids["owner"])
    assert (await client.get("/api/users/me", headers=other)).status == 200
    # Public routes are not counted against a token.
    assert (await client.get("/health", headers=first)).status == 200


def test_the_rate_limit_window_slides() -> None:
    from cloud.auth.ratelimit import SlidingWindow
    from cloud.errors import RateLimited

    window = SlidingWindow(2, 60)
    window.take("t", now=0)
    window.take("t", now=30)
    with pytest.raises(RateLimited) as refused:
        window.take("t", now=59)
    assert refused.value.headers["Retry-After"] == "1"  # the first hit leaves the window at 60
    window.take("t", now=60.5)  # …and then there is room again
    with pytest.raises(RateLimited) as refused:
        window.take("t", now=61)
    assert refused.value.headers["Retry-After"] == "29"


async def test_pool_tokens_are_rate_limited_too(  # type: ignore[no-untyped-def]
    aiohttp_client, world_dsn, tmp_path, cognito_url, cognito_pool
) -> None:
    from cloud.config import AuthConfig as Auth
    from tests.cloud.fake_cognito import pool_config

    auth = Auth(
        jwt_secret=JWT_SECRET,
        argon2_time_cost=1,
        argon2_memory_kib=64,
        api_per_token=2,
        cognito=pool_config(cognito_url),
    )
    client = await aiohttp_client(init_app(make_settings(world_dsn, tmp_path, auth=auth)))
    headers = cognito_pool.headers(w.COGNITO_SUB)
    assert (await client.get("/api/users/me", headers=headers)).status == 200
    assert (await client.get("/api/users/me", headers=headers)).status == 200
    resp = await client.get("/api/users/me", headers=headers)
    assert resp.status == 429 and "Retry-After" in resp.headers
