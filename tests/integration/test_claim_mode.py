"""Claim mode end to end, on a real edge (embedded broker, store, local API over HTTP) and, with
the cloud, on real PostgreSQL: a simulated node flashed with nothing but the farm's claim code
asks to join, is adopted, receives its credentials over MQTT on its claim topic (no re-flash),
keeps them in its flash, logs in with them and its telemetry is stored. Only the node that
knocked first (its claim key) gets them."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from edge.broker_acl import CLAIM_USER_PREFIX
from edge.config import load_config
from firmware_sim.claim import ClaimError, ClaimNode, Flash, parse_credentials
from firmware_sim.provision import build_node, claimed_provisioning
from shared.esphome import Node, node_yaml
from shared.topics import claim_topic
from tests.chaos.conftest import Cloud, cloud, edge_app, register_edge, until
from tests.e2e.conftest import fast_settings, make_site, query, wait_for
from tests.integration.test_onboarding import Api, mqtt_login

FIXTURES = (cloud, edge_app)
SIM_NODE = ("import sys; from firmware_sim.provision import node_main;"
            " sys.exit(node_main(sys.argv[1:]))")  # `smartfarm sim node`


async def _run_claimed(node: ClaimNode, port: int) -> tuple[Any, asyncio.Task[None]]:
    """The node once it has its credentials: a one-node simulated farm, running."""
    creds = await node.credentials()
    farm = build_node(claimed_provisioning(node.farm_id, creds, "127.0.0.1", port),
                      telemetry_interval_s=0.5, speed=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(farm.run(stop))
    task.add_done_callback(lambda _t: stop.set())
    return farm, task


async def test_a_claim_mode_node_is_adopted_and_gets_its_credentials_without_reflashing(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    app = await running_edge(settings)
    api = Api(app)
    port = app.broker.port
    code = app.onboarding.claim_code()
    flash = Flash(tmp_path / "node-flash.json")
    node = ClaimNode(farm_id=farm_id, device_id="esp-c1a1f0", claim_code=code, flash=flash,
                     port=port, retry_s=0.2)
    claiming = asyncio.create_task(node.credentials())
    try:
        async def listed() -> bool:
            _, doc, _ = await api.call("GET", "/api/onboarding")
            return [p["device_id"] for p in doc["pending"]] == ["esp-c1a1f0"]

        await until(listed, 10, "the claim-mode node listed as pending")
        assert node.sessions == 0 and not claiming.done()  # refused while it waits
        key = flash.claim_key()
        assert len(key) == 32 and flash.credentials() is None

        # Someone else with the claim code, knocking as the same id with another key: refused,
        # not recorded, counted.
        stranger = f"{code}:{'f' * 32}"
        attempts = query(settings.db_path, "SELECT attempts FROM pending_devices"
                         " WHERE device_id = ?", ("esp-c1a1f0",))[0]["attempts"]
        assert not await mqtt_login(port, "esp-c1a1f0", stranger)
        assert app.onboarding.conflicts >= 1
        assert query(settings.db_path, "SELECT attempts FROM pending_devices WHERE device_id = ?",
                     ("esp-c1a1f0",))[0]["attempts"] <= attempts + 1  # the node's own retries

        status, made, _ = await api.call("POST", "/api/onboarding/esp-c1a1f0/adopt",
                                         {"room_id": "room-a", "kind": "sensor"})
        assert status == 201, made
        creds = await asyncio.wait_for(claiming, 20)
    finally:
        claiming.cancel()
    # What it took is what the adoption issued, and it is in its flash.
    assert (creds.room_id, creds.kind, creds.actuator) == ("room-a", "sensor", None)
    assert creds.password == made["password"]
    assert flash.credentials() == creds
    assert node.sessions >= 1 and app.onboarding.delivered >= 1
    # After adoption the stranger's key still gets no session (and so no credentials).
    assert not await mqtt_login(port, "esp-c1a1f0", stranger)

    # A reboot: the node starts from its flash and runs as an ordinary node; its readings are
    # accepted and stored.
    again = ClaimNode(farm_id=farm_id, device_id="esp-c1a1f0", claim_code=code, flash=flash,
                      port=port)
    farm, running = await _run_claimed(again, port)
    try:
        assert again.attempts == 0  # no claim login at all: the credentials were in flash
        await wait_for(lambda: query(settings.db_path,
                                     "SELECT 1 FROM series WHERE device_id = ? AND room_id = ?",
                                     ("esp-c1a1f0", "room-a")), 15, "its telemetry stored")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert farm.nodes[0].connects >= 1


async def test_a_claim_session_may_only_read_its_own_claim_topic(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    """The claim session an adopted node gets publishes nothing and reads only its own claim
    topic; a bare claim code (no key) never gets one."""
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    app = await running_edge(settings)
    port = app.broker.port
    code = app.onboarding.claim_code()
    key = uuid.uuid4().hex
    assert not await mqtt_login(port, "esp-acl001", f"{code}:{key}")
    status, _made, _ = await Api(app).call("POST", "/api/onboarding/esp-acl001/adopt",
                                           {"room_id": "room-a", "kind": "sensor"})
    assert status == 201
    await wait_for(lambda: app.settings.device("esp-acl001") is not None, 5, "reloaded")
    assert not await mqtt_login(port, "esp-acl001", code)  # no key: no session
    other = claim_topic(farm_id, "room-a-fan")
    own = claim_topic(farm_id, "esp-acl001")
    async with aiomqtt.Client("127.0.0.1", port, username="esp-acl001",
                              password=f"{code}:{key}", identifier="esp-acl001",
                              timeout=5) as client:
        granted = await client.subscribe(other, qos=1)
        assert [getattr(g, "value", g) for g in granted] == [0x80], granted
        granted = await client.subscribe(f"farm/{farm_id}/#", qos=1)
        assert [getattr(g, "value", g) for g in granted] == [0x80], granted
        granted = await client.subscribe(own, qos=1)
        assert [getattr(g, "value", g) for g in granted] == [1], granted
        # What it publishes goes nowhere: refused by the ACL, quarantined, not stored.
        await client.publish(f"farm/{farm_id}/room/room-a/telemetry/esp-acl001",
                             b'{"device_id":"esp-acl001","data":{"temperature_c":19}}', qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                creds = parse_credentials("esp-acl001", bytes(message.payload))  # type: ignore[arg-type]
                break
    assert creds.room_id == "room-a" and creds.password
    assert not query(settings.db_path, "SELECT 1 FROM series WHERE device_id = ?",
                     ("esp-acl001",))
    # The claim account is nobody's device account.
    assert not await mqtt_login(port, f"{CLAIM_USER_PREFIX}esp-acl001", "anything")
    with pytest.raises(ClaimError):
        parse_credentials("esp-other", bytes(message.payload))  # type: ignore[arg-type]


@pytest.mark.postgres
async def test_a_claim_mode_node_adopted_in_the_cloud_gets_credentials_from_the_edge(
    cloud: Any, edge_app: Any, tmp_path: Path, farm_id: str
) -> None:
    """Adopted in the cloud (by an operator's call): the config push brings the device to the
    edge, which makes its own password for it (the cloud keeps only a hash) and hands it to the
    node's claim session; the node then logs in with it and its readings reach the cloud."""
    the_cloud: Cloud = await cloud()
    rooms = (("room-a", "Room A", "oyster", "fruiting"), ("room-b", "Room B", "shiitake",
                                                          "fruiting"))
    config = make_site(tmp_path / "site", farm_id, rooms)
    reg = await the_cloud.provision(load_config(config), "pi-1")
    run = await edge_app(register_edge(config, the_cloud.url, reg))
    app = run.app
    port = app.broker.port
    flash = Flash(tmp_path / "flash.json")
    node = ClaimNode(farm_id=farm_id, device_id="esp-c10d01", flash=flash, port=port,
                     claim_code=app.onboarding.claim_code(), retry_s=0.3, room_hint="room-a")
    claiming = asyncio.create_task(node.credentials())
    try:
        async def waiting() -> list[str]:
            doc = await the_cloud.api("GET", f"/api/farms/{farm_id}/pending-devices")
            return [p["device_id"] for p in doc["items"]]

        await until(lambda: _has(waiting(), "esp-c10d01"), 20, "the node pending in the cloud")
        listed = await the_cloud.api("GET", f"/api/farms/{farm_id}/pending-devices")
        assert [(p["client_id"], p["claim_mode"]) for p in listed["items"]] == [
            ("esp-c10d01@room-a", True)]
        # Made for room-a: adopting it into room-b is refused, naming the field.
        problem = await the_cloud.api(
            "POST", "/api/rooms/room-b/pending-devices/esp-c10d01/adopt",
            {"kind": "actuator", "actuator": "humidifier"}, status=422)
        assert [e["field"] for e in problem["errors"]] == ["room_id"], problem
        await the_cloud.api("POST", "/api/rooms/room-a/pending-devices/esp-c10d01/adopt",
                            {"kind": "actuator", "actuator": "humidifier"})
        creds = await asyncio.wait_for(claiming, 40)
    finally:
        claiming.cancel()
    assert (creds.room_id, creds.kind, creds.actuator) == ("room-a", "actuator", "humidifier")
    _farm, running = await _run_claimed(node, port)
    try:
        async def status_in_cloud() -> Any:
            return await the_cloud.rows(
                "SELECT online FROM device_status WHERE device_id = %s", ("esp-c10d01",))

        await until(status_in_cloud, 30, "the node's status in the cloud")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def _has(got: Any, device_id: str) -> bool:
    return device_id in await got


async def test_the_edge_page_downloads_a_claim_mode_node_file(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    """``GET /api/onboarding/claim-file.yaml``: admin only; the file the generator makes with
    this farm's claim code; bad input is a 422 naming the field; a taken id is refused."""
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    app = await running_edge(settings)
    api = Api(app)
    url = "/api/onboarding/claim-file.yaml"
    query = "?device_id=esp-3c71bf&room_id=room-a&kind=actuator&actuator=heater&host=10.0.0.9"
    async with aiohttp.ClientSession() as anonymous, anonymous.get(api.base + url + query) as r:
        assert r.status == 401
    async with aiohttp.ClientSession(auth=api.auth) as session:
        async with session.get(api.base + url + query) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Cache-Control"] == "no-store"
            assert resp.headers["Content-Disposition"] == 'attachment; filename="esp-3c71bf.yaml"'
            text = await resp.text()
        assert text == node_yaml(Node(
            farm_id=farm_id, room_id="room-a", device_id="esp-3c71bf", kind="actuator",
            actuator="heater", broker_host="10.0.0.9", broker_port=settings.broker.port,
            claim_code=app.onboarding.claim_code()))
        for bad, field in (("device_id=-x&room_id=room-a&kind=sensor", "device_id"),
                           ("device_id=esp-1&room_id=nowhere&kind=sensor", "room_id"),
                           ("device_id=esp-1&room_id=room-a&kind=actuator", "actuator"),
                           ("device_id=esp-1&room_id=room-a&kind=sensor&actuator=heater",
                            "actuator"),
                           ("device_id=esp-1&room_id=room-a&kind=gizmo", "kind"),
                           ("device_id=room-a-fan&room_id=room-a&kind=sensor", "device_id")):
            async with session.get(f"{api.base}{url}?{bad}") as resp:
                assert resp.status == 422, (bad, await resp.text())
                assert resp.content_type == "application/problem+json"
                problem = await resp.json()
                assert field in {e["field"] for e in problem["errors"]}, (bad, problem)


async def test_a_node_made_for_one_room_is_adopted_into_that_room_only(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    """A claim-mode file names the room it was made for (client id ``<id>@<room>``): adopting
    it elsewhere is refused naming room_id, since its firmware would not take the credentials."""
    rooms = (("room-a", "Room A", "oyster", "fruiting"), ("room-b", "Room B", "shiitake",
                                                          "fruiting"))
    settings = fast_settings(make_site(tmp_path / "site", farm_id, rooms))
    app = await running_edge(settings)
    api = Api(app)
    code = app.onboarding.claim_code()
    with pytest.raises(aiomqtt.MqttError):  # refused until adopted
        async with aiomqtt.Client("127.0.0.1", app.broker.port, username="esp-r00m01",
                                  password=f"{code}:{uuid.uuid4().hex}",
                                  identifier="esp-r00m01@room-b", timeout=5):
            pass
    status, problem, _ = await api.call("POST", "/api/onboarding/esp-r00m01/adopt",
                                        {"room_id": "room-a", "kind": "sensor"})
    assert status == 422 and [e["field"] for e in problem["errors"]] == ["room_id"], problem
    assert "room-b" in problem["errors"][0]["message"]
    status, made, _ = await api.call("POST", "/api/onboarding/esp-r00m01/adopt",
                                     {"room_id": "room-b", "kind": "sensor"})
    assert status == 201 and made["room_id"] == "room-b", made


async def test_a_dismissed_entry_takes_the_next_claim_key(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    """First key wins while the entry waits; dismissing it disowns the key, so the node that
    knocks next (say, the real one, re-flashed) binds its own and can get its credentials."""
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    app = await running_edge(settings)
    api = Api(app)
    port = app.broker.port
    code = app.onboarding.claim_code()
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    assert not await mqtt_login(port, "esp-5ec0d1", f"{code}:{first}")
    assert not await mqtt_login(port, "esp-5ec0d1", f"{code}:{second}")
    assert app.onboarding.conflicts == 1
    status, _, _ = await api.call("POST", "/api/onboarding/esp-5ec0d1/dismiss", {})
    assert status == 204
    assert not await mqtt_login(port, "esp-5ec0d1", f"{code}:{second}")
    status, _, _ = await api.call("POST", "/api/onboarding/esp-5ec0d1/adopt",
                                  {"room_id": "room-a", "kind": "sensor"})
    assert status == 201
    await wait_for(lambda: app.settings.device("esp-5ec0d1") is not None, 5, "reloaded")
    assert not await mqtt_login(port, "esp-5ec0d1", f"{code}:{first}")  # the old key: nothing
    assert await mqtt_login(port, "esp-5ec0d1", f"{code}:{second}")  # a claim session


async def test_the_simulators_claim_mode_from_its_command_line(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    """``smartfarm sim node --claim``: a separate process knocks, is adopted, takes its
    credentials, keeps them in its flash file and sends readings the edge stores."""
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    app = await running_edge(settings)
    flash = tmp_path / "flash.json"
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        SIM_NODE,
        "--claim", app.onboarding.claim_code(), "--device-id", "esp-c11c11", "--farm-id", farm_id,
        "--host", "127.0.0.1", "--port", str(app.broker.port), "--flash", str(flash),
        "--interval", "1", cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        api = Api(app)

        async def listed() -> bool:
            _, doc, _ = await api.call("GET", "/api/onboarding")
            return any(p["device_id"] == "esp-c11c11" and p["claim_mode"] for p in doc["pending"])

        await until(listed, 20, "the node listed")
        status, made, _ = await api.call("POST", "/api/onboarding/esp-c11c11/adopt",
                                         {"room_id": "room-a", "kind": "sensor"})
        assert status == 201, made
        await wait_for(lambda: query(settings.db_path, "SELECT 1 FROM series WHERE device_id = ?",
                                     ("esp-c11c11",)), 30, "its readings stored")
        stored = json.loads(flash.read_text())
        assert stored["credentials"]["password"] == made["password"]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        SIM_NODE,
        "--claim", "CODE", "--device-id", "esp-1", cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)}, stderr=asyncio.subprocess.PIPE)
    _, err = await bad.communicate()
    assert bad.returncode == 2 and b"--claim needs" in err
