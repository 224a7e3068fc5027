"""The ESPHome node-file generator on its own: names, refusals, the secrets it names, and that a
node can publish nowhere but on its own topics."""
from __future__ import annotations

import re

import pytest

from shared.esphome import (
    BoardOptions,
    Node,
    board_pins,
    node_name,
    node_yaml,
    secrets_template,
)
from tests.integration.esphome_node import load_node

BASE = {"farm_id": "f1", "room_id": "r1"}


def test_node_names_are_valid_host_names_and_distinct() -> None:
    assert node_name("sensor-a1") == "sensor-a1"
    names = {node_name(i) for i in ("Hum_1", "hum-1", "HUM_1", "x" * 64, "x" * 63 + "y")}
    assert len(names) == 5
    for name in names:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", name), name


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"device_id": "bad id", "kind": "sensor"}, "device_id"),
    ({"device_id": "a", "kind": "actuator"}, "an actuator"),
    ({"device_id": "a", "kind": "sensor", "actuator": "heater"}, "an actuator"),
    ({"device_id": "a", "kind": "actuator", "actuator": "sprinkler"}, "actuator"),
    ({"device_id": "a", "kind": "sensor", "broker_host": "a b"}, "broker_host"),
    ({"device_id": "a", "kind": "sensor", "broker_port": 0}, "broker_port"),
    ({"device_id": "a", "kind": "sensor", "tls": True, "ca_pem": "nope"}, "ca_pem"),
    ({"device_id": "a", "kind": "sensor", "interval_s": 1}, "interval_s"),
    ({"device_id": "a", "kind": "sensor", "board": "ESP 32"}, "board"),
    ({"device_id": "a", "kind": "sensor", "sensors": frozenset({"radar"})}, "unknown sensors"),
])
def test_a_node_that_cannot_be_built_is_refused_naming_the_field(
    kwargs: dict[str, object], field: str,
) -> None:
    with pytest.raises(Exception, match=field):
        Node(**BASE, **kwargs)  # type: ignore[arg-type]


def test_a_node_publishes_only_on_its_own_topics() -> None:
    for node in (Node(**BASE, device_id="s1", kind="sensor", password="pw"),
                 Node(**BASE, device_id="a1", kind="actuator", actuator="light", password="pw")):
        doc = load_node(node_yaml(node))
        mqtt = doc["mqtt"]
        assert mqtt["discovery"] is False and mqtt["log_topic"] is None
        assert mqtt["clean_session"] is True
        for entity in doc["sensor"]:
            parts = [entity] + [v for v in entity.values() if isinstance(v, dict)]
            for part in parts:
                if "id" in part:
                    assert part.get("internal") is True, part
        assert "api" not in doc and "web_server" not in doc  # no other way in
        topics = set(re.findall(r"farm/[^\s\"']+", node_yaml(node)))
        assert topics == {node.topic(k) for k in ("telemetry", "status", "ack", "command")}


def test_the_secrets_template_names_every_secret_the_file_reads() -> None:
    for node in (Node(**BASE, device_id="s1", kind="sensor"),
                 Node(**BASE, device_id="s1", kind="sensor", tls=True),
                 Node(**BASE, device_id="a1", kind="actuator", actuator="heater", password="p",
                      broker_host="10.0.0.2")):
        text = node_yaml(node)
        wanted = set(re.findall(r"!secret (\w+)", text))
        named = set(re.findall(r"^(\w+):", secrets_template(node), re.M))
        assert wanted == named, (wanted, named)
    assert "mqtt_password" not in secrets_template(
        Node(**BASE, device_id="s1", kind="sensor", password="p", broker_host="h"))


def test_passwords_and_ids_are_quoted_for_yaml() -> None:
    tricky = "a: b # 'c\" \\ {x} ü"
    doc = load_node(node_yaml(Node(**BASE, device_id="s1", kind="sensor", password=tricky,
                                   broker_host="h")))
    assert doc["mqtt"]["password"] == tricky
    with pytest.raises(ValueError, match="password"):
        Node(**BASE, device_id="s1", kind="sensor", password="pa${x}ss")


def test_board_options_check_their_fields() -> None:
    opts = BoardOptions.model_validate({"without": "co2,light", "board": "esp32-c3-devkitm-1"})
    assert opts.sensors() == {"substrate", "battery"}
    assert opts.node_options("sensor")["drive"] is None
    assert board_pins("esp32-c3-devkitm-1").substrate == "GPIO0"
    assert board_pins("nodemcu-32s") == board_pins("esp32dev")
    with pytest.raises(ValueError, match="radar"):
        BoardOptions.model_validate({"without": "radar"})


@pytest.mark.parametrize("kind", ["sensor", "actuator"])
def test_every_node_file_takes_the_edges_ota_command(kind: str) -> None:
    """The update from the edge is in every node file: the http_request OTA platform, whose
    error acks the offer's command id on the node's ack topic; the script that acks and flashes
    with the offer's URL and MD5; the dispatch on the command topic; the version reported."""
    node = Node(**BASE, device_id="n1", kind=kind,  # type: ignore[arg-type]
                actuator="heater" if kind == "actuator" else None, password="p",
                broker_host="h", firmware_version="1.4.2")
    text = node_yaml(node)
    doc = load_node(text)
    platforms = {o["platform"]: o for o in doc["ota"]}
    assert set(platforms) == {"esphome", "http_request"}
    on_error = platforms["http_request"]["on_error"]["then"][0]["mqtt.publish_json"]
    assert on_error["topic"] == "farm/f1/room/r1/ack/n1"
    assert 'root["command_id"] = id(smartfarm_ota_command);' in on_error["payload"]
    assert doc["http_request"]["verify_ssl"] is False
    script = next(s for s in doc["script"] if s["id"] == "smartfarm_ota")
    flash = script["then"][-1]["ota.http_request.flash"]
    assert set(flash) == {"url", "md5"}  # MD5-checked, from the URL the command names
    assert any(g["id"] == "smartfarm_ota_command" for g in doc["globals"])
    handler = doc["mqtt"]["on_json_message"][0]
    assert handler["topic"] == "farm/f1/room/r1/command/n1"
    dispatch = handler["then"][0]["if"]
    assert 'x["action"] == "ota"' in dispatch["condition"]["lambda"]
    run = dispatch["then"][0]["if"]["else"][0]["script.execute"]
    assert run["id"] == "smartfarm_ota"
    # The other handler leaves ota to the script, so an ota command is never acked twice.
    assert 'if (action == "ota") return;' in handler["then"][1]["lambda"]
    # One place says the version: the project's and what the status's "firmware" field says.
    assert doc["esphome"]["project"]["version"] == "1.4.2"
    assert '"firmware":"smartfarm-esphome/1.4.2"' in doc["mqtt"]["birth_message"]["payload"]
    status = next(s for s in doc["script"] if s["id"] == "publish_status")
    publish = status["then"][0]["if"]["then"][0]["mqtt.publish_json"]
    assert 'root["firmware"] = "smartfarm-esphome/1.4.2";' in publish["payload"]
    assert text.count('"1.4.2"') == 1  # substitutions: firmware_version
    assert "firmware_update" not in text and "manifest" not in text


@pytest.mark.parametrize("kind", ["sensor", "actuator"])
def test_a_claim_mode_node_file_claims_then_runs_on_the_password_the_edge_hands_it(
    kind: str,
) -> None:
    """Claim mode: no password in the file or its secrets; the farm's claim code and a key
    kept in flash at login; nothing published while claiming; the credentials taken from its
    claim topic only when they are for this node, room and kind, kept in flash, then a reboot."""
    role = "light" if kind == "actuator" else None
    node = Node(**BASE, device_id="esp-3c71bf", kind=kind, actuator=role,  # type: ignore[arg-type]
                claim_code="7K2M-QX9D-4HVB-N0TR", broker_host="10.0.0.2")
    text = node_yaml(node)
    doc = load_node(text)
    assert "mqtt_password" not in secrets_template(node) and "!secret mqtt_password" not in text
    assert doc["mqtt"]["client_id"] == "esp-3c71bf@r1"  # the room it was made for
    saved = {g["id"]: g for g in doc["globals"]}
    assert saved["sf_claim_key"]["restore_value"] is True
    assert saved["sf_mqtt_password"]["restore_value"] is True
    assert saved["sf_mqtt_password"]["max_restore_data_length"] >= 32
    boot = doc["esphome"]["on_boot"]
    claim = next(t for t in boot if t["priority"] == 600)["then"][0]["lambda"]
    assert 'subscribe_json("farm/f1/claim/esp-3c71bf"' in claim
    assert 'std::string("7K2M-QX9D-4HVB-N0TR") + ":" + id(sf_claim_key)' in claim
    assert 'room != "r1"' in claim and f'kind != "{kind}"' in claim
    assert "disable_last_will()" in claim and "id(sf_adopted).execute();" in claim
    adopted = next(s for s in doc["script"] if s["id"] == "sf_adopted")
    assert adopted["then"][-1] == {"lambda": "App.safe_reboot();"}
    status = next(s for s in doc["script"] if s["id"] == "publish_status")
    assert "!id(sf_claiming)" in status["then"][0]["if"]["condition"]["lambda"]
    if kind == "actuator":  # still boot-safe first
        assert boot[0]["priority"] == 800 and boot[0]["then"][0] == {"output.turn_off": "drive"}
    else:
        telemetry = next(s for s in doc["script"] if s["id"] == "publish_telemetry")
        assert "!id(sf_claiming)" in telemetry["then"][0]["if"]["condition"]["lambda"]
    # Through Mosquitto: its claim account, a client id with the key, hellos while claiming.
    via = load_node(node_yaml(Node(**BASE, device_id="esp-3c71bf", kind=kind,  # type: ignore[arg-type]
                                   actuator=role, claim_code="7K2M-QX9D-4HVB-N0TR",
                                   claim_via="mosquitto")))
    claim = next(t for t in via["esphome"]["on_boot"] if t["priority"] == 600)["then"][0]["lambda"]
    assert 'set_username("smartfarm-claim")' in claim
    assert 'set_client_id("esp-3c71bf." + id(sf_claim_key))' in claim
    assert 'std::string("farm/f1/claim/esp-3c71bf") + "." + id(sf_claim_key)' in claim
    hello = via["interval"][-1]["then"][0]["if"]
    assert "id(sf_claiming)" in hello["condition"]["lambda"]
    assert hello["then"][0]["mqtt.publish_json"]["topic"] == "farm/f1/claim/hello"
    assert "claim/hello" not in text  # not with the embedded broker
    with pytest.raises(ValueError, match="password"):
        Node(**BASE, device_id="s1", kind="sensor", password="p", claim_code="7K2M-QX9D")
    with pytest.raises(ValueError, match="claim_code"):
        Node(**BASE, device_id="s1", kind="sensor", claim_code="x:y")
