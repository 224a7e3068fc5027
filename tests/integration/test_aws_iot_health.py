"""An edge on AWS IoT Core alone (no WebSocket, no polling: ``downlink_stream = false``) reports
its health on its replies topic, which the topic rule posts to ``POST /api/edge/v1/pending``:
backlog and software version show on the API as a streaming edge's do, and the clock offset is
measured on its batches. Local Mosquitto standing in for AWS IoT Core, the real edge and cloud
(the harness of tests/integration/test_aws_iot.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from edge.iot_uplink import IotUplink
from edge.uplink import software_version
from tests.chaos.conftest import Cloud, cloud, edge_app, fast_settings, make_site, until
from tests.integration.test_aws_iot import (
    EDGE_ID,
    Broker,
    Pki,
    TopicRule,
    broker,
    iot_site,
    pki,
    seed_backlog,
)

FIXTURES = (cloud, edge_app, broker, pki)
pytestmark = [pytest.mark.postgres, pytest.mark.mosquitto]


async def test_an_iot_only_edge_reports_its_health_on_the_replies_topic(
    cloud: Any, broker: Broker, pki: Pki, tmp_path: Path, farm_id: str, edge_app: Any,
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), EDGE_ID)
    iot_site(tmp_path, the_cloud, reg, broker, pki, config, downlink_stream=False)
    rule = TopicRule(broker, pki, the_cloud.url)
    async with rule.running():
        run = await edge_app(fast_settings(config))
        edge = run.app
        assert isinstance(edge.uplink, IotUplink)
        await seed_backlog(edge, "room-a-sensor", "room-a", 200)

        async def reported() -> dict[str, Any] | None:
            listed = await the_cloud.api("GET", f"/api/farms/{farm_id}/edges")
            (found,) = [e for e in listed["items"] if e["id"] == EDGE_ID]
            done = found["backlog"] == 0 and found["clock_offset_s"] is not None
            return found if done else None

        found = await until(reported, 20, "backlog 0 and a clock offset on the API")
        assert found["software_version"] == software_version() is not None
        assert found["online"] and found["status_at"] is not None
        assert abs(found["clock_offset_s"]) < 5, found
        assert edge.downlink is not None and edge.downlink.stats.mode == "off"
        await run.stop()
    statuses = [m for reply in rule.replies for m in reply["messages"] if m["type"] == "status"]
    assert statuses and all(m["software_version"] == software_version() for m in statuses)
