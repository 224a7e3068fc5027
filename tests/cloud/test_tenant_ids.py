"""Ids are per farm: two tenants each have a room ``oyster-a``, a device ``sensor-1``, a rule, a
command and an edge of the same ids, every path lands in the right farm, and neither tenant
learns the other's ids (no 409 or 403 across tenants)."""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from tests.cloud import world as w

pytestmark = pytest.mark.postgres

FARM_A, FARM_B, FARM_C = "tenant-a", "tenant-b", "tenant-c"
ROOM, SENSOR, HUM, RULE, CMD, EDGE = "oyster-a", "sensor-1", "hum-1", "rh-1", "cmd-1", "edge-1"
PROBLEM = "application/problem+json"


async def ok(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json() if status != 204 else None


async def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    return await resp.json()  # type: ignore[no-any-return]


async def make_farm(client: Any, headers: dict[str, str], farm_id: str, action: str) -> str:
    """A farm with room, sensor, humidifier, rule, command and edge of the shared ids; the
    edge's token."""
    farm = {"id": farm_id, "name": farm_id}
    await ok(await client.post("/api/farms", json=farm, headers=headers), 201)
    room = {"id": ROOM, "name": f"{farm_id} room", "species": "oyster", "stage": "fruiting"}
    made = await ok(
        await client.post(f"/api/farms/{farm_id}/rooms", json=room, headers=headers), 201
    )
    assert made["farm_id"] == farm_id
    q = f"?farm_id={farm_id}"
    for device in (
        {"id": SENSOR, "kind": "sensor", "name": f"{farm_id} sensor"},
        {"id": HUM, "kind": "actuator", "actuator": "humidifier"},
    ):
        reg = await ok(
            await client.post(f"/api/rooms/{ROOM}/devices{q}", json=device, headers=headers), 201
        )
        assert reg["farm_id"] == farm_id and reg["room_id"] == ROOM
        assert reg["mqtt"]["publish_topics"][0].startswith(f"farm/{farm_id}/room/{ROOM}/")
    rule = {
        "type": "threshold",
        "id": RULE,
        "room_id": ROOM,
        "actuator": HUM,
        "metric": "humidity_pct",
        "on_below": 85,
        "off_above": 90,
    }
    await ok(await client.post(f"/api/rooms/{ROOM}/automation{q}", json=rule, headers=headers), 201)
    command = {"device_id": HUM, "action": action, "command_id": CMD}
    await ok(
        await client.post(f"/api/rooms/{ROOM}/commands{q}", json=command, headers=headers), 201
    )
    edge = await ok(
        await client.post(f"/api/farms/{farm_id}/edges", json={"id": EDGE}, headers=headers), 201
    )
    assert edge["farm_id"] == farm_id
    return str(edge["token"])


async def upload(client: Any, token: str, farm_id: str, temp: float) -> dict[str, Any]:
    now = time.time()
    records = [
        {
            "seq": 1,
            "kind": "reading",
            "at": now,
            "data": {
                "device_id": SENSOR,
                "room_id": ROOM,
                "ts": now - 1,
                "values": {"temperature_c": temp, "humidity_pct": 88.0},
            },
        },
        {
            "seq": 2,
            "kind": "status",
            "at": now,
            "data": {
                "device_id": HUM,
                "room_id": ROOM,
                "online": True,
                "state": {"relay": temp > 20},
                "at": now,
            },
        },
        {
            "seq": 3,
            "kind": "command",
            "at": now,
            "data": {
                "command_id": "e-1",
                "device_id": HUM,
                "room_id": ROOM,
                "action": "on",
                "source": "cloud",
                "created_at": now,
                "cloud_command_id": CMD,
            },
        },
        {
            "seq": 4,
            "kind": "command_state",
            "at": now,
            "data": {"command_id": "e-1", "state": "acked", "at": now, "attempts": 1},
        },
    ]
    body = {
        "edge_id": EDGE,
        "farm_id": farm_id,
        "first_seq": 1,
        "last_seq": 4,
        "sent_at": datetime.now(UTC).isoformat(),
        "records": records,
    }
    raw = gzip.compress(json.dumps(body).encode())
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    return await ok(await client.post("/api/edge/v1/batches", data=raw, headers=headers))  # type: ignore[no-any-return]


async def test_two_farms_share_ids_and_each_sees_only_its_own(  # type: ignore[no-untyped-def]
    world_client, auth, world_dsn
) -> None:
    a, b = auth("owner"), auth("stranger")
    # The other tenant's pending command must not reach this edge: each edge sees its own one.
    token_a = await make_farm(world_client, a, FARM_A, "on")
    token_b = await make_farm(world_client, b, FARM_B, "off")

    for headers, farm_id, action in ((a, FARM_A, "on"), (b, FARM_B, "off")):
        room = await ok(await world_client.get(f"/api/rooms/{ROOM}", headers=headers))
        assert room["farm_id"] == farm_id and room["name"] == f"{farm_id} room"
        rooms = await ok(await world_client.get(f"/api/farms/{farm_id}/rooms", headers=headers))
        assert [r["id"] for r in rooms["items"]] == [ROOM]
        devices = await ok(await world_client.get(f"/api/rooms/{ROOM}/devices", headers=headers))
        assert sorted((d["id"], d["farm_id"]) for d in devices["items"]) == [
            (HUM, farm_id),
            (SENSOR, farm_id),
        ]
        sensor = await ok(await world_client.get(f"/api/devices/{SENSOR}", headers=headers))
        assert sensor["farm_id"] == farm_id and sensor["name"] == f"{farm_id} sensor"
        rules = await ok(await world_client.get(f"/api/rooms/{ROOM}/automation", headers=headers))
        assert [r["id"] for r in rules["items"]] == [RULE]
        cmds = await ok(await world_client.get(f"/api/rooms/{ROOM}/commands", headers=headers))
        assert [(c["id"], c["action"]) for c in cmds["items"]] == [(CMD, action)]

    # Each edge is offered its own farm's command only.
    for token, action in ((token_a, "on"), (token_b, "off")):
        pending = await ok(
            await world_client.get(
                "/api/edge/v1/pending?config_version=999999",
                headers={"Authorization": f"Bearer {token}"},
            )
        )
        sent = [m for m in pending["messages"] if m["type"] == "command"]
        assert [(m["command_id"], m["action"]) for m in sent] == [(CMD, action)]

    # Batches from each farm's edge, same room/device/command ids, land in that farm.
    assert (await upload(world_client, token_a, FARM_A, 17.0))["acked_seq"] == 4
    assert (await upload(world_client, token_b, FARM_B, 23.0))["acked_seq"] == 4
    for headers, temp in ((a, 17.0), (b, 23.0)):
        latest = await ok(await world_client.get(f"/api/devices/{SENSOR}/latest", headers=headers))
        assert {r["metric"]: r["value"] for r in latest["readings"]} == {
            "temperature_c": temp,
            "humidity_pct": 88.0,
        }
        series = await ok(
            await world_client.get(
                f"/api/rooms/{ROOM}/telemetry?metric=temperature_c", headers=headers
            )
        )
        assert [r["value"] for r in series["items"]] == [temp]
        live = await ok(await world_client.get(f"/api/rooms/{ROOM}/live", headers=headers))
        assert sorted(d["id"] for d in live["devices"]) == [HUM, SENSOR]
        cmd = await ok(await world_client.get(f"/api/rooms/{ROOM}/commands/{CMD}", headers=headers))
        assert cmd["status"] == "acked"
    async with await psycopg.AsyncConnection.connect(world_dsn) as conn:
        cur = await conn.execute(
            "SELECT farm_id, state->>'relay' FROM device_status WHERE device_id = %s ORDER BY 1",
            (HUM,),
        )
        assert await cur.fetchall() == [(FARM_A, "false"), (FARM_B, "true")]
        cur = await conn.execute(
            "SELECT farm_id, count(*) FROM edge_commands WHERE edge_id = %s GROUP BY 1 ORDER BY 1",
            (EDGE,),
        )
        assert await cur.fetchall() == [(FARM_A, 1), (FARM_B, 1)]

    # Deleting one farm's room leaves the other's, readings included.
    await ok(await world_client.delete(f"/api/rooms/{ROOM}", headers=a), 204)
    await problem(await world_client.get(f"/api/rooms/{ROOM}", headers=a), 404)
    assert (await ok(await world_client.get(f"/api/rooms/{ROOM}", headers=b)))["farm_id"] == FARM_B
    latest = await ok(await world_client.get(f"/api/devices/{SENSOR}/latest", headers=b))
    assert len(latest["readings"]) == 2


async def test_another_tenants_ids_are_neither_refused_nor_revealed(  # type: ignore[no-untyped-def]
    world_client, auth
) -> None:
    stranger = auth("stranger")
    # Ids the world's farm already uses, taken again in the stranger's farm: no 409.
    room = {"id": w.ROOM_B, "species": "oyster", "stage": "pinning"}
    made = await ok(
        await world_client.post(f"/api/farms/{w.OTHER_FARM}/rooms", json=room, headers=stranger),
        201,
    )
    assert made["farm_id"] == w.OTHER_FARM
    device = {"id": w.ACTUATOR_B, "kind": "actuator", "actuator": "humidifier"}
    await ok(
        await world_client.post(f"/api/rooms/{w.ROOM_B}/devices", json=device, headers=stranger),
        201,
    )
    command = {"device_id": w.ACTUATOR_B, "action": "on", "command_id": w.COMMAND_B}
    await ok(
        await world_client.post(f"/api/rooms/{w.ROOM_B}/commands", json=command, headers=stranger),
        201,
    )
    edge = await world_client.post(
        f"/api/farms/{w.OTHER_FARM}/edges", json={"id": w.EDGE}, headers=stranger
    )
    await ok(edge, 201)
    # Each sees its own room B; the world's owner still sees theirs, untouched.
    mine = await ok(await world_client.get(f"/api/rooms/{w.ROOM_B}", headers=stranger))
    assert mine["farm_id"] == w.OTHER_FARM and mine["stage"] == "pinning"
    theirs = await ok(await world_client.get(f"/api/rooms/{w.ROOM_B}", headers=auth("owner")))
    assert theirs["farm_id"] == w.FARM and theirs["stage"] == "fruiting"
    # Naming the other farm explicitly is a plain 404, as for any unknown room.
    await problem(
        await world_client.get(f"/api/rooms/{w.ROOM_A}?farm_id={w.FARM}", headers=stranger), 404
    )
    await problem(
        await world_client.get(f"/api/rooms/{w.ROOM_B}?farm_id={w.FARM}", headers=stranger), 404
    )
    # Within one's own farm a duplicate is still a 409.
    dup = await world_client.post(f"/api/farms/{w.OTHER_FARM}/rooms", json=room, headers=stranger)
    await problem(dup, 409)


async def test_an_id_in_two_of_ones_farms_asks_which(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    owner = auth("owner")
    farm = {"id": FARM_C, "name": "c"}
    await ok(await world_client.post("/api/farms", json=farm, headers=owner), 201)
    room = {"id": w.ROOM_A, "species": "shiitake", "stage": "spawn_run"}
    await ok(await world_client.post(f"/api/farms/{FARM_C}/rooms", json=room, headers=owner), 201)
    body = await problem(await world_client.get(f"/api/rooms/{w.ROOM_A}", headers=owner), 409)
    assert "farm_id" in body["detail"]
    picked = await ok(
        await world_client.get(f"/api/rooms/{w.ROOM_A}?farm_id={FARM_C}", headers=owner)
    )
    assert picked["farm_id"] == FARM_C and picked["species"] == "shiitake"
    picked = await ok(
        await world_client.get(f"/api/rooms/{w.ROOM_A}?farm_id={w.FARM}", headers=owner)
    )
    assert picked["farm_id"] == w.FARM
    # A member limited to room A of the world farm only ever meant that one.
    limited = await ok(await world_client.get(f"/api/rooms/{w.ROOM_A}", headers=auth("limited")))
    assert limited["farm_id"] == w.FARM
