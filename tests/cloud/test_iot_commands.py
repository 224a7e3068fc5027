"""Commands and config the cloud publishes on the commands topic of edges on AWS IoT (the IoT Data
API on a real boto3 client, botocore's Stubber standing in for AWS), created through the real API
on real PostgreSQL: exactly that edge's topic, the WebSocket's JSON, once across instances, never
an expired command, and never a failed request for a failed publish."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from botocore.stub import ANY, Stubber

from cloud import appkeys
from cloud.auth.tokens import token_hash
from cloud.sync.iot_down import IotDownPublisher
from cloud.sync.service import EDGE_SYNC
from tests.cloud import world as w
from tests.cloud.test_edge_sync import (
    batch,
    farm_version,
    ok,
    reading,
    receive,
    rows,
    sync_client,
    upload,
)
from tests.cloud.test_edge_sync_iot import ENDPOINT, published

pytestmark = pytest.mark.postgres
FIXTURES = (sync_client,)  # test_edge_sync's fixture, found by pytest under this name

IOT_EDGE, IOT_TOKEN = "wf-edge-iot", "t-iot"  # a second edge of farm F, on AWS IoT
IOT_AUTH = {"Authorization": f"Bearer {IOT_TOKEN}"}
TOPIC_ROOT = f"smartfarm/{w.FARM}/edge"
COMMANDS = f"{TOPIC_ROOT}/{IOT_EDGE}/commands"
ACKS = f"{TOPIC_ROOT}/{IOT_EDGE}/acks"
# No periodic catch-up during a test (the tests run it themselves).
IOT = {"iot_data_endpoint": ENDPOINT, "command_ttl_s": 3600, "expiry_sweep_s": 3600}


def expect(topic: str) -> dict[str, Any]:
    return {"topic": topic, "qos": 1, "payload": ANY}


async def add_iot_edge(dsn: str) -> None:
    """The farm's second edge, serving its rooms (commands and config go only to that edge)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "INSERT INTO edges (id, farm_id, name, token_hash) VALUES (%s, %s, 'iot', %s)",
            (IOT_EDGE, w.FARM, token_hash(IOT_TOKEN)),
        )
        await conn.execute("UPDATE rooms SET edge_id = %s WHERE farm_id = %s", (IOT_EDGE, w.FARM))


async def through_iot(client: Any, seq: int, *, iot: bool = True) -> None:
    """A batch of the IoT edge, through the topic rule (its reply header) or over HTTPS."""
    headers = {**IOT_AUTH, **({"X-Smartfarm-Reply-Topic": ACKS} if iot else {})}
    await ok(await upload(client, batch([reading(seq)], edge_id=IOT_EDGE), headers=headers))


async def start(sync_client: Any, dsn: str, **sync: Any) -> tuple[Any, IotDownPublisher]:
    client = await sync_client(**{**IOT, **sync})
    publisher = client.app[EDGE_SYNC].iot_down
    assert publisher is not None
    assert publisher.client is client.app[EDGE_SYNC].iot_acks.client  # one boto3 client
    await publisher.idle()  # the start-up catch-up (no edge is on AWS IoT yet)
    return client, publisher


async def until(check: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"waited for {what}"
        await asyncio.sleep(0.02)


async def command(client: Any, auth: Any, action: str = "on") -> dict[str, Any]:
    return await ok(  # type: ignore[no-any-return]
        await client.post(f"/api/rooms/{w.ROOM_B}/commands",
                          json={"device_id": w.ACTUATOR_B, "action": action},
                          headers=auth("operator")),
        201,
    )


async def handled(publisher: IotDownPublisher, before: int, events: int = 1) -> None:
    """Wait until the hub handed ``events`` more events to the publisher and it handled them."""
    await until(lambda: publisher.events >= before + events, "the hub's event")
    await publisher.idle()


def metric(client: Any, kind: str, outcome: str) -> float:
    registry = client.app[appkeys.METRICS].registry
    value = registry.get_sample_value(
        "smartfarm_sync_iot_down_total", {"kind": kind, "outcome": outcome})
    return float(value or 0)


async def test_a_command_and_config_reach_the_iot_edges_commands_topic_as_on_the_websocket(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    await add_iot_edge(world_dsn)
    client, publisher = await start(sync_client, world_dsn)
    calls = published(publisher.client)
    with Stubber(publisher.client) as stub:
        stub.add_response("publish", {}, expect(ACKS))  # the answer to its batch
        await through_iot(client, 1)
        marked = await rows(world_dsn, "SELECT id FROM edges WHERE iot_since IS NOT NULL")
        assert marked == [{"id": IOT_EDGE}]
        stub.add_response("publish", {}, expect(COMMANDS))  # the Stubber checks every topic
        stub.add_response("publish", {}, expect(COMMANDS))
        # The IoT edge's WebSocket, when it has one, gets the same messages there, unchanged.
        async with client.ws_connect("/api/edge/v1/stream", headers=IOT_AUTH) as ws:
            await ws.send_json({"type": "hello", "edge_id": IOT_EDGE,
                                "config_version": await farm_version(world_dsn), "acked_seq": 1})
            assert (await receive(ws, "command"))["command_id"] == w.COMMAND_B
            created = await command(client, auth, "off")
            pushed = await receive(ws, "command")
            await until(lambda: publisher.published == 1, "the command published")
            assert pushed["command_id"] == created["id"]
            assert calls[-1]["topic"] == COMMANDS and calls[-1]["qos"] == 1
            assert json.loads(calls[-1]["payload"]) == pushed  # the WebSocket's JSON
            # A config edit: the new version goes the same way.
            await ok(await client.patch(f"/api/rooms/{w.ROOM_A}", json={"name": "Renamed"},
                                        headers=auth("owner")))
            config = await receive(ws, "config")
            await until(lambda: publisher.published == 2, "the config published")
        stub.assert_no_pending_responses()
    assert json.loads(calls[-1]["payload"]) == config
    assert config["version"] == await farm_version(world_dsn)
    # The world's own edge (HTTPS) was never published to, and nothing failed.
    assert {c["topic"] for c in calls} == {ACKS, COMMANDS}
    assert publisher.failed == 0 and metric(client, "command", "published") == 1
    claimed = await rows(world_dsn, "SELECT iot_config_version FROM edges WHERE id = %s",
                         (IOT_EDGE,))
    assert claimed == [{"iot_config_version": config["version"]}]


async def test_edges_not_on_aws_iot_get_nothing_published(sync_client, world_dsn, auth) -> None:  # type: ignore[no-untyped-def]
    await add_iot_edge(world_dsn)
    client, publisher = await start(sync_client, world_dsn)
    calls = published(publisher.client)
    with Stubber(publisher.client) as stub:  # no responses queued: any publish would fail
        await through_iot(client, 1, iot=False)  # an HTTPS upload
        before = publisher.events
        await command(client, auth)
        await ok(await client.patch(f"/api/rooms/{w.ROOM_A}", json={"name": "Renamed"},
                                    headers=auth("owner")))
        await handled(publisher, before, 2)
        assert await publisher.catch_up() == 0
        # Through AWS IoT once, then over HTTPS again: the edge runs its HTTPS uplink now.
        stub.add_response("publish", {}, expect(ACKS))
        await through_iot(client, 2)
        await through_iot(client, 3, iot=False)
        assert await rows(world_dsn, "SELECT id FROM edges WHERE iot_since IS NOT NULL") == []
        before = publisher.events
        await command(client, auth)
        await handled(publisher, before)
        assert await publisher.catch_up() == 0
        stub.assert_no_pending_responses()
    assert [c["topic"] for c in calls] == [ACKS]
    assert (publisher.published, publisher.failed) == (0, 0)


async def test_no_publisher_without_an_iot_data_endpoint(sync_client, world_dsn, auth) -> None:  # type: ignore[no-untyped-def]
    await add_iot_edge(world_dsn)
    client = await sync_client(command_ttl_s=3600)
    assert client.app[EDGE_SYNC].iot_down is None
    await through_iot(client, 1)  # stored, marked, and the answer cannot be published (logged)
    assert (await command(client, auth))["status"] == "pending"


async def test_a_failed_publish_never_fails_the_request_and_is_published_again(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    await add_iot_edge(world_dsn)
    client, publisher = await start(sync_client, world_dsn)
    calls = published(publisher.client)
    with Stubber(publisher.client) as stub:
        stub.add_response("publish", {}, expect(ACKS))
        await through_iot(client, 1)
        stub.add_client_error("publish", "InternalFailureException", http_status_code=500,
                              expected_params=expect(COMMANDS))
        created = await command(client, auth)  # 201 although AWS refuses
        await until(lambda: publisher.failed == 1, "the failed publish")
        assert created["status"] == "pending"
        assert metric(client, "command", "failed") == 1
        # The sweep's catch-up: the command once iot_republish_s has passed (made so here), the
        # world's older pending command (never published: the edge was not on AWS IoT yet), and
        # the config the edge has not applied; then nothing until the next interval.
        await rows(world_dsn, "UPDATE commands SET iot_published_at = now() - interval '1 hour'"
                              " WHERE id = %s RETURNING id", (created["id"],))
        for _ in range(3):
            stub.add_response("publish", {}, expect(COMMANDS))
        assert await publisher.catch_up() == 3
        assert await publisher.catch_up() == 0
        stub.assert_no_pending_responses()
    sent = [json.loads(c["payload"]) for c in calls if c["topic"] == COMMANDS]
    assert [m.get("command_id") for m in sent] == [created["id"], w.COMMAND_B, created["id"],
                                                   None]
    assert sent[-1]["type"] == "config" and sent[-1]["version"] == await farm_version(world_dsn)


async def test_an_expired_command_is_never_published(sync_client, world_dsn, auth) -> None:  # type: ignore[no-untyped-def]
    await add_iot_edge(world_dsn)
    client, publisher = await start(sync_client, world_dsn, command_ttl_s=60)
    calls = published(publisher.client)
    with Stubber(publisher.client) as stub:
        stub.add_response("publish", {}, expect(ACKS))
        await through_iot(client, 1)
        # Older than the TTL: the world's pending command (not yet marked expired by a sweep)
        # and, after its publish, the new one, due for publishing again but expired meanwhile.
        await rows(world_dsn, "UPDATE commands SET created_at = now() - interval '61 s'"
                              " WHERE id = %s RETURNING id", (w.COMMAND_B,))
        stub.add_response("publish", {}, expect(COMMANDS))
        created = await command(client, auth)
        await until(lambda: publisher.published == 1, "the command published")
        await rows(world_dsn, "UPDATE commands SET created_at = now() - interval '61 s',"
                              " iot_published_at = now() - interval '61 s'"
                              " WHERE id = %s RETURNING id", (created["id"],))
        stub.add_response("publish", {}, expect(COMMANDS))  # only the config
        assert await publisher.catch_up() == 1
        stub.assert_no_pending_responses()
    sent = [json.loads(c["payload"]) for c in calls if c["topic"] == COMMANDS]
    assert [m["type"] for m in sent] == ["command", "config"]
    assert sent[0]["command_id"] == created["id"]


async def test_two_instances_publish_a_command_once(sync_client, world_dsn, auth) -> None:  # type: ignore[no-untyped-def]
    await add_iot_edge(world_dsn)
    a, pub_a = await start(sync_client, world_dsn)
    b, pub_b = await start(sync_client, world_dsn)
    calls = published(pub_a.client), published(pub_b.client)
    with Stubber(pub_a.client) as stub_a, Stubber(pub_b.client) as stub_b:
        stub_a.add_response("publish", {}, expect(ACKS))
        await through_iot(a, 1)
        for stub in (stub_a, stub_b):  # either may win the claim
            stub.add_response("publish", {}, expect(COMMANDS))
        before = pub_a.events, pub_b.events
        created = await command(b, auth)
        await handled(pub_a, before[0])
        await handled(pub_b, before[1])
    sent = [c for found in calls for c in found if c["topic"] == COMMANDS]
    assert len(sent) == 1 and json.loads(sent[0]["payload"])["command_id"] == created["id"]
    assert pub_a.published + pub_b.published == 1 and pub_a.failed + pub_b.failed == 0


async def test_an_iot_edge_is_published_only_its_rooms(sync_client, world_dsn, auth) -> None:  # type: ignore[no-untyped-def]
    await add_iot_edge(world_dsn)
    await rows(world_dsn, "UPDATE rooms SET edge_id = %s WHERE id = %s RETURNING id",
               (w.EDGE, w.ROOM_B))  # room B is the world's (HTTPS) edge's again
    client, publisher = await start(sync_client, world_dsn)
    calls = published(publisher.client)
    with Stubber(publisher.client) as stub:
        stub.add_response("publish", {}, expect(ACKS))
        await through_iot(client, 1)
        before = publisher.events
        await command(client, auth)  # for room B: not this edge's
        await handled(publisher, before)
        stub.add_response("publish", {}, expect(COMMANDS))  # its config only
        assert await publisher.catch_up() == 1
        stub.assert_no_pending_responses()
    sent = [json.loads(c["payload"]) for c in calls if c["topic"] == COMMANDS]
    assert [m["type"] for m in sent] == ["config"]
    assert [r["id"] for r in sent[0]["rooms"]] == [w.ROOM_A]
    assert {d["id"] for d in sent[0]["devices"]} == {w.ACTUATOR_A}
    assert sent[0]["other_rooms"] == [w.ROOM_B]
