"""The authorization matrix, generated from the route table: every endpoint × every kind of
caller, with the status each must get. A new route without a sample here fails the suite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloud.api import all_routes
from cloud.api.routing import Route
from cloud.app import init_app
from cloud.auth.access import RANK
from cloud.auth.tokens import token_hash
from cloud.db import farms, users
from cloud.db.database import Database
from tests.cloud import world as w
from tests.cloud.conftest import make_settings

pytestmark = pytest.mark.postgres

CALLERS = (
    "owner",
    "operator",
    "viewer",
    "limited",
    "stranger",
    "anonymous",
    "expired",
    "cognito",  # a pool token (RS256, verified against the JWKS) of an operator of farm F
)

# Path parameters point at farm F's room B, which the room-limited operator may not see.
PARAMS: dict[str, Any] = {
    "farm_id": w.FARM,
    "room_id": w.ROOM_B,
    "device_id": w.SENSOR_B,
    "rule_id": w.RULE_B,
    "command_id": w.COMMAND_B,
    "edge_id": w.EDGE,
    "actuator_id": w.ACTUATOR_B,
    "pending_device_id": w.PENDING,
}
# One valid request body per route that takes one (keyed "METHOD path").
BODIES: dict[str, Any] = {
    "POST /api/farms": {"name": "New farm"},
    "PATCH /api/farms/{farm_id}": {"name": "Renamed"},
    "POST /api/farms/{farm_id}/members": {"email": "new@example.com", "role": "viewer"},
    "PATCH /api/farms/{farm_id}/members/{user_id}": {"role": "operator"},
    "POST /api/farms/{farm_id}/rooms": {"species": "shiitake", "stage": "spawn_run"},
    "PATCH /api/rooms/{room_id}": {"stage": "pinning"},
    "PUT /api/rooms/{room_id}/edge": {"edge_id": None},
    "POST /api/rooms/{room_id}/devices": {"kind": "sensor"},
    "POST /api/rooms/{room_id}/pending-devices/{pending_device_id}/adopt": {"kind": "sensor"},
    "PATCH /api/devices/{device_id}": {"name": "renamed"},
    "POST /api/rooms/{room_id}/commands": {"device_id": w.ACTUATOR_B, "action": "on"},
    "POST /api/rooms/{room_id}/holds": {"device_id": w.ACTUATOR_B, "action": "on", "minutes": 30},
    "POST /api/rooms/{room_id}/automation": {
        "type": "threshold",
        "id": "co2",
        "room_id": w.ROOM_B,
        "actuator": w.ACTUATOR_B,
        "metric": "co2_ppm",
        "on_above": 1000,
        "off_below": 800,
    },
    "PATCH /api/rooms/{room_id}/automation/{rule_id}": {"changes": {"enabled": False}},
    "POST /api/farms/{farm_id}/edges": {"name": "second pi"},
    "PUT /api/rooms/{room_id}/substrate": {"dry_mass_kg": 10},
    "POST /api/rooms/{room_id}/harvests": {"weight_kg": 2.5},
    "PUT /api/users/me/notification-preferences": {"min_severity": "critical"},
    "PUT /api/farms/{farm_id}/device-network": {"mqtt_host": "192.168.1.20"},
    "POST /api/farms/{farm_id}/alerts/{alert_id}/acknowledge": {"note": "on it"},
    "POST /api/farms/{farm_id}/alerts/{alert_id}/clear": {},
    "POST /api/rooms/{room_id}/logbook": {"kind": "note", "text": "pins showing"},
}
# Public routes are covered by their own tests (login, refresh, …), not by the matrix.
PROTECTED = [r for r in all_routes() if r.scope != "public"]


def _key(route: Route) -> str:
    return f"{route.method} {route.path}"


def expected(route: Route, caller: str) -> int:
    if caller in ("anonymous", "expired"):
        return 401
    if route.scope == "user":
        return route.status
    if caller == "stranger":
        return 404
    role = "operator" if caller in ("limited", "cognito") else caller
    if caller == "limited" and route.scope in ("room", "device"):
        return 404  # room B is outside the grant: it does not exist for them
    return route.status if RANK[role] >= RANK[route.role] else 403


def _url(route: Route, world: w.World, caller: str, alert_id: int = 0, entry_id: str = "") -> str:
    params = dict(
        PARAMS,
        user_id=world.user_ids["viewer"],
        recommendation_id=world.recommendation_id,
        alert_id=alert_id,
        entry_id=entry_id,
    )
    if "notification_id" in route.path:
        own = world.notification_ids.get(caller, world.notification_ids["owner"])
        params["notification_id"] = own
    return route.path.format(**params)


def test_every_route_with_a_body_has_a_sample() -> None:
    missing = [_key(r) for r in PROTECTED if r.body is not None and _key(r) not in BODIES]
    assert not missing, f"add a sample body for: {missing}"


def _cases() -> list[Any]:
    return [
        pytest.param(route, caller, id=f"{_key(route)}-{caller}")
        for route in PROTECTED
        for caller in CALLERS
    ]


@pytest.fixture(scope="module")
def shared_world_dsn(databases, world_template) -> str:  # type: ignore[no-untyped-def]
    """One clone for every case that must not change anything (reads and refusals)."""
    return databases.dsn(databases.create(template=world_template[0]))


async def _open_invite(dsn: str) -> int:
    """A member of farm F invited by email who has not set a password yet; their user id."""
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        user = await users.create(db, email="invited@example.com", password_hash=None)
        await farms.set_member(db, w.FARM, user["id"], role="viewer", room_ids=None)
        expires = datetime.now(UTC) + timedelta(days=7)
        await users.set_invite(db, user["id"], token_hash("sfi_matrix-invite"), expires)
        return int(user["id"])
    finally:
        await db.close()


@pytest.mark.parametrize(("route", "caller"), _cases())
async def test_matrix(  # type: ignore[no-untyped-def]
    route: Route,
    caller: str,
    clone_world,
    aiohttp_client,
    shared_world_dsn,
    world,
    tokens,
    tmp_path,
    cognito_auth,
    cognito_pool,
) -> None:
    want = expected(route, caller)
    dsn = shared_world_dsn
    if route.method != "GET" and want < 400:
        # A successful write gets its own copy of the world so cases stay independent.
        dsn = clone_world()
    # Every case runs with Cognito on: local tokens must work beside the pool's.
    settings = make_settings(dsn, tmp_path, auth=cognito_auth())
    world_client = await aiohttp_client(init_app(settings))
    headers: dict[str, str] = {}
    if caller == "cognito":
        headers = cognito_pool.headers(w.COGNITO_SUB)
    elif caller == "expired":
        headers = w.bearer(tokens, world.user_ids["owner"], expired=True)
    elif caller != "anonymous":
        headers = w.bearer(tokens, world.user_ids[caller])
    body = BODIES.get(_key(route))
    # An alarm or a logbook note to act on, made for the case (the template has none: other
    # tests count them).
    alert_id = await w.add_alarm(dsn) if "{alert_id}" in route.path else 0
    entry_id = await w.add_note(dsn) if "{entry_id}" in route.path else ""
    if "{pending_device_id}" in route.path:
        await w.add_pending(dsn)  # a device waiting for adoption (the template has none)
    url = _url(route, world, caller, alert_id, entry_id)
    if "/invites/{user_id}" in route.path and want < 400:
        # Renewing or revoking needs an invitation still open (an activated member is a 409).
        url = route.path.format(farm_id=w.FARM, user_id=await _open_invite(dsn))
    resp = await world_client.request(route.method, url, json=body, headers=headers)
    text = await resp.text()
    assert resp.status == want, f"{_key(route)} as {caller}: {resp.status} {text[:300]}"
    if want >= 400:
        assert resp.content_type == "application/problem+json"
