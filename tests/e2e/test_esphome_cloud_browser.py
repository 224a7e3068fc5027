"""The cloud's room page saves a device's ESPHome node file: the grower signs in, opens a room,
presses *ESPHome node file* on a device, and gets the file the API serves (no password in it:
the cloud keeps only a hash)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import Cloud, cloud
from tests.e2e.browser import PHONE, browser_session, check_view, need_browser, screenshot_dir
from tests.e2e.test_edge_cloud import online_farm
from tests.e2e.test_grower_operate import sign_in

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud)


async def test_the_room_page_saves_a_devices_esphome_file(
    cloud: Any, tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    need_browser()
    from playwright.async_api import expect

    the_cloud: Cloud = await cloud()
    await online_farm(the_cloud, tmp_path, farm_id, running_edge)
    assert the_cloud.session is not None
    async with the_cloud.session.get(
        the_cloud.url + "/api/devices/room-a-fan/esphome.yaml",
        headers={"Authorization": f"Bearer {the_cloud.token}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        served = await resp.text()
    async with browser_session() as session:
        page = await session.new_page(PHONE, accept_downloads=True)
        await sign_in(page, the_cloud.url)
        card = page.locator('a.room[data-room="room-a"]')
        await card.wait_for(timeout=15_000)
        await card.click()
        fan = page.locator('li.device[data-device="room-a-fan"]')
        button = fan.get_by_role("button", name="Download the ESPHome node file")
        await expect(button).to_be_visible(timeout=15_000)
        await check_view(page, "room-esphome", screenshot_dir(tmp_path))
        async with page.expect_download() as info:
            await button.click()
        download = await info.value
        assert download.suggested_filename == "room-a-fan.yaml"
        saved = tmp_path / "room-a-fan.yaml"
        await download.save_as(saved)
    text = saved.read_text()
    assert text == served
    assert "password: !secret mqtt_password" in text and "farm/" in text
