"""Handlers of the local API: read the farm's state, send manual commands, change rules and stages.

Handlers only parse input (``schemas``), call the automation or a store repository through
``Database.read``, and shape the answer (``views``); errors are raised and the problem middleware
answers them.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge.api import auth, esphome, keys, views
from edge.api.firmware import add_firmware_routes
from edge.api.onboarding import add_onboarding_routes
from edge.api.problems import Forbidden, Unauthorized, ValidationFailed
from edge.api.schemas import (
    AlertsQuery,
    CommandBody,
    CommandsQuery,
    QuarantineQuery,
    ReadingsQuery,
    RuleBody,
    RulesQuery,
    StageBody,
    parse_body,
    parse_query,
)
from edge.automation import Automation, InvalidRequest, NotFound
from edge.metrics import METRICS, scrape_allowed
from edge.store import alerts as alert_rows
from edge.store import commands as command_rows
from edge.store import devices as device_rows
from edge.store import quarantine as quarantine_rows
from edge.uplink import SYNC_STATUS
from shared.about import package_version
from shared.models import canonical_action, command_value_error, utcnow
from shared.vocabulary import vocabulary_document

log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "static"
# The page's assets, by name: nothing else under static/ is ever served (no path handling).
ASSETS: Final = frozenset(
    {"dom.js", "app.js", "onboarding.js", "firmware.js", "sync.js", "style.css", "favicon.svg"}
)


def _room_id(request: web.Request) -> str:
    room_id = request.match_info["room_id"]
    if room_id not in request.app[keys.AUTOMATION].rooms:
        raise NotFound(f"no room {room_id!r}")
    return room_id


def _stale_after(request: web.Request) -> float:
    return request.app[keys.SETTINGS].automation.stale_after_s


# ---- page and probe ----
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC_DIR / name)


async def health(request: web.Request) -> web.Response:
    """For container healthchecks and monitoring (no auth, never raises): 503 when the store is
    closed or stalled, or the edge's MQTT connection has been down past its grace period
    (``edge.metrics.EdgeMetrics.health``). A cloud that cannot be reached is reported, not 503."""
    body: dict[str, Any] = {"status": "ok"}
    try:
        db = request.app[keys.DB]
        body.update(
            broker_connected=request.app[keys.COMMANDS].connected,
            db_open=db.is_open,
            farm_id=request.app[keys.SETTINGS].farm_id,
            version=package_version(),
            time=views.iso(utcnow()),
            pending_commands=request.app[keys.COMMANDS].pending_count(),
        )
        healthy = db.is_open
        if (metrics := request.app.get(METRICS)) is not None:
            ok, details = metrics.health()
            body.update(details)
            healthy = healthy and ok
        if not healthy:
            body["status"] = "unhealthy"
    except Exception:
        log.exception("health check failed")
        body["status"] = "unhealthy"
    return web.json_response(body, status=200 if body["status"] == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: loopback only, or anyone with ``api.metrics_token``."""
    token = request.app[keys.SETTINGS].api.metrics_token
    secret = token.get_secret_value() if token is not None else None
    if not scrape_allowed(request.remote, request.headers.get("Authorization", ""), secret):
        if secret is None:
            raise Forbidden("/metrics answers loopback clients only; set api.metrics_token "
                            "to scrape it from elsewhere with a bearer token")
        raise Unauthorized("send Authorization: Bearer <api.metrics_token>",
                           headers={"WWW-Authenticate": 'Bearer realm="smartfarm-edge-metrics"'})
    edge_metrics = request.app.get(METRICS)
    if edge_metrics is None:
        raise web.HTTPNotFound()
    await edge_metrics.refresh()
    response = web.Response(body=generate_latest(edge_metrics.registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def vocabulary(request: web.Request) -> web.Response:
    """Species, stages, actuator roles and metrics with labels, units and decimals: the page
    reads its words from here (``shared.vocabulary``) instead of spelling them again."""
    return web.json_response(vocabulary_document())


async def favicon(request: web.Request) -> web.FileResponse:
    # Browsers ask for /favicon.ico whatever the page links; answer instead of logging 404s.
    return web.FileResponse(STATIC_DIR / "favicon.svg")


# ---- rooms ----
async def _last_commands(request: web.Request, room_ids: list[str]) -> dict[str, Any]:
    automation = request.app[keys.AUTOMATION]
    ids = [d.id for rid in room_ids for d in automation.actuators_in(rid)]
    result: dict[str, Any] = await request.app[keys.DB].read(views.last_commands, ids)
    return result


async def list_rooms(request: web.Request) -> web.Response:
    automation = request.app[keys.AUTOMATION]
    commands = await _last_commands(request, list(automation.rooms))
    now = utcnow()
    return web.json_response([
        views.room_view(automation, rid, now, _stale_after(request), commands)
        for rid in automation.rooms
    ])


async def get_room(request: web.Request) -> web.Response:
    room_id = _room_id(request)
    commands = await _last_commands(request, [room_id])
    return web.json_response(views.room_view(
        request.app[keys.AUTOMATION], room_id, utcnow(), _stale_after(request), commands
    ))


async def room_readings(request: web.Request) -> web.Response:
    room_id = _room_id(request)
    query = parse_query(request, ReadingsQuery)
    until = utcnow()
    since = until - timedelta(hours=query.hours)
    series = await request.app[keys.DB].read(
        views.downsampled_series, room_id, since.timestamp(), until.timestamp() + 0.001,
        query.metric, query.points,
    )
    return web.json_response({
        "room_id": room_id,
        "since": views.iso(since),
        "until": views.iso(until),
        "readings": series.readings,
        "truncated": series.truncated,
        "series": series.points,
    })


async def set_stage(request: web.Request) -> web.Response:
    room_id = _room_id(request)
    body = await parse_body(request, StageBody)
    automation = request.app[keys.AUTOMATION]
    await automation.set_stage(room_id, body.stage)
    log.info("stage of %s set to %s by %s", room_id, body.stage, request[keys.IDENTITY].user)
    return web.json_response(views.room_view(automation, room_id, utcnow(), _stale_after(request)))


# ---- devices and commands ----
async def list_devices(request: web.Request) -> web.Response:
    automation = request.app[keys.AUTOMATION]
    statuses = {s.device_id: s for s in await request.app[keys.DB].read(device_rows.all_status)}
    seen = automation.last_seen()
    return web.json_response([
        views.device_view(automation, d, statuses.get(d.id), seen) for d in automation.devices()
    ])


async def list_commands(request: web.Request) -> web.Response:
    query = parse_query(request, CommandsQuery)

    def recent(conn: Any) -> list[dict[str, Any]]:
        return command_rows.recent(
            conn, limit=query.limit, device_id=query.device_id, room_id=query.room_id
        )

    rows = await request.app[keys.DB].read(recent)
    return web.json_response([views.command_view(r) for r in rows])


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed([{"field": field, "message": message, "type": "value_error"}])


def _command_device(automation: Automation, body: CommandBody, role: str | None) -> str:
    """The device a command goes to: ``device_id`` (of the form's role, if it names one), or the
    one actuator of that role (in ``room_id`` when given)."""
    if body.device_id is not None:
        device = automation.device(body.device_id)
        if device is not None and role is not None and device.actuator != role:
            raise _invalid("device_id", f"{body.action} drives a {role}; {body.device_id} is"
                                        f" a {device.actuator or device.kind}")
        return body.device_id  # unknown or a sensor: refused below like any command
    if role is None:
        raise _invalid("device_id", f"required with action {body.action!r}")
    fitting = [d.id for d in automation.devices()
               if d.kind == "actuator" and d.actuator == role and body.room_id in (None, d.room)]
    if len(fitting) != 1:
        where = f"room {body.room_id}" if body.room_id else "this edge"
        raise _invalid("device_id" if fitting else "action",
                       f"{body.action} drives a {role}: {where} has {len(fitting)} of them"
                       + ("; name one in device_id (or room_id)" if fitting else ""))
    return fitting[0]


async def send_command(request: web.Request) -> web.Response:
    body = await parse_body(request, CommandBody)
    action, role = canonical_action(body.action)  # the body's Literal admits only known forms
    if (problem := command_value_error(action, body.value)) is not None:
        raise _invalid("value", problem)
    automation = request.app[keys.AUTOMATION]
    device_id = _command_device(automation, body, role)
    user = request[keys.IDENTITY].user
    if action == "set":
        # A level goes to the device as such (as a cloud `set` does); on/off hold an override.
        device = automation.device(device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r}")
        if device.kind != "actuator":
            raise InvalidRequest(f"{device_id} is a sensor; only actuators take commands")
        command_id = await request.app[keys.COMMANDS].send(
            device_id=device_id, room_id=device.room, action=action, value=body.value,
            source="manual", reason=f"set by {user}" + (f" ({body.action})" if role else ""),
        )
    else:
        command_id = await automation.manual_command(
            device_id, action, value=body.value, hold_minutes=body.hold_minutes, by=user,
        )
    state = automation.actuators.get(device_id)
    override = state.override if state is not None and action != "set" else None
    return web.json_response(
        {
            "command_id": command_id,
            "device_id": device_id,
            "action": action,
            "override_until": views.iso(override.until) if override is not None else None,
        },
        status=202,
    )


async def clear_override(request: web.Request) -> web.Response:
    device_id = request.match_info["device_id"]
    automation = request.app[keys.AUTOMATION]
    device = request.app[keys.SETTINGS].device(device_id)
    if device is None or device.kind != "actuator":
        raise NotFound(f"no actuator {device_id!r}")
    await automation.clear_override(device_id)
    log.info("override on %s cleared by %s", device_id, request[keys.IDENTITY].user)
    return web.json_response(views.actuator_view(automation, device))


# ---- alerts, quarantine ----
async def list_alerts(request: web.Request) -> web.Response:
    query = parse_query(request, AlertsQuery)

    def listing(conn: Any) -> list[dict[str, Any]]:
        return alert_rows.listing(conn, active_only=query.active, limit=query.limit)

    rows = await request.app[keys.DB].read(listing)
    return web.json_response([views.alert_view(r) for r in rows])


async def list_quarantine(request: web.Request) -> web.Response:
    query = parse_query(request, QuarantineQuery)

    def recent(conn: Any) -> tuple[int, list[quarantine_rows.QuarantinedMessage]]:
        return quarantine_rows.count(conn), quarantine_rows.recent(conn, query.limit)

    total, items = await request.app[keys.DB].read(recent)
    return web.json_response({"count": total, "items": [views.quarantine_view(i) for i in items]})


# ---- rules ----
async def list_rules(request: web.Request) -> web.Response:
    query = parse_query(request, RulesQuery)
    automation = request.app[keys.AUTOMATION]
    if query.room_id is not None and query.room_id not in automation.rooms:
        raise NotFound(f"no room {query.room_id!r}")
    rules = automation.rules(query.room_id)
    return web.json_response([r.model_dump(mode="json") for r in rules])


async def set_rule(request: web.Request) -> web.Response:
    rule_id = request.match_info["rule_id"]
    body = await parse_body(request, RuleBody)
    rule = await request.app[keys.AUTOMATION].set_rule_enabled(rule_id, body.enabled)
    log.info(
        "rule %s %s by %s", rule_id, "enabled" if body.enabled else "disabled",
        request[keys.IDENTITY].user,
    )
    return web.json_response(rule.model_dump(mode="json"))


# ---- counters ----
async def stats(request: web.Request) -> web.Response:
    db = request.app[keys.DB]
    commands = request.app[keys.COMMANDS]
    return web.json_response({
        "ingest": views.stats_view(request.app[keys.INGEST].stats),
        "commands": {
            **views.stats_view(commands.stats),
            "pending": commands.pending_count(),
            "broker_connected": commands.connected,
        },
        "db": {**views.stats_view(db.stats), "schema_version": db.schema_version},
        "quarantine_count": await db.read(quarantine_rows.count),
        "automation": {"evaluations": request.app[keys.AUTOMATION].evaluations},
        "sync": await sync() if (sync := request.app.get(SYNC_STATUS)) else {"enabled": False},
    })


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/api/login", auth.login)
    app.router.add_post("/api/logout", auth.logout)
    app.router.add_get("/api/session", auth.session)
    app.router.add_get("/api/session/state", auth.session_state)
    app.router.add_get("/api/vocabulary", vocabulary)
    app.router.add_get("/api/rooms", list_rooms)
    app.router.add_get("/api/rooms/{room_id}", get_room)
    app.router.add_get("/api/rooms/{room_id}/readings", room_readings)
    app.router.add_post("/api/rooms/{room_id}/stage", set_stage)
    app.router.add_get("/api/devices", list_devices)
    esphome.add_routes(app)
    app.router.add_get("/api/commands", list_commands)
    app.router.add_post("/api/commands", send_command)
    app.router.add_delete("/api/overrides/{device_id}", clear_override)
    app.router.add_get("/api/alerts", list_alerts)
    app.router.add_get("/api/quarantine", list_quarantine)
    app.router.add_get("/api/rules", list_rules)
    app.router.add_post("/api/rules/{rule_id}", set_rule)
    app.router.add_patch("/api/rules/{rule_id}", set_rule)
    app.router.add_get("/api/stats", stats)
    add_onboarding_routes(app)
    add_firmware_routes(app)
