"""The OTA side of the ESPHome node files (docs/firmware-updates.md): the blocks that let a node
take the edge's ``ota`` command. :func:`shared.esphome.node_yaml` puts them in every node file;
:func:`ota_fragment` and :func:`ota_dispatch` give them for a hand-written one.

The edge offers an image with an ``ota`` command on the node's command topic (``firmware``:
version, url, md5, …); the node acks it, downloads the image from the edge's LAN address over
plain HTTP, checks its MD5, flashes it and reboots; its status then reports the new version.
"""
from __future__ import annotations

from typing import Final

from shared.topics import check_id

OTA_SCRIPT_ID: Final = "smartfarm_ota"


def ota_http_request(timeout_s: int = 60) -> str:
    """The top-level ``http_request`` block (plain HTTP on the farm's LAN, no internet)."""
    return f"http_request:\n  verify_ssl: false\n  timeout: {timeout_s}s\n"


def ota_platform(ack_topic: str, device_id: str) -> str:
    """The ``ota:`` list item for updates the edge offers; a failed download or MD5 check is
    acked as ``error`` for the offer's command id (the edge marks the offer failed)."""
    return f"""\
- platform: http_request
  id: smartfarm_http_ota
  on_error:
    then:
      - mqtt.publish_json:
          topic: {ack_topic}
          qos: 1
          payload: |-
            root["command_id"] = id(smartfarm_ota_command);
            root["device_id"] = "{device_id}";
            root["status"] = "error";
            root["error"] = "update failed (download or MD5 check), error " + to_string(x);
"""


def ota_globals() -> str:
    """The ``globals:`` list item holding the command id of the update in progress."""
    return """\
- id: smartfarm_ota_command
  type: std::string
  restore_value: false
  initial_value: '""'
"""


def ota_script(ack_topic: str, device_id: str) -> str:
    """The ``script:`` list item that acks the ``ota`` command and flashes the offered image."""
    return f"""\
- id: {OTA_SCRIPT_ID}
  mode: single
  parameters:
    command_id: string
    url: string
    md5: string
  then:
    - lambda: 'id(smartfarm_ota_command) = command_id;'
    - mqtt.publish_json:
        topic: {ack_topic}
        qos: 1
        payload: |-
          root["command_id"] = command_id;
          root["device_id"] = "{device_id}";
          root["status"] = "ok";
    - ota.http_request.flash:
        url: !lambda 'return url;'
        md5: !lambda 'return md5;'
"""


def ota_dispatch(ack_topic: str, device_id: str, indent: int = 0) -> str:
    """The action for the command topic's ``on_json_message`` ``then:`` list (``x`` is the
    command): an ``ota`` command runs the update script, or is acked as an error while an update
    is already running; any other action is left to the actions after it."""
    text = f"""\
- if:
    condition:
      lambda: 'return x["action"] == "ota" && x["firmware"].is<JsonObject>();'
    then:
      - if:
          condition:
            script.is_running: {OTA_SCRIPT_ID}
          then:
            - mqtt.publish_json:
                topic: {ack_topic}
                qos: 1
                payload: |-
                  root["command_id"] = x["command_id"].as<std::string>();
                  root["device_id"] = "{device_id}";
                  root["status"] = "error";
                  root["error"] = "an update is already running";
          else:
            - script.execute:
                id: {OTA_SCRIPT_ID}
                command_id: !lambda 'return x["command_id"].as<std::string>();'
                url: !lambda 'return x["firmware"]["url"].as<std::string>();'
                md5: !lambda 'return x["firmware"]["md5"].as<std::string>();'
"""
    pad = " " * indent
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def ota_fragment(*, device_id: str, ack_topic: str, timeout_s: int = 60) -> str:
    """The OTA blocks on their own (``http_request``, ``ota``, ``globals``, ``script``), to merge
    into a hand-written node file beside ``mqtt:``; the node files of :func:`node_yaml` have
    them already."""
    check_id(device_id, "device id")
    return "\n".join([
        ota_http_request(timeout_s),
        "ota:\n" + "\n".join(_block(ota_platform(ack_topic, device_id), 2)) + "\n",
        "globals:\n" + "\n".join(_block(ota_globals(), 2)) + "\n",
        "script:\n" + "\n".join(_block(ota_script(ack_topic, device_id), 2)) + "\n",
    ])


def _block(text: str, indent: int) -> list[str]:
    pad = " " * indent
    return [pad + line if line else "" for line in text.strip("\n").split("\n")]
