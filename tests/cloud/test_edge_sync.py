"""Edge ↔ cloud sync, cloud side: batches stored exactly once, commands and config pushed down the
stream (and across instances by LISTEN/NOTIFY), over real HTTP against real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from aiohttp import WSMsgType
from psycopg.rows import dict_row

from cloud.app import init_app
from cloud.db import downlink
from cloud.db.database import Database
from cloud.sync.service import EDGE_SYNC
from cloud.sync.settings import SyncConfig
from tests.cloud import world as w
from tests.cloud.conftest import make_settings

pytestmark = pytest.mark.postgres

EDGE = {"Authorization": "Bearer t"}  # the world's edge token
PROBLEM = "application/problem+json"


# ---- helpers ------------------------------------------------------------------------------------


def reading(
    seq: int,
    *,
    device: str = w.SENSOR_B,
    room: str = w.ROOM_B,
    ts: float | None = None,
    at: float | None = None,
    values: Any = None,
    replaced: bool = False,
) -> dict[str, Any]:
    now = time.time()
    return {
        "seq": seq,
        "kind": "reading",
        "at": now if at is None else at,
        "data": {
            "device_id": device,
            "room_id": room,
            "ts": (now if ts is None else ts),
            "ts_replaced": replaced,
            "values": {"temperature_c": 17.5, "humidity_pct": 88.0} if values is None else values,
        },
    }


def record(seq: int, kind: str, data: dict[str, Any], at: float | None = None) -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "at": time.time() if at is None else at, "data": data}


def batch(records: list[dict[str, Any]], *, sent_at: datetime | None = None, **over: Any) -> dict:
    body = {
        "edge_id": w.EDGE,
        "farm_id": w.FARM,
        "first_seq": records[0]["seq"],
        "last_seq": records[-1]["seq"],
        "sent_at": (sent_at or datetime.now(UTC)).isoformat(),
        "records": records,
    }
    body.update(over)
    return body


async def upload(client, body: dict | bytes, *, compress: bool = True, headers=None):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {**EDGE, "Content-Type": "application/json"}
    if compress:
        raw = gzip.compress(raw)
        hdrs["Content-Encoding"] = "gzip"
    hdrs.update(headers or {})
    return await client.post("/api/edge/v1/batches", data=raw, headers=hdrs)


async def ok(resp, status: int = 200) -> Any:  # type: ignore[no-untyped-def]
    assert resp.status == status, await resp.text()
    return await resp.json() if status != 204 else None


async def problem(resp, status: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    return await resp.json()  # type: ignore[no-any-return]


async def rows(dsn: str, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def readings_of(dsn: str, device: str) -> list[dict[str, Any]]:
    return await rows(
        dsn,
        "SELECT time, metric, value FROM sensor_data WHERE device_id = %s ORDER BY time, metric",
        (device,),
    )


async def receive(ws, kind: str, timeout: float = 3.0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The next message of ``type`` ``kind`` (others are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            assert msg.type == WSMsgType.TEXT, msg
            doc = json.loads(msg.data)
            if doc["type"] == kind:
                return doc  # type: ignore[no-any-return]


async def quiet(ws, seconds: float = 0.5) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Messages arriving within ``seconds`` (the test expects none of some kind)."""
    got = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                msg = await ws.receive()
                if msg.type != WSMsgType.TEXT:
                    break
                got.append(json.loads(msg.data))
    except TimeoutError:
        pass
    return got


async def hello(ws, config_version: int = 0) -> None:  # type: ignore[no-untyped-def]
    await ws.send_json(
        {"type": "hello", "edge_id": w.EDGE, "config_version": config_version, "acked_seq": 0}
    )


Factory = Callable[..., Awaitable[Any]]


@pytest.fixture
def sync_client(world_dsn, tmp_path, aiohttp_client) -> Factory:  # type: ignore[no-untyped-def]
    """A client for an app on the world database with the given sync settings (the app stops
    before the database is dropped: fixtures tear down in reverse order)."""

    async def make(**sync: Any):  # type: ignore[no-untyped-def]
        # Pacing off unless the test sets it (tests/cloud/test_batch_pacing.py does).
        settings = make_settings(world_dsn, tmp_path, sync=SyncConfig(**{"pace_max_s": 0, **sync}))
        client = await aiohttp_client(init_app(settings))
        await asyncio.wait_for(client.app[EDGE_SYNC].hub.listening.wait(), 10)
        return client

    return make


# ---- up: batches --------------------------------------------------------------------------------


async def test_replays_overlaps_and_gaps_store_each_seq_once(sync_client, world_dsn, auth) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client()
    first = [reading(seq) for seq in (1, 2, 3)]
    ack = await ok(await upload(client, batch(first)))
    assert ack["acked_seq"] == 3 and ack["inserted"] == 3 and ack["duplicates"] == 0
    stored = await readings_of(world_dsn, w.SENSOR_B)
    baseline = len(stored)
    # The same batch again (the edge never saw the answer): nothing new.
    ack = await ok(await upload(client, batch(first)))
    assert (ack["acked_seq"], ack["inserted"], ack["duplicates"]) == (3, 0, 3)
    # Overlapping 2..5: only 4 and 5 are new.
    ack = await ok(await upload(client, batch([reading(s) for s in (2, 3, 4, 5)])))
    assert (ack["acked_seq"], ack["inserted"], ack["duplicates"]) == (5, 2, 2)
    assert len(await readings_of(world_dsn, w.SENSOR_B)) == baseline + 2 * 2
    # A batch past the mark + 1 is refused with where to resume; nothing is stored.
    gap = await problem(await upload(client, batch([reading(s) for s in (8, 9)])), 409)
    assert gap["expected_seq"] == 6 and gap["detail"]
    assert len(await readings_of(world_dsn, w.SENSOR_B)) == baseline + 4
    # An old batch (entirely below the mark) is all duplicates and answers the mark.
    ack = await ok(await upload(client, batch([reading(1)])))
    assert (ack["acked_seq"], ack["inserted"], ack["duplicates"]) == (5, 0, 1)
    edge = await ok(await client.get(f"/api/edges/{w.EDGE}", headers=auth("owner")))
    assert edge["high_water"] == 5 and edge["last_seen"] is not None
    latest = await ok(await client.get(f"/api/devices/{w.SENSOR_B}/latest", headers=auth("owner")))
    assert {r["metric"]: r["value"] for r in latest["readings"]}["humidity_pct"] == 88.0


async def test_concurrent_uploads_of_one_range_store_it_once(sync_client, world_dsn) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client()
    body = batch([reading(s, values={"co2_ppm": 900 + s}) for s in range(1, 201)])

    async def send() -> Any:
        return await ok(await upload(client, body))

    acks = await asyncio.gather(*(send() for _ in range(4)))
    assert sorted(a["inserted"] for a in acks) == [0, 0, 0, 200]
    co2 = await rows(
        world_dsn, "SELECT count(*) AS n FROM sensor_data WHERE metric = 'co2_ppm'", None
    )
    assert co2[0]["n"] == 200


async def test_body_encoding_limits_and_auth_are_problems(sync_client, auth) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client(max_batch_bytes=64 * 1024)
    plain = await ok(await upload(client, batch([reading(1)]), compress=False))
    assert plain["acked_seq"] == 1
    # A small gzip body that inflates past the limit (a gzip bomb) is refused while inflating.
    bomb = gzip.compress(b"[" + b" " * (10 * 2**20) + b"]")
    assert len(bomb) < 64 * 1024
    resp = await client.post(
        "/api/edge/v1/batches",
        data=bomb,
        headers={**EDGE, "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    await problem(resp, 413)
    resp = await client.post(
        "/api/edge/v1/batches",
        data=b"not gzip at all",
        headers={**EDGE, "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert resp.status == 400
    await problem(await upload(client, b"{nope"), 400)
    await problem(await upload(client, b"{}", headers={"Content-Type": "text/plain"}), 415)
    not_contiguous = batch([reading(2), reading(4)])
    body = await problem(await upload(client, not_contiguous), 422)
    assert body["errors"]
    await problem(await upload(client, batch([reading(2)], protocol=99)), 422)
    for headers in ({}, auth("owner"), {"Authorization": "Bearer wrong"}):
        resp = await client.post("/api/edge/v1/batches", json=batch([reading(2)]), headers=headers)
        await problem(resp, 401)


async def test_another_farms_room_or_device_is_unknown_here(  # type: ignore[no-untyped-def]
    sync_client, world_dsn
) -> None:
    """Ids are per farm: another farm's room or device ids name nothing in this edge's farm, so
    those readings are quarantined like any unknown id (nothing says the ids exist elsewhere)."""
    client = await sync_client()
    before = len(await readings_of(world_dsn, w.SENSOR_B))
    foreign = batch([reading(1), reading(2, device=w.OTHER_DEVICE, room=w.OTHER_ROOM)])
    ack = await ok(await upload(client, foreign))
    assert ack["acked_seq"] == 2
    # Another farm's device claimed to be in one of ours: unknown here too.
    ack = await ok(await upload(client, batch([reading(3, device=w.OTHER_DEVICE)])))
    assert ack["acked_seq"] == 3
    assert await readings_of(world_dsn, w.OTHER_DEVICE) == []
    assert len(await readings_of(world_dsn, w.SENSOR_B)) == before + 2  # seq 1, two metrics
    kept = await rows(
        world_dsn, "SELECT seq, farm_id, reason FROM edge_quarantine ORDER BY seq"
    )
    assert [(q["seq"], q["farm_id"]) for q in kept] == [(2, w.FARM), (3, w.FARM)]
    assert all("not registered in this farm" in q["reason"] for q in kept)
    # The edge may not speak for another farm at all.
    await problem(await upload(client, batch([reading(4)], farm_id=w.OTHER_FARM)), 403)
    edge = await rows(world_dsn, "SELECT high_water FROM edges WHERE id = %s", (w.EDGE,))
    assert edge[0]["high_water"] == 3
    audit = await rows(
        world_dsn,
        "SELECT farm_id, target, detail FROM audit_log WHERE action = 'edge.batch_refused'",
    )
    assert len(audit) == 1 and audit[0]["farm_id"] == w.FARM
    assert audit[0]["detail"]["foreign"] == {"farm": [w.OTHER_FARM]}


async def test_unusable_records_are_quarantined_and_the_flow_goes_on(
    sync_client, world_dsn
) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client()
    now = time.time()
    records = [
        reading(1, device="ghost-1"),  # not registered in the cloud
        reading(2, values={"temperature_c": "warm"}),  # malformed
        record(
            3,
            "quarantine",
            {
                "topic": "farm/wf/room/wf-b/telemetry/x",
                "reason": "bad json",
                "payload_b64": base64.b64encode(b"{nope}").decode(),
                "original_size": 6,
                "received_at": now,
            },
        ),
        record(
            4,
            "alert",
            {
                "key": "stale:wf-b-sensor",
                "kind": "stale",
                "severity": "warning",
                "message": "no data",
                "room_id": w.ROOM_B,
                "device_id": w.SENSOR_B,
                "state": "active",
                "at": now,
            },
        ),
        record(
            5,
            "alert",
            {
                "key": "stale:wf-b-sensor",
                "kind": "stale",
                "severity": "warning",
                "message": "no data",
                "state": "resolved",
                "at": now + 1,
            },
        ),
        record(
            6,
            "status",
            {
                "device_id": w.ACTUATOR_B,
                "room_id": w.ROOM_B,
                "online": True,
                "state": {"on": True},
                "at": now,
            },
        ),
        record(7, "nonsense-kind-is-refused-by-the-model", {}),
    ]
    # An unknown record kind fails the protocol model (422): the edge must not send one.
    await problem(await upload(client, batch(records)), 422)
    ack = await ok(await upload(client, batch([*records[:6], reading(7)])))
    assert ack["acked_seq"] == 7 and ack["inserted"] == 7
    quarantined = await rows(
        world_dsn, "SELECT seq, origin, reason, payload FROM edge_quarantine ORDER BY seq"
    )
    assert [(q["seq"], q["origin"]) for q in quarantined] == [
        (1, "cloud"),
        (2, "cloud"),
        (3, "edge"),
    ]
    assert "not registered" in quarantined[0]["reason"]
    assert "temperature_c" in quarantined[1]["reason"]
    assert bytes(quarantined[2]["payload"]) == b"{nope}"
    assert await readings_of(world_dsn, "ghost-1") == []
    alerts = await rows(world_dsn, "SELECT key, state, resolved_at FROM edge_alerts")
    assert [(a["key"], a["state"]) for a in alerts] == [("stale:wf-b-sensor", "resolved")]
    status = await rows(world_dsn, "SELECT online, state FROM device_status")
    assert status == [{"online": True, "state": {"on": True}}]
    seen = await rows(world_dsn, "SELECT last_seen FROM devices WHERE id = %s", (w.ACTUATOR_B,))
    assert seen[0]["last_seen"] is not None


async def test_a_gross_edge_clock_error_is_corrected(sync_client, world_dsn) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client()
    true_now = time.time()
    skew = -7200.0  # the edge's clock is two hours slow
    edge_now = true_now + skew
    records = [
        reading(1, device=w.SENSOR_B, ts=edge_now - 60, at=edge_now - 59, values={"a_edge": 1}),
        # A device with a good clock: its timestamp is near the true time, kept as is.
        reading(2, ts=true_now - 30, at=edge_now - 29, values={"a_device": 2}),
    ]
    sent_at = datetime.fromtimestamp(edge_now, UTC)
    ack = await ok(await upload(client, batch(records, sent_at=sent_at)))
    assert ack["clock_offset_s"] == pytest.approx(-skew, abs=5)
    stored = {r["metric"]: r["time"].timestamp() for r in await readings_of(world_dsn, w.SENSOR_B)}
    assert stored["a_edge"] == pytest.approx(true_now - 60, abs=5)
    assert stored["a_device"] == pytest.approx(true_now - 30, abs=0.01)
    # A Pi that booted without a clock (1970): its receive-time stamps land in the present, and
    # what is implausible even after correction is quarantined, not stored or refused.
    boot = 2 * 86_400.0
    records = [
        reading(3, ts=boot - 10, at=boot - 9, replaced=True, values={"c_boot": 3}),
        reading(4, ts=-1e12, at=boot, values={"d_nonsense": 4}),
    ]
    ack = await ok(await upload(client, batch(records, sent_at=datetime.fromtimestamp(boot, UTC))))
    assert ack["inserted"] == 2
    stored = {r["metric"]: r["time"].timestamp() for r in await readings_of(world_dsn, w.SENSOR_B)}
    assert stored["c_boot"] == pytest.approx(time.time() - 10, abs=5)
    assert "d_nonsense" not in stored
    reasons = await rows(world_dsn, "SELECT seq, reason FROM edge_quarantine")
    assert [r["seq"] for r in reasons] == [4] and "implausible" in reasons[0]["reason"]
    # A small offset is within normal skew: timestamps are kept.
    small = datetime.fromtimestamp(time.time() - 60, UTC)
    await ok(
        await upload(client, batch([reading(5, ts=1_700_000_000, values={"b": 3})], sent_at=small))
    )
    stored = {r["metric"]: r["time"].timestamp() for r in await readings_of(world_dsn, w.SENSOR_B)}
    assert stored["b"] == 1_700_000_000
    edge = await rows(world_dsn, "SELECT clock_offset_s FROM edges WHERE id = %s", (w.EDGE,))
    assert edge[0]["clock_offset_s"] == pytest.approx(60, abs=5)


# ---- down: commands ------------------------------------------------------------------------------


async def farm_version(dsn: str) -> int:
    found = await rows(dsn, "SELECT version FROM farm_config WHERE farm_id = %s", (w.FARM,))
    return int(found[0]["version"]) if found else 0


async def command_status(client, command_id: str, headers, want: str, within: float = 2.0) -> dict:  # type: ignore[no-untyped-def]
    """Poll the commands API until the command has status ``want``."""
    deadline = time.monotonic() + within
    while True:
        url = f"/api/rooms/{w.ROOM_B}/commands/{command_id}"
        cmd = await ok(await client.get(url, headers=headers))
        if cmd["status"] == want or time.monotonic() > deadline:
            assert cmd["status"] == want, cmd
            return cmd  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)


async def test_a_command_reaches_the_stream_and_its_state_comes_back(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    client = await sync_client(command_ttl_s=3600)
    async with client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws:
        await hello(ws, await farm_version(world_dsn))
        waiting = await receive(ws, "command")  # created before the edge connected
        assert waiting["command_id"] == w.COMMAND_B
        started = time.monotonic()
        created = await ok(
            await client.post(
                f"/api/rooms/{w.ROOM_B}/commands",
                json={"device_id": w.ACTUATOR_B, "action": "set", "value": 40},
                headers=auth("operator"),
            ),
            201,
        )
        pushed = await receive(ws, "command", timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert pushed["command_id"] == created["id"] and pushed["value"] == 40
        assert pushed["device_id"] == w.ACTUATOR_B and pushed["action"] == "set"
        ttl = datetime.fromisoformat(pushed["expires_at"]) - datetime.fromisoformat(
            pushed["created_at"]
        )
        assert ttl == timedelta(hours=1)
        await ws.send_json(
            {"type": "command_accepted", "command_id": created["id"], "edge_command_id": "e-77"}
        )
        await command_status(client, created["id"], auth("viewer"), "delivered")
        assert [m for m in await quiet(ws, 0.3) if m["type"] == "command"] == []
    # The edge published both and reports outcomes in its next batch: the new command under its
    # own id (mapped by the CommandAccepted above), the old one naming the cloud id.
    now = time.time()
    records = [
        record(
            1,
            "command",
            {
                "command_id": "e-77",
                "device_id": w.ACTUATOR_B,
                "room_id": w.ROOM_B,
                "action": "set",
                "value": 40,
                "source": "cloud",
                "created_at": now,
            },
        ),
        record(
            2,
            "ack",
            {
                "command_id": "e-77",
                "device_id": w.ACTUATOR_B,
                "status": "ok",
                "at": now + 0.2,
            },
        ),
        record(
            3,
            "command_state",
            {
                "command_id": "e-77",
                "state": "acked",
                "at": now + 0.2,
                "attempts": 1,
            },
        ),
        record(
            4,
            "command",
            {
                "command_id": "e-78",
                "device_id": w.ACTUATOR_B,
                "room_id": w.ROOM_B,
                "action": "on",
                "source": "cloud",
                "created_at": now,
                "cloud_command_id": w.COMMAND_B,
            },
        ),
        record(
            5,
            "command_state",
            {
                "command_id": "e-78",
                "state": "timed_out",
                "at": now + 5,
                "attempts": 3,
                "error": "no ack after 3 attempts",
            },
        ),
    ]
    await ok(await upload(client, batch(records)))
    await command_status(client, created["id"], auth("viewer"), "acked", within=0)
    old = await command_status(client, w.COMMAND_B, auth("viewer"), "timed_out", within=0)
    assert old["error"] == "no ack after 3 attempts"
    kept = await rows(
        world_dsn, "SELECT command_id, state, ack_status FROM edge_commands ORDER BY command_id"
    )
    assert kept == [
        {"command_id": "e-77", "state": "acked", "ack_status": "ok"},
        {"command_id": "e-78", "state": "timed_out", "ack_status": None},
    ]


async def test_stale_commands_are_expired_not_sent(sync_client, world_dsn, auth) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client(command_ttl_s=1, expiry_sweep_s=3600)
    created = await ok(
        await client.post(
            f"/api/rooms/{w.ROOM_B}/commands",
            json={"device_id": w.ACTUATOR_B, "action": "on"},
            headers=auth("operator"),
        ),
        201,
    )
    await asyncio.sleep(1.2)  # the edge was away longer than the TTL
    async with client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws:
        await hello(ws, await farm_version(world_dsn))
        assert [m for m in await quiet(ws, 0.5) if m["type"] == "command"] == []
    for command_id in (created["id"], w.COMMAND_B):
        cmd = await command_status(client, command_id, auth("viewer"), "expired", within=0)
        assert "not delivered within 1" in cmd["error"]


async def test_an_announcement_that_comes_after_the_ttl_sends_nothing(  # type: ignore[no-untyped-def]
    sync_client, world_dsn
) -> None:
    """A stream told of a new command reads it by one statement (no expiry sweep there): a
    command already older than the TTL when its announcement arrives is never sent; a fresh one
    announced the same way is."""
    client = await sync_client(command_ttl_s=5, expiry_sweep_s=3600)
    insert = ("INSERT INTO commands (id, farm_id, room_id, device_id, action, created_at)"
              " VALUES (%s, %s, %s, %s, 'on', now() - %s * interval '1 second') RETURNING id")
    async with client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws:
        await hello(ws, await farm_version(world_dsn))
        await quiet(ws, 0.3)  # the world's own pending command, if still within the TTL
        await rows(world_dsn, insert, ("late-1", w.FARM, w.ROOM_B, w.ACTUATOR_B, 60))
        assert [m for m in await quiet(ws, 0.8) if m["type"] == "command"] == []
        await rows(world_dsn, insert, ("fresh-1", w.FARM, w.ROOM_B, w.ACTUATOR_B, 0))
        assert (await receive(ws, "command"))["command_id"] == "fresh-1"
    (late,) = await rows(world_dsn, "SELECT status FROM commands WHERE id = 'late-1'")
    assert late["status"] == "pending"  # left to the expiry sweep, which says why


async def test_the_sweep_expires_commands_while_no_edge_is_connected(sync_client, auth) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client(command_ttl_s=0.5, expiry_sweep_s=0.2)
    created = await ok(
        await client.post(
            f"/api/rooms/{w.ROOM_B}/commands",
            json={"device_id": w.ACTUATOR_B, "action": "off"},
            headers=auth("operator"),
        ),
        201,
    )
    assert created["status"] == "pending"
    await command_status(client, created["id"], auth("viewer"), "expired", within=3)


async def test_a_command_made_on_one_instance_reaches_an_edge_on_another(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    a = await sync_client(command_ttl_s=3600)
    b = await sync_client(command_ttl_s=3600)
    async with b.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws:
        version = await farm_version(world_dsn)
        await hello(ws, version)
        assert (await receive(ws, "command"))["command_id"] == w.COMMAND_B
        started = time.monotonic()
        created = await ok(
            await a.post(
                f"/api/rooms/{w.ROOM_B}/commands",
                json={"device_id": w.ACTUATOR_B, "action": "on"},
                headers=auth("operator"),
            ),
            201,
        )
        assert (await receive(ws, "command", timeout=1.0))["command_id"] == created["id"]
        assert time.monotonic() - started < 1.0
        # Config edits travel the same way.
        await ok(
            await a.patch(f"/api/rooms/{w.ROOM_A}", json={"name": "Renamed"}, headers=auth("owner"))
        )
        push = await receive(ws, "config", timeout=1.0)
        assert push["version"] == version + 1
        assert {r["id"]: r["name"] for r in push["rooms"]}[w.ROOM_A] == "Renamed"
    assert a.app[EDGE_SYNC].hub.streams() == 0


# ---- down: config --------------------------------------------------------------------------------


async def test_config_is_pushed_on_every_edit_and_its_application_recorded(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    from pwdlib.hashers.argon2 import Argon2Hasher  # what amqtt's FileAuthPlugin verifies with

    from edge.credentials import verify_password

    client = await sync_client(command_ttl_s=3600)
    async with client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws:
        await hello(ws, 0)
        push = await receive(ws, "config")
        version = push["version"]
        assert version == await farm_version(world_dsn) >= 1
        rooms = {r["id"]: r for r in push["rooms"]}
        assert set(rooms) == {w.ROOM_A, w.ROOM_B}
        assert [r["id"] for r in rooms[w.ROOM_B]["rules"]] == [w.RULE_B]
        devices = {d["id"]: d for d in push["devices"]}
        assert set(devices) == {w.SENSOR_B, w.ACTUATOR_B, w.ACTUATOR_A}  # not farm G's
        assert devices[w.ACTUATOR_B]["actuator"] == "humidifier"
        assert verify_password(w.PASSWORD, devices[w.SENSOR_B]["password_hash"])
        await ws.send_json({"type": "config_applied", "version": version})
        for _ in range(40):
            edge = await rows(
                world_dsn, "SELECT config_version FROM edges WHERE id = %s", (w.EDGE,)
            )
            if edge[0]["config_version"] == version:
                break
            await asyncio.sleep(0.05)
        assert edge[0]["config_version"] == version

        await ok(
            await client.patch(
                f"/api/rooms/{w.ROOM_B}", json={"stage": "pinning"}, headers=auth("operator")
            )
        )
        push = await receive(ws, "config", timeout=1.0)
        assert push["version"] == version + 1
        assert {r["id"]: r["stage"] for r in push["rooms"]}[w.ROOM_B] == "pinning"

        await ok(
            await client.patch(
                f"/api/rooms/{w.ROOM_B}/automation/{w.RULE_B}",
                json={"changes": {"enabled": False}},
                headers=auth("operator"),
            )
        )
        push = await receive(ws, "config", timeout=1.0)
        assert {r["id"]: r["disabled_rules"] for r in push["rooms"]}[w.ROOM_B] == [w.RULE_B]

        registered = await ok(
            await client.post(
                f"/api/rooms/{w.ROOM_A}/devices",
                json={"id": "wf-a-fan", "kind": "actuator", "actuator": "exhaust_fan"},
                headers=auth("owner"),
            ),
            201,
        )
        push = await receive(ws, "config", timeout=1.0)
        fan = {d["id"]: d for d in push["devices"]}["wf-a-fan"]
        password = registered["mqtt"]["password"]
        assert fan["password_hash"].startswith("$argon2id$")
        assert verify_password(password, fan["password_hash"])
        assert Argon2Hasher().verify(password, fan["password_hash"])
        assert not verify_password("wrong", fan["password_hash"])

        # What the edge does not use (a device's name) does not move the version.
        await ok(
            await client.patch("/api/devices/wf-a-fan", json={"name": "fan"}, headers=auth("owner"))
        )
        assert [m for m in await quiet(ws, 0.4) if m["type"] == "config"] == []
        assert await farm_version(world_dsn) == push["version"]

        # Removing a device or a room is an edit too.
        assert (await client.delete("/api/devices/wf-a-fan", headers=auth("owner"))).status == 204
        push = await receive(ws, "config", timeout=1.0)
        assert "wf-a-fan" not in {d["id"] for d in push["devices"]}
        assert (await client.delete(f"/api/rooms/{w.ROOM_A}", headers=auth("owner"))).status == 204
        push = await receive(ws, "config", timeout=1.0)
        assert [r["id"] for r in push["rooms"]] == [w.ROOM_B]
        assert w.ACTUATOR_A not in {d["id"] for d in push["devices"]}

    # A reconnecting edge that has the current version gets no config.
    async with client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws:
        await hello(ws, push["version"])
        assert [m["type"] for m in await quiet(ws, 0.4)] == ["command"]  # only COMMAND_B


def change(seq: int, base: int, what: dict[str, Any], at: float | None = None) -> dict[str, Any]:
    """A config_change record as the edge writes it (no change type, no version of its own)."""
    at = time.time() if at is None else at
    return record(
        seq, "config_change", {"version": None, "base_version": base, "change": what, "at": at}
    )


async def test_edge_edits_are_reconciled_last_writer_wins(sync_client, world_dsn, auth) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client()
    base = await farm_version(world_dsn)
    # Two edits made offline on the same version: both are the edge's own, the later stands.
    stage_a = {"room_id": w.ROOM_A, "stage_started": "2030-01-01"}
    await ok(
        await upload(
            client,
            batch(
                [
                    change(1, base, {**stage_a, "stage": "pinning"}),
                    change(2, base, {**stage_a, "stage": "spawn_run"}),
                ]
            ),
        )
    )
    room = await ok(await client.get(f"/api/rooms/{w.ROOM_A}", headers=auth("viewer")))
    assert room["stage"] == "spawn_run"
    # The cloud changes the room afterwards; an edge edit still based on the old version loses.
    await ok(
        await client.patch(
            f"/api/rooms/{w.ROOM_A}", json={"stage": "fruiting"}, headers=auth("operator")
        )
    )
    stage = {"type": "stage", "room_id": w.ROOM_A, "stage": "pinning"}  # explicit type works too
    await ok(await upload(client, batch([change(3, base, stage)])))
    room = await ok(await client.get(f"/api/rooms/{w.ROOM_A}", headers=auth("viewer")))
    assert room["stage"] == "fruiting"
    audit = await rows(
        world_dsn,
        "SELECT action, target, detail FROM audit_log WHERE action LIKE 'config.%%' ORDER BY id",
    )
    assert [a["action"] for a in audit] == [
        "config.edge_edit",
        "config.edge_edit",
        "config.conflict",
    ]
    lost = audit[-1]
    assert lost["target"] == w.ROOM_A and lost["detail"]["change"]["stage"] == "pinning"
    assert lost["detail"]["winner"] == "cloud" and lost["detail"]["base_version"] == base
    # Rule switches: a cloud rule's body changes; an edge-only (profile) rule is kept per room.
    now = await farm_version(world_dsn)
    switches = [
        {"rule_id": w.RULE_B, "enabled": False},  # a cloud rule
        {"rule_id": f"{w.ROOM_B}-rh", "enabled": False},  # a profile rule: room from its id
        {"type": "rule_enabled", "rule_id": "custom", "enabled": False, "room_id": w.ROOM_B},
        {"rule_id": "nowhere", "enabled": False},  # no such rule, no room: ignored, noted
    ]
    records = [change(seq, now, what) for seq, what in enumerate(switches, start=4)]
    await ok(await upload(client, batch(records)))
    rule = await ok(
        await client.get(f"/api/rooms/{w.ROOM_B}/automation/{w.RULE_B}", headers=auth("viewer"))
    )
    assert rule["rule"]["enabled"] is False
    pending = await ok(await client.get("/api/edge/v1/pending", headers=EDGE))
    config = next(m for m in pending["messages"] if m["type"] == "config")
    disabled = {r["id"]: r["disabled_rules"] for r in config["rooms"]}
    assert disabled[w.ROOM_B] == sorted([w.RULE_B, f"{w.ROOM_B}-rh", "custom"])
    assert disabled[w.ROOM_A] == []
    ignored = await rows(
        world_dsn, "SELECT target FROM audit_log WHERE action = 'config.edge_edit_ignored'"
    )
    assert ignored == [{"target": "nowhere"}]


# ---- polling, presence, refusals -----------------------------------------------------------------


async def test_polling_returns_the_stream_messages_and_takes_answers(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    client = await sync_client(command_ttl_s=3600)
    body = await ok(await client.get("/api/edge/v1/pending", headers=EDGE))
    assert [m["type"] for m in body["messages"]] == ["config", "command"]
    version = body["messages"][0]["version"]
    body = await ok(
        await client.get(f"/api/edge/v1/pending?config_version={version}", headers=EDGE)
    )
    assert [m["command_id"] for m in body["messages"]] == [w.COMMAND_B]
    answers = [
        {"type": "config_applied", "version": version},
        {
            "type": "command_accepted",
            "command_id": w.COMMAND_B,
            "state": "rejected",
            "detail": "device unknown on this edge",
        },
    ]
    await ok(
        await client.post("/api/edge/v1/pending", json={"messages": answers}, headers=EDGE), 204
    )
    cmd = await command_status(client, w.COMMAND_B, auth("viewer"), "failed", within=0)
    assert cmd["error"] == "device unknown on this edge"
    body = await ok(await client.get("/api/edge/v1/pending", headers=EDGE))
    assert body["messages"] == []  # version recorded, command answered
    await problem(await client.get("/api/edge/v1/pending", headers=auth("owner")), 401)
    await problem(await client.post("/api/edge/v1/pending", json={"messages": []}), 401)
    db = await Database.connect(world_dsn, min_size=1, max_size=1)
    try:
        assert await downlink.presence(db, window_s=60) == {"total": 1, "online": 1}
    finally:
        await db.close()


async def test_the_stream_refuses_strangers_and_bad_hellos(sync_client, auth) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client(hello_timeout_s=0.5, command_ttl_s=3600)
    resp = await client.get("/api/edge/v1/stream", headers=auth("owner"))
    await problem(resp, 401)
    resp = await client.get("/api/edge/v1/stream", headers=EDGE)  # no Upgrade
    await problem(resp, 400)
    async with client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws:
        await ws.send_json(
            {"type": "hello", "edge_id": "someone-else", "config_version": 0, "acked_seq": 0}
        )
        msg = await ws.receive(timeout=2)
        assert msg.type == WSMsgType.CLOSE and msg.data == 1008
    async with client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws:
        msg = await ws.receive(timeout=2)  # silence: no hello within the timeout
        assert msg.type == WSMsgType.CLOSE and msg.data == 1008
    async with client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws:
        await hello(ws, 10**6)  # ahead of the cloud: nothing to push
        await ws.send_str("garbage")  # bad input is logged, the stream stays
        await ws.send_json({"type": "config_applied", "version": 0})  # invalid: version >= 1
        await ws.send_json({"type": "command_accepted", "command_id": w.COMMAND_B})
        await command_status(client, w.COMMAND_B, auth("viewer"), "delivered")


# ---- bad input never stops the flow -------------------------------------------------------------

NASTY: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63,
    10**30,
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    "",
    "x" * 5000,
    "nul\x00byte",
    "2024-01-01T00:00:00",
    "2024-13-45",
    "not a time",
    [],
    [1, "a", None],
    {},
    {"\x00key": "\x00"},
    {"nested": {"deep": [None, {"x": 1}]}},
    1.7e9,
    -1.7e9,
    w.ROOM_B,
    w.SENSOR_B,
    w.ACTUATOR_B,
    "ghost",
    "active",
    "ok",
    "stage",
    "pinning",
]


def valid(kind: str, now: float) -> dict[str, Any]:
    """A well-formed record of ``kind``, for the fuzzer to damage."""
    return {
        "reading": {
            "device_id": w.SENSOR_B,
            "room_id": w.ROOM_B,
            "ts": now,
            "ts_replaced": False,
            "values": {"humidity_pct": 90.0},
        },
        "quarantine": {
            "topic": "t",
            "reason": "r",
            "payload_b64": "",
            "original_size": 0,
            "received_at": now,
        },
        "command": {
            "command_id": "c-1",
            "device_id": w.ACTUATOR_B,
            "room_id": w.ROOM_B,
            "action": "on",
            "value": None,
            "source": "cloud",
            "reason": "r",
            "created_at": now,
            "cloud_command_id": None,
        },
        "command_state": {
            "command_id": "c-1",
            "state": "acked",
            "at": now,
            "error": None,
            "attempts": 1,
            "cloud_command_id": None,
        },
        "ack": {"command_id": "c-1", "device_id": w.ACTUATOR_B, "status": "ok", "at": now},
        "alert": {
            "key": "k",
            "kind": "stale",
            "severity": "warning",
            "message": "m",
            "room_id": w.ROOM_B,
            "device_id": None,
            "state": "active",
            "at": now,
        },
        "status": {
            "device_id": w.ACTUATOR_B,
            "room_id": w.ROOM_B,
            "online": True,
            "state": {"on": True},
            "at": now,
        },
        "config_change": {
            "version": None,
            "base_version": 1,
            "at": now,
            "change": {"room_id": w.ROOM_B, "stage": "pinning"},
        },
    }[kind]


KINDS = (
    "reading",
    "quarantine",
    "command",
    "command_state",
    "ack",
    "alert",
    "status",
    "config_change",
)


def junk(rng: random.Random, seq: int) -> dict[str, Any]:
    """A valid record with one to three values replaced (or added) by nasty ones."""
    kind = rng.choice(KINDS)
    data = valid(kind, time.time())
    for _ in range(rng.randint(1, 3)):
        key = rng.choice([*data, "values", "change", "extra"])
        data[key] = rng.choice(NASTY)
        if key == "values" and rng.random() < 0.5:
            data["values"] = {rng.choice(["humidity_pct", "Bad Name", "x"]): rng.choice(NASTY)}
        if key == "change" and rng.random() < 0.5:
            data["change"] = {"rule_id": rng.choice(NASTY), "enabled": rng.choice(NASTY)}
        if key == "state" and kind == "status" and rng.random() < 0.5:
            data["state"] = {"\x00k": rng.choice(NASTY)}
    at = rng.choice([time.time(), time.time(), 0.0, -1e300, 1e300, float("nan"), 1.7e9])
    return {"seq": seq, "kind": kind, "at": at, "data": data}


async def test_fuzzed_records_never_fail_a_batch(sync_client, world_dsn) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client()
    rng = random.Random(20240501)
    seq = 0
    for _ in range(15):
        records = [junk(rng, seq + i) for i in range(1, 41)]
        raw = json.dumps(batch(records)).encode()  # NaN and Infinity as Python writes them
        resp = await upload(client, raw)
        assert resp.status == 200, await resp.text()
        seq += len(records)
        assert (await resp.json())["acked_seq"] == seq
    edge = await rows(world_dsn, "SELECT high_water FROM edges WHERE id = %s", (w.EDGE,))
    assert edge[0]["high_water"] == seq
