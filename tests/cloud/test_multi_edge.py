"""Several edges in one farm, cloud side: each edge's stream carries only its rooms' config and
commands, a room moves between edges with its pending commands, uploads about a room an edge no
longer serves are still stored, and the edges' health shows on the API. Real HTTP and WebSocket
against real PostgreSQL; the edges are played by the test over the real wire protocol."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloud.db import downlink
from cloud.db.database import Database
from tests.cloud import test_edge_sync
from tests.cloud import world as w
from tests.cloud.test_edge_sync import (
    EDGE,
    farm_version,
    ok,
    problem,
    quiet,
    reading,
    readings_of,
    receive,
    rows,
    upload,
)

pytestmark = pytest.mark.postgres
sync_client = test_edge_sync.sync_client  # the fixture: an app on the world database

EDGE_2 = "wf-edge-2"


async def second_edge(client, auth) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Register the farm's second edge through the API; the headers its token gives."""
    made = await ok(
        await client.post(
            f"/api/farms/{w.FARM}/edges", json={"id": EDGE_2, "name": "pi 2"}, headers=auth("owner")
        ),
        201,
    )
    return {"Authorization": f"Bearer {made['token']}"}


async def move(client, auth, room: str, edge: str | None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return await ok(  # type: ignore[no-any-return]
        await client.put(f"/api/rooms/{room}/edge", json={"edge_id": edge}, headers=auth("owner"))
    )


async def hello(ws, edge_id: str, version: int = 0) -> None:  # type: ignore[no-untyped-def]
    await ws.send_json(
        {"type": "hello", "edge_id": edge_id, "config_version": version, "acked_seq": 0}
    )


def slice_of(config: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(rooms, devices, rule ids) of a config push."""
    rooms = [r["id"] for r in config["rooms"]]
    devices = sorted(d["id"] for d in config["devices"])
    rules = sorted(rule["id"] for r in config["rooms"] for rule in r["rules"])
    return rooms, devices, rules


async def new_command(client, auth, room: str, device: str) -> str:  # type: ignore[no-untyped-def]
    made = await ok(
        await client.post(
            f"/api/rooms/{room}/commands",
            json={"device_id": device, "action": "on"},
            headers=auth("operator"),
        ),
        201,
    )
    return str(made["id"])


async def test_each_edge_is_sent_only_its_rooms_config_and_commands(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    client = await sync_client(command_ttl_s=3600)
    # A farm's rooms are its only edge's; registering a second edge keeps them there.
    edge_2 = await second_edge(client, auth)
    room_a = await ok(await client.get(f"/api/rooms/{w.ROOM_A}", headers=auth("viewer")))
    assert room_a["edge_id"] == w.EDGE
    moved = await move(client, auth, w.ROOM_A, EDGE_2)
    assert moved == {"room_id": w.ROOM_A, "edge_id": EDGE_2}

    async with (
        client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws_1,
        client.ws_connect("/api/edge/v1/stream", headers=edge_2) as ws_2,
    ):
        await hello(ws_1, w.EDGE)
        await hello(ws_2, EDGE_2)
        config_1 = await receive(ws_1, "config")
        config_2 = await receive(ws_2, "config")
        assert config_1["version"] == config_2["version"] == await farm_version(world_dsn)
        assert slice_of(config_1) == ([w.ROOM_B], [w.ACTUATOR_B, w.SENSOR_B], [w.RULE_B])
        assert slice_of(config_2) == ([w.ROOM_A], [w.ACTUATOR_A], [])
        # Each is told which of the farm's rooms are not its own (to drop them if it has them).
        assert config_1["other_rooms"] == [w.ROOM_A] and config_2["other_rooms"] == [w.ROOM_B]
        # The command waiting for room B goes to edge 1 only.
        assert (await receive(ws_1, "command"))["command_id"] == w.COMMAND_B
        assert [m for m in await quiet(ws_2, 0.3) if m["type"] == "command"] == []

        # A new command for room A reaches edge 2, and edge 1 hears nothing of it.
        command_a = await new_command(client, auth, w.ROOM_A, w.ACTUATOR_A)
        assert (await receive(ws_2, "command"))["command_id"] == command_a
        assert [m for m in await quiet(ws_1, 0.3) if m["type"] == "command"] == []

        # Polling is the same slice.
        polled = await ok(await client.get("/api/edge/v1/pending", headers=edge_2))
        kinds = {(m["type"], m.get("command_id")) for m in polled["messages"]}
        assert kinds == {("config", None), ("command", command_a)}
        assert slice_of(polled["messages"][0]) == ([w.ROOM_A], [w.ACTUATOR_A], [])


async def test_a_moved_room_takes_its_config_and_pending_commands_along(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    client = await sync_client(command_ttl_s=3600)
    edge_2 = await second_edge(client, auth)
    async with (
        client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws_1,
        client.ws_connect("/api/edge/v1/stream", headers=edge_2) as ws_2,
    ):
        await hello(ws_1, w.EDGE)
        await hello(ws_2, EDGE_2)
        config_1 = await receive(ws_1, "config")
        assert slice_of(config_1)[0] == [w.ROOM_A, w.ROOM_B]
        assert "other_rooms" not in config_1  # left out while empty: older edges take it
        assert (await receive(ws_1, "command"))["command_id"] == w.COMMAND_B
        # Edge 2 serves no room yet: its config is empty.
        assert slice_of(await receive(ws_2, "config")) == ([], [], [])
        await ws_1.send_json({"type": "config_applied", "version": config_1["version"]})
        await ws_2.send_json({"type": "config_applied", "version": config_1["version"]})

        # Edge 1 takes a command for room B but never answers it; then room B moves.
        command_b = await new_command(client, auth, w.ROOM_B, w.ACTUATOR_B)
        assert (await receive(ws_1, "command"))["command_id"] == command_b
        await move(client, auth, w.ROOM_B, EDGE_2)

        # Both edges re-fetch: edge 1 without room B, edge 2 with it, its rule and devices,
        # followed by both commands still pending for it.
        after_1 = await receive(ws_1, "config")
        after_2 = await receive(ws_2, "config")
        assert after_1["version"] == after_2["version"] > config_1["version"]
        assert slice_of(after_1) == ([w.ROOM_A], [w.ACTUATOR_A], [])
        assert slice_of(after_2) == ([w.ROOM_B], [w.ACTUATOR_B, w.SENSOR_B], [w.RULE_B])
        assert after_1["other_rooms"] == [w.ROOM_B] and after_2["other_rooms"] == [w.ROOM_A]
        got = {(await receive(ws_2, "command"))["command_id"] for _ in range(2)}
        assert got == {w.COMMAND_B, command_b}
        assert [m for m in await quiet(ws_1, 0.3) if m["type"] == "command"] == []
        await ws_2.send_json({"type": "command_accepted", "command_id": command_b,
                              "edge_command_id": "e2-1"})
        deadline = time.monotonic() + 3
        while True:
            found = await rows(
                world_dsn, "SELECT status, edge_id FROM commands WHERE id = %s", (command_b,)
            )
            if found[0]["status"] == "delivered" or time.monotonic() > deadline:
                break
        assert found == [{"status": "delivered", "edge_id": EDGE_2}]

    # Edge 1 uploads readings of room B it buffered before the move: stored, once.
    before = len(await readings_of(world_dsn, w.SENSOR_B))
    ack = await ok(await upload(client, batch_of(w.EDGE, [reading(1), reading(2)])))
    assert ack["acked_seq"] == 2 and ack["inserted"] == 2
    again = await ok(await upload(client, batch_of(w.EDGE, [reading(1), reading(2)])))
    assert again["inserted"] == 0 and again["duplicates"] == 2
    assert len(await readings_of(world_dsn, w.SENSOR_B)) == before + 4  # two metrics each
    quarantined = await rows(world_dsn, "SELECT reason FROM edge_quarantine")
    assert quarantined == []


def batch_of(edge_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "edge_id": edge_id,
        "farm_id": w.FARM,
        "first_seq": records[0]["seq"],
        "last_seq": records[-1]["seq"],
        "sent_at": datetime.now(UTC).isoformat(),
        "records": records,
    }


async def test_assigning_a_room_checks_the_edge_and_the_role(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    client = await sync_client()
    await second_edge(client, auth)
    url = f"/api/rooms/{w.ROOM_A}/edge"
    for body, field in (
        ({"edge_id": "no-such-edge"}, "body.edge_id"),
        ({"edge_id": "bad id!"}, "body.edge_id"),
        ({}, "body.edge_id"),
        ({"edge_id": EDGE_2, "extra": 1}, "body.extra"),
    ):
        found = await problem(await client.put(url, json=body, headers=auth("owner")), 422)
        assert [e["field"] for e in found["errors"]] == [field], found
    other_farms_edge = await rows(world_dsn, "SELECT id FROM edges WHERE farm_id <> %s", (w.FARM,))
    assert other_farms_edge == []  # so "no-such-edge" stands for any edge outside this farm
    for role, status in (("operator", 403), ("viewer", 403), ("stranger", 404)):
        resp = await client.put(url, json={"edge_id": EDGE_2}, headers=auth(role))
        await problem(resp, status)
    await problem(
        await client.put("/api/rooms/nope/edge", json={"edge_id": EDGE_2}, headers=auth("owner")),
        404,
    )
    assert (await rows(world_dsn, "SELECT edge_id FROM rooms WHERE id = %s", (w.ROOM_A,))) == [
        {"edge_id": w.EDGE}
    ]
    # null unassigns: with two edges, such a room is served by neither.
    assert (await move(client, auth, w.ROOM_A, None))["edge_id"] is None
    listed = await ok(await client.get(f"/api/farms/{w.FARM}/edges", headers=auth("owner")))
    assert {e["id"]: e["rooms"] for e in listed["items"]} == {w.EDGE: [w.ROOM_B], EDGE_2: []}
    audit = await rows(world_dsn, "SELECT detail FROM audit_log WHERE action = 'room.edge'")
    assert audit == [{"detail": {"edge_id": None}}]


async def test_a_new_room_can_be_given_its_edge(sync_client, world_dsn, auth) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client()
    await second_edge(client, auth)
    url = f"/api/farms/{w.FARM}/rooms"
    body = {"id": "wf-c", "species": "oyster", "stage": "fruiting", "edge_id": "no-such-edge"}
    found = await problem(await client.post(url, json=body, headers=auth("owner")), 422)
    assert [e["field"] for e in found["errors"]] == ["body.edge_id"]
    assert await rows(world_dsn, "SELECT id FROM rooms WHERE id = 'wf-c'") == []
    made = await ok(
        await client.post(url, json={**body, "edge_id": EDGE_2}, headers=auth("owner")), 201
    )
    assert made["edge_id"] == EDGE_2
    # Without one, in a farm with two edges, no edge runs it until it is given one.
    other = await ok(await client.post(
        url, json={"id": "wf-d", "species": "oyster", "stage": "fruiting"}, headers=auth("owner")
    ), 201)
    assert other["edge_id"] is None
    listed = await ok(await client.get(url, headers=auth("viewer")))
    assert {r["id"]: r["edge_id"] for r in listed["items"]} == {
        w.ROOM_A: w.EDGE, w.ROOM_B: w.EDGE, "wf-c": EDGE_2, "wf-d": None
    }


async def test_removing_an_edge_hands_its_rooms_to_the_one_left(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    client = await sync_client()
    await second_edge(client, auth)
    await move(client, auth, w.ROOM_A, EDGE_2)
    version = await farm_version(world_dsn)
    await ok(await client.delete(f"/api/edges/{EDGE_2}", headers=auth("owner")), 204)
    assert await farm_version(world_dsn) > version  # edge 1's slice grew: it re-fetches
    room_a = await ok(await client.get(f"/api/rooms/{w.ROOM_A}", headers=auth("viewer")))
    assert room_a["edge_id"] is None
    edge = await ok(await client.get(f"/api/edges/{w.EDGE}", headers=auth("owner")))
    assert edge["rooms"] == [w.ROOM_A, w.ROOM_B]


async def test_edge_health_shows_last_seen_backlog_version_and_clock_offset(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    client = await sync_client()
    edge_2 = await second_edge(client, auth)
    await move(client, auth, w.ROOM_A, EDGE_2)
    fresh = await ok(await client.get(f"/api/edges/{EDGE_2}", headers=auth("owner")))
    assert fresh["last_seen"] is None and fresh["online"] is False
    assert fresh["backlog"] is None and fresh["software_version"] is None
    assert fresh["clock_offset_s"] is None and fresh["rooms"] == [w.ROOM_A]

    async with client.ws_connect("/api/edge/v1/stream", headers=edge_2) as ws:
        await hello(ws, EDGE_2)
        await receive(ws, "config")
        await ws.send_json({"type": "status", "backlog": 1234, "software_version": "0.9.1"})
        # Unreadable health (negative backlog) is logged and ignored; the stream goes on.
        await ws.send_json({"type": "status", "backlog": -1})
        deadline = time.monotonic() + 3
        while True:
            edge = await ok(await client.get(f"/api/edges/{EDGE_2}", headers=auth("owner")))
            if edge["backlog"] is not None or time.monotonic() > deadline:
                break
        assert edge["backlog"] == 1234 and edge["software_version"] == "0.9.1"
        assert edge["online"] is True and edge["status_at"] is not None
        command_a = await new_command(client, auth, w.ROOM_A, w.ACTUATOR_A)
        assert (await receive(ws, "command"))["command_id"] == command_a  # still served

    # The clock offset is measured on its batches: this edge's clock is 10 minutes slow.
    slow = datetime.now(UTC) - timedelta(minutes=10)
    body = batch_of(EDGE_2, [reading(1, device=w.ACTUATOR_A, room=w.ROOM_A)])
    body["sent_at"] = slow.isoformat()
    await ok(await upload(client, body, headers=edge_2))
    listed = await ok(await client.get(f"/api/farms/{w.FARM}/edges", headers=auth("owner")))
    by_id = {e["id"]: e for e in listed["items"]}
    assert 590 < by_id[EDGE_2]["clock_offset_s"] < 610
    assert by_id[EDGE_2]["high_water"] == 1 and by_id[EDGE_2]["config_version"] == 0
    assert by_id[w.EDGE]["backlog"] is None and by_id[w.EDGE]["rooms"] == [w.ROOM_B]


async def test_a_farm_whose_rooms_have_edges_can_be_deleted(sync_client, world_dsn, auth) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client()
    await second_edge(client, auth)
    await move(client, auth, w.ROOM_A, EDGE_2)
    await ok(await client.delete(f"/api/farms/{w.FARM}", headers=auth("owner")), 204)
    left = await rows(world_dsn, "SELECT id FROM edges WHERE farm_id = %s", (w.FARM,))
    assert left == [] and await rows(
        world_dsn, "SELECT id FROM rooms WHERE farm_id = %s", (w.FARM,)) == []


async def test_a_heartbeat_leaves_a_freshly_seen_edge_alone(world_dsn) -> None:  # type: ignore[no-untyped-def]
    db = await Database.connect(world_dsn, min_size=1, max_size=1)
    try:
        assert await downlink.touch(db, w.FARM, w.EDGE)  # seen now: always written
        # Seen a moment ago (by a batch, say): a heartbeat allowing 10 s writes nothing.
        assert not await downlink.touch(db, w.FARM, w.EDGE, fresh_s=10)
        await db.execute("UPDATE edges SET last_seen = now() - interval '11 seconds'"
                         " WHERE farm_id = %s AND id = %s", (w.FARM, w.EDGE))
        assert await downlink.touch(db, w.FARM, w.EDGE, fresh_s=10)
        row = await db.fetch_one("SELECT now() - last_seen < interval '1 second' AS fresh"
                                 " FROM edges WHERE farm_id = %s AND id = %s", (w.FARM, w.EDGE))
        assert row is not None and row["fresh"]
    finally:
        await db.close()
