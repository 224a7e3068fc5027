"""The version a device runs reaches the cloud: simulated nodes ▶ real edge ▶ real cloud on
PostgreSQL ▶ headless Chromium. A node updated from the edge over the LAN shows its new firmware
in the cloud's device API, room view and, live, on the room page (edge status records carry it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.cli import edge_main
from firmware_sim.farm import build_farm
from tests.chaos.conftest import Cloud, cloud, edge_app, until
from tests.e2e.browser import DESKTOP, browser_session, check_view, need_browser, screenshot_dir
from tests.e2e.test_edge_cloud import online_farm, simulated
from tests.e2e.test_firmware_ota import HEATER, _image
from tests.e2e.test_grower_operate import sign_in

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud, edge_app)


async def test_the_cloud_shows_the_version_a_node_runs_after_an_update_from_the_edge(
    cloud: Any, tmp_path: Path, farm_id: str, edge_app: Any,
) -> None:
    need_browser()
    from playwright.async_api import expect

    the_cloud: Cloud = await cloud()
    run, _reg = await online_farm(the_cloud, tmp_path, farm_id, edge_app)
    settings = run.app.settings
    base = f"http://127.0.0.1:{settings.api.port}"
    settings.api.firmware_base_url = base  # the nodes run on this machine
    assert edge_main(["firmware", "add", str(_image(tmp_path / "h.bin")), "--version", "1.2.0",
                      "--device", HEATER, "--config", str(settings.config_path)]) == 0
    farm = build_farm(settings, speed=10, telemetry_interval_s=1.0, seed=7)

    async def cloud_firmware() -> str | None:
        device = await the_cloud.api("GET", f"/api/devices/{HEATER}")
        return device["firmware"]  # type: ignore[no-any-return]

    async with simulated(farm), browser_session() as session:
        await until(lambda: _is(cloud_firmware, "smartfarm-sim/0.1"), 20,
                    "the heater's first status in the cloud")
        page = await session.new_page(DESKTOP)
        await sign_in(page, the_cloud.url)
        await page.locator('a.room[data-room="room-a"]').wait_for(timeout=15_000)
        await page.goto(the_cloud.url + f"/#/farm/{farm_id}/room/room-a")
        await page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
        row = page.locator(f'li.device[data-device="{HEATER}"]')
        await expect(row.locator(".firmware")).to_have_text("firmware smartfarm-sim/0.1",
                                                            timeout=10_000)
        await check_view(page, "room-firmware", screenshot_dir(tmp_path))
        password = settings.api.admin_password
        assert password is not None
        auth = aiohttp.BasicAuth("admin", password.get_secret_value())
        async with aiohttp.ClientSession(auth=auth) as http:
            async with http.post(f"{base}/api/devices/{HEATER}/firmware",
                                 json={"version": "1.2.0"}) as resp:
                assert resp.status == 202, await resp.text()
        await until(lambda: _is(cloud_firmware, "smartfarm-sim/1.2.0"), 20,
                    "the new version in the cloud")
        # The room page, left open, shows it without a reload (the live status message).
        await expect(row.locator(".firmware")).to_have_text("firmware smartfarm-sim/1.2.0",
                                                            timeout=10_000)
        live = await the_cloud.api("GET", "/api/rooms/room-a/live")
        by_id = {d["id"]: d for d in live["devices"]}
        assert by_id[HEATER]["firmware"] == "smartfarm-sim/1.2.0"
        assert by_id["room-a-sensor"]["firmware"] == "smartfarm-sim/0.1"
        listing = await the_cloud.api("GET", "/api/rooms/room-a/devices")
        assert {d["id"]: d["firmware"] for d in listing["items"]}[HEATER] == (
            "smartfarm-sim/1.2.0")
    await run.stop()


async def _is(read: Any, want: str) -> bool:
    return bool(await read() == want)
