"""Over AWS IoT Core (a local Mosquitto standing in, as in test_aws_iot.py), an edge holding
another edge's token is told whose token it has — the cloud's own words — not to re-register a
token that is fine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from edge.iot_uplink import IotUplink
from tests.chaos.conftest import Cloud, Registration, cloud, edge_app, fast_settings, make_site
from tests.e2e.conftest import wait_for
from tests.integration.test_aws_iot import EDGE_ID, Broker, TopicRule, broker, iot_site, pki
from tests.integration.test_aws_iot import seed_backlog as seed
from tests.integration.test_setup_checks import alerts

# The fixtures of the real cloud, the edge and Mosquitto, found by pytest under these names.
FIXTURES = (cloud, edge_app, broker, pki)
OTHER_EDGE = "edge-other"


@pytest.mark.postgres
@pytest.mark.mosquitto
async def test_an_edge_with_another_edges_token_is_told_whose_it_is(
    cloud: Any, broker: Broker, pki: Any, tmp_path: Path, farm_id: str, edge_app: Any,
) -> None:
    the_cloud: Cloud = await cloud()
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), EDGE_ID)
    other = await the_cloud.api("POST", f"/api/farms/{farm_id}/edges",
                                {"id": OTHER_EDGE, "name": "the other site"})
    # Configured as EDGE_ID (its certificate's topics), holding the other edge's token.
    iot_site(tmp_path, the_cloud, Registration(farm_id, EDGE_ID, other["token"]), broker, pki,
             config)
    rule = TopicRule(broker, pki, the_cloud.url)
    async with rule.running():
        run = await edge_app(fast_settings(config))
        assert isinstance(run.app.uplink, IotUplink)
        await seed(run.app, "room-a-sensor", "room-a", 5)
        db = run.app.settings.db_path
        found = await wait_for(lambda: alerts(db, "sync_auth"), 20,
                               "the alert about the refused uploads")
        await run.stop()
    message = " ".join(found)  # type: ignore[arg-type]
    assert "HTTP 403" in message, message
    assert f"this token belongs to edge {OTHER_EDGE} of farm {farm_id}" in message, message
    assert f"not edge {EDGE_ID}" in message, message
    assert "re-register" not in message  # the token is valid; the edge id is not its edge's
    assert rule.statuses.keys() == {403}
    assert await the_cloud.high_water(EDGE_ID) == 0 and reg.token != other["token"]
