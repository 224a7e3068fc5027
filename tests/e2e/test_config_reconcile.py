"""Edits made on the edge's local page while the cloud is unreachable, reconciled on reconnect
with the edits made in the cloud meanwhile: last writer wins by config version, and the losing
edit is kept in the cloud's audit log. A real edge (``EdgeApp``, its local HTTP API), a real
cloud (``init_app``) on PostgreSQL; "unreachable" is the edge's cloud instance stopped while the
user edits through another instance of the same cloud."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.config import load_config
from tests.chaos.conftest import (
    Cloud,
    cloud,
    drained,
    edge_app,
    fast_settings,
    make_site,
    register_edge,
    tally,
    until,
)

pytestmark = pytest.mark.postgres
FIXTURES = (cloud, edge_app)  # the real cloud's fixtures, found by pytest under these names

EDGE_ID = "edge-reconcile"
ROOMS = (("room-a", "Room A", "oyster", "fruiting"), ("room-b", "Room B", "oyster", "fruiting"))


async def applied(the_cloud: Cloud) -> int:
    """The config version the edge acknowledged, once it is the farm's current one (else 0)."""
    found = await the_cloud.rows(
        "SELECT e.config_version AS applied, f.version AS current FROM edges e"
        " JOIN farm_config f ON f.farm_id = e.farm_id WHERE e.id = %s", (EDGE_ID,))
    if found and found[0]["applied"] == found[0]["current"]:
        return int(found[0]["applied"])
    return 0


async def edit_on_edge(edge: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """What the local page does, as a script would: HTTP Basic as the edge's admin."""
    api = edge.settings.api
    assert api.admin_password is not None and edge.api_port is not None
    login = aiohttp.BasicAuth(api.admin_user, api.admin_password.get_secret_value())
    async with aiohttp.ClientSession(auth=login) as session, session.post(
        f"http://127.0.0.1:{edge.api_port}{path}", json=body
    ) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_offline_edge_edits_are_reconciled_with_cloud_edits_by_version(
    cloud: Any, tmp_path: Path, farm_id: str, edge_app: Any
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    config = make_site(tmp_path / "site", farm_id, rooms=ROOMS)
    reg = await the_cloud.provision(load_config(config), EDGE_ID)
    edge_url = the_cloud.url
    register_edge(config, edge_url, reg)
    run = await edge_app(fast_settings(config))
    edge = run.app
    base = await until(lambda: applied(the_cloud), 10, "the first config applied")
    assert edge.downlink is not None and edge.downlink.config_version == base

    # The edge's cloud goes away; the user goes on editing through another instance.
    await the_cloud.stop(edge_url)
    the_cloud.url = await the_cloud.start()
    await until(lambda: edge.downlink.stats.connected_since is None, 10, "the edge offline")

    # In the cloud: room A to spawn run (version base + 1).
    await the_cloud.api("PATCH", "/api/rooms/room-a", {"stage": "spawn_run"})
    # On the edge's local page, later by the clock but on version base: room A to pinning (the
    # same room: a conflict) and room B's light rule off (a room nobody else touched).
    await edit_on_edge(edge, "/api/rooms/room-a/stage", {"stage": "pinning"})
    await edit_on_edge(edge, "/api/rules/room-b-light", {"enabled": False})
    assert edge.automation.rooms["room-a"].stage == "pinning"  # offline, the edge's edit holds
    assert not _rule(edge, "room-b", "room-b-light").enabled

    # The edge's cloud is back: the edits go up, the merged config comes down.
    await the_cloud.start(port=int(edge_url.rsplit(":", 1)[1]))
    final = await until(lambda: _at_least(the_cloud, base + 2), 20, "the merged config applied")

    # Room A: the cloud's edit (version base + 1) beat the edge's (made on base), on both sides.
    room_a = await the_cloud.api("GET", "/api/rooms/room-a")
    assert room_a["stage"] == "spawn_run"
    assert edge.automation.rooms["room-a"].stage == "spawn_run"
    # Room B: the edge's edit won (nothing newer) and is the cloud's config now.
    rows = await the_cloud.rows("SELECT disabled_rules FROM rooms WHERE id = 'room-b'")
    assert rows[0]["disabled_rules"] == ["room-b-light"]
    assert not _rule(edge, "room-b", "room-b-light").enabled
    assert edge.downlink.config_version == final

    # The audit log keeps the losing edit, whole, and the applied one.
    audit = await the_cloud.rows(
        "SELECT action, target, detail FROM audit_log WHERE farm_id = %s"
        " AND action LIKE 'config.%%' ORDER BY id", (reg.farm_id,))
    lost = [a for a in audit if a["action"] == "config.conflict"]
    assert len(lost) == 1, audit
    assert lost[0]["target"] == "room-a"
    detail = lost[0]["detail"]
    assert detail["change"]["stage"] == "pinning" and detail["edge_id"] == EDGE_ID
    assert (detail["base_version"], detail["winner"], detail["winning_version"]) == (
        base, "cloud", base + 1)
    won = [a for a in audit if a["action"] == "config.edge_edit"]
    assert [(a["target"], a["detail"]["change"]["rule_id"], a["detail"]["change"]["enabled"])
            for a in won] == [("room-b", "room-b-light", False)]

    # And every record of the edge reached PostgreSQL exactly once.
    await drained(the_cloud, edge.settings.db_path, EDGE_ID, 15)
    await run.stop()
    counted = await tally(the_cloud, edge.settings.db_path, EDGE_ID, reg.farm_id)
    counted.assert_exactly_once()
    assert counted.kinds["config_change"] >= 2, counted.summary()


def _rule(edge: Any, room_id: str, rule_id: str) -> Any:
    return next(r for r in edge.automation.rules(room_id) if r.id == rule_id)


async def _at_least(the_cloud: Cloud, version: int) -> int:
    found = await applied(the_cloud)
    return found if found >= version else 0
