"""Alerts an edge uploads about rooms or devices its farm does not have (an edge still running
`edge init`'s demo rooms, say) are quarantined with the reason instead of stored. Real cloud, real
PostgreSQL, real HTTP."""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from tests.chaos.conftest import Cloud, cloud
from tests.e2e.conftest import make_site
from tests.integration.test_setup_checks import EDGE_ID, edge_call

pytestmark = pytest.mark.postgres
FIXTURES = (cloud,)  # the real cloud's fixture, found by pytest under this name


def alert(seq: int, key: str, *, room: str | None = None, device: str | None = None
          ) -> dict[str, Any]:
    data = {"key": key, "kind": "device_silent", "severity": "critical", "message": key,
            "room_id": room, "device_id": device, "state": "active", "at": time.time()}
    return {"seq": seq, "kind": "alert", "at": time.time(), "data": data}


async def test_alerts_for_rooms_or_devices_the_farm_lacks_are_quarantined(
    cloud: Any, tmp_path: Path, farm_id: str
) -> None:
    the_cloud: Cloud = await cloud()
    reg = await the_cloud.provision(load_config(make_site(tmp_path, farm_id)), EDGE_ID,
                                    devices=False)
    records = [
        alert(1, "silent:demo-room", room="oyster-a"),  # `edge init`'s demo room
        alert(2, "silent:demo-fan", room="room-a", device="oyster-a-fan"),
        alert(3, "band:room-a", room="room-a"),
        alert(4, "sync:auth"),  # about the edge itself: no room, no device
    ]
    body = json.dumps({"protocol": 1, "edge_id": EDGE_ID, "farm_id": farm_id, "first_seq": 1,
                       "last_seq": 4, "sent_at": datetime.now(UTC).isoformat(),
                       "records": records}).encode()
    status, ack = await edge_call(the_cloud.url, "POST", "/api/edge/v1/batches", reg.token, body)
    assert status == 200, ack
    assert ack["acked_seq"] == 4  # quarantined records count as stored: the outbox moves on
    stored = await the_cloud.rows(
        "SELECT key FROM edge_alerts WHERE edge_id = %s ORDER BY key", (EDGE_ID,))
    assert [r["key"] for r in stored] == ["band:room-a", "sync:auth"]
    kept = await the_cloud.rows(
        "SELECT seq, reason FROM edge_quarantine WHERE edge_id = %s ORDER BY seq", (EDGE_ID,))
    assert [(r["seq"], r["reason"]) for r in kept] == [
        (1, "alert silent:demo-room: room oyster-a not registered in this farm"),
        (2, "alert silent:demo-fan: device oyster-a-fan not registered in this farm"),
    ]
