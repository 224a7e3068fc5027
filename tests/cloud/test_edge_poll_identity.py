"""Polling (``GET /api/edge/v1/pending``) checks who the edge says it is against its token, as
batch uploads and the stream's hello do: an edge registered under the wrong id is told so at
once (403 naming both ids), instead of polling "fine" while every upload is refused."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cloud import world as w
from tests.cloud.test_edge_sync import EDGE, ok, problem, rows, sync_client

pytestmark = pytest.mark.postgres
FIXTURES = (sync_client,)
PENDING = "/api/edge/v1/pending"


async def command_state(dsn: str) -> str:
    found = await rows(dsn, "SELECT status FROM commands WHERE id = %s", (w.COMMAND_B,))
    return str(found[0]["status"])


async def test_polling_under_another_edge_id_is_refused_with_both_ids(  # type: ignore[no-untyped-def]
    sync_client: Any, world_dsn: str
) -> None:
    client = await sync_client(command_ttl_s=3600)
    seen = await rows(world_dsn, "SELECT last_seen FROM edges WHERE id = %s", (w.EDGE,))

    # The edge says it is someone else (what edge/downlink.py sends: edge_id, config_version,
    # acked_seq): refused, with the ids the operator needs to fix the edge's config.
    query = {"edge_id": "edge-elsewhere", "config_version": "0", "acked_seq": "0"}
    body = await problem(await client.get(PENDING, params=query, headers=EDGE), 403)
    assert body["detail"].startswith(
        f"this token belongs to edge {w.EDGE} of farm {w.FARM}, not edge edge-elsewhere"
    ), body
    assert "cloud.edge_id" in body["detail"]
    # Nothing was handed out and the edge was not marked as seen.
    assert await command_state(world_dsn) == "pending"
    assert await rows(world_dsn, "SELECT last_seen FROM edges WHERE id = %s", (w.EDGE,)) == seen

    # The right id of another farm is still not this token's edge.
    query = {"edge_id": w.EDGE, "farm_id": w.OTHER_FARM}
    body = await problem(await client.get(PENDING, params=query, headers=EDGE), 403)
    assert body["detail"].startswith(
        f"this token belongs to edge {w.EDGE} of farm {w.FARM}, not edge {w.EDGE}"
        f" of farm {w.OTHER_FARM}"
    ), body

    # An id that cannot be one is bad input: 422 naming the field, never a 500.
    for name in ("edge_id", "farm_id"):
        body = await problem(await client.get(PENDING, params={name: "no such/id"},
                                              headers=EDGE), 422)
        assert [e["field"] for e in body["errors"]] == [f"query.{name}"], body

    # Its own ids (or none, as older edges poll): the messages, as before.
    for query in ({"edge_id": w.EDGE, "farm_id": w.FARM, "config_version": "0"}, {}):
        answer = await ok(await client.get(PENDING, params=query, headers=EDGE))
        assert "command" in [m["type"] for m in answer["messages"]]
