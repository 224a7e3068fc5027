"""The edge's /metrics and /health on a real EdgeApp: embedded amqtt, devices logged in with their
own credentials, SQLite store, the local API over HTTP."""
from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import aiomqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

import edge.metrics as edge_metrics
from edge.app import EdgeApp
from edge.config import EdgeSettings
from edge.credentials import DeviceSecrets
from edge.metrics import scrape_allowed
from shared.models import utcnow
from shared.topics import build_topic
from tests.conftest import Edges
from tests.e2e.conftest import fast_settings, make_site, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
StartEdge = Callable[[EdgeSettings], Awaitable[EdgeApp]]


@pytest.fixture
def start_edge(edges: Edges) -> StartEdge:
    return edges.start


def site(tmp_path: Path, farm_id: str) -> EdgeSettings:
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    settings.automation.command_timeout_s = 5.0
    return settings


@contextlib.asynccontextmanager
async def device(settings: EdgeSettings, app: EdgeApp, device_id: str) -> AsyncIterator[
        aiomqtt.Client]:
    password = DeviceSecrets.load(settings.device_secrets_path).devices[device_id]
    host, port = app.mqtt_address()
    async with aiomqtt.Client(host, port, username=device_id, password=password,
                              identifier=device_id) as client:
        yield client


async def acking(client: aiomqtt.Client, settings: EdgeSettings, device_id: str) -> None:
    """An actuator that acks every command it is sent."""
    room = settings.device(device_id).room  # type: ignore[union-attr]
    await client.subscribe(build_topic(settings.farm_id, room, "command", device_id), qos=1)
    async for message in client.messages:
        command = json.loads(bytes(message.payload))  # type: ignore[arg-type]
        ack = {"command_id": command["command_id"], "status": "ok"}
        await client.publish(build_topic(settings.farm_id, room, "ack", device_id),
                             json.dumps(ack).encode(), qos=1)


async def scrape(app: EdgeApp, headers: dict[str, str] | None = None) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{app.api_port}/metrics", headers=headers
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def reading(device_id: str, **data: float) -> bytes:
    return json.dumps({"device_id": device_id, "timestamp": utcnow().isoformat(),
                       "data": data}).encode()


async def test_metrics_follow_ingest_quarantine_commands_and_broker(
    tmp_path: Path, farm_id: str, start_edge: StartEdge
) -> None:
    settings = site(tmp_path, farm_id)
    app = await start_edge(settings)
    before = await scrape(app)
    assert value(before, "smartfarm_edge_info", farm_id=farm_id, broker_mode="embedded") == 1
    assert value(before, "smartfarm_edge_broker_connected") == 1
    telemetry = build_topic(farm_id, "room-a", "telemetry", "room-a-sensor")
    heater = "room-a-heater"
    async with device(settings, app, "room-a-sensor") as sensor, \
            device(settings, app, heater) as actuator:
        acker = asyncio.create_task(acking(actuator, settings, heater))
        for i in range(5):
            await sensor.publish(telemetry, reading("room-a-sensor", temperature_c=18 + i,
                                                    humidity_pct=88), qos=1)
        await sensor.publish(telemetry, b"{not json", qos=1)
        await sensor.publish(telemetry, reading("room-a-sensor", humidity_pct=250), qos=1)
        await sensor.publish(telemetry, reading("someone-else", humidity_pct=80), qos=1)  # not me
        await wait_for(lambda: app.ingest.stats.readings >= 5
                       and app.ingest.stats.quarantined >= 3, 10, "readings and quarantine")
        # A manual command through the local API, acked by the device.
        auth = aiohttp.BasicAuth("admin", settings.api.admin_password.get_secret_value())  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{app.api_port}/api/commands", auth=auth,
            json={"device_id": heater, "action": "on", "hold_minutes": 1},
        ) as resp:
            assert resp.status == 202, await resp.text()
        await wait_for(lambda: app.commands.stats.acked >= 1, 10, "the heater's ack")
        await wait_for(lambda: app.db.stats.queue_depth == 0, 10, "the store to commit")
        after = await scrape(app)
        acker.cancel()
        assert value(after, "smartfarm_edge_broker_clients") == 2  # the edge itself not counted

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("smartfarm_edge_readings_total") == 5
    assert moved("smartfarm_edge_messages_received_total") >= 8 + 1  # + the ack
    assert moved("smartfarm_edge_acks_total") >= 1
    by_reason = {labels: v for (name, labels), v in after.items()
                 if name == "smartfarm_edge_quarantined_total"}
    assert sum(by_reason.values()) == 3
    assert value(after, "smartfarm_edge_quarantined_total", reason="payload") == 3
    assert value(after, "smartfarm_edge_quarantine_rows") == 3
    assert moved("smartfarm_edge_commands_total", state="sent") >= 1
    assert moved("smartfarm_edge_commands_total", state="acked") >= 1
    assert moved("smartfarm_edge_command_latency_seconds_count") >= 1
    assert value(after, "smartfarm_edge_command_latency_seconds_sum") > 0
    assert value(after, "smartfarm_edge_command_latency_seconds_bucket", le="+Inf") >= 1
    assert moved("smartfarm_edge_store_transactions_total") > 0
    assert moved("smartfarm_edge_store_writes_total") >= 8
    assert moved("smartfarm_edge_automation_evaluations_total") > 0
    assert value(after, "smartfarm_edge_store_open") == 1
    for name in ("smartfarm_edge_alerts_open", "smartfarm_edge_outbox_backlog_records",
                 "smartfarm_edge_outbox_oldest_age_seconds", "smartfarm_edge_store_queue_depth",
                 "smartfarm_edge_sync_enabled", "smartfarm_edge_commands_pending"):
        assert (name, ()) in after, name


async def test_health_reports_broker_store_and_uplink(
    tmp_path: Path, farm_id: str, start_edge: StartEdge, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await start_edge(site(tmp_path, farm_id))
    url = f"http://127.0.0.1:{app.api_port}/health"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        assert body["status"] == "ok"
        assert body["broker"]["connected"] is True
        assert body["broker"]["mode"] == "embedded"
        assert body["broker"]["embedded_running"] is True
        assert body["store"]["open"] is True
        assert body["uplink"] == {"enabled": False}
        assert body["problems"] == []
        # The writer stops committing (what a dying SD card looks like): another connection
        # holds the write lock, writes queue up behind it, and /health turns 503 once the
        # stall outlasts STORE_STALL_S (shortened here).
        monkeypatch.setattr(edge_metrics, "STORE_STALL_S", 0.5)
        lock = sqlite3.connect(app.settings.db_path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            first = asyncio.ensure_future(app.db.write(_noop))
            await asyncio.sleep(0.2)  # the writer has taken it and waits for the lock
            queued = [asyncio.ensure_future(app.db.write(_noop)) for _ in range(2)]
            async with http.get(url) as resp:
                await resp.read()
            await asyncio.sleep(1.0)
            async with http.get(url) as resp:
                body = await resp.json()
                assert resp.status == 503, body
            assert body["status"] == "unhealthy"
            assert "store" in body["problems"]
            assert body["store"]["queue_depth"] >= 1
        finally:
            lock.rollback()
            lock.close()
        await asyncio.gather(first, *queued, return_exceptions=True)
        async with http.get(url) as resp:
            assert resp.status == 200, await resp.text()


def _noop(conn: object) -> None:
    """A write that changes nothing."""


async def test_metrics_token(tmp_path: Path, farm_id: str, start_edge: StartEdge) -> None:
    settings = site(tmp_path, farm_id)
    settings.api.metrics_token = SecretStr("s3cret-scrape")
    app = await start_edge(settings)
    url = f"http://127.0.0.1:{app.api_port}/metrics"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 401
                assert resp.content_type == "application/problem+json"
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    samples = await scrape(app, {"Authorization": "Bearer s3cret-scrape"})
    assert ("smartfarm_edge_readings_total", ()) in samples


def test_scrape_policy() -> None:
    # No token: loopback only (IPv4, IPv6 and IPv4-mapped), nothing else, whatever the header.
    for remote in ("127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"):
        assert scrape_allowed(remote, "", None)
    for remote in ("192.168.1.20", "10.0.0.1", "::ffff:10.0.0.1", "fe80::1", None, "/tmp/sock"):
        assert not scrape_allowed(remote, "Bearer anything", None)
    # A token: required from everyone, loopback included.
    assert scrape_allowed("192.168.1.20", "Bearer tok", "tok")
    assert scrape_allowed("192.168.1.20", "bearer tok ", "tok")
    assert not scrape_allowed("127.0.0.1", "", "tok")
    assert not scrape_allowed("127.0.0.1", "Bearer tok2", "tok")
