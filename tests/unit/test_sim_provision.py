"""`smartfarm sim node`: a node built from the provisioning document the cloud shows for a new
device (the QR code's content) uses exactly its credentials and topics, and a document that does
not fit its device is refused with the field named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import smartfarm_cli
from cloud.device_setup import BrokerHint, provisioning, provisioning_text, sim_command
from firmware_sim.provision import ProvisioningError, build_node, load_provisioning


def _doc(**broker: Any) -> dict[str, Any]:
    hint = BrokerHint(**{"host": "192.168.1.20", "port": 1884, "tls": False, **broker})
    return provisioning(farm_id="farm-1", room_id="room-a", device_id="room-a-fan",
                        kind="actuator", actuator="exhaust_fan", password="p" * 32, broker=hint)


def test_a_node_from_the_cloud_s_provisioning_logs_in_with_it(tmp_path: Path) -> None:
    text = provisioning_text(_doc())
    prov = load_provisioning(text)  # the JSON itself …
    path = tmp_path / "room-a-fan.json"
    path.write_text(text)
    assert load_provisioning(path) == prov  # … or the file the snippet writes
    farm = build_node(prov)
    node = farm.actuators["room-a-fan"]
    assert (node.device_id, node.password, node.host, node.port) == (
        "room-a-fan", "p" * 32, "192.168.1.20", 1884)
    assert node.topic("command") == "farm/farm-1/room/room-a/command/room-a-fan"
    assert node.role == "exhaust_fan" and not farm.sensors
    assert build_node(prov, host="127.0.0.1", port=5555).nodes[0].port == 5555
    assert sim_command(_doc()).endswith("smartfarm sim node --provisioning room-a-fan.json")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"smartfarm": "other/1"}, "`smartfarm`"),
        ({"device": "bad id"}, "`device`"),
        ({"username": "someone-else"}, "`username`"),
        ({"kind": "relay"}, "`kind`"),
        ({"actuator": "sprinkler"}, "`actuator`"),
        ({"port": 0}, "`port`"),
        ({"port": "1884"}, "`port`"),
        ({"password": None}, "`password`"),
        ({"publish": {"telemetry": "farm/x/room/room-a/telemetry/room-a-fan"}}, "telemetry topic"),
        ({"subscribe": {"command": "farm/farm-1/room/room-b/command/room-a-fan"}}, "command topic"),
    ],
)
def test_a_document_that_does_not_fit_its_device_is_refused(
    change: dict[str, Any], named: str
) -> None:
    doc = {**_doc(), **change}
    with pytest.raises(ProvisioningError, match=named):
        load_provisioning(json.dumps(doc))


def test_without_a_broker_host_or_with_tls_the_node_says_what_to_pass() -> None:
    with pytest.raises(ProvisioningError, match="--host"):
        build_node(load_provisioning(provisioning_text(_doc(host=None))))
    with pytest.raises(ProvisioningError, match="TLS"):
        build_node(load_provisioning(provisioning_text(_doc(tls=True))))


def test_the_command_line_reports_a_bad_file(tmp_path: Path, capsys: Any) -> None:
    missing = str(tmp_path / "missing.json")
    assert smartfarm_cli.main(["sim", "node", "--provisioning", missing]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    bad = str(tmp_path / "bad.json")
    assert smartfarm_cli.main(["sim", "node", "--provisioning", bad]) == 2
    assert "not JSON" in capsys.readouterr().err
