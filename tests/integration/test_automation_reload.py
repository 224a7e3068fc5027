"""A config reload (the cloud's config arriving, a room added) rebuilds the rooms' rules but keeps
the readings each running room holds in memory: it must not set a room back to the store's older
values (the newest readings wait for the group commit), and a room new to the edge starts from
the store's newest readings."""
from __future__ import annotations

from pathlib import Path

from edge.config import DeviceConfig, RoomConfig
from shared.models import Telemetry, utcnow
from tests.integration.test_edge_api import Edge, build_edge, make_settings


async def committed(edge: Edge) -> None:
    """Every write queued so far is committed (an urgent write commits its group)."""
    await edge.db.write(lambda conn: None, urgent=True)


async def test_a_reload_keeps_a_running_rooms_newest_readings(farm_id: str, tmp_path: Path) -> None:
    edge = await build_edge(make_settings(farm_id, tmp_path), tmp_path)
    try:
        await edge.telemetry("sens-a", {"humidity_pct": 80.0}, ago_s=30)
        await committed(edge)
        assert edge.automation.latest("room-a")["humidity_pct"].value == 80.0
        # A newer reading the automation took in, not committed yet when the reload comes.
        newer = Telemetry(device_id="sens-a", timestamp=utcnow(), data={"humidity_pct": 91.0})
        pending = edge.automation.on_reading("room-a", newer)
        if pending is not None:
            await pending

        await edge.automation.load()

        assert edge.automation.latest("room-a")["humidity_pct"].value == 91.0
    finally:
        await edge.commands.close()
        await edge.db.close()


async def test_a_room_new_to_the_edge_starts_from_the_stores_newest(
    farm_id: str, tmp_path: Path
) -> None:
    settings = make_settings(farm_id, tmp_path)
    edge = await build_edge(settings, tmp_path)
    try:
        # Readings of a room this edge does not run yet (stored by the ingest all the same).
        settings.rooms.append(RoomConfig(id="room-c", species="oyster", stage="fruiting"))
        settings.devices.append(DeviceConfig(id="sens-c", room="room-c", kind="sensor"))
        await edge.telemetry("sens-c", {"temperature_c": 17.5}, ago_s=20)
        await edge.telemetry("sens-c", {"temperature_c": 18.25}, ago_s=10)
        await committed(edge)
        assert "room-c" not in edge.automation.rooms

        await edge.automation.load()

        assert edge.automation.latest("room-c")["temperature_c"].value == 18.25
    finally:
        await edge.commands.close()
        await edge.db.close()
