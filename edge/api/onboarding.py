"""Local API for onboarding: the farm's claim code, devices waiting for adoption, adopting or
dismissing them (``edge.onboarding``). Every route needs the admin login (the auth middleware)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edge.api import keys
from edge.api.esphome import node_file
from edge.api.problems import Conflict, NotFound, ValidationFailed
from edge.api.schemas import AdoptBody, EmptyBody, parse_body, parse_query
from edge.esphome_files import NodeOptions, claim_node
from edge.onboarding import Onboarding, OnboardingError
from edge.store.pending import PendingDevice
from shared.esphome import ClaimFileOptions
from shared.topics import is_valid_id


def _onboarding(request: web.Request) -> Onboarding:
    found = request.app.get(keys.ONBOARDING)
    if found is None:
        raise NotFound("onboarding is not available on this edge")
    return found


def _device_id(request: web.Request) -> str:
    device_id = request.match_info["device_id"]
    if not is_valid_id(device_id):
        raise NotFound(f"no device {device_id[:64]!r} is waiting for adoption")
    return device_id


def _problem(exc: OnboardingError) -> Exception:
    if exc.status == 404:
        return NotFound(str(exc))
    if exc.status == 409:
        return Conflict(str(exc))
    return ValidationFailed([{"field": exc.field or "body",
                              "message": str(exc), "type": "value_error"}])


def pending_view(row: PendingDevice) -> dict[str, Any]:
    return {
        "device_id": row.device_id, "state": row.state, "first_seen": row.first_seen,
        "last_seen": row.last_seen, "attempts": row.attempts, "address": row.address,
        "client_id": row.client_id, "room_id": row.room_id,
        # Claim mode with a key: adopted, it is handed its password over MQTT (no re-flash).
        "claim_mode": row.claim_key_hash is not None,
    }


async def get_onboarding(request: web.Request) -> web.Response:
    """The claim code, where devices connect, and the devices waiting for adoption."""
    onboarding = _onboarding(request)
    settings = request.app[keys.SETTINGS]
    rows = await onboarding.listing()
    broker = settings.broker
    embedded = broker.mode == "embedded"
    return web.json_response({
        "claim_code": onboarding.claim_code(),
        # An external broker (Mosquitto) relays claim hellos of its claim account instead of
        # refused logins (edge.external_claims).
        "enabled": True,
        "mode": broker.mode,
        "broker": {"port": broker.port, "tls_port": broker.tls.port if broker.tls.enabled
                   else None} if embedded else None,
        "pending": [pending_view(r) for r in rows],
        "refused_full": onboarding.refused,
    })


async def rotate_claim_code(request: web.Request) -> web.Response:
    """A new claim code: devices flashed with the old one can no longer ask to join."""
    await parse_body(request, EmptyBody)
    return web.json_response({"claim_code": _onboarding(request).rotate()})


async def adopt(request: web.Request) -> web.Response:
    """Adopt a pending device into a room; its password is in the answer, once."""
    onboarding = _onboarding(request)
    device_id = _device_id(request)
    body = await parse_body(request, AdoptBody)
    try:
        password = await onboarding.adopt(device_id, body.room_id, body.kind, body.actuator)
    except OnboardingError as exc:
        raise _problem(exc) from None
    return web.json_response({
        "device_id": device_id, "room_id": body.room_id, "kind": body.kind,
        "actuator": body.actuator, "username": device_id, "password": password,
        "claim_mode": await onboarding.takes_credentials(device_id),
    }, status=201)


async def dismiss(request: web.Request) -> web.Response:
    """Stop listing a pending device (it stays refused; it can still be adopted later)."""
    onboarding = _onboarding(request)
    device_id = _device_id(request)
    await parse_body(request, EmptyBody)
    try:
        await onboarding.dismiss(device_id)
    except OnboardingError as exc:
        raise _problem(exc) from None
    return web.Response(status=204)


async def claim_file(request: web.Request) -> web.Response:
    """A claim-mode ESPHome node file for a node not adopted yet (docs/onboarding.md)."""
    onboarding = _onboarding(request)
    query = parse_query(request, ClaimFileOptions)
    settings, code = request.app[keys.SETTINGS], onboarding.claim_code()
    return node_file(lambda: claim_node(settings, query.device_id, query.room_id, query.kind,
                                        query.actuator, NodeOptions.of(query), code),
                     query.device_id)


def add_onboarding_routes(app: web.Application) -> None:
    app.router.add_get("/api/onboarding", get_onboarding)
    app.router.add_get("/api/onboarding/claim-file.yaml", claim_file)
    app.router.add_post("/api/onboarding/claim-code", rotate_claim_code)
    app.router.add_post("/api/onboarding/{device_id}/adopt", adopt)
    app.router.add_post("/api/onboarding/{device_id}/dismiss", dismiss)

