"""A polling edge's health (``GET /api/edge/v1/pending?backlog=…&software_version=…``) is kept
as its stream's ``status`` message is; bad values are refused naming the field; a poll without
them (an older edge, or a poll between heartbeats) is unknown, never an error, and keeps what
was last reported. Real HTTP against real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from shared.sync import EdgeStatus, status_query
from tests.cloud import world as w
from tests.cloud.test_edge_sync import EDGE, ok, problem, rows, sync_client

pytestmark = pytest.mark.postgres
FIXTURES = (sync_client,)
PENDING = "/api/edge/v1/pending"
HEALTH = "SELECT backlog, software_version, status_at, last_seen FROM edges WHERE id = %s"


async def test_a_poll_carries_the_edges_health(  # type: ignore[no-untyped-def]
    sync_client: Any, world_dsn: str, auth
) -> None:
    client = await sync_client(command_ttl_s=3600)
    query = status_query(EdgeStatus(backlog=42, software_version="0.9.1"))
    assert query == {"backlog": "42", "software_version": "0.9.1"}
    await ok(await client.get(PENDING, params={"edge_id": w.EDGE, **query}, headers=EDGE))
    edge = await ok(await client.get(f"/api/edges/{w.EDGE}", headers=auth("owner")))
    assert (edge["backlog"], edge["software_version"]) == (42, "0.9.1")
    assert edge["online"] and edge["status_at"] is not None
    (reported,) = await rows(world_dsn, HEALTH, (w.EDGE,))

    # Without them (as older edges poll): seen again, the health reported stays.
    await ok(await client.get(PENDING, params={"edge_id": w.EDGE}, headers=EDGE))
    (after,) = await rows(world_dsn, HEALTH, (w.EDGE,))
    assert after["last_seen"] > reported["last_seen"]
    assert (after["backlog"], after["software_version"], after["status_at"]) == (
        42, "0.9.1", reported["status_at"])

    # One field alone: the other is unknown (as on the stream).
    await ok(await client.get(PENDING, params={"backlog": "0"}, headers=EDGE))
    (after,) = await rows(world_dsn, HEALTH, (w.EDGE,))
    assert (after["backlog"], after["software_version"]) == (0, None)
    assert after["status_at"] > reported["status_at"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"backlog": "-1"}, "query.backlog"),
        ({"backlog": "lots"}, "query.backlog"),
        ({"software_version": "x" * 65}, "query.software_version"),
    ],
)
async def test_bad_health_is_refused_naming_the_field(  # type: ignore[no-untyped-def]
    sync_client: Any, world_dsn: str, params: dict[str, str], field: str
) -> None:
    client = await sync_client(command_ttl_s=3600)
    before = await rows(world_dsn, HEALTH, (w.EDGE,))
    body = await problem(await client.get(PENDING, params=params, headers=EDGE), 422)
    assert [e["field"] for e in body["errors"]] == [field], body
    assert await rows(world_dsn, HEALTH, (w.EDGE,)) == before  # nothing kept, not even seen
