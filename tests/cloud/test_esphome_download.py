"""The cloud's device page downloads a device's ESPHome node file: the full file of
``shared.esphome`` with the farm's device network, the password left to secrets.yaml (the cloud
keeps only its hash); registration shows the same file once with the password in it."""

from __future__ import annotations

from typing import Any

import pytest

from shared.esphome import Node, node_yaml
from tests.cloud import world as w

pytestmark = pytest.mark.postgres


async def test_a_devices_node_file_downloads_with_the_farms_device_network(
    world_client: Any, auth: Any
) -> None:
    owner, viewer = auth("owner"), auth("viewer")
    made = await world_client.post(
        f"/api/rooms/{w.ROOM_A}/devices",
        json={"id": "esp-fan", "kind": "actuator", "actuator": "exhaust_fan"}, headers=owner)
    assert made.status == 201
    shown = (await made.json())["mqtt"]
    # Registration: the node file with this password, nothing else to add but Wi-Fi.
    assert shown["esphome_yaml"] == node_yaml(Node(
        farm_id=w.FARM, room_id=w.ROOM_A, device_id="esp-fan", kind="actuator",
        actuator="exhaust_fan", password=shown["password"], broker_port=1884))

    url = "/api/devices/esp-fan/esphome.yaml"
    resp = await world_client.get(url, headers=viewer)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/plain" and resp.charset == "utf-8"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="esp-fan.yaml"'
    text = await resp.text()
    assert shown["password"] not in text and "password: !secret mqtt_password" in text
    assert "broker: !secret edge_host" in text  # the farm has not said where its edge is

    net = await world_client.put(f"/api/farms/{w.FARM}/device-network",
                                 json={"mqtt_host": "192.168.1.20", "mqtt_port": 8883,
                                       "tls": True}, headers=owner)
    assert net.status == 200, await net.text()
    resp = await world_client.get(url + "?board=esp32-s3-devkitc-1&drive=relay", headers=viewer)
    text = await resp.text()
    assert text == node_yaml(Node(
        farm_id=w.FARM, room_id=w.ROOM_A, device_id="esp-fan", kind="actuator",
        actuator="exhaust_fan", broker_host="192.168.1.20", broker_port=8883, tls=True,
        board="esp32-s3-devkitc-1", drive="relay"))
    assert "certificate_authority: !secret edge_ca" in text

    for query, field in (("board=No%20Board", "query.board"),
                         ("without=radar", "query.without"),
                         ("interval_s=2", "query.interval_s"),
                         ("drive=servo", "query.drive")):
        bad = await world_client.get(f"{url}?{query}", headers=viewer)
        assert bad.status == 422, query
        assert bad.content_type == "application/problem+json"
        assert [e["field"] for e in (await bad.json())["errors"]] == [field]
    assert (await world_client.get("/api/devices/nope/esphome.yaml", headers=owner)).status == 404
    assert (await world_client.get(url)).status == 401
