"""The edge's local API and page against a real SQLite store, automation and command tracker."""
from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from edge.alerts import AlertMonitor
from edge.api import create_api_app
from edge.api.problems import TooManyAttempts
from edge.api.sessions import LoginThrottle, SessionSigner
from edge.automation import Automation
from edge.commands import CommandTracker
from edge.config import ApiConfig, DeviceConfig, EdgeSettings, RoomConfig
from edge.ingest import Ingest
from edge.store.db import Database
from shared.models import utcnow
from shared.topics import build_topic
from shared.vocabulary import ACTUATOR_ROLES, METRICS, SPECIES, STAGES

PASSWORD = "correct horse battery"
CSRF = {"X-Requested-With": "smartfarm-edge"}
STATIC = Path(__file__).resolve().parents[2] / "edge" / "static"


@dataclass
class RecordingPublisher:
    """Stands in for the MQTT client: records what the command tracker publishes."""

    sent: list[tuple[str, dict[str, Any], int, bool]] = field(default_factory=list)

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.sent.append((topic, json.loads(payload), qos, retain))


@dataclass
class Edge:
    settings: EdgeSettings
    db: Database
    automation: Automation
    commands: CommandTracker
    alerts: AlertMonitor
    ingest: Ingest
    publisher: RecordingPublisher

    async def settle(self) -> None:
        """Wait until every write queued so far is committed (the writer is FIFO)."""
        await self.db.write(_noop, urgent=True)

    async def telemetry(self, device_id: str, data: dict[str, float], ago_s: float = 0) -> None:
        room = self.settings.device(device_id)
        assert room is not None
        stamp = (utcnow() - timedelta(seconds=ago_s)).isoformat()
        payload = json.dumps({"device_id": device_id, "timestamp": stamp, "data": data})
        topic = build_topic(self.settings.farm_id, room.room, "telemetry", device_id)
        await self.ingest.handle(topic, payload.encode())


def _noop(conn: Any) -> None:
    return None


def make_settings(farm_id: str, tmp_path: Path, password: str | None = PASSWORD) -> EdgeSettings:
    return EdgeSettings(
        farm_id=farm_id,
        data_dir=tmp_path,
        api=ApiConfig(admin_user="admin", admin_password=password),
        rooms=[
            RoomConfig(id="room-a", name="Oyster room", species="oyster", stage="fruiting"),
            RoomConfig(id="room-b", species="lions_mane", stage="pinning"),
        ],
        devices=[
            DeviceConfig(id="sens-a", room="room-a", kind="sensor"),
            DeviceConfig(id="hum-a", room="room-a", kind="actuator", actuator="humidifier"),
            DeviceConfig(id="fan-a", room="room-a", kind="actuator", actuator="exhaust_fan"),
            DeviceConfig(id="sens-b", room="room-b", kind="sensor"),
        ],
    )


async def build_edge(settings: EdgeSettings, tmp_path: Path) -> Edge:
    db = Database(tmp_path / "edge.db", commit_interval_ms=20)
    await db.open()
    alerts = AlertMonitor(
        db, out_of_band_after=timedelta(minutes=15), silent_after=timedelta(minutes=5)
    )
    holder: dict[str, Automation] = {}

    async def on_outcome(outcome: Any) -> None:
        await holder["automation"].on_outcome(outcome)

    commands = CommandTracker(db, farm_id=settings.farm_id, on_outcome=on_outcome)
    publisher = RecordingPublisher()
    commands.attach(publisher)
    automation = Automation(settings, db, commands, alerts)
    holder["automation"] = automation
    await automation.load()
    ingest = Ingest(
        db,
        farm_id=settings.farm_id,
        known_devices=lambda: {d.id: d.room for d in settings.devices},
        on_reading=automation.on_reading,
        on_ack=lambda topic, ack: commands.on_ack(topic.device_id, ack),
        on_status=automation.on_status,
    )
    return Edge(settings, db, automation, commands, alerts, ingest, publisher)


@pytest.fixture
async def edge(farm_id: str, tmp_path: Path) -> AsyncIterator[Edge]:
    built = await build_edge(make_settings(farm_id, tmp_path), tmp_path)
    yield built
    await built.commands.close()
    await built.db.close()


def make_app(e: Edge) -> web.Application:
    return create_api_app(
        settings=e.settings, db=e.db, automation=e.automation, ingest=e.ingest,
        commands=e.commands,
    )


@pytest.fixture
async def client(edge: Edge, aiohttp_client: Any) -> TestClient:
    """An unauthenticated client."""
    return await aiohttp_client(make_app(edge))


@pytest.fixture
async def admin(client: TestClient) -> TestClient:
    """The same client after logging in (session cookie in its jar)."""
    resp = await client.post("/api/login", json={"username": "admin", "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    return client


async def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json(content_type=None)
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# ---- health, auth ----
async def test_health_needs_no_auth(client: TestClient) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"
    assert body["broker_connected"] is True
    assert body["db_open"] is True


async def test_api_needs_auth(client: TestClient) -> None:
    body = await problem(await client.get("/api/rooms"), 401)
    assert "log in" in body["detail"]
    resp = await client.get("/api/rooms")
    assert resp.headers["WWW-Authenticate"].startswith("Basic ")
    # The page's own requests get no Basic challenge (no browser pop-up).
    resp = await client.get("/api/rooms", headers=CSRF)
    assert "Basic" not in resp.headers["WWW-Authenticate"]


async def test_login_sets_a_strict_httponly_session(client: TestClient) -> None:
    resp = await client.post("/api/login", json={"username": "admin", "password": PASSWORD})
    assert resp.status == 200
    assert (await resp.json())["ok"] is True
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    resp = await client.get("/api/rooms")
    assert resp.status == 200
    session = await (await client.get("/api/session")).json()
    assert session["user"] == "admin"
    assert session["via"] == "cookie"


async def test_bad_password_is_refused(client: TestClient) -> None:
    resp = await client.post("/api/login", json={"username": "admin", "password": "nope"})
    body = await problem(resp, 401)
    assert "wrong username or password" in body["detail"]
    assert "Set-Cookie" not in resp.headers
    await problem(await client.get("/api/rooms"), 401)


async def test_forged_or_logged_out_session_is_refused(client: TestClient) -> None:
    forged = "v1.YWRtaW4.9999999999.x.y"
    await problem(
        await client.get("/api/rooms", cookies={"smartfarm_edge_session": forged}), 401
    )
    resp = await client.post("/api/login", json={"username": "admin", "password": PASSWORD})
    token = resp.cookies["smartfarm_edge_session"].value
    assert (await client.post("/api/logout", json={})).status == 200
    # Even a client that kept the old cookie cannot use it after logout.
    await problem(
        await client.get("/api/rooms", cookies={"smartfarm_edge_session": token}), 401
    )


async def test_basic_auth_for_scripts(client: TestClient) -> None:
    resp = await client.get("/api/rooms", headers=basic("admin", PASSWORD))
    assert resp.status == 200
    await problem(await client.get("/api/rooms", headers=basic("admin", "wrong")), 401)
    await problem(await client.get("/api/rooms", headers={"Authorization": "Basic %%%"}), 401)
    # A script needs no CSRF header: it cannot be driven by another site.
    resp = await client.post(
        "/api/commands", json={"device_id": "hum-a", "action": "on"},
        headers=basic("admin", PASSWORD),
    )
    assert resp.status == 202


async def test_failed_logins_are_throttled(client: TestClient) -> None:
    for _ in range(5):
        resp = await client.post("/api/login", json={"username": "admin", "password": "guess"})
        assert resp.status == 401
    resp = await client.post("/api/login", json={"username": "admin", "password": PASSWORD})
    body = await problem(resp, 429)
    assert int(resp.headers["Retry-After"]) > 0
    assert body["retry_after_s"] > 0
    # Basic auth is throttled the same way.
    await problem(await client.get("/api/rooms", headers=basic("admin", PASSWORD)), 429)


async def test_login_refused_when_no_password_is_configured(
    farm_id: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    built = await build_edge(make_settings(farm_id, tmp_path, password=None), tmp_path)
    try:
        client = await aiohttp_client(make_app(built))
        resp = await client.post("/api/login", json={"username": "admin", "password": ""})
        await problem(resp, 422)  # an empty password is not even a valid request
        resp = await client.post("/api/login", json={"username": "admin", "password": "x"})
        body = await problem(resp, 503)
        assert "api.admin_password" in body["detail"]
        await problem(await client.get("/api/rooms", headers=basic("admin", "")), 503)
    finally:
        await built.commands.close()
        await built.db.close()


async def test_cookie_session_needs_the_csrf_header_to_change_state(admin: TestClient) -> None:
    body = await problem(
        await admin.post("/api/commands", json={"device_id": "hum-a", "action": "on"}), 403
    )
    assert "X-Requested-With" in body["detail"]
    # A cross-site form can only send form or text bodies: refused whatever the auth.
    resp = await admin.post(
        "/api/commands", data="device_id=hum-a&action=on",
        headers={**CSRF, "Content-Type": "application/x-www-form-urlencoded"},
    )
    await problem(resp, 415)
    resp = await admin.post(
        "/api/commands", json={"device_id": "hum-a", "action": "on"}, headers=CSRF
    )
    assert resp.status == 202


# ---- listings ----
async def test_vocabulary_is_shared_and_needs_auth(client: TestClient) -> None:
    await problem(await client.get("/api/vocabulary"), 401)
    resp = await client.get("/api/vocabulary", headers=basic("admin", PASSWORD))
    assert resp.status == 200
    body = await resp.json()
    assert [s["id"] for s in body["species"]] == list(SPECIES)
    assert [s["id"] for s in body["stages"]] == list(STAGES)
    assert [r["id"] for r in body["actuator_roles"]] == list(ACTUATOR_ROLES)
    assert {m["name"]: (m["label"], m["unit"], m["decimals"]) for m in body["metrics"]} == {
        m.name: (m.label, m.unit, m.decimals) for m in METRICS.values()
    }
    assert "co2_ppm" not in (STATIC / "app.js").read_text(), "the page spells no metric names"


async def test_rooms_show_readings_bands_and_actuators(edge: Edge, admin: TestClient) -> None:
    await edge.telemetry("sens-a", {"temperature_c": 17.5, "humidity_pct": 60.0, "co2_ppm": 800})
    resp = await admin.get("/api/rooms")
    assert resp.status == 200
    rooms = {r["id"]: r for r in await resp.json()}
    assert set(rooms) == {"room-a", "room-b"}
    room = rooms["room-a"]
    assert room["name"] == "Oyster room"
    assert (room["species"], room["stage"]) == ("oyster", "fruiting")
    assert rooms["room-b"]["name"] == "room-b"  # no name configured: the id
    rh = room["readings"]["humidity_pct"]
    assert rh["value"] == 60.0
    assert rh["stale"] is False
    assert rh["at"].endswith("+00:00")
    assert room["bands"]["humidity_pct"] == {"low": 85.0, "high": 90.0}
    assert room["in_band"] == {"temperature_c": True, "humidity_pct": False, "co2_ppm": True}
    assert rh["in_band"] is False
    actuators = {a["id"]: a for a in room["actuators"]}
    assert set(actuators) == {"hum-a", "fan-a"}
    assert actuators["hum-a"]["role"] == "humidifier"
    assert {"on", "since", "override", "reported"} <= actuators["hum-a"].keys()
    assert rooms["room-b"]["readings"] == {}

    one = await (await admin.get("/api/rooms/room-a")).json()
    assert one["id"] == "room-a"
    await problem(await admin.get("/api/rooms/nowhere"), 404)


async def test_stale_readings_are_flagged(edge: Edge, admin: TestClient) -> None:
    stale = edge.settings.automation.stale_after_s + 60
    await edge.telemetry("sens-b", {"humidity_pct": 97.0}, ago_s=stale)
    room = await (await admin.get("/api/rooms/room-b")).json()
    assert room["readings"]["humidity_pct"]["stale"] is True


async def test_devices_list_every_configured_device(edge: Edge, admin: TestClient) -> None:
    await edge.telemetry("sens-a", {"humidity_pct": 88.0})
    await edge.settle()
    devices = {d["id"]: d for d in await (await admin.get("/api/devices")).json()}
    assert set(devices) == {"sens-a", "hum-a", "fan-a", "sens-b"}
    assert devices["sens-a"]["kind"] == "sensor"
    assert devices["sens-a"]["room_id"] == "room-a"
    assert devices["sens-a"]["status"]["online"] is True
    assert devices["sens-a"]["status"]["last_seen"] is not None
    assert devices["sens-b"]["status"]["online"] is False
    assert devices["sens-b"]["status"]["last_seen"] is None
    assert devices["hum-a"]["role"] == "humidifier"
    assert devices["hum-a"]["actuator"]["id"] == "hum-a"
    assert "actuator" not in devices["sens-a"]


async def test_readings_are_a_downsampled_series(edge: Edge, admin: TestClient) -> None:
    for i in range(40):
        await edge.telemetry(
            "sens-a", {"humidity_pct": 80.0 + i / 4, "temperature_c": 18.0}, ago_s=3000 - i * 60
        )
    await edge.settle()
    resp = await admin.get("/api/rooms/room-a/readings", params={"hours": 2, "points": 10})
    assert resp.status == 200
    body = await resp.json()
    assert body["readings"] == 40
    assert set(body["series"]) == {"humidity_pct", "temperature_c"}
    rh = body["series"]["humidity_pct"]
    assert 2 <= len(rh) <= 10
    times = [t for t, _ in rh]
    assert times == sorted(times)
    assert rh[0][1] < rh[-1][1]  # RH rose over the hour
    only = await (
        await admin.get("/api/rooms/room-a/readings", params={"metric": "temperature_c"})
    ).json()
    assert set(only["series"]) == {"temperature_c"}
    body = await problem(
        await admin.get("/api/rooms/room-a/readings", params={"hours": "lots"}), 422
    )
    assert body["errors"][0]["field"] == "hours"
    await problem(await admin.get("/api/rooms/nowhere/readings"), 404)


async def test_alerts_and_quarantine(edge: Edge, admin: TestClient) -> None:
    await edge.alerts.raise_alert(
        "silent:sens-b", kind="sensor_silent", room_id="room-b", device_id="sens-b",
        message="sensor sens-b in room-b silent for 9 min",
    )
    alerts = await (await admin.get("/api/alerts", params={"active": "1"})).json()
    assert [a["key"] for a in alerts] == ["silent:sens-b"]
    assert alerts[0]["first_at"].endswith("+00:00")
    await edge.alerts.resolve("silent:sens-b")
    assert await (await admin.get("/api/alerts?active=1")).json() == []
    assert len(await (await admin.get("/api/alerts")).json()) == 1

    topic = build_topic(edge.settings.farm_id, "room-a", "telemetry", "sens-a")
    await edge.ingest.handle(topic, b"\xff\xfe{not json")
    await edge.settle()
    body = await (await admin.get("/api/quarantine", params={"limit": 5})).json()
    assert body["count"] == 1
    item = body["items"][0]
    assert item["topic"] == topic
    assert item["size"] == len(b"\xff\xfe{not json")
    assert item["preview"].startswith("\ufffd\ufffd{not json")
    assert item["reason"]

    stats = await (await admin.get("/api/stats")).json()
    assert stats["quarantine_count"] == 1
    assert stats["ingest"]["quarantined"] == 1
    assert stats["ingest"]["quarantined_by_reason"] == {"payload": 1}
    assert stats["commands"]["broker_connected"] is True
    assert stats["db"]["transactions"] > 0


# ---- control ----
async def test_manual_command_is_published_recorded_and_overrides(
    edge: Edge, admin: TestClient
) -> None:
    resp = await admin.post(
        "/api/commands", json={"device_id": "hum-a", "action": "on", "hold_minutes": 20},
        headers=CSRF,
    )
    assert resp.status == 202
    body = await resp.json()
    cid = body["command_id"]
    assert body["override_until"] is not None

    await wait_for(lambda: any(p[1]["command_id"] == cid for p in edge.publisher.sent))
    topic, payload, qos, retain = next(p for p in edge.publisher.sent if p[1]["command_id"] == cid)
    assert topic == f"farm/{edge.settings.farm_id}/room/room-a/command/hum-a"
    assert payload["action"] == "on"
    assert payload["device_id"] == "hum-a"
    assert (qos, retain) == (1, False)

    await edge.settle()
    commands = await (await admin.get("/api/commands", params={"device_id": "hum-a"})).json()
    row = next(c for c in commands if c["command_id"] == cid)
    assert row["state"] == "pending"
    assert row["source"] == "manual"
    assert row["created_at"].endswith("+00:00")
    assert await (await admin.get("/api/commands", params={"room_id": "room-b"})).json() == []

    room = await (await admin.get("/api/rooms/room-a")).json()
    hum = next(a for a in room["actuators"] if a["id"] == "hum-a")
    assert hum["on"] is True
    assert hum["override"]["on"] is True
    assert hum["override"]["by"] == "admin"
    assert hum["override"]["until"] == body["override_until"]

    resp = await admin.delete("/api/overrides/hum-a", headers=CSRF)
    assert resp.status == 200
    assert (await resp.json())["override"] is None
    room = await (await admin.get("/api/rooms/room-a")).json()
    assert next(a for a in room["actuators"] if a["id"] == "hum-a")["override"] is None


async def test_rules_can_be_disabled_and_enabled(edge: Edge, admin: TestClient) -> None:
    rules = await (await admin.get("/api/rules", params={"room_id": "room-a"})).json()
    ids = {r["id"] for r in rules}
    assert "room-a-rh" in ids
    assert all(r["room_id"] == "room-a" for r in rules)
    everything = await (await admin.get("/api/rules")).json()
    assert len(everything) >= len(rules)

    resp = await admin.post("/api/rules/room-a-rh", json={"enabled": False}, headers=CSRF)
    assert resp.status == 200
    assert (await resp.json())["enabled"] is False
    rules = await (await admin.get("/api/rules?room_id=room-a")).json()
    assert next(r for r in rules if r["id"] == "room-a-rh")["enabled"] is False

    resp = await admin.patch("/api/rules/room-a-rh", json={"enabled": True}, headers=CSRF)
    assert (await resp.json())["enabled"] is True
    assert next(r for r in edge.automation.rules("room-a") if r.id == "room-a-rh").enabled

    await problem(await admin.post("/api/rules/nope", json={"enabled": True}, headers=CSRF), 404)
    await problem(await admin.get("/api/rules?room_id=nowhere"), 404)
    body = await problem(
        await admin.post("/api/rules/room-a-rh", json={"enabled": "no"}, headers=CSRF), 422
    )
    assert body["errors"][0]["field"] == "enabled"


async def test_stage_change_rebuilds_rules_and_bands(edge: Edge, admin: TestClient) -> None:
    before = {r["id"] for r in await (await admin.get("/api/rules?room_id=room-a")).json()}
    assert "room-a-fresh-air" in before  # fruiting vents; spawn run does not
    resp = await admin.post(
        "/api/rooms/room-a/stage", json={"stage": "spawn_run"}, headers=CSRF
    )
    assert resp.status == 200
    room = await resp.json()
    assert room["stage"] == "spawn_run"
    assert room["stage_started"] == utcnow().date().isoformat()
    assert room["bands"]["humidity_pct"] == {"low": 85.0, "high": 95.0}
    after = {r["id"] for r in await (await admin.get("/api/rules?room_id=room-a")).json()}
    assert "room-a-fresh-air" not in after
    assert edge.automation.rooms["room-a"].stage == "spawn_run"

    body = await problem(
        await admin.post("/api/rooms/room-a/stage", json={"stage": "harvest"}, headers=CSRF), 422
    )
    assert body["errors"][0]["field"] == "stage"
    await problem(
        await admin.post("/api/rooms/nowhere/stage", json={"stage": "pinning"}, headers=CSRF), 404
    )


# ---- errors ----
async def test_validation_errors_are_problems_naming_each_field(admin: TestClient) -> None:
    resp = await admin.post(
        "/api/commands",
        json={"device_id": "hum-a", "action": "toggle", "hold_minutes": -5, "extra": 1},
        headers=CSRF,
    )
    body = await problem(resp, 422)
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"action", "hold_minutes", "extra"}
    assert all(e["message"] for e in body["errors"])

    body = await problem(
        await admin.post("/api/commands", json=["hum-a"], headers=CSRF), 422
    )
    assert body["errors"][0]["field"] == "body"
    body = await problem(
        await admin.post("/api/commands", json={"action": "on"}, headers=CSRF), 422
    )
    assert body["errors"][0]["field"] == "device_id"

    resp = await admin.post(
        "/api/commands", data=b"{not json",
        headers={**CSRF, "Content-Type": "application/json"},
    )
    body = await problem(resp, 400)
    assert "JSON" in body["detail"]
    body = await problem(await admin.get("/api/commands", params={"limit": "0"}), 422)
    assert body["errors"][0]["field"] == "limit"
    await problem(await admin.get("/api/nothing-here"), 404)
    await problem(await admin.put("/api/commands", json={}, headers=CSRF), 405)


async def test_unknown_device_and_wrong_kind(admin: TestClient) -> None:
    body = await problem(
        await admin.post("/api/commands", json={"device_id": "ghost", "action": "on"},
                         headers=CSRF),
        404,
    )
    assert "ghost" in body["detail"]
    body = await problem(
        await admin.post("/api/commands", json={"device_id": "sens-a", "action": "on"},
                         headers=CSRF),
        422,
    )
    assert "sensor" in body["detail"]
    await problem(await admin.delete("/api/overrides/ghost", headers=CSRF), 404)
    await problem(await admin.delete("/api/overrides/sens-a", headers=CSRF), 404)


async def test_unexpected_errors_are_500_problems_without_details(
    edge: Edge, admin: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(room_id: str | None = None) -> list[Any]:
        raise RuntimeError("secret internals /var/lib/smartfarm")

    monkeypatch.setattr(edge.automation, "rules", broken)
    body = await problem(await admin.get("/api/rules"), 500)
    assert re.fullmatch(r"[0-9a-f]{12}", body["error_id"])
    assert "secret" not in json.dumps(body)
    assert "Traceback" not in json.dumps(body)


# ---- headers and the page ----
async def test_security_headers_on_api_and_errors(admin: TestClient) -> None:
    for resp in (
        await admin.get("/api/rooms"),
        await admin.get("/api/rooms/nowhere"),
        await admin.get("/health"),
    ):
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert resp.headers["Cache-Control"] == "no-store"


async def test_page_is_served_with_csp_and_no_inline_script(client: TestClient) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    html = await resp.text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I)
    assert scripts, "the page loads app.js"
    for attrs, body in scripts:
        assert 'src="/static/' in attrs
        assert body.strip() == ""
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I), "inline event handler"
    assert not re.search(r"<style\b|\sstyle\s*=", html, flags=re.I), "inline style"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "external asset"

    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        resp = await client.get(f"/static/{name}")
        assert resp.status == 200
        assert kind in resp.content_type
        assert "Content-Security-Policy" in resp.headers
    js = (STATIC / "app.js").read_text()
    assert "innerHTML" not in js
    assert "eval(" not in js
    # Path traversal out of the static folder (encoded so the client does not normalise it).
    for sneaky in ("/static/%2e%2e/api/__init__.py", "/static/..%2fapi%2f__init__.py"):
        resp = await client.get(URL(sneaky, encoded=True))
        assert resp.status in (403, 404)
        assert "create_api_app" not in await resp.text()
    await problem(await client.get("/static/missing.js"), 404)


def test_session_tokens_expire_and_resist_tampering() -> None:
    now = [1_000_000.0]
    signer = SessionSigner(ttl_s=60, clock=lambda: now[0])
    token, expires = signer.issue("admin")
    assert expires == now[0] + 60
    identity = signer.verify(token)
    assert identity is not None and identity.user == "admin"
    head, user, exp, nonce, sig = token.split(".")
    assert signer.verify(".".join([head, user, str(int(exp) + 3600), nonce, sig])) is None
    assert SessionSigner(ttl_s=60, clock=lambda: now[0]).verify(token) is None  # other process
    now[0] += 61
    assert signer.verify(token) is None


def test_throttle_forgets_failures_after_its_window() -> None:
    now = [0.0]
    throttle = LoginThrottle(limit=2, window_s=10, clock=lambda: now[0])
    throttle.failed("10.0.0.9")
    throttle.failed("10.0.0.9")
    with pytest.raises(TooManyAttempts) as caught:
        throttle.check("10.0.0.9")
    assert caught.value.headers["Retry-After"] == "10"
    throttle.check("10.0.0.10")  # another address is not locked out
    now[0] = 10.5
    throttle.check("10.0.0.9")
