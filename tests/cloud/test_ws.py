"""The live socket (/api/ws) on real PostgreSQL: authentication, authorization of every
subscription (no reading of another farm ever arrives), revocation, coalescing, every kind of
event, slow-consumer isolation, reconnects, fan-out across two `smartfarm cloud serve`
processes; and the dashboard page and snapshot endpoints."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import WSMsgType

from cloud.app import init_app
from cloud.auth.tokens import token_hash
from cloud.db import edges as edges_db
from cloud.db import notifications as notifications_db
from cloud.db import recommendations as recs_db
from cloud.db.database import Database
from cloud.live.service import LIVE
from cloud.live.settings import LiveConfig
from tests.cloud import world as w
from tests.cloud.conftest import JWT_SECRET, make_settings
from tests.cloud.world import tokens_for

pytestmark = pytest.mark.postgres

OTHER_EDGE = "wg-edge"
EDGE_TOKENS = {w.FARM: (w.EDGE, "t"), w.OTHER_FARM: (OTHER_EDGE, "t2")}


class Socket:
    """A test client of /api/ws: every message kept, waited for by type."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self.closed_with: int | None = None
        self.ended: aiohttp.WSMessage | None = None

    async def send(self, **msg: Any) -> None:
        await self.ws.send_json(msg)

    async def _one(self) -> dict[str, Any] | None:
        msg = await self.ws.receive()
        if msg.type != WSMsgType.TEXT:
            self.closed_with = msg.data if msg.type == WSMsgType.CLOSE else self.ws.close_code
            self.ended = msg
            return None
        doc = json.loads(msg.data)
        self.seen.append(doc)
        return doc  # type: ignore[no-any-return]

    async def next(self, kind: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                doc = await self._one()
                assert doc is not None, f"socket closed ({self.closed_with}) waiting for {kind}"
                if doc["type"] == kind and all(doc.get(k) == v for k, v in match.items()):
                    return doc

    async def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Everything arriving within ``seconds``."""
        got: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    doc = await self._one()
                    if doc is None:
                        break
                    got.append(doc)
        except TimeoutError:
            pass
        return got

    async def subscribe(self, **sub: Any) -> dict[str, Any]:
        await self.send(type="subscribe", **sub)
        async with asyncio.timeout(5):
            while True:
                doc = await self._one()
                assert doc is not None
                if doc["type"] in ("subscribed", "error"):
                    return doc


Connect = Callable[..., Awaitable[Socket]]


@pytest.fixture
async def other_edge(world_dsn: str) -> None:
    """An edge for farm G too, so both farms upload readings."""
    db = await Database.connect(world_dsn, min_size=1, max_size=1)
    try:
        await edges_db.create(
            db, edge_id=OTHER_EDGE, farm_id=w.OTHER_FARM, name="g", token_hash=token_hash("t2")
        )
    finally:
        await db.close()


@pytest.fixture
async def live_app(aiohttp_client, world_dsn: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``await live_app(**live_settings)``: a test client whose hub is listening."""

    async def make(**live: Any):  # type: ignore[no-untyped-def]
        settings = make_settings(world_dsn, tmp_path, live=LiveConfig(**live))
        client = await aiohttp_client(init_app(settings))
        await asyncio.wait_for(client.app[LIVE].listening.wait(), 10)
        return client

    return make


def token(role: str, world: w.World, ttl_s: int = 900) -> str:
    return tokens_for(JWT_SECRET).issue(world.user_ids[role], ttl_s=ttl_s)


@pytest.fixture
async def connect(world: w.World) -> AsyncIterator[Connect]:
    opened: list[Socket] = []

    async def open_socket(client: Any, role: str, *, first_message: bool = True) -> Socket:
        tok = token(role, world)
        url = "/api/ws" if first_message else f"/api/ws?token={tok}"
        sock = Socket(await client.ws_connect(url))
        opened.append(sock)
        if first_message:
            await sock.send(type="auth", token=tok)
        hello = await sock.next("hello")
        assert hello["user"]["id"] == world.user_ids[role]
        return sock

    yield open_socket
    for sock in opened:
        await sock.ws.close()


async def upload(client: Any, farm: str, records: list[dict[str, Any]], first_seq: int) -> None:
    edge_id, edge_token = EDGE_TOKENS[farm]
    for i, rec in enumerate(records):
        rec["seq"] = first_seq + i
    body = {
        "edge_id": edge_id, "farm_id": farm, "first_seq": first_seq,
        "last_seq": first_seq + len(records) - 1,
        "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "records": records,
    }
    resp = await client.post(
        "/api/edge/v1/batches", data=gzip.compress(json.dumps(body).encode()),
        headers={"Authorization": f"Bearer {edge_token}", "Content-Type": "application/json",
                 "Content-Encoding": "gzip"},
    )
    assert resp.status == 200, await resp.text()


def reading(room: str, device: str, ts: float, **values: float) -> dict[str, Any]:
    values = values or {"temperature_c": 17.5, "humidity_pct": 88.0}
    return {"seq": 0, "kind": "reading", "at": ts,
            "data": {"device_id": device, "room_id": room, "ts": ts, "values": values}}


async def sql(dsn: str, query: str, params: Any = None) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(query, params)


# ---- authentication -----------------------------------------------------------------------------

async def test_a_socket_needs_a_valid_token_in_the_query_or_first_message(
    live_app, connect, world
) -> None:  # type: ignore[no-untyped-def]
    client = await live_app(auth_timeout_s=0.5)
    plain = await client.get("/api/ws")
    assert plain.status == 400 and plain.content_type == "application/problem+json"
    bad = await client.get("/api/ws?token=not-a-token-at-all", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert bad.status == 401
    silent = Socket(await client.ws_connect("/api/ws"))
    assert await silent.drain(3) == [] and silent.closed_with == 4401
    wrong = Socket(await client.ws_connect("/api/ws"))
    await wrong.send(type="auth", token="x" * 40)
    await wrong.drain(3)
    assert wrong.closed_with == 4401
    await connect(client, "viewer", first_message=False)  # ?token= works too
    sock = await connect(client, "viewer")
    await sock.send(type="ping", id=7)
    assert (await sock.next("pong"))["id"] == 7
    await sock.send(type="subscribe", farm_id="no such id!")
    assert (await sock.next("error"))["status"] == 422  # the socket stays open
    await sock.send(type="ping", id=8)
    assert (await sock.next("pong"))["id"] == 8


async def test_an_expiring_token_closes_the_socket_unless_renewed(live_app, world) -> None:  # type: ignore[no-untyped-def]
    client = await live_app()
    short = Socket(await client.ws_connect(f"/api/ws?token={token('owner', world, ttl_s=2)}"))
    renewed = Socket(await client.ws_connect(f"/api/ws?token={token('owner', world, ttl_s=2)}"))
    await renewed.send(type="auth", token=token("owner", world))
    await renewed.next("authenticated")
    stranger = token("stranger", world)
    await renewed.send(type="auth", token=stranger)
    assert (await renewed.next("error"))["status"] == 400
    await short.drain(9)  # 2 s + the verifier's 5 s leeway is not applied here: closed at exp
    assert short.closed_with == 4401
    await renewed.send(type="ping")
    await renewed.next("pong")
    await short.ws.close()
    await renewed.ws.close()


# ---- authorization ------------------------------------------------------------------------------

async def test_no_reading_of_another_farm_or_room_ever_arrives(
    live_app, connect, other_edge
) -> None:  # type: ignore[no-untyped-def]
    client = await live_app()
    owner = await connect(client, "owner")
    assert (await owner.subscribe(farm_id=w.FARM))["rooms"] is None
    limited = await connect(client, "limited")
    answer = await limited.subscribe(farm_id=w.FARM)
    assert answer["rooms"] == [w.ROOM_A]
    assert (await limited.subscribe(room_id=w.ROOM_B))["status"] == 404
    viewer = await connect(client, "viewer")
    assert (await viewer.subscribe(room_id=w.ROOM_B))["farm_id"] == w.FARM
    stranger = await connect(client, "stranger")
    assert (await stranger.subscribe(farm_id=w.FARM))["status"] == 404  # not 403: no probing
    assert (await stranger.subscribe(room_id=w.ROOM_A))["status"] == 404
    assert (await stranger.subscribe(farm_id=w.OTHER_FARM))["farm_id"] == w.OTHER_FARM
    assert (await stranger.subscribe(room_id=w.ROOM_A, farm_id=w.OTHER_FARM))["status"] == 404

    now = time.time()
    await upload(client, w.FARM, [reading(w.ROOM_A, w.ACTUATOR_A, now, co2_ppm=900.0),
                                  reading(w.ROOM_B, w.SENSOR_B, now)], 1)
    await upload(client, w.OTHER_FARM, [reading(w.OTHER_ROOM, w.OTHER_DEVICE, now)], 1)

    def rooms(sock: Socket) -> set[str]:
        return {(m["farm_id"], m["room_id"]) for m in sock.seen if m["type"] == "reading"}

    for sock in (owner, limited, viewer, stranger):
        await sock.drain(1.0)
    assert rooms(owner) == {(w.FARM, w.ROOM_A), (w.FARM, w.ROOM_B)}
    assert rooms(limited) == {(w.FARM, w.ROOM_A)}
    assert rooms(viewer) == {(w.FARM, w.ROOM_B)}
    assert rooms(stranger) == {(w.OTHER_FARM, w.OTHER_ROOM)}
    got = next(m for m in owner.seen if m["type"] == "reading" and m["room_id"] == w.ROOM_B)
    assert got["device_id"] == w.SENSOR_B and got["values"] == {
        "temperature_c": 17.5, "humidity_pct": 88.0}
    assert abs(got["time"] - now) < 0.01 and got["ingested_at"] >= now - 1


async def test_revoking_a_member_ends_their_subscriptions(live_app, connect, auth, world) -> None:  # type: ignore[no-untyped-def]
    client = await live_app()
    viewer = await connect(client, "viewer")
    await viewer.subscribe(farm_id=w.FARM)
    limited = await connect(client, "limited")
    await limited.subscribe(room_id=w.ROOM_A)
    operator = await connect(client, "operator")
    await operator.subscribe(farm_id=w.FARM)

    resp = await client.delete(f"/api/farms/{w.FARM}/members/{world.user_ids['viewer']}",
                               headers=auth("owner"))
    assert resp.status == 204, await resp.text()
    gone = await viewer.next("unsubscribed")
    assert gone["farm_id"] == w.FARM and gone["reason"] == "access revoked"
    # A room grant withdrawn (the limited operator moved to room B only) ends that room.
    resp = await client.patch(f"/api/farms/{w.FARM}/members/{world.user_ids['limited']}",
                              json={"room_ids": [w.ROOM_B]}, headers=auth("owner"))
    assert resp.status == 200, await resp.text()
    assert (await limited.next("unsubscribed"))["room_id"] == w.ROOM_A

    await upload(client, w.FARM, [reading(w.ROOM_A, w.ACTUATOR_A, time.time())], 1)
    await operator.next("reading", room_id=w.ROOM_A)
    await viewer.drain(0.5)
    await limited.drain(0.5)
    assert not [m for m in viewer.seen + limited.seen if m["type"] == "reading"]

    # A disabled account's sockets are closed.
    await sql(client.app[LIVE].db.dsn, "UPDATE users SET is_active = false WHERE id = %s",
              (world.user_ids["operator"],))
    await operator.drain(3)
    assert operator.closed_with == 4403, operator.ended


async def test_signing_out_everywhere_closes_the_users_sockets(live_app, connect, auth) -> None:  # type: ignore[no-untyped-def]
    client = await live_app()
    phone = await connect(client, "operator")
    laptop = await connect(client, "operator", first_message=False)
    viewer = await connect(client, "viewer")
    resp = await client.post("/api/auth/logout-all", headers=auth("operator"))
    assert resp.status == 200, await resp.text()
    await phone.drain(3)
    await laptop.drain(0.5)
    # Both of the user's sockets end with "unauthorized"; another user's stays open.
    assert phone.closed_with == 4401, phone.ended
    assert laptop.closed_with == 4401, laptop.ended
    await viewer.send(type="ping")
    assert (await viewer.next("pong"))["type"] == "pong"


# ---- what is pushed -----------------------------------------------------------------------------

async def test_readings_are_coalesced_per_device(live_app, connect) -> None:  # type: ignore[no-untyped-def]
    client = await live_app(reading_rate_hz=2)
    sock = await connect(client, "owner")
    await sock.subscribe(room_id=w.ROOM_B)
    t0 = time.time() - 60
    # A backlog of 200 readings in one batch: one message, the newest values.
    backlog = [reading(w.ROOM_B, w.SENSOR_B, t0 + i * 0.25, temperature_c=10 + i * 0.01)
               for i in range(200)]
    await upload(client, w.FARM, backlog, 1)
    first = await sock.next("reading")
    assert first["time"] == pytest.approx(t0 + 199 * 0.25)
    assert first["values"]["temperature_c"] == pytest.approx(11.99)
    # Five quick batches within the interval: at most one more message now, merged.
    for i in range(5):
        await upload(client, w.FARM, [reading(w.ROOM_B, w.SENSOR_B, time.time(),
                                              humidity_pct=80.0 + i)], 201 + i)
    started = time.monotonic()
    got = [m for m in await sock.drain(1.5) if m["type"] == "reading"]
    assert 1 <= len(got) <= 3, got  # ≤ 2 a second
    assert got[-1]["values"]["humidity_pct"] == 84.0
    assert time.monotonic() - started < 2


async def test_big_batches_are_split_and_oversized_readings_fetched_by_id(
    live_app, connect, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from cloud.db import live as live_db

    now = time.time()
    when = datetime.fromtimestamp(now, UTC)
    rows = [(when, w.ROOM_B, f"dev-{d}", f"metric_{m}", float(m)) for d in range(3)
            for m in range(8)]
    assert len(live_db.reading_payloads(w.FARM, rows, now)) == 1  # one room: one NOTIFY
    monkeypatch.setattr(live_db, "MAX_PAYLOAD", 250)
    split = [json.loads(p) for p in live_db.reading_payloads(w.FARM, rows, now)]
    assert len(split) == 3 and all(len(d.get("devices", {})) <= 1 for d in split)
    monkeypatch.setattr(live_db, "MAX_PAYLOAD", 120)
    fetched = [json.loads(p) for p in live_db.reading_payloads(w.FARM, rows, now)]
    assert sorted(d["fetch"][0] for d in fetched) == ["dev-0", "dev-1", "dev-2"]

    # End to end: the hub reads such a device's newest values from sensor_latest.
    client = await live_app()
    sock = await connect(client, "owner")
    await sock.subscribe(room_id=w.ROOM_B)
    values = {f"metric_{m}": float(m) for m in range(8)}
    await upload(client, w.FARM, [reading(w.ROOM_B, w.SENSOR_B, now, **values)], 1)
    got = await sock.next("reading")
    assert got["device_id"] == w.SENSOR_B and got["values"] == values
    assert got["time"] == pytest.approx(now, abs=0.01)


async def test_commands_status_alerts_recommendations_and_notifications_are_pushed(
    live_app, connect, auth, world, world_dsn
) -> None:  # type: ignore[no-untyped-def]
    client = await live_app()
    sock = await connect(client, "operator")
    await sock.subscribe(room_id=w.ROOM_B)
    resp = await client.post(f"/api/rooms/{w.ROOM_B}/commands",
                             json={"device_id": w.ACTUATOR_B, "action": "on"},
                             headers=auth("operator"))
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    steps = []
    for status in ("delivered", "acked"):
        await sql(world_dsn, "UPDATE commands SET status = %s WHERE id = %s", (status, made["id"]))
    for _ in range(3):
        msg = await sock.next("command")
        assert msg["command"]["id"] == made["id"] and msg["room_id"] == w.ROOM_B
        steps.append(msg["command"]["status"])
    assert steps == ["pending", "delivered", "acked"]

    await upload(client, w.FARM, [{"seq": 0, "kind": "status", "at": time.time(), "data": {
        "device_id": w.ACTUATOR_B, "room_id": w.ROOM_B, "online": True,
        "state": {"on": True, "level": 100}, "at": time.time()}}], 1)
    status = await sock.next("status")
    assert status["device_id"] == w.ACTUATOR_B and status["state"]["on"] is True

    db = await Database.connect(world_dsn, min_size=1, max_size=1)
    try:
        async with db.transaction() as cur:
            await cur.execute(
                "INSERT INTO alert_episodes (farm_id, source, key, kind, severity, message,"
                " room_id, state, started_at, last_at) VALUES (%s, 'cloud', 'rh-low', 'band',"
                " 'warning', 'RH low', %s, 'active', now(), now())", (w.FARM, w.ROOM_B))
        (rec,) = await recs_db.store(db, w.FARM, w.ROOM_B, source="builtin", run_id=None, items=[{
            "key": "co2-high", "severity": "info", "title": "Ventilate", "reason": "CO2 up",
            "action": None}])
        await notifications_db.add(db, user_id=world.user_ids["operator"], kind="alert",
                                   title="for you", farm_id=w.FARM)
        await notifications_db.add(db, user_id=world.user_ids["viewer"], kind="alert",
                                   title="not for you", farm_id=w.FARM)
    finally:
        await db.close()
    alert = await sock.next("alert")
    assert alert["alert"]["message"] == "RH low" and alert["room_id"] == w.ROOM_B
    assert (await sock.next("recommendation"))["recommendation"]["id"] == rec["id"]
    note = await sock.next("notification")
    assert note["notification"]["title"] == "for you"
    assert not [m for m in await sock.drain(0.5) if m["type"] == "notification"]
    # A new stage: pages reload the room (its bands follow the stage).
    resp = await client.patch(f"/api/rooms/{w.ROOM_B}", json={"stage": "pinning"},
                              headers=auth("operator"))
    assert resp.status == 200, await resp.text()
    assert (await sock.next("room"))["room_id"] == w.ROOM_B


async def test_edges_going_online_are_pushed(live_app, connect, world_dsn) -> None:  # type: ignore[no-untyped-def]
    client = await live_app(presence_poll_s=0.2)
    sock = await connect(client, "viewer")
    await sock.subscribe(farm_id=w.FARM)
    first = await sock.next("edge")
    assert first["edge_id"] == w.EDGE and first["online"] is False
    await sql(world_dsn, "UPDATE edges SET last_seen = now() WHERE id = %s", (w.EDGE,))
    assert (await sock.next("edge"))["online"] is True


# ---- isolation and reconnects -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["queue", "send_timeout"])
async def test_a_slow_consumer_is_dropped_without_stalling_the_others(
    live_app, connect, mode
) -> None:  # type: ignore[no-untyped-def]
    options = {"queue_size": 16} if mode == "queue" else {"queue_size": 100_000,
                                                           "send_timeout_s": 1}
    client = await live_app(**options)
    hub = client.app[LIVE]
    fast = await connect(client, "owner")
    await fast.subscribe(farm_id=w.FARM)
    slow = await connect(client, "operator")
    await slow.subscribe(farm_id=w.FARM)  # ... and then never reads again
    big = json.dumps({"type": "reading", "farm_id": w.FARM, "room_id": w.ROOM_B,
                      "pad": "x" * 32_000})
    received = 0

    async def read_fast() -> None:
        nonlocal received
        while received < 400:
            msg = await fast.ws.receive()
            assert msg.type == WSMsgType.TEXT
            received += 1

    reader = asyncio.create_task(read_fast())
    started = time.monotonic()
    for _ in range(400):
        hub._fanout(w.FARM, w.ROOM_B, big)  # what a NOTIFY turns into, 12.8 MB in all
        await asyncio.sleep(0.003)  # notices arrive one by one, not all in one loop turn
    await asyncio.wait_for(reader, 20)
    took = time.monotonic() - started
    # The fast client got every message while the slow one was cut off, within seconds.
    deadline = time.monotonic() + 10
    while hub.clients() > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert hub.clients() == 1, "the slow client is still connected"
    assert took < 15
    closed = hub.metrics.closed.labels("4408")._value.get()
    assert closed == 1


async def test_clients_resync_after_the_live_feed_reconnects_and_can_reconnect(
    live_app, connect, world_dsn
) -> None:  # type: ignore[no-untyped-def]
    client = await live_app()
    hub = client.app[LIVE]
    sock = await connect(client, "owner")
    await sock.subscribe(room_id=w.ROOM_B)
    # The database drops the hub's LISTEN connection: clients are told to reload, then the
    # feed resumes.
    await sql(world_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = current_database() AND query = 'LISTEN smartfarm_user'")
    await sock.next("resync", timeout=10)
    await asyncio.wait_for(hub.listening.wait(), 10)
    await upload(client, w.FARM, [reading(w.ROOM_B, w.SENSOR_B, time.time())], 1)
    await sock.next("reading")
    # The browser's side: a new socket, the same subscription, the old one forgotten.
    await sock.ws.close()
    again = await connect(client, "owner")
    await again.subscribe(room_id=w.ROOM_B)
    await upload(client, w.FARM, [reading(w.ROOM_B, w.SENSOR_B, time.time() + 1)], 2)
    await again.next("reading")
    assert hub.clients() == 1


async def test_an_ingest_on_one_process_reaches_a_client_of_another(
    world_dsn, world, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from tests.chaos.conftest import Cloud

    cloud = Cloud(world_dsn, tmp_path, sync={})
    a, b = cloud.spawn(), cloud.spawn()
    try:
        await asyncio.gather(cloud.ready(a.url), cloud.ready(b.url))
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{b.url}/api/ws")
            sock = Socket(ws)
            await sock.send(type="auth", token=token("operator", world))
            await sock.next("hello")
            await sock.subscribe(room_id=w.ROOM_B)
            edge = {"Authorization": "Bearer t", "Content-Type": "application/json"}
            body = {"edge_id": w.EDGE, "farm_id": w.FARM, "first_seq": 1, "last_seq": 1,
                    "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "records": [reading(w.ROOM_B, w.SENSOR_B, time.time()) | {"seq": 1}]}
            # B's LISTEN may start a moment after /health answers: resend until it hears.
            sent = time.monotonic()
            async with session.post(f"{a.url}/api/edge/v1/batches", json=body,
                                    headers=edge) as resp:
                assert resp.status == 200, await resp.text()
            got = await sock.next("reading", timeout=10)
            assert got["device_id"] == w.SENSOR_B and time.monotonic() - sent < 10
            user = {"Authorization": f"Bearer {token('operator', world)}"}
            async with session.post(f"{a.url}/api/rooms/{w.ROOM_B}/commands", headers=user,
                                    json={"device_id": w.ACTUATOR_B, "action": "off"}) as resp:
                assert resp.status == 201, await resp.text()
            assert (await sock.next("command"))["command"]["action"] == "off"
            await ws.close()
    finally:
        await cloud.close()


# ---- the page and its snapshots -----------------------------------------------------------------

async def test_the_page_is_served_with_a_strict_content_security_policy(world_client) -> None:  # type: ignore[no-untyped-def]
    page = await world_client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "<script>" not in html and " style=" not in html and " on" not in html.replace(
        " on ", "")
    script = await world_client.get("/static/app.js")
    assert script.status == 200 and "javascript" in script.content_type
    assert script.headers["Content-Security-Policy"] == csp
    for bad in ("/static/nope.js", "/static/..%2Fpage.py", "/static/%2e%2e/app.py"):
        assert (await world_client.get(bad)).status == 404
    # Every module the page loads is there (a missing file would break it only in a browser).
    for name in ("api.js", "live.js", "chart.js", "dom.js", "view-room.js", "app.css"):
        assert (await world_client.get(f"/static/{name}")).status == 200


async def _latest_again_now(dsn: str) -> None:
    """Room B's last readings again, stamped now: the world is built once per session, and a
    reading over 10 min old is stale (no verdict), which a long run reaches."""
    from cloud.db import telemetry

    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        now = datetime.now(UTC)
        await telemetry.insert_readings(db, w.FARM, [
            (now, w.ROOM_B, w.SENSOR_B, "temperature_c", 19.19),
            (now, w.ROOM_B, w.SENSOR_B, "humidity_pct", 81.19)])
    finally:
        await db.close()


async def test_snapshots_show_bands_values_and_commands_within_grants(world_client, world_dsn,  # type: ignore[no-untyped-def]
                                                                      auth) -> None:
    await _latest_again_now(world_dsn)
    resp = await world_client.get(f"/api/farms/{w.FARM}/overview", headers=auth("owner"))
    assert resp.status == 200, await resp.text()
    overview = await resp.json()
    rooms = {r["id"]: r for r in overview["rooms"]}
    assert set(rooms) == {w.ROOM_A, w.ROOM_B} and overview["role"] == "owner"
    room_b = rooms[w.ROOM_B]
    assert room_b["bands"]["humidity_pct"]["min"] is not None
    assert room_b["latest"]["humidity_pct"]["value"] == pytest.approx(81.19)
    assert room_b["latest"]["humidity_pct"]["in_band"] is False  # 81 % for oyster fruiting
    assert room_b["out_of_band"] == ["humidity_pct"] and room_b["in_band"] is False
    assert overview["edges"][0]["id"] == w.EDGE and overview["edges"][0]["online"] is False
    limited = await (await world_client.get(f"/api/farms/{w.FARM}/overview",
                                            headers=auth("limited"))).json()
    assert [r["id"] for r in limited["rooms"]] == [w.ROOM_A]
    assert (await world_client.get(f"/api/farms/{w.FARM}/overview",
                                   headers=auth("stranger"))).status == 404

    live = await (await world_client.get(f"/api/rooms/{w.ROOM_B}/live",
                                         headers=auth("viewer"))).json()
    devices = {d["id"]: d for d in live["devices"]}
    assert devices[w.ACTUATOR_B]["last_command"]["id"] == w.COMMAND_B
    assert devices[w.SENSOR_B]["latest"]["temperature_c"]["value"] == pytest.approx(19.19)
    assert live["role"] == "viewer" and live["room"]["id"] == w.ROOM_B
