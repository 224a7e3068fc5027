"""An edge's slice of the farm's config, on the edge: rooms another edge runs are dropped with
their devices (even from the TOML's), and the wire form stays readable by older edges."""

from __future__ import annotations

import pytest

from edge.config import DeviceConfig, RoomConfig
from edge.config_sync import ConfigRejected, overlay
from shared.sync import ConfigPush, DeviceSpec, RoomSpec

TOML_ROOMS = [
    RoomConfig(id="shed-a", species="oyster", stage="fruiting"),
    RoomConfig(id="shed-b", species="shiitake", stage="spawn_run"),
]
TOML_DEVICES = [
    DeviceConfig(id="a-sensor", room="shed-a", kind="sensor"),
    DeviceConfig(id="b-sensor", room="shed-b", kind="sensor"),
    DeviceConfig(id="b-fan", room="shed-b", kind="actuator", actuator="exhaust_fan"),
]


def push(**over: object) -> ConfigPush:
    fields: dict[str, object] = {
        "version": 7,
        "rooms": [RoomSpec(id="cloud-c", species="oyster", stage="pinning")],
        "devices": [DeviceSpec(id="c-sensor", room="cloud-c", kind="sensor")],
    }
    fields.update(over)
    return ConfigPush.model_validate(fields)


def test_rooms_another_edge_runs_are_dropped_with_their_devices() -> None:
    rooms, devices = overlay(TOML_ROOMS, TOML_DEVICES, push(other_rooms=["shed-b"]), "edge")
    assert [r.id for r in rooms] == ["shed-a", "cloud-c"]
    assert [d.id for d in devices] == ["a-sensor", "c-sensor"]


def test_without_other_rooms_the_tomls_rooms_stay() -> None:
    rooms, devices = overlay(TOML_ROOMS, TOML_DEVICES, push(), "edge")
    assert [r.id for r in rooms] == ["shed-a", "shed-b", "cloud-c"]
    assert len(devices) == 4


def test_a_pushed_device_in_a_room_run_elsewhere_is_refused() -> None:
    bad = push(devices=[DeviceSpec(id="x", room="shed-b", kind="sensor")], other_rooms=["shed-b"])
    with pytest.raises(ConfigRejected, match="unknown room"):
        overlay(TOML_ROOMS, TOML_DEVICES, bad, "edge")


def test_other_rooms_is_left_out_while_empty() -> None:
    assert "other_rooms" not in push().model_dump(mode="json")
    assert "other_rooms" not in push().model_dump_json()
    assert push(other_rooms=["shed-b"]).model_dump(mode="json")["other_rooms"] == ["shed-b"]
    # What a cloud without the field sends still reads, and round-trips unchanged.
    old = {"type": "config", "version": 3, "rooms": [], "devices": []}
    assert ConfigPush.model_validate(old).model_dump(mode="json") == old
