"""The edge page's download: a grower logs in, downloads a device's ESPHome node file from the
device list in headless Chromium, and ESPHome accepts that very file (when it is installed:
``make test`` sets SMARTFARM_ESPHOME). The page with the download link is checked with the shared
harness (tests/e2e/browser.py): no sideways scrolling, no serious axe-core violation, no control
under 44 px on a phone, no console error."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.credentials import DeviceSecrets
from tests.e2e.browser import PHONE, browser_session, check_view, need_browser, screenshot_dir
from tests.e2e.conftest import fast_settings, make_site
from tests.integration.test_esphome_config import SECRETS, esphome_binary

pytestmark = [pytest.mark.browser]


async def test_a_grower_downloads_a_devices_esphome_file_from_the_edge_page(
    tmp_path: Path, farm_id: str, running_edge: Any,
) -> None:
    need_browser()
    from playwright.async_api import expect

    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    await running_edge(settings)
    password = settings.api.admin_password
    assert password is not None
    device = next(d for d in settings.devices if d.kind == "actuator")
    device_password = DeviceSecrets.load(settings.device_secrets_path).devices[device.id]
    async with browser_session() as session:
        page = await session.new_page(PHONE, accept_downloads=True)
        await page.goto(f"http://127.0.0.1:{settings.api.port}/")
        await page.get_by_label("User name").fill("admin")
        await page.get_by_label("Password").fill(password.get_secret_value())
        await page.get_by_role("button", name="Log in").click()
        row = page.locator("#devices li.device", has=page.locator(f"[title='{device.id}']"))
        link = row.get_by_role("link", name="ESPHome node file")
        await expect(link).to_be_visible(timeout=15_000)
        async with page.expect_download() as info:
            await link.click()
        download = await info.value
        assert download.suggested_filename == f"{device.id}.yaml"
        saved = tmp_path / "node" / f"{device.id}.yaml"
        saved.parent.mkdir()
        await download.save_as(saved)
        await check_view(page, "edge-esphome-download", screenshot_dir(tmp_path))
    # Leaving the session failed the test on any console or page error.
    text = saved.read_text()
    assert f'password: "{device_password}"' in text
    assert f"farm/{farm_id}/room/{device.room}/command/{device.id}" in text
    binary = esphome_binary()
    if binary is not None:
        (saved.parent / "secrets.yaml").write_text(SECRETS)
        result = subprocess.run([binary, "config", saved.name], cwd=saved.parent,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout[-2000:]
