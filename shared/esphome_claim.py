"""Claim mode in the ESPHome node files (docs/onboarding.md): a node flashed with the farm's claim
code and no password asks to join, takes the password the edge hands it once adopted, keeps it
in flash and reboots into it. The pieces :func:`shared.esphome.node_yaml` adds to a claim-mode
node file."""
from __future__ import annotations

import json
from typing import Final, Protocol

from shared.topics import claim_topic


class Node(Protocol):
    """What these pieces read of a ``shared.esphome.Node``."""

    @property
    def farm_id(self) -> str: ...
    @property
    def room_id(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def actuator(self) -> str | None: ...
    @property
    def claim_code(self) -> str | None: ...
    @property
    def claim_via(self) -> str: ...

NOT_CLAIMING: Final = {True: "", False: " && !id(sf_claiming)"}
CLAIM_ACCOUNT: Final = "smartfarm-claim"  # Mosquitto's (edge.external_claims)


def claim_hello(node: Node) -> list[str]:
    """Through Mosquitto, a claiming node says hello every 5 s (the edge hears no logins)."""
    if node.claim_code is None or node.claim_via != "mosquitto":
        return []
    hello = f"farm/{node.farm_id}/claim/hello"
    return [
        "  # Claim mode through Mosquitto: ask to join (the edge answers once adopted).",
        "  - interval: 5s",
        "    then:",
        "      - if:",
        "          condition:",
        "            lambda: 'return id(sf_claiming) && id(mqtt_client).is_connected();'",
        "          then:",
        "            - mqtt.publish_json:",
        f"                topic: {_q(hello)}",
        "                qos: 1",
        "                payload: |-",
        '                  root["device_id"] = "${device_id}";',
        '                  root["claim_key"] = id(sf_claim_key);',
        f'                  root["room"] = {_c(node.room_id)};',
    ]


def claim_globals(node: Node) -> list[str]:
    if node.claim_code is None:
        return []
    return [
        "  # Claim mode: its claim key (drawn on first boot) and, once adopted, its password;",
        "  # both survive reboots and OTA updates (flash), neither is ever published.",
        "  - id: sf_claim_key",
        "    type: std::string",
        "    restore_value: true",
        "    max_restore_data_length: 40",
        "    initial_value: '\"\"'",
        "  - id: sf_mqtt_password",
        "    type: std::string",
        "    restore_value: true",
        "    max_restore_data_length: 64",
        "    initial_value: '\"\"'",
        "  - id: sf_claiming",
        "    type: bool",
        "    restore_value: false",
        "    initial_value: 'false'",
    ]


def claim_boot_lambda(node: Node) -> str:
    """C++ run at boot before MQTT connects: log in with the password in flash, or claim."""
    assert node.claim_code is not None
    topic = _c(claim_topic(node.farm_id, node.device_id))
    role = node.actuator or ""
    if node.claim_via == "mosquitto":
        login = (f'id(mqtt_client).set_username({_c(CLAIM_ACCOUNT)});\n'
                 f'  id(mqtt_client).set_password({_c(node.claim_code)});\n'
                 f'  id(mqtt_client).set_client_id("${{device_id}}." + id(sf_claim_key));')
        topic = f'std::string({topic}) + "." + id(sf_claim_key)'
    else:
        login = (f"id(mqtt_client).set_password(std::string({_c(node.claim_code)}) + \":\" +"
                 " id(sf_claim_key));")
    return f"""\
if (id(sf_claim_key).size() != 32) {{
  char key[33];
  for (int i = 0; i < 4; i++) snprintf(key + 8 * i, 9, "%08x", (unsigned) random_uint32());
  id(sf_claim_key) = std::string(key);
}}
if (!id(sf_mqtt_password).empty()) {{
  id(mqtt_client).set_password(id(sf_mqtt_password));
}} else {{
  id(sf_claiming) = true;
  {login}
  id(mqtt_client).disable_birth_message();
  id(mqtt_client).disable_last_will();
  id(mqtt_client).disable_shutdown_message();
  id(mqtt_client).subscribe_json({topic}, [](const std::string &topic, JsonObject x) {{
    std::string device(x["device_id"] | "");
    std::string room(x["room_id"] | "");
    std::string kind(x["kind"] | "");
    std::string role(x["actuator"] | "");
    std::string password(x["password"] | "");
    if (device != "${{device_id}}" || password.empty() || password.size() > 64) return;
    if (room != {_c(node.room_id)} || kind != {_c(node.kind)} || role != {_c(role)}) {{
      ESP_LOGE("smartfarm", "adopted as %s %s in room %s, but this firmware was made as"
               " {node.kind} {role} for room {node.room_id}: adopt it so, or flash a new file",
               kind.c_str(), role.c_str(), room.c_str());
      return;
    }}
    id(sf_mqtt_password) = password;
    id(sf_adopted).execute();
  }}, 1);
}}"""


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def _c(text: str) -> str:
    """A C++ string literal."""
    return json.dumps(text, ensure_ascii=True)
