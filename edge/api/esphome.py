"""``GET /api/devices/{device_id}/esphome.yaml``: the device's ESPHome node file, for the local
page's download button (admin login, like every /api route: it holds the device's password)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from edge.api import keys
from edge.api.problems import NotFound, RequestRefused, ValidationFailed
from edge.api.schemas import parse_query
from edge.config import ConfigError
from edge.esphome_files import NodeOptions, device_node
from shared.esphome import BoardOptions, Node, node_yaml


async def esphome_yaml(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    device_id = request.match_info["device_id"]
    device = request.app[keys.AUTOMATION].device(device_id)
    if device is None:
        raise NotFound(f"no device {device_id[:64]!r} on this edge")
    options = NodeOptions.of(parse_query(request, BoardOptions))
    # It holds the device's password.
    return node_file(lambda: device_node(settings, device, options), device.id)


def node_file(make: Callable[[], Node], device_id: str) -> web.Response:
    """A node file as a download that no cache keeps (it holds a password or the claim code);
    a 422 naming the field when an option does not fit, a 400 when the edge cannot make one."""
    try:
        node = make()
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
            "Content-Disposition": f'attachment; filename="{device_id}.yaml"',
            "Cache-Control": "no-store",
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/devices/{device_id}/esphome.yaml", esphome_yaml)
