"""The ESPHome node files speak the MQTT contract: a real edge (embedded broker, per-device logins
and ACL) gets, from clients that log in exactly as the YAML says, the exact JSON the YAML's lambdas
build — birth, telemetry, heartbeat, acks, last-will — and accepts every one of them; and that JSON
has the simulator's fields on the simulator's topics."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from edge.esphome_files import NodeOptions, device_yaml
from edge.site_init import add_device
from firmware_sim.nodes import ActuatorNode, SensorNode
from firmware_sim.physics import ActuatorBank, Room
from shared.esphome import SENSOR_METRICS
from shared.models import Command, dump
from tests.e2e.conftest import fast_settings, make_site, query, wait_for
from tests.integration.esphome_node import (
    Env,
    ack_block,
    ack_topic,
    command_fields,
    load_node,
    publish_action,
    run_json_lambda,
)

SECRETS = {
    "wifi_ssid": "farm",
    "wifi_password": "secret-pw",
    "fallback_ap_password": "setup-pw",
    "ota_password": "ota",
}


def _site(tmp_path: Path) -> tuple[Path, Any]:
    config = make_site(tmp_path / "site", "esp-farm")
    add_device(config, "esp-sens", "room-a", "sensor", None)
    add_device(config, "esp-hum", "room-a", "actuator", "humidifier")
    return config, fast_settings(config)


def _client(node: dict[str, Any], *, will: bool = True) -> aiomqtt.Client:
    """An MQTT client logged in exactly as the node file says (broker, port, username, password,
    client id, last-will)."""
    mqtt = node["mqtt"]
    return aiomqtt.Client(
        mqtt["broker"],
        int(mqtt["port"]),
        username=mqtt["username"],
        password=mqtt["password"],
        identifier=mqtt["client_id"],
        keepalive=30,
        timeout=5.0,
        will=aiomqtt.Will(
            mqtt["will_message"]["topic"],
            mqtt["will_message"]["payload"],
            mqtt["will_message"]["qos"],
        )
        if will
        else None,
    )


def _sim_sensor(settings: Any) -> SensorNode:
    return SensorNode(
        room=Room("oyster", "fruiting"),
        farm_id=settings.farm_id,
        room_id="room-a",
        device_id="esp-sens",
    )


def _status_env(sensors: dict[str, float | None], now: datetime | None) -> Env:
    return Env(sensors={**sensors, "wifi_rssi": -61.4, "uptime_s": 1234.4}, now=now)


async def _drop(client: aiomqtt.Client) -> None:
    """Lose the connection without a DISCONNECT (power cut, Wi-Fi gone): the broker sends the
    last-will."""
    sock = client._client.socket()
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


async def test_a_sensor_node_file_talks_to_a_real_edge_as_the_simulator_does(
    tmp_path: Path,
    running_edge: Any,
) -> None:
    _config, settings = _site(tmp_path)
    edge = await running_edge(settings)
    text = device_yaml(settings, "esp-sens", NodeOptions(host="127.0.0.1"))
    node = load_node(text, SECRETS)
    db = settings.db_path
    mqtt = node["mqtt"]
    assert mqtt["port"] == settings.broker.port and mqtt["username"] == "esp-sens"
    assert mqtt["discovery"] is False and mqtt["log_topic"] is None

    sim = _sim_sensor(settings)
    sim_doc = json.loads(dump(sim.reading()))
    # The sensor ids the telemetry lambda reads, fed with the simulator's readings.
    sensors: dict[str, float | None] = {
        sid: sim_doc["data"][metric] for metric, sid in SENSOR_METRICS.items()
    }
    telemetry = publish_action(node, "publish_telemetry")
    status = publish_action(node, "publish_status")
    assert telemetry["topic"] == sim.topic("telemetry")
    assert status["topic"] == mqtt["birth_message"]["topic"] == sim.topic("status")
    assert mqtt["will_message"]["topic"] == sim.topic("status")

    now = datetime.now(UTC).replace(microsecond=0)
    with_clock = run_json_lambda(telemetry["payload"], Env(sensors=sensors, now=now))
    assert set(with_clock) == set(sim_doc)  # device_id, timestamp, data
    assert set(with_clock["data"]) == set(sim_doc["data"])  # the seed's metric names, all six
    assert with_clock["data"] == sim_doc["data"]
    no_clock = run_json_lambda(telemetry["payload"], Env(sensors={**sensors, "co2": None}))
    assert "timestamp" not in no_clock and "co2_ppm" not in no_clock["data"]
    heartbeat = run_json_lambda(status["payload"], _status_env(sensors, now))
    sim_status = json.loads(sim.status_payload())
    assert set(heartbeat) == set(sim_status)
    assert set(heartbeat["state"]) == set(sim_status["state"]) == {"battery_v"}

    dropped = False
    try:
        async with _client(node) as client:
            await _sensor_session(client, node, with_clock, no_clock, heartbeat, now, db)
            dropped = True
            await _drop(client)
    except aiomqtt.MqttError:
        if not dropped:
            raise
    await wait_for(
        lambda: query(
            db, "SELECT 1 FROM device_status WHERE device_id = ? AND online = 0", ("esp-sens",)
        ),
        10,
        "the last-will",
    )
    assert query(db, "SELECT reason FROM quarantine") == []
    assert edge.automation.device("esp-sens") is not None


async def _sensor_session(
    client: aiomqtt.Client,
    node: dict[str, Any],
    with_clock: Any,
    no_clock: Any,
    heartbeat: Any,
    now: datetime,
    db: Path,
) -> None:
    mqtt = node["mqtt"]
    telemetry = publish_action(node, "publish_telemetry")
    status = publish_action(node, "publish_status")
    sim_doc = with_clock
    await client.publish(mqtt["birth_message"]["topic"], mqtt["birth_message"]["payload"], qos=1)
    await client.publish(telemetry["topic"], json.dumps(with_clock), qos=1)
    await client.publish(telemetry["topic"], json.dumps(no_clock), qos=1)
    await client.publish(status["topic"], json.dumps(heartbeat), qos=1)
    await wait_for(
        lambda: (
            len(
                query(
                    db,
                    "SELECT r.ts_replaced FROM readings r JOIN series s"
                    " ON s.key = r.series WHERE s.device_id = ?",
                    ("esp-sens",),
                )
            )
            == 2
        ),
        10,
        "both readings stored",
    )
    rows = query(
        db,
        "SELECT s.metrics, r.ts, r.ts_replaced FROM readings r JOIN series s"
        " ON s.key = r.series WHERE s.device_id = ? ORDER BY r.id",
        ("esp-sens",),
    )
    assert set(json.loads(rows[0]["metrics"])) == set(sim_doc["data"])
    assert rows[0]["ts"] == now.timestamp() and rows[0]["ts_replaced"] == 0
    assert rows[1]["ts_replaced"] == 1  # no clock yet: the edge stamped its receive time
    await wait_for(
        lambda: query(
            db,
            "SELECT 1 FROM device_status WHERE device_id = ? AND"
            " online = 1 AND firmware = ? AND uptime_s = 1234",
            ("esp-sens", "smartfarm-esphome/1.0.0"),
        ),
        10,
        "the heartbeat's status",
    )


async def test_an_actuator_node_file_takes_the_edges_commands_and_acks_them(
    tmp_path: Path,
    running_edge: Any,
) -> None:
    _config, settings = _site(tmp_path)
    edge = await running_edge(settings)
    node = load_node(device_yaml(settings, "esp-hum", NodeOptions(host="127.0.0.1")), SECRETS)
    db = settings.db_path
    handler = node["mqtt"]["on_json_message"][0]
    command_lambda: str = handler["then"][-1]["lambda"]
    sim = ActuatorNode(
        role="humidifier",
        bank=ActuatorBank(),
        farm_id=settings.farm_id,
        room_id="room-a",
        device_id="esp-hum",
    )
    assert handler["topic"] == sim.topic("command") and handler["qos"] == 1
    assert ack_topic(command_lambda) == sim.topic("ack")
    # Boot-safe: off at power-up, never restored from flash.
    level = next(g for g in node["globals"] if g["id"] == "level")
    assert level["restore_value"] is False and float(level["initial_value"]) == 0.0
    assert node["esphome"]["on_boot"]["then"][0] == {"output.turn_off": "drive"}

    dropped = False
    try:
        async with _client(node) as client:
            await _actuator_session(client, node, edge, sim, db)
            dropped = True
            await _drop(client)
    except aiomqtt.MqttError:
        if not dropped:
            raise
    await wait_for(
        lambda: query(
            db, "SELECT 1 FROM device_status WHERE device_id = ? AND online = 0", ("esp-hum",)
        ),
        10,
        "the last-will",
    )
    assert query(db, "SELECT reason FROM quarantine") == []


async def _actuator_session(
    client: aiomqtt.Client, node: dict[str, Any], edge: Any, sim: ActuatorNode, db: Path
) -> None:
    mqtt = node["mqtt"]
    handler = mqtt["on_json_message"][0]
    command_lambda: str = handler["then"][-1]["lambda"]
    await client.subscribe(handler["topic"], qos=1)
    await client.publish(mqtt["birth_message"]["topic"], mqtt["birth_message"]["payload"], qos=1)
    cid = await edge.commands.send(
        device_id="esp-hum",
        room_id="room-a",
        action="set",
        value=40,
        source="manual",
        reason="esphome contract",
    )
    payload = b""
    async with asyncio.timeout(10):
        async for message in client.messages:
            payload = bytes(message.payload)  # type: ignore[arg-type]
            if json.loads(payload).get("command_id") == cid:
                break
    command = json.loads(payload)
    # The handler reads every field of the command that decides anything.
    assert command_fields(command_lambda) == set(command) - {"timestamp"}
    assert set(command) == set(json.loads(dump(Command.model_validate(command))))

    env = Env(
        now=datetime.now(UTC).replace(microsecond=0),
        variables={"cid": cid, "error": ""},
        globals={"level": command["value"] / 100},
    )
    ack = run_json_lambda(ack_block(command_lambda), env)
    sim_ack, _changed = sim.handle(payload)
    assert sim_ack is not None
    assert set(ack) == set(json.loads(sim_ack))
    assert (
        ack["state"]
        == json.loads(sim_ack)["state"]
        == {"on": True, "level": 40.0, "role": "humidifier"}
    )
    await client.publish(ack_topic(command_lambda), json.dumps(ack), qos=1)
    await wait_for(
        lambda: query(
            db, "SELECT 1 FROM commands WHERE command_id = ? AND state = 'acked'", (cid,)
        ),
        10,
        "the command acked",
    )

    # A refused command is acked as an error with its reason, as the simulator does.
    refused = Env(
        variables={"cid": "c-bad", "error": "set needs a value 0-100 or a boolean"},
        globals={"level": 0.4},
    )
    bad_ack = run_json_lambda(ack_block(command_lambda), refused)
    sim_bad = json.loads(
        sim.handle(json.dumps({**command, "command_id": "c-bad", "value": 140}).encode())[0]
        or b"{}"
    )
    assert set(bad_ack) - {"timestamp"} == set(sim_bad) - {"timestamp"}
    assert bad_ack["error"] == sim_bad["error"] and bad_ack["status"] == "error"

    status = publish_action(node, "publish_status")
    heartbeat = run_json_lambda(
        status["payload"],
        Env(sensors={"wifi_rssi": -70.0, "uptime_s": 60.0}, globals={"level": 0.4}),
    )
    assert set(heartbeat) | {"timestamp"} == set(json.loads(sim.status_payload()))
    await client.publish(status["topic"], json.dumps(heartbeat), qos=1)
    await wait_for(
        lambda: query(
            db,
            "SELECT state FROM device_status WHERE device_id = ?"
            " AND online = 1 AND state LIKE '%humidifier%'",
            ("esp-hum",),
        ),
        10,
        "the actuator's status",
    )


async def test_the_node_file_logs_in_only_with_its_own_password(
    tmp_path: Path,
    running_edge: Any,
) -> None:
    """The password in the file is the device's: a node file of another device's id with this
    password, or a stale password, is refused by the broker."""
    _config, settings = _site(tmp_path)
    await running_edge(settings)
    node = load_node(device_yaml(settings, "esp-sens", NodeOptions(host="127.0.0.1")), SECRETS)
    node["mqtt"]["password"] = "not-the-password"
    try:
        async with _client(node, will=False):
            raise AssertionError("the broker accepted a wrong password")
    except aiomqtt.MqttError:
        pass
