"""The cloud's room page saves a device's ESPHome node file: the grower signs in, opens a room,
presses *ESPHome node file* on a device, and gets the file the API serves (no password in it:
the cloud keeps only a hash)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import PASSWORD, Cloud, cloud
from tests.e2e.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, _need_browser
from tests.e2e.test_edge_cloud import online_farm

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud)


async def test_the_room_page_saves_a_devices_esphome_file(
    cloud: Any, tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    _need_browser()
    from playwright.async_api import async_playwright, expect

    the_cloud: Cloud = await cloud()
    await online_farm(the_cloud, tmp_path, farm_id, running_edge)
    assert the_cloud.session is not None
    async with the_cloud.session.get(
        the_cloud.url + "/api/devices/room-a-fan/esphome.yaml",
        headers={"Authorization": f"Bearer {the_cloud.token}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        served = await resp.text()
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 390, "height": 844},
                                                accept_downloads=True)
            page = await context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.goto(the_cloud.url + "/")
            await page.fill("#email", "owner@sync.test")
            await page.fill("#password", PASSWORD)
            await page.click("button[type=submit]")
            card = page.locator('a.room[data-room="room-a"]')
            await card.wait_for(timeout=15_000)
            await card.click()
            fan = page.locator('li.device[data-device="room-a-fan"]')
            button = fan.get_by_role("button", name="Download the ESPHome node file")
            await expect(button).to_be_visible(timeout=15_000)
            box = await button.bounding_box()
            assert box is not None and box["height"] >= 44
            async with page.expect_download() as info:
                await button.click()
            download = await info.value
            assert download.suggested_filename == "room-a-fan.yaml"
            saved = tmp_path / "room-a-fan.yaml"
            await download.save_as(saved)
        finally:
            await browser.close()
    text = saved.read_text()
    assert text == served
    assert "password: !secret mqtt_password" in text and "farm/" in text
    assert problems == []
