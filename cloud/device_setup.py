"""What a new device needs to join its farm, shown once when it is registered: the provisioning
document (also the QR code's content), the QR code as an SVG data URI, the device's complete
ESPHome node file (``shared.esphome``) and a snippet for the simulator (``smartfarm sim node``).

The provisioning document is compact JSON, read by ``firmware_sim.provision``::

    {"smartfarm": "device/1", "farm": F, "room": R, "device": D, "kind": "sensor",
     "actuator": null, "username": D, "password": P, "host": H or null, "port": 1884,
     "tls": false, "publish": {"telemetry": …, "status": …, "ack": …},
     "subscribe": {"command": …}}
"""

from __future__ import annotations

import base64
import io
import json
import shlex
from dataclasses import dataclass
from typing import Any

import segno

from shared.esphome import Node, node_yaml
from shared.topics import UPLINK_KINDS, build_topic

FORMAT = "device/1"
DEFAULT_PORT = 1884  # the embedded broker's default listener (edge.config.BrokerConfig)


@dataclass(frozen=True)
class BrokerHint:
    host: str | None
    port: int
    tls: bool


def topics(farm_id: str, room_id: str, device_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """(publish by kind, subscribe by kind) for a device."""
    publish = {k: build_topic(farm_id, room_id, k, device_id) for k in UPLINK_KINDS}  # type: ignore[arg-type]
    subscribe = {"command": build_topic(farm_id, room_id, "command", device_id)}
    return publish, subscribe


def provisioning(
    *,
    farm_id: str,
    room_id: str,
    device_id: str,
    kind: str,
    actuator: str | None,
    password: str,
    broker: BrokerHint,
) -> dict[str, Any]:
    publish, subscribe = topics(farm_id, room_id, device_id)
    return {
        "smartfarm": FORMAT,
        "farm": farm_id,
        "room": room_id,
        "device": device_id,
        "kind": kind,
        "actuator": actuator,
        "username": device_id,
        "password": password,
        "host": broker.host,
        "port": broker.port,
        "tls": broker.tls,
        "publish": publish,
        "subscribe": subscribe,
    }


def provisioning_text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def qr_svg_data_uri(text: str, title: str) -> str:
    """A QR code of ``text`` as an SVG ``data:`` URI (base64), black on white with a quiet zone
    (phones read it in dark mode too). Error correction M: a printed label survives a smudge."""
    code = segno.make(text, error="m", micro=False)
    buf = io.BytesIO()
    code.save(
        buf, kind="svg", scale=4, border=4, dark="#000", light="#fff", title=title, xmldecl=False
    )
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def esphome_yaml(doc: dict[str, Any], **options: Any) -> str:
    """The device's complete ESPHome node file (``shared.esphome``): its topics, login and broker
    from the provisioning document; the password inline when the document has it (registration:
    shown once), else read from secrets.yaml. ``options``: the board's (``shared.esphome.Node``);
    ValueError naming the field when one does not fit."""
    node = Node(
        farm_id=doc["farm"],
        room_id=doc["room"],
        device_id=doc["device"],
        kind=doc["kind"],
        actuator=doc["actuator"],
        password=doc.get("password"),
        broker_host=doc["host"],
        broker_port=doc["port"],
        tls=doc["tls"],
        **options,
    )
    return node_yaml(node)


def sim_command(doc: dict[str, Any]) -> str:
    """Run the device as a simulated node: the provisioning text saved as a file, then one
    command (the host defaults to this machine when the farm has not said where its edge is)."""
    name = f"{doc['device']}.json"
    return (
        f"cat > {shlex.quote(name)} <<'EOF'\n{provisioning_text(doc)}\nEOF\n"
        f"smartfarm sim node --provisioning {shlex.quote(name)}"
    )
