"""The edge page's "Cloud sync" panel, in headless Chromium, on the real chain (simulator ▶ edge ▶
cloud on the real PostgreSQL): the engineer who installed the Pi sees that it is up to date with
its cloud and its commands channel open; when the cloud goes away, that it cannot reach it, what
waits on the edge and the error; when the cloud is back, that it caught up, every reading stored.
The panel passes the page's checks (axe, no overflow, 44 px targets) in both colour schemes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from firmware_sim.farm import build_farm
from tests.chaos.conftest import Cloud, cloud, until
from tests.e2e.browser import DESKTOP, browser_session, check_view, need_browser, screenshot_dir
from tests.e2e.test_edge_cloud import online_farm, simulated

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud)


async def test_the_edge_page_shows_whether_the_edge_reaches_its_cloud(
    cloud: Any, tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    need_browser()
    from playwright.async_api import expect

    the_cloud: Cloud = await cloud(command_ttl_s=60)
    edge, _ = await online_farm(the_cloud, tmp_path, farm_id, running_edge, batch_max_age_s=0.2)
    settings = edge.settings
    password = settings.api.admin_password
    assert password is not None
    farm = build_farm(settings, speed=10, telemetry_interval_s=1.0, seed=5)
    shots = screenshot_dir(tmp_path)
    async with simulated(farm), browser_session() as session:
        page = await session.new_page(DESKTOP, locale="en-GB")
        await page.goto(f"http://127.0.0.1:{settings.api.port}/")
        await page.get_by_label("User name").fill("admin")
        await page.get_by_label("Password").fill(password.get_secret_value())
        await page.get_by_role("button", name="Log in").click()

        panel = page.get_by_role("region", name="Cloud sync")
        state = panel.locator("#sync-state")
        await expect(state).to_have_text("Up to date with the cloud.", timeout=20_000)
        assert await state.get_attribute("data-level") == "ok"
        facts = panel.locator("#sync-facts")
        await expect(facts).to_contain_text(the_cloud.url)
        await expect(facts).to_contain_text("Last upload")
        await expect(facts).to_contain_text(re.compile(r"Commands from the cloud\s*open since"))
        await check_view(page, "edge-sync-ok", shots)

        # The cloud goes away: the panel says so, with what waits here and the error.
        port = urlsplit(the_cloud.url).port
        assert port is not None
        await the_cloud.stop(the_cloud.url)
        await expect(state).to_contain_text("Cannot reach the cloud", timeout=30_000)
        assert await state.get_attribute("data-level") == "bad"
        await expect(state).to_contain_text(
            re.compile(r"\d+ records? wait here, kept until the cloud has them\."), timeout=15_000)
        await expect(facts).to_contain_text("Last error")
        await expect(facts).to_contain_text(re.compile(r"Waiting to upload\s*(about )?\d+ record"))
        await check_view(page, "edge-sync-down", shots, dark=False)

        # Back on the same address: the edge catches up and the panel says it is up to date.
        await the_cloud.start(port)
        await expect(state).to_have_text("Up to date with the cloud.", timeout=60_000)
        await expect(facts).not_to_contain_text("Last error")
        # What waits now is the next batch, not the outage's backlog.
        await expect(facts).to_contain_text(
            re.compile(r"Waiting to upload\s*(nothing|\d+ records?, the oldest from just now)"))

    # Every record the edge queued while the cloud was away is in PostgreSQL.
    async def caught_up() -> bool:
        sync = await edge.sync_status()
        return sync["backlog_records"] == 0 and await the_cloud.high_water(
            settings.cloud.edge_id or "") >= sync["acked_seq"]

    await until(caught_up, 30, "the edge to catch up")
