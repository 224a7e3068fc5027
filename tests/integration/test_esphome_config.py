"""Every node file the generator writes passes ESPHome's own ``esphome config``, offline (in a
network namespace of its own when the machine allows one), and a broken one does not; the CLI and
the edge page's download give those files.

ESPHome pins paho-mqtt 1.x and the edge needs 2.x, so it lives in a venv of its own: ``make
test`` makes ``.venv-esphome`` (pinned version) and sets ``SMARTFARM_ESPHOME`` and
``SMARTFARM_REQUIRE_ESPHOME=1``; without them these tests skip, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import DeviceConfig
from shared.esphome import Node, Pins, node_yaml, secrets_template
from tests.integration.test_edge_api import build_edge, make_app, make_settings

ROOT = Path(__file__).resolve().parents[2]
SECRETS = (
    'wifi_ssid: "farm"\nwifi_password: "secret-pw"\nfallback_ap_password: "setup-pw"\n'
    'ota_password: "ota-pw"\nmqtt_password: "mqtt-pw"\nedge_host: "192.168.1.10"\n'
)


def _ca_pem() -> str:
    """A CA certificate as `smartfarm edge init --tls` makes it."""
    import datetime as dt

    from cryptography.hazmat.primitives.serialization import Encoding

    from edge.certs import _new_ca

    cert, _key = _new_ca("demo-farm", dt.datetime.now(dt.UTC))
    return cert.public_bytes(Encoding.PEM).decode()


def esphome_binary() -> str | None:
    for candidate in (
        os.environ.get("SMARTFARM_ESPHOME"),
        str(ROOT / ".venv-esphome" / "bin" / "esphome"),
        shutil.which("esphome"),
    ):
        if candidate and Path(candidate).exists():
            return str(Path(candidate).resolve())  # the checks run in their own folders
    return None


@pytest.fixture(scope="module")
def esphome() -> Iterator[list[str]]:
    binary = esphome_binary()
    if binary is None:
        if os.environ.get("SMARTFARM_REQUIRE_ESPHOME") == "1":
            pytest.fail("esphome not found: `make test` installs it into .venv-esphome")
        pytest.skip("esphome not installed (make test installs it; SMARTFARM_ESPHOME=path)")
    # No network for the check when the kernel lets us have a namespace of our own: proves
    # the validation needs none (an installer's laptop on the farm).
    offline = (
        ["unshare", "-rn"]
        if shutil.which("unshare")
        and subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False).returncode
        == 0
        else []
    )
    yield [*offline, binary]


def _config(
    esphome: list[str], directory: Path, name: str, text: str
) -> subprocess.CompletedProcess[str]:
    (directory / "secrets.yaml").write_text(SECRETS)
    (directory / name).write_text(text)
    env = {
        **os.environ,
        "ESPHOME_NOGITEXTERNALS": "1",
        "PLATFORMIO_CORE_DIR": str(directory / ".pio"),
    }
    return subprocess.run(
        [*esphome, "config", name],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _nodes() -> list[tuple[str, Node]]:
    base: dict[str, Any] = {"farm_id": "demo-farm", "room_id": "oyster-a"}
    nodes = [
        (
            "sensor-all",
            Node(
                **base,
                device_id="sensor-a1",
                kind="sensor",
                password="p@ss: 'x\"",
                broker_host="192.168.1.10",
            ),
        ),
        (
            "sensor-sht3x-min",
            Node(
                **base,
                device_id="Sensor_B2",
                kind="sensor",
                th_sensor="sht3xd",
                sensors=frozenset({"battery"}),
                interval_s=300,
            ),
        ),
        (
            "sensor-tls",
            Node(
                **base,
                device_id="sensor-tls",
                kind="sensor",
                password="pw",
                broker_host="edge.local",
                broker_port=8883,
                tls=True,
                ca_pem=_ca_pem(),
                board="esp32-s3-devkitc-1",
            ),
        ),
    ]
    nodes.append(
        (
            "ota-from-edge",
            Node(
                **base,
                device_id="ota-node",
                kind="actuator",
                actuator="light",
                password="pw",
                broker_host="10.0.0.2",
                firmware_version="2.0.1",
            ),
        )
    )
    for kind, role, via in (("sensor", None, "embedded"), ("actuator", "exhaust_fan", "embedded"),
                            ("sensor", None, "mosquitto")):
        nodes.append(
            (
                f"claim-{kind}-{via}",
                Node(**base, device_id=f"esp-c1a1{len(nodes):02d}", kind=kind,  # type: ignore[arg-type]
                     actuator=role, claim_code="7K2M-QX9D-4HVB-N0TR", broker_host="10.0.0.2",
                     claim_via=via),  # type: ignore[arg-type]
            )
        )
    nodes.append(
        (
            "c3-sensor",
            Node(**base, device_id="c3-sensor", kind="sensor", board="esp32-c3-devkitm-1"),
        )
    )
    for role in ("humidifier", "exhaust_fan", "heater", "light"):
        for drive in ("relay", "pwm"):
            nodes.append(
                (
                    f"{role}-{drive}",
                    Node(
                        **base,
                        device_id=f"{role}-{drive}".replace("_", "-"),
                        kind="actuator",
                        actuator=role,
                        drive=drive,
                        password="pw",
                        broker_host="10.0.0.2",
                        inverted=(role == "heater"),
                    ),
                )
            )
    return nodes


@pytest.mark.parametrize(("name", "node"), _nodes(), ids=[n for n, _ in _nodes()])
def test_every_generated_node_file_passes_esphome_config(
    esphome: list[str],
    tmp_path: Path,
    name: str,
    node: Node,
) -> None:
    result = _config(esphome, tmp_path, f"{name}.yaml", node_yaml(node))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Configuration is valid!" in result.stdout + result.stderr
    # Every secret the file reads is one the template names.
    template = secrets_template(node)
    for line in node_yaml(node).splitlines():
        if "!secret " in line:
            assert line.split("!secret ")[1].split()[0] + ":" in template


def test_esphome_config_refuses_a_broken_node_file(esphome: list[str], tmp_path: Path) -> None:
    """The check can fail: a pin the ESP32 does not have, and a missing secret."""
    node = Node(
        farm_id="f",
        room_id="r",
        device_id="h1",
        kind="actuator",
        actuator="heater",
        password="pw",
        broker_host="10.0.0.2",
        pins=Pins(output="GPIO99"),
    )
    result = _config(esphome, tmp_path, "bad.yaml", node_yaml(node))
    assert result.returncode != 0
    assert "GPIO99" in result.stdout + result.stderr or "99" in result.stdout + result.stderr
    no_secret = node_yaml(Node(farm_id="f", room_id="r", device_id="s1", kind="sensor"))
    (tmp_path / "secrets.yaml").write_text('wifi_ssid: "farm"\n')
    (tmp_path / "s1.yaml").write_text(no_secret)
    result = subprocess.run(
        [*esphome, "config", "s1.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0 and "not defined" in result.stdout + result.stderr


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from edge.cli import edge_main; sys.exit(edge_main(sys.argv[1:]))",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_device_add_esphome_writes_a_node_file_that_validates(
    esphome: list[str],
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    assert _cli("init", str(site), "--farm-id", "f1", cwd=tmp_path).returncode == 0
    config = str(site / "edge.toml")
    done = _cli(
        "device",
        "add",
        "hum-9",
        "--room",
        "oyster-a",
        "--kind",
        "actuator",
        "--actuator",
        "humidifier",
        "--config",
        config,
        "--esphome",
        str(tmp_path / "nodes" / "hum-9.yaml"),
        "--host",
        "192.168.1.20",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    password = next(
        line.split()[2] for line in done.stdout.splitlines() if "mqtt password:" in line
    )
    text = (tmp_path / "nodes" / "hum-9.yaml").read_text()
    assert f'password: "{password}"' in text and 'broker: "192.168.1.20"' in text
    assert (tmp_path / "nodes" / "hum-9.yaml").stat().st_mode & 0o077 == 0
    assert "wifi_ssid" in (tmp_path / "nodes" / "secrets.yaml").read_text()
    result = _config(esphome, tmp_path / "nodes", "hum-9.yaml", text)
    assert result.returncode == 0, result.stdout[-2000:]
    # An existing device, to standard output; bad options fail before anything is added.
    again = _cli(
        "device",
        "esphome",
        "hum-9",
        "--config",
        config,
        "-o",
        "-",
        "--without",
        "co2",
        cwd=tmp_path,
    )
    assert again.returncode == 0 and f'password: "{password}"' in again.stdout
    bad = _cli(
        "device",
        "add",
        "s-9",
        "--room",
        "oyster-a",
        "--kind",
        "sensor",
        "--config",
        config,
        "--esphome",
        "--board",
        "Not A Board",
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "board" in bad.stderr
    assert "s-9" not in (site / "edge.toml").read_text()
    unknown = _cli("device", "esphome", "nope", "--config", config, cwd=tmp_path)
    assert unknown.returncode == 2 and "nope" in unknown.stderr


def test_device_claim_file_writes_a_claim_mode_node_file_that_validates(
    esphome: list[str],
    tmp_path: Path,
) -> None:
    """``smartfarm edge device claim-file``: the farm's claim code, the room and role it is for,
    no password; it passes ``esphome config``; a taken id or an unknown room is refused."""
    site = tmp_path / "site"
    assert _cli("init", str(site), "--farm-id", "f1", cwd=tmp_path).returncode == 0
    config = str(site / "edge.toml")
    code = _cli("claim-code", "--config", config, cwd=tmp_path).stdout.splitlines()[0].split()[-1]
    done = _cli("device", "claim-file", "esp-3c71bf", "--room", "oyster-a", "--kind",
                "actuator", "--actuator", "heater", "--config", config, "-o",
                str(tmp_path / "nodes" / "esp-3c71bf.yaml"), "--host", "192.168.1.20",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "nodes" / "esp-3c71bf.yaml").read_text()
    assert f'std::string("{code}")' in text and 'client_id: "esp-3c71bf@oyster-a"' in text
    assert "mqtt_password" not in (tmp_path / "nodes" / "secrets.yaml").read_text()
    assert (tmp_path / "nodes" / "esp-3c71bf.yaml").stat().st_mode & 0o077 == 0
    result = _config(esphome, tmp_path / "nodes", "esp-3c71bf.yaml", text)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "esp-3c71bf" not in (site / "edge.toml").read_text()  # not a device until adopted
    for args, word in ((("nope-room", "sensor"), "room"), (("oyster-a", "actuator"), "actuator")):
        bad = _cli("device", "claim-file", "esp-000002", "--room", args[0], "--kind", args[1],
                   "--config", config, "-o", "-", cwd=tmp_path)
        assert bad.returncode == 2 and word in bad.stderr, bad.stderr


async def test_the_edge_page_downloads_a_devices_node_file(
    farm_id: str,
    tmp_path: Path,
    aiohttp_client: Any,
) -> None:
    settings = make_settings(farm_id, tmp_path)
    settings.devices.append(
        DeviceConfig(id="light-a", room="room-a", kind="actuator", actuator="light")
    )
    edge = await build_edge(settings, tmp_path)
    try:
        client = await aiohttp_client(make_app(edge))
        url = "/api/devices/light-a/esphome.yaml"
        assert (await client.get(url)).status == 401  # it would hold the device's password
        resp = await client.post(
            "/api/login", json={"username": "admin", "password": "correct horse battery"}
        )
        assert resp.status == 200
        resp = await client.get(url + "?host=192.168.1.5&drive=relay&inverted=true")
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Disposition"] == 'attachment; filename="light-a.yaml"'
        assert resp.headers["Cache-Control"] == "no-store"
        text = await resp.text()
        assert text == node_yaml(
            Node(
                farm_id=farm_id,
                room_id="room-a",
                device_id="light-a",
                kind="actuator",
                actuator="light",
                broker_host="192.168.1.5",
                broker_port=settings.broker.port,
                drive="relay",
                inverted=True,
            )
        )  # no device-secrets file here: !secret mqtt_password
        assert "!secret mqtt_password" in text
        missing = await client.get("/api/devices/nope/esphome.yaml")
        assert missing.status == 404
        assert missing.headers["Content-Type"].startswith("application/problem+json")
        for query, field in (
            ("board=Bad Board", "board"),
            ("th_sensor=dht22", "th_sensor"),
            ("without=co2,radar", "without"),
            ("interval_s=1", "interval_s"),
            ("host=-bad", "host"),
        ):
            bad = await client.get(f"{url}?{query}")
            assert bad.status == 422, query
            body = await bad.json()
            assert [e["field"] for e in body["errors"]] == [field], body
    finally:
        await edge.commands.close()
        await edge.db.close()
