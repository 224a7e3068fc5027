"""``GET /api/devices/{device_id}/esphome.yaml``: the device's ESPHome node file, for the local
page's download button (admin login, like every /api route: it holds the device's password)."""

from __future__ import annotations

from aiohttp import web

from edge.api import keys
from edge.api.problems import NotFound, RequestRefused, ValidationFailed
from edge.api.schemas import parse_query
from edge.config import ConfigError
from edge.esphome_files import NodeOptions, device_node
from shared.esphome import BoardOptions, node_yaml


async def esphome_yaml(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    device_id = request.match_info["device_id"]
    device = request.app[keys.AUTOMATION].device(device_id)
    if device is None:
        raise NotFound(f"no device {device_id[:64]!r} on this edge")
    query = parse_query(request, BoardOptions)
    options = NodeOptions(
        host=query.host, board=query.board, th_sensor=query.th_sensor, sensors=query.sensors(),
        drive=query.drive, inverted=query.inverted, interval_s=query.interval_s,
    )
    try:
        node = device_node(settings, device, options)
    except ConfigError as exc:
        raise RequestRefused(str(exc)) from None
    except ValueError as exc:
        field = str(exc).split(" ", 1)[0]
        raise ValidationFailed([{"field": field, "message": str(exc),
                                 "type": "value_error"}]) from None
    return web.Response(
        text=node_yaml(node),
        content_type="application/yaml",
        headers={
            "Content-Disposition": f'attachment; filename="{device.id}.yaml"',
            "Cache-Control": "no-store",  # it holds the device's password
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/devices/{device_id}/esphome.yaml", esphome_yaml)
