"""An edge that cannot hold its WebSocket polls instead, and still reports its health: a real
edge behind a proxy that refuses WebSocket upgrades, against the real cloud. Its backlog and
software version (sent with its polls) and its clock offset (measured on its batches) show on the
REST API and on the farm page's overview, as a streaming edge's do."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp import web

from edge.broker import broker_address
from edge.config import EdgeSettings, load_config
from edge.credentials import DeviceSecrets
from edge.uplink import software_version
from tests.chaos.conftest import Cloud, fast_settings, make_site, register_edge, until
from tests.chaos.proxy import FaultProxy

pytestmark = pytest.mark.postgres

ROOM, SENSOR = "room-a", "room-a-sensor"
EDGE_ID = "edge-poll"


class NoStreamProxy(FaultProxy):
    """The proxy, except that WebSocket upgrades are refused (a middlebox that breaks them)."""

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.stats.refused += 1
        return web.json_response({"detail": "no WebSockets here"}, status=502)


async def publish(settings: EdgeSettings, password: str, n: int) -> None:
    host, port = broker_address(settings)
    start = datetime.now(UTC) - timedelta(minutes=5)
    async with aiomqtt.Client(host, port, username=SENSOR, password=password,
                              identifier=f"{SENSOR}-health") as client:
        for i in range(n):
            payload = {"device_id": SENSOR, "timestamp": (start + timedelta(seconds=i)).isoformat(),
                       "data": {"temperature_c": 17.0, "humidity_pct": 88.0}}
            await client.publish(f"farm/{settings.farm_id}/room/{ROOM}/telemetry/{SENSOR}",
                                 json.dumps(payload), qos=1)


async def edge_row(the_cloud: Cloud, farm_id: str) -> dict[str, Any]:
    listed = await the_cloud.api("GET", f"/api/farms/{farm_id}/edges")
    (found,) = [e for e in listed["items"] if e["id"] == EDGE_ID]
    return found  # type: ignore[no-any-return]


async def test_a_polling_edge_reports_backlog_version_and_clock_offset(
    cloud: Any, tmp_path: Path, farm_id: str, edge_app: Any
) -> None:
    the_cloud: Cloud = await cloud()
    refuse_batches = True

    def faults(method: str, path: str) -> str | None:
        return "5xx" if refuse_batches and path.endswith("/batches") else None

    async with NoStreamProxy([the_cloud.url], faults=faults) as proxy:
        config = make_site(tmp_path / "site", farm_id)
        reg = await the_cloud.provision(load_config(config), EDGE_ID)
        register_edge(config, proxy.url, reg)
        settings = fast_settings(config)
        edge = (await edge_app(settings)).app
        assert edge.downlink is not None
        await until(lambda: edge.downlink.stats.mode == "poll", 15, "the edge to poll")  # type: ignore[union-attr]

        # Its uploads are refused, so readings pile up: the backlog it reports with its polls.
        password = DeviceSecrets.load(settings.device_secrets_path).devices[SENSOR]
        await publish(settings, password, 12)

        async def backlog_reported() -> dict[str, Any] | None:
            found = await edge_row(the_cloud, farm_id)
            return found if (found["backlog"] or 0) >= 12 else None

        found = await until(backlog_reported, 15, "the backlog reported by a poll")
        assert found["software_version"] == software_version() is not None
        assert found["online"] and found["status_at"] is not None, found
        assert found["clock_offset_s"] is None  # no batch has reached the cloud yet
        assert proxy.stats.streams == 0 and proxy.stats.refused > 0

        # Uploads get through again: the backlog drains to 0 and the clock offset is measured.
        refuse_batches = False

        async def drained() -> dict[str, Any] | None:
            found = await edge_row(the_cloud, farm_id)
            return found if found["backlog"] == 0 and found["clock_offset_s"] is not None else None

        found = await until(drained, 20, "backlog 0 and a clock offset")
        assert abs(found["clock_offset_s"]) < 5, found
        assert edge.downlink.stats.mode == "poll" and proxy.stats.streams == 0

        # The farm page (the overview every member sees) shows the same.
        overview = await the_cloud.api("GET", f"/api/farms/{farm_id}/overview")
        (shown,) = [e for e in overview["edges"] if e["id"] == EDGE_ID]
        assert shown["backlog"] == 0 and shown["software_version"] == software_version()
        assert shown["clock_offset_s"] is not None and shown["online"], shown
