"""The firmware each device runs, as its edge reports it (status records' ``firmware``), on the
cloud's room view, device list and device: kept when a later status (a last will, an older edge)
does not say, refused when it is not a plausible version."""
from __future__ import annotations

import time
from typing import Any

import pytest

from tests.cloud import world as w
from tests.cloud.test_edge_sync import batch, ok, record, rows, upload

pytestmark = pytest.mark.postgres


def status(seq: int, firmware: str | None, *, online: bool = True,
           at: float | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"device_id": w.ACTUATOR_B, "room_id": w.ROOM_B, "online": online,
                            "state": {"on": True} if online else {},
                            "at": time.time() if at is None else at}
    if firmware is not None:
        data["firmware"] = firmware
    return record(seq, "status", data)


async def _firmware(client: Any, headers: dict[str, str]) -> tuple[Any, Any, Any]:
    live = await ok(await client.get(f"/api/rooms/{w.ROOM_B}/live", headers=headers))
    device = await ok(await client.get(f"/api/devices/{w.ACTUATOR_B}", headers=headers))
    listing = await ok(await client.get(f"/api/rooms/{w.ROOM_B}/devices", headers=headers))
    return (next(d["firmware"] for d in live["devices"] if d["id"] == w.ACTUATOR_B),
            device["firmware"],
            next(d["firmware"] for d in listing["items"] if d["id"] == w.ACTUATOR_B))


async def test_the_cloud_shows_the_firmware_each_device_reports(
    world_client: Any, world_dsn: str, auth: Any,
) -> None:
    viewer = auth("viewer")
    assert await _firmware(world_client, viewer) == (None, None, None)  # never reported

    now = time.time()
    ack = await ok(await upload(world_client, batch([status(1, "smartfarm-esphome/1.2.0",
                                                            at=now)])))
    assert ack["acked_seq"] == 1
    assert await _firmware(world_client, viewer) == ("smartfarm-esphome/1.2.0",) * 3

    # Its last will (no firmware) and an older edge's record (no key) keep the known version.
    await ok(await upload(world_client, batch([status(2, None, online=False, at=now + 1)])))
    assert await _firmware(world_client, viewer) == ("smartfarm-esphome/1.2.0",) * 3
    stored = await rows(world_dsn, "SELECT online, firmware FROM device_status")
    assert stored == [{"online": False, "firmware": "smartfarm-esphome/1.2.0"}]

    # An update: the new version replaces it.
    await ok(await upload(world_client, batch([status(3, "smartfarm-esphome/1.3.0",
                                                      at=now + 2)])))
    assert await _firmware(world_client, viewer) == ("smartfarm-esphome/1.3.0",) * 3

    # Nonsense is quarantined with its reason, never stored.
    await ok(await upload(world_client, batch([status(4, "x" * 65, at=now + 3)])))
    quarantined = await rows(world_dsn, "SELECT reason FROM edge_quarantine WHERE seq = 4")
    assert quarantined and "firmware" in quarantined[0]["reason"], quarantined
    assert await _firmware(world_client, viewer) == ("smartfarm-esphome/1.3.0",) * 3
