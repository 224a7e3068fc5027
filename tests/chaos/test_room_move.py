"""Two real edges in one farm against the real cloud: a room moves from edge A to edge B while A
is cut off with readings buffered and a command waiting in the cloud. Nothing is lost or doubled,
the command reaches B (and never A), A stops automating the room and refuses its device, and the
edges' health shows on the API."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge.broker import broker_address
from edge.config import EdgeSettings, load_config
from edge.credentials import DeviceSecrets
from tests.chaos.conftest import (
    Cloud,
    Registration,
    drained,
    edge_query,
    edge_seq_kinds,
    fast_settings,
    make_site,
    register_edge,
    until,
)
from tests.chaos.proxy import FaultProxy

pytestmark = pytest.mark.postgres

ROOM, SENSOR, HUMIDIFIER = "room-a", "room-a-sensor", "room-a-humidifier"
START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


async def publish(settings: EdgeSettings, farm_id: str, password: str, first: int, n: int) -> None:
    """``n`` readings from the sensor (logged in with its cloud password), one second apart from
    reading number ``first`` on."""
    host, port = broker_address(settings)
    async with aiomqtt.Client(host, port, username=SENSOR, password=password,
                              identifier=f"{SENSOR}-{first}") as client:
        for i in range(first, first + n):
            payload = {
                "device_id": SENSOR,
                "timestamp": (START + timedelta(seconds=i)).isoformat(),
                "data": {"temperature_c": 17.0 + i / 100, "humidity_pct": 88.0},
            }
            await client.publish(f"farm/{farm_id}/room/{ROOM}/telemetry/{SENSOR}",
                                 json.dumps(payload), qos=1)


async def can_log_in(settings: EdgeSettings, password: str) -> bool:
    host, port = broker_address(settings)
    try:
        async with aiomqtt.Client(host, port, username=SENSOR, password=password,
                                  identifier=f"{SENSOR}-probe", timeout=3):
            return True
    except aiomqtt.MqttError:
        return False


def edge_readings(settings: EdgeSettings) -> int:
    return int(edge_query(settings.db_path, "SELECT count(*) FROM readings")[0][0])


async def test_a_room_moves_between_two_real_edges_and_nothing_is_lost(
    cloud: Any, tmp_path: Path, farm_id: str, edge_app: Any
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=120)
    async with FaultProxy([the_cloud.url]) as proxy_a:
        # Edge A: its file lists the room and devices (registered in the cloud too); edge B is
        # set up from the cloud alone.
        config_a = make_site(tmp_path / "a", farm_id)
        reg_a = await the_cloud.provision(load_config(config_a), "edge-a")
        # The sensor logs in to A with the password in A's secrets file (which wins there), to
        # B with the one the cloud issued (B knows only its hash).
        password = reg_a.devices[SENSOR]["mqtt"]["password"]
        local = DeviceSecrets.load(load_config(config_a).device_secrets_path).devices[SENSOR]
        made_b = await the_cloud.api("POST", f"/api/farms/{farm_id}/edges", {"id": "edge-b"})
        config_b = make_site(tmp_path / "b", farm_id, rooms=())
        register_edge(config_a, proxy_a.url, reg_a)
        register_edge(config_b, the_cloud.url, Registration(farm_id, "edge-b", made_b["token"]))
        settings_a, settings_b = fast_settings(config_a), fast_settings(config_b)
        edge_a = (await edge_app(settings_a)).app
        edge_b = (await edge_app(settings_b)).app
        assert edge_a.downlink is not None and edge_b.downlink is not None
        room = await the_cloud.api("GET", f"/api/rooms/{ROOM}")
        assert room["edge_id"] == "edge-a"  # pinned to A when B was registered

        def applied() -> int:
            return min(edge_a.downlink.config_version, edge_b.downlink.config_version)  # type: ignore[union-attr]

        await until(applied, 15, "both edges' config")
        assert ROOM in edge_a.automation.rooms and not edge_b.automation.rooms

        # Readings through A reach the cloud; then A's internet link goes down and it buffers.
        await publish(settings_a, farm_id, local, 0, 20)
        await until(lambda: the_cloud.high_water("edge-a"), 15, "A's first uploads")
        await proxy_a.set_down(True)
        await until(lambda: edge_a.downlink.stats.mode != "stream", 10, "A's stream to drop")  # type: ignore[union-attr]
        before = edge_readings(settings_a)
        await publish(settings_a, farm_id, local, 20, 30)
        await until(lambda: edge_readings(settings_a) >= before + 30, 10, "A to store them")
        status = await edge_a.sync_status()
        assert status["backlog_records"] >= 30, status
        command = await the_cloud.api("POST", f"/api/rooms/{ROOM}/commands",
                                      {"device_id": HUMIDIFIER, "action": "on"})

        # The room moves to B: B takes its config and the waiting command.
        version = edge_b.downlink.config_version
        assert (await the_cloud.api("PUT", f"/api/rooms/{ROOM}/edge", {"edge_id": "edge-b"},
                                    status=200))["edge_id"] == "edge-b"
        await until(lambda: edge_b.downlink.config_version > version, 10, "B's new config")  # type: ignore[union-attr]
        await until(lambda: ROOM in edge_b.automation.rooms, 5, "B to automate the room")
        await until(lambda: edge_query(settings_b.db_path,
                                       "SELECT state FROM cloud_commands WHERE cloud_command_id"
                                       " = ?", (command["id"],)), 10, "the command on B")
        sent = await the_cloud.rows("SELECT edge_id FROM commands WHERE id = %s", (command["id"],))
        assert sent == [{"edge_id": "edge-b"}]
        # The sensor now reports to B, with the same cloud password.
        await until(lambda: can_log_in(settings_b, password), 10, "B to accept the sensor")
        await publish(settings_b, farm_id, password, 50, 10)

        # A comes back: it uploads what it buffered, drops the room and refuses its sensor.
        await proxy_a.set_down(False)
        await until(lambda: edge_a.downlink.config_version >= edge_b.downlink.config_version,  # type: ignore[union-attr]
                    15, "A's new config")
        await until(lambda: ROOM not in edge_a.automation.rooms, 5, "A to drop the room")
        assert not {d.id for d in settings_a.devices} & {SENSOR, HUMIDIFIER}
        for secret in (local, password):
            await until(lambda s=secret: _refused(settings_a, s), 10, "A to refuse the sensor")
        await drained(the_cloud, settings_a.db_path, "edge-a", 20)
        await drained(the_cloud, settings_b.db_path, "edge-b", 20)

        # Every reading either edge took is in the cloud exactly once.
        made: Counter[tuple[str, int, str]] = Counter()
        for settings in (settings_a, settings_b):
            _, rows = edge_seq_kinds(settings.db_path)
            made.update((d, ms, m) for d, ms, m, _ in rows)
        held = Counter(
            (r["device_id"], round(float(r["ms"])), r["metric"])
            for r in await the_cloud.rows(
                "SELECT device_id, (extract(epoch FROM time) * 1000)::numeric AS ms, metric"
                " FROM sensor_data WHERE farm_id = %s", (farm_id,))
        )
        assert sum(1 for k in made if k[2] == "temperature_c") == 60
        assert held == made, (held - made, made - held)
        # A never carried out the command; nothing was quarantined.
        assert edge_query(settings_a.db_path, "SELECT count(*) FROM cloud_commands"
                          " WHERE cloud_command_id = ?", (command["id"],)) == [(0,)]
        assert await the_cloud.rows("SELECT seq FROM edge_quarantine") == []

        # Health on the API: rooms, last seen, backlog and version reported, clock offset.
        await until(lambda: _backlog_reported(the_cloud, farm_id), 10, "both edges' backlog")
        edges = {e["id"]: e for e in (await the_cloud.api(
            "GET", f"/api/farms/{farm_id}/edges"))["items"]}
        assert edges["edge-a"]["rooms"] == [] and edges["edge-b"]["rooms"] == [ROOM]
        for edge in edges.values():
            assert edge["online"] and edge["software_version"], edge
            assert edge["clock_offset_s"] is not None and abs(edge["clock_offset_s"]) < 5, edge


async def _refused(settings: EdgeSettings, password: str) -> bool:
    return not await can_log_in(settings, password)


async def _backlog_reported(the_cloud: Cloud, farm_id: str) -> bool:
    found = await the_cloud.rows("SELECT backlog FROM edges WHERE farm_id = %s", (farm_id,))
    return len(found) == 2 and all(r["backlog"] == 0 for r in found)
