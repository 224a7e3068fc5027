"""``GET /api/devices/{device_id}/esphome.yaml``: the device's ESPHome node file, for the local
page's download button (admin login, like every /api route: it holds the device's password)."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import Field, field_validator

from edge.api import keys
from edge.api.problems import NotFound, RequestRefused, ValidationFailed
from edge.api.schemas import _Query, parse_query
from edge.config import ConfigError
from edge.esphome_files import NodeOptions, device_node
from shared.esphome import OPTIONAL_SENSORS, ThSensor, node_yaml

HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9])?$"


class EsphomeQuery(_Query):
    """The board options (docs/devices.md); every one has a default."""

    host: str | None = Field(default=None, pattern=HOST_PATTERN,
                             description="the edge's address on the farm network")
    board: str = Field(default="esp32dev", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    th_sensor: ThSensor = "sht4x"
    without: str = Field(default="", description="comma-separated: co2, light, substrate, battery")
    drive: Literal["relay", "pwm"] | None = None
    inverted: bool = False
    interval_s: int = Field(default=30, ge=5, le=3600)

    @field_validator("without")
    @classmethod
    def _sensors(cls, value: str) -> str:
        names = [n for n in value.split(",") if n]
        unknown = sorted(set(names) - set(OPTIONAL_SENSORS))
        if unknown:
            raise ValueError(f"unknown sensors {unknown}: use {', '.join(OPTIONAL_SENSORS)}")
        return value


async def esphome_yaml(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    device_id = request.match_info["device_id"]
    device = request.app[keys.AUTOMATION].device(device_id)
    if device is None:
        raise NotFound(f"no device {device_id[:64]!r} on this edge")
    query = parse_query(request, EsphomeQuery)
    options = NodeOptions(
        host=query.host, board=query.board, th_sensor=query.th_sensor,
        sensors=frozenset(OPTIONAL_SENSORS) - set(query.without.split(",")),
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
