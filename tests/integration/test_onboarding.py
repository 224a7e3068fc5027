"""Onboarding on a real edge (embedded broker, store, local API over HTTP): a device that logs in
with an unknown id and the farm's claim code is refused but listed as pending; nothing it sends
is accepted; an operator adopts it into a room (a password is issued, the broker accounts are
rebuilt) and it can then log in and its telemetry is stored; or dismisses it."""
from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import msgspec
import pytest

import edge.onboarding as onboarding_module
from edge.cli import edge_main
from edge.config import load_config
from edge.onboarding import MAX_PENDING, claim_code_path, normalise_code
from shared.sync import KIND_CODES, PendingDeviceData
from tests.chaos.conftest import Cloud, cloud, edge_app, register_edge, until
from tests.e2e.conftest import fast_settings, make_site, query, wait_for

FIXTURES = (cloud, edge_app)  # the real cloud's and edge's fixtures, found by pytest by name
PROBLEM = "application/problem+json"


class Api:
    def __init__(self, app: Any) -> None:
        api = app.settings.api
        self.auth = aiohttp.BasicAuth(api.admin_user, api.admin_password.get_secret_value())
        self.base = f"http://127.0.0.1:{app.api_port}"

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
        async with aiohttp.ClientSession(auth=self.auth) as session, session.request(
            method, self.base + path, json=body
        ) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None), resp.content_type


async def mqtt_login(port: int, username: str, password: str,
                     publish: tuple[str, bytes] | None = None) -> bool:
    """True when the broker accepted the login (and, if given, the message was published)."""
    try:
        async with aiomqtt.Client("127.0.0.1", port, username=username, password=password,
                                  identifier=f"{username}-{uuid.uuid4().hex[:6]}",
                                  timeout=5) as client:
            if publish is not None:
                await client.publish(publish[0], publish[1], qos=1)
            return True
    except aiomqtt.MqttError:
        return False


def pending_records(db: Path) -> list[PendingDeviceData]:
    rows = query(db, "SELECT data FROM outbox WHERE kind = ? ORDER BY id",
                 (KIND_CODES["pending_device"],))
    return [msgspec.json.decode(r["data"], type=PendingDeviceData) for r in rows]


async def test_a_device_with_the_claim_code_waits_refused_until_adopted(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    app = await running_edge(settings)
    api = Api(app)
    port = app.broker.port
    status, doc, _ = await api.call("GET", "/api/onboarding")
    assert status == 200 and doc["enabled"] and doc["pending"] == [], doc
    code = doc["claim_code"]
    assert len(normalise_code(code)) == 16 and code.count("-") == 3
    # The code as a grower might type it: lower case, no dashes.
    typed = code.replace("-", "").lower()
    new_id = "esp-a1b2c3"
    topic = f"farm/{farm_id}/room/room-a/telemetry/{new_id}"
    reading = json.dumps({"device_id": new_id, "data": {"temperature_c": 18.5}}).encode()

    # Refused — nothing accepted — but listed as pending.
    assert not await mqtt_login(port, new_id, typed, publish=(topic, reading))
    # A wrong code, a known device with the code, the edge's own name: refused, not listed.
    assert not await mqtt_login(port, "esp-ffffff", "WRONG-CODE-0000-0000")
    assert not await mqtt_login(port, "room-a-fan", code)
    assert not await mqtt_login(port, settings.broker.edge_username, code)
    status, doc, _ = await api.call("GET", "/api/onboarding")
    assert [p["device_id"] for p in doc["pending"]] == [new_id], doc
    pending = doc["pending"][0]
    assert pending["state"] == "pending" and pending["address"] == "127.0.0.1"
    assert pending["client_id"].startswith(f"{new_id}-") and pending["attempts"] == 1
    assert query(settings.db_path, "SELECT count(*) AS n FROM series WHERE device_id = ?",
                 (new_id,))[0]["n"] == 0
    # A retry within the touch interval is not another row write.
    assert not await mqtt_login(port, new_id, code)
    # The cloud hears of it through the outbox.
    assert [(r.device_id, r.state) for r in pending_records(settings.db_path)] == [
        (new_id, "pending")]

    # Adoption: bad input names the field; an unknown device is 404.
    for body, field in (({"room_id": "nowhere", "kind": "sensor"}, "room_id"),
                        ({"room_id": "room-a", "kind": "actuator"}, "actuator"),
                        ({"room_id": "room-a", "kind": "sensor", "actuator": "heater"},
                         "actuator"),
                        ({"room_id": "room-a", "kind": "gizmo"}, "kind"),
                        ({"room_id": "room-a"}, "kind")):
        status, problem, ctype = await api.call("POST", f"/api/onboarding/{new_id}/adopt", body)
        assert status == 422 and ctype == PROBLEM, (body, problem)
        assert field in {e["field"] for e in problem["errors"]}, (body, problem)
    status, problem, ctype = await api.call("POST", "/api/onboarding/esp-nobody/adopt",
                                            {"room_id": "room-a", "kind": "sensor"})
    assert status == 404 and ctype == PROBLEM
    status, body, _ = await api.call("POST", f"/api/onboarding/{new_id}/adopt",
                                     {"room_id": "room-a", "kind": "sensor"})
    assert status == 201, body
    assert (body["username"], body["room_id"]) == (new_id, "room-a") and body["password"]
    # In the config (and so synced to the cloud with the edge's devices), with credentials.
    assert load_config(settings.config_path).device(new_id) is not None
    # It can log in with its password about a second later, and its telemetry is stored.
    await wait_for(lambda: app.settings.device(new_id) is not None, 5, "the device reloaded")
    ok = False
    for _ in range(20):
        ok = await mqtt_login(port, new_id, body["password"], publish=(topic, reading))
        if ok:
            break
        await asyncio.sleep(0.25)
    assert ok, "the adopted device cannot log in"
    await wait_for(lambda: query(settings.db_path, "SELECT 1 FROM series WHERE device_id = ?",
                                 (new_id,)), 5, "its reading stored")
    # The claim code no longer gets it anywhere; it is not pending any more.
    assert not await mqtt_login(port, new_id, code)
    status, doc, _ = await api.call("GET", "/api/onboarding")
    assert doc["pending"] == []
    assert [(r.state, r.room_id) for r in pending_records(settings.db_path)][-1] == (
        "adopted", "room-a")
    # Adopting it again: it is not waiting any more.
    status, _, _ = await api.call("POST", f"/api/onboarding/{new_id}/adopt",
                                  {"room_id": "room-a", "kind": "sensor"})
    assert status == 404


async def test_dismissed_devices_and_a_rotated_code(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    app = await running_edge(settings)
    api = Api(app)
    port = app.broker.port
    _, doc, _ = await api.call("GET", "/api/onboarding")
    code = doc["claim_code"]
    assert not await mqtt_login(port, "esp-000001", code)
    status, _, _ = await api.call("POST", "/api/onboarding/esp-000001/dismiss", {})
    assert status == 204
    status, _, ctype = await api.call("POST", "/api/onboarding/esp-000001/dismiss", {})
    assert status == 404 and ctype == PROBLEM
    assert not await mqtt_login(port, "esp-000001", code)  # knocks again: stays dismissed
    _, doc, _ = await api.call("GET", "/api/onboarding")
    assert doc["pending"] == []
    # A dismissed device can still be adopted (the operator changed their mind).
    status, body, _ = await api.call("POST", "/api/onboarding/esp-000001/adopt",
                                     {"room_id": "room-a", "kind": "actuator",
                                      "actuator": "heater"})
    assert status == 201 and body["actuator"] == "heater", body
    assert load_config(settings.config_path).device("esp-000001").actuator == "heater"

    # A new code: the old one no longer lists anyone.
    status, rotated, _ = await api.call("POST", "/api/onboarding/claim-code", {})
    assert status == 200 and normalise_code(rotated["claim_code"]) != normalise_code(code)
    assert not await mqtt_login(port, "esp-000002", code)
    assert not await mqtt_login(port, "esp-000003", rotated["claim_code"])
    _, doc, _ = await api.call("GET", "/api/onboarding")
    assert [p["device_id"] for p in doc["pending"]] == ["esp-000003"]
    # Bad bodies and ids: problems naming the field, never a 500.
    status, problem, ctype = await api.call("POST", "/api/onboarding/claim-code", {"x": 1})
    assert status == 422 and ctype == PROBLEM and problem["errors"][0]["field"] == "x"
    status, _, ctype = await api.call("POST", "/api/onboarding/bad%20id!/dismiss", {})
    assert status == 404 and ctype == PROBLEM
    # Without the admin login: nothing, not even the code.
    async with aiohttp.ClientSession() as session, session.get(
            f"{api.base}/api/onboarding") as resp:
        assert resp.status == 401


async def test_the_pending_list_is_capped(
    tmp_path: Path, farm_id: str, running_edge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone with the claim code cannot grow the list without bound: past the cap, further
    unknown ids are refused without a record (and counted)."""
    monkeypatch.setattr(onboarding_module, "MAX_PENDING", 2)
    app = await running_edge(fast_settings(make_site(tmp_path / "site", farm_id)))
    code = app.onboarding.claim_code()
    for n in range(4):
        assert not await mqtt_login(app.broker.port, f"esp-flood{n}", code)
    _, doc, _ = await Api(app).call("GET", "/api/onboarding")
    assert sorted(p["device_id"] for p in doc["pending"]) == ["esp-flood0", "esp-flood1"]
    assert doc["refused_full"] == 2
    assert MAX_PENDING == 200


@pytest.mark.postgres
async def test_a_pending_device_shows_in_the_cloud_and_is_adopted_there(
    cloud: Any, edge_app: Any, tmp_path: Path, farm_id: str
) -> None:
    """The edge reports the pending device to the cloud; an owner adopts it into a room there;
    the config push brings it to the edge, whose broker then lets it log in with the password
    the cloud showed, and its telemetry is stored. Dismissed devices leave the cloud's list."""
    the_cloud: Cloud = await cloud()
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), "pi-1")
    run = await edge_app(register_edge(config, the_cloud.url, reg))
    app = run.app
    port = app.broker.port
    code = app.onboarding.claim_code()
    assert not await mqtt_login(port, "esp-c0ffee", code)
    assert not await mqtt_login(port, "esp-decade", code)

    async def waiting() -> list[str]:
        doc = await the_cloud.api("GET", f"/api/farms/{farm_id}/pending-devices")
        return [p["device_id"] for p in doc["items"]]

    await until(lambda: waiting(), 15, "the pending devices in the cloud")
    await until(lambda: _equal(waiting(), ["esp-c0ffee", "esp-decade"]), 15, "both listed")
    doc = await the_cloud.api("GET", f"/api/farms/{farm_id}/pending-devices")
    first = next(p for p in doc["items"] if p["device_id"] == "esp-c0ffee")
    assert (first["edge_id"], first["state"], first["address"]) == ("pi-1", "pending", "127.0.0.1")

    # Bad input names the field; an id nobody reported is 404.
    problem = await the_cloud.api("POST", "/api/rooms/room-a/pending-devices/esp-c0ffee/adopt",
                                  {"kind": "actuator"}, status=422)
    assert problem["errors"], problem
    await the_cloud.api("POST", "/api/rooms/room-a/pending-devices/esp-nobody/adopt",
                        {"kind": "sensor"}, status=404)
    made = await the_cloud.api("POST", "/api/rooms/room-a/pending-devices/esp-c0ffee/adopt",
                               {"kind": "sensor", "name": "shelf 2 probe"})
    assert (made["id"], made["room_id"], made["mqtt"]["username"]) == (
        "esp-c0ffee", "room-a", "esp-c0ffee")
    password = made["mqtt"]["password"]
    await the_cloud.api("POST", "/api/rooms/room-a/pending-devices/esp-c0ffee/adopt",
                        {"kind": "sensor"}, status=404)  # adopted: no longer waiting
    # The config push reaches the edge: it logs in, its reading is stored.
    topic = f"farm/{farm_id}/room/room-a/telemetry/esp-c0ffee"
    reading = json.dumps({"device_id": "esp-c0ffee", "data": {"temperature_c": 18.0}}).encode()

    async def logs_in() -> bool:
        return await mqtt_login(port, "esp-c0ffee", password, publish=(topic, reading))

    await until(logs_in, 20, "the adopted device logging in at the edge", every=0.3)
    await until(lambda: query(app.settings.db_path, "SELECT 1 FROM series WHERE device_id = ?",
                              ("esp-c0ffee",)), 10, "its reading stored")
    # The edge marks it adopted too (and says so to the cloud).
    await until(lambda: _no_pending(app, "esp-c0ffee"), 10, "the edge's entry adopted")
    # Dismissed in the cloud: gone from its list.
    await the_cloud.api("DELETE", f"/api/farms/{farm_id}/pending-devices/esp-decade")
    await the_cloud.api("DELETE", f"/api/farms/{farm_id}/pending-devices/esp-decade",
                        status=404)
    assert await waiting() == []
    # The dismissal goes down to the edge with the farm's config: dismissed there too (and the
    # edge's report of that reaches the cloud).
    await until(lambda: _no_pending(app, "esp-decade"), 15, "the edge's entry dismissed")
    assert [r["state"] for r in query(app.settings.db_path,
            "SELECT state FROM pending_devices WHERE device_id = ?", ("esp-decade",))] == [
        "dismissed"]

    async def reported() -> Any:
        return await the_cloud.rows(
            "SELECT 1 FROM pending_devices WHERE farm_id = %s AND device_id = %s"
            " AND state = 'dismissed'", (farm_id, "esp-decade"))

    await until(reported, 15, "the edge's dismissal reported to the cloud")
    rows = await the_cloud.rows(
        "SELECT state, room_id FROM pending_devices WHERE farm_id = %s AND device_id = %s",
        (farm_id, "esp-c0ffee"))
    assert rows == [{"state": "adopted", "room_id": "room-a"}]


async def _equal(got: Any, want: list[str]) -> bool:
    return sorted(await got) == want


async def _no_pending(app: Any, device_id: str) -> bool:
    return device_id not in [p.device_id for p in await app.onboarding.listing()]


def test_the_claim_code_command_prints_and_rotates_the_code(
    tmp_path: Path, farm_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_site(tmp_path / "site", farm_id)
    assert edge_main(["claim-code", "--config", str(config)]) == 0
    first = capsys.readouterr().out
    code = first.split("farm claim code: ")[1].split()[0]
    settings = load_config(config)
    path = claim_code_path(settings)
    assert path.read_text().strip() == code and path.stat().st_mode & 0o777 == 0o600
    assert edge_main(["claim-code", "--config", str(config)]) == 0
    assert code in capsys.readouterr().out  # the same code again
    assert edge_main(["claim-code", "--rotate", "--config", str(config)]) == 0
    rotated = capsys.readouterr().out.split("farm claim code: ")[1].split()[0]
    assert rotated != code and path.read_text().strip() == rotated


@pytest.mark.postgres
async def test_a_device_adopted_on_the_edge_page_becomes_a_device_in_the_cloud(
    cloud: Any, edge_app: Any, tmp_path: Path, farm_id: str
) -> None:
    """Adopted on the edge's own page (the cloud may be out of reach then): the edge's report
    makes it a registered device of that room in the cloud, so its readings are kept there; the
    cloud's config push does not take the edge's password for it away."""
    the_cloud: Cloud = await cloud()
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), "pi-1")
    run = await edge_app(register_edge(config, the_cloud.url, reg))
    app = run.app
    port = app.broker.port
    assert not await mqtt_login(port, "esp-beef01", app.onboarding.claim_code())
    status, made, _ = await Api(app).call("POST", "/api/onboarding/esp-beef01/adopt",
                                          {"room_id": "room-a", "kind": "actuator",
                                           "actuator": "light"})
    assert status == 201, made

    async def in_cloud() -> Any:
        doc = await the_cloud.api("GET", "/api/rooms/room-a/devices?limit=100")
        return [d for d in doc["items"] if d["id"] == "esp-beef01"]

    found = await until(in_cloud, 15, "the device registered in the cloud")
    assert (found[0]["kind"], found[0]["actuator"]) == ("actuator", "light")
    assert await the_cloud.rows(
        "SELECT state, room_id FROM pending_devices WHERE farm_id = %s", (farm_id,)) == [
        {"state": "adopted", "room_id": "room-a"}]
    # The cloud's push of its (unusable) hash reaches the edge; the edge's password still works.
    version = await the_cloud.rows("SELECT version FROM farm_config WHERE farm_id = %s",
                                   (farm_id,))

    async def applied() -> bool:
        rows = await the_cloud.rows("SELECT config_version FROM edges WHERE id = %s",
                                    ("pi-1",))
        return bool(rows) and rows[0]["config_version"] >= version[0]["version"]

    await until(applied, 15, "the edge applying the cloud's config")
    topic = f"farm/{farm_id}/room/room-a/status/esp-beef01"
    status_msg = json.dumps({"device_id": "esp-beef01", "online": True,
                             "state": {"on": False}}).encode()
    assert await mqtt_login(port, "esp-beef01", made["password"], publish=(topic, status_msg))

    async def seen_in_cloud() -> bool:
        doc = await the_cloud.api("GET", "/api/devices/esp-beef01")
        return doc["last_seen"] is not None

    await until(seen_in_cloud, 15, "the device's status reaching the cloud")
