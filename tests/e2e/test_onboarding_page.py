"""The edge page's "New devices" panel in headless Chromium against a real edge: a device that
knocked with the farm's claim code is listed; the grower shows the claim code, adopts the
device into a room as a heater, reads its password once, and the device then logs in with it.
No console errors (CSP: nothing inline), no serious axe-core violations, no layout problems."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge.config import load_config
from tests.e2e.conftest import fast_settings, make_site
from tests.e2e.test_edge_page import (
    AXE,
    CHROMIUM,
    CHROMIUM_ARGS,
    _axe_serious,
    _layout_problems,
    _need_browser,
)

pytestmark = [pytest.mark.browser]


async def _login(port: int, username: str, password: str) -> bool:
    try:
        async with aiomqtt.Client("127.0.0.1", port, username=username, password=password,
                                  identifier=f"{username}-{uuid.uuid4().hex[:4]}", timeout=5):
            return True
    except aiomqtt.MqttError:
        return False


async def test_a_grower_adopts_a_new_device_on_the_edge_page(
    tmp_path: Path, farm_id: str, running_edge: Any,
) -> None:
    _need_browser()
    from playwright.async_api import async_playwright, expect

    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    edge = await running_edge(settings)
    code = edge.onboarding.claim_code()
    port = edge.broker.port
    assert not await _login(port, "esp-5e4d3c", code)  # knocks: refused, listed
    password = settings.api.admin_password
    assert password is not None
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for width in (390, 1366):
                context = await browser.new_context(viewport={"width": width, "height": 900},
                                                    locale="en-GB")
                page = await context.new_page()
                page.on("console",
                        lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
                await page.goto(f"http://127.0.0.1:{settings.api.port}/")
                await page.get_by_label("User name").fill("admin")
                await page.get_by_label("Password").fill(password.get_secret_value())
                await page.get_by_role("button", name="Log in").click()
                panel = page.locator("#onboarding-section")
                await expect(panel).to_be_visible(timeout=15_000)
                item = panel.locator("li.pending-device", has_text="esp-5e4d3c")
                await expect(item).to_contain_text("asked 1×")
                await expect(item).to_contain_text("127.0.0.1")
                # The code is hidden until asked for.
                await expect(panel.locator("#claim-code")).not_to_have_text(code)
                await panel.get_by_role("button", name="Show").click()
                await expect(panel.locator("#claim-code")).to_have_text(code)
                assert await _layout_problems(page) == []
                if AXE.exists():
                    assert await _axe_serious(page) == []
                if width == 390:
                    await context.close()
                    continue
                await item.get_by_label("Room for esp-5e4d3c").select_option("room-a")
                await item.get_by_label("What esp-5e4d3c is").select_option(
                    label="Heater")
                await item.get_by_role("button", name="Adopt").click()
                secret = panel.locator("#adopted code.secret")
                await expect(secret).to_be_visible(timeout=10_000)
                await expect(panel.locator("#adopted")).to_contain_text(
                    "esp-5e4d3c adopted into room-a")
                shown = (await secret.inner_text()).strip()
                await expect(panel.locator("#pending-empty")).to_be_visible()
                await context.close()
        finally:
            await browser.close()
    assert problems == []
    device = load_config(settings.config_path).device("esp-5e4d3c")
    assert device is not None and device.actuator == "heater"
    for _ in range(20):
        if await _login(port, "esp-5e4d3c", shown):
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError("the adopted device cannot log in with the password shown")


async def test_a_grower_downloads_a_claim_mode_file_and_adopts_a_claim_mode_node(
    tmp_path: Path, farm_id: str, running_edge: Any,
) -> None:
    """The page's "Node file for a new ESP32" form downloads the claim-mode file (an id the
    edge already has is refused naming the field); a simulated claim-mode node shows up marked
    "claim mode", is adopted on the page with no password to copy, takes its credentials and
    logs in with them."""
    _need_browser()
    from playwright.async_api import async_playwright, expect

    from firmware_sim.claim import ClaimNode, Flash

    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    edge = await running_edge(settings)
    code = edge.onboarding.claim_code()
    node = ClaimNode(farm_id=farm_id, device_id="esp-0c1a1e", claim_code=code,
                     flash=Flash(tmp_path / "flash.json"), port=edge.broker.port, retry_s=0.3,
                     room_hint="room-a")
    claiming = asyncio.create_task(node.credentials())
    password = settings.api.admin_password
    assert password is not None
    problems: list[str] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(viewport={"width": 1366, "height": 900},
                                                    locale="en-GB", accept_downloads=True)
                page = await context.new_page()
                page.on("console",
                        lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                await page.goto(f"http://127.0.0.1:{settings.api.port}/")
                await page.get_by_label("User name").fill("admin")
                await page.get_by_label("Password").fill(password.get_secret_value())
                await page.get_by_role("button", name="Log in").click()
                panel = page.locator("#onboarding-section")
                await expect(panel).to_be_visible(timeout=15_000)
                await panel.get_by_text("Node file for a new ESP32 (claim mode)").click()
                form = panel.locator("#claim-file-form")
                await form.get_by_label("Node id").fill("room-a-fan")  # already a device
                await form.get_by_role("button", name="Download node file").click()
                await expect(panel.locator("#onboarding-message")).to_contain_text("device_id")
                await form.get_by_label("Node id").fill("esp-0c1a1e")
                await form.get_by_label("It is").select_option(label="Heater")
                await form.get_by_label("Edge address").fill("192.168.1.10")
                async with page.expect_download() as info:
                    await form.get_by_role("button", name="Download node file").click()
                download = await info.value
                assert download.suggested_filename == "esp-0c1a1e.yaml"
                text = Path(await download.path()).read_text()
                assert f'std::string("{code}")' in text and 'role != "heater"' in text
                if AXE.exists():
                    assert await _axe_serious(page) == []
                item = panel.locator("li.pending-device", has_text="esp-0c1a1e")
                await expect(item).to_contain_text("claim mode", timeout=15_000)
                await item.get_by_label("What esp-0c1a1e is").select_option(label="Heater")
                await item.get_by_role("button", name="Adopt").click()
                await expect(panel.locator("#adopted")).to_contain_text("No re-flash needed",
                                                                        timeout=10_000)
                assert await panel.locator("#adopted code.secret").count() == 0
                await context.close()
            finally:
                await browser.close()
        creds = await asyncio.wait_for(claiming, 20)
    finally:
        claiming.cancel()
    # Chromium logs the deliberately refused download (the taken id) as a failed resource.
    assert [p for p in problems if "status of 422" not in p] == []
    assert sum("status of 422" in p for p in problems) == 1
    assert (creds.room_id, creds.actuator) == ("room-a", "heater")
    for _ in range(20):
        if await _login(edge.broker.port, "esp-0c1a1e", creds.password):
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError("the claim-mode node cannot log in with what it was handed")
