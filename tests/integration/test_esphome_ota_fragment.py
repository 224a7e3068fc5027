"""The ESPHome side of the OTA contract on its own (``shared.esphome_ota.ota_fragment`` and
``ota_dispatch``, for a hand-written node file) in a complete node file passes ``esphome
config`` (offline: schema and wiring, no compile).

``esphome`` is looked for as ``$SMARTFARM_ESPHOME``, then the module in this interpreter, then on
PATH; skipped with the reason when it is nowhere, unless SMARTFARM_REQUIRE_ESPHOME=1."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.esphome_ota import ota_dispatch, ota_fragment
from tests.integration.test_esphome_config import esphome_binary


def _esphome() -> list[str]:
    if (found := esphome_binary()) is not None:
        return [found]
    if importlib.util.find_spec("esphome") is not None:
        return [sys.executable, "-m", "esphome"]
    if os.environ.get("SMARTFARM_REQUIRE_ESPHOME") == "1":
        pytest.fail("SMARTFARM_REQUIRE_ESPHOME=1 but esphome is not installed")
    pytest.skip("esphome is not installed (pip install esphome, or set SMARTFARM_ESPHOME)")


def node_yaml(device: str = "room-a-heater") -> str:
    base = f"farm/demo-farm/room/room-a/{{}}/{device}"
    return f"""\
esphome:
  name: {device}
  project:
    name: smartfarm.node
    version: "1.2.0"

esp32:
  board: esp32dev
  framework:
    type: esp-idf

logger:

wifi:
  ssid: "farm"
  password: "password123"

mqtt:
  broker: 192.168.1.10
  port: 1884
  username: {device}
  password: secret
  client_id: {device}
  discovery: false
  on_json_message:
    - topic: {base.format("command")}
      qos: 1
      then:
{ota_dispatch(base.format("ack"), device, 8)}
{ota_fragment(device_id=device, ack_topic=base.format("ack"))}"""


def test_the_ota_fragment_passes_esphome_config(tmp_path: Path) -> None:
    esphome = _esphome()
    node = tmp_path / "room-a-heater.yaml"
    node.write_text(node_yaml())
    env = {**os.environ, "ESPHOME_NO_VENV": "1", "PLATFORMIO_CORE_DIR": str(tmp_path / "pio")}
    done = subprocess.run([*esphome, "config", str(node)], capture_output=True, text=True,
                          timeout=240, env=env, check=False, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "Configuration is valid!" in out
    assert "ota.http_request.flash" in out and "smartfarm_ota" in out


def test_a_broken_fragment_is_caught(tmp_path: Path) -> None:
    """The check above can fail: the same file without the script the dispatch calls does."""
    esphome = _esphome()
    node = tmp_path / "room-a-heater.yaml"
    node.write_text(node_yaml().replace("  - id: smartfarm_ota\n", "  - id: other_script\n"))
    done = subprocess.run([*esphome, "config", str(node)], capture_output=True, text=True,
                          timeout=240, check=False, cwd=tmp_path)
    assert done.returncode != 0
    assert "smartfarm_ota" in done.stdout + done.stderr
