"""The edge's offline page in headless Chromium against a real edge (embedded broker, SQLite,
automation) and simulated devices, no cloud.

A grower logs in, reads dates as words ("just now", "14:05", "6 Dec"), switches the heater on by
hand and sees the hold with its time left, sees the heater's safety limit take over with its
reason and when it lets go, hands it back to automation; the page has no horizontal overflow at
390 px, touch targets of at least 44 px, visible keyboard focus, no console errors and no serious
axe-core violations at 390 and 1366 px.

Driven through the shared harness (tests/e2e/browser.py), which reads axe-core from
``<sys.prefix>/share/axe-core/axe.min.js`` (``make test`` puts the pinned copy there). Skipped with
the reason when Playwright, /usr/bin/chromium or that file is missing, unless
SMARTFARM_REQUIRE_BROWSER=1.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.farm import SimFarm, build_farm
from shared.rules import Safety
from tests.e2e.browser import (
    DESKTOP,
    PHONE,
    browser_session,
    check_view,
    need_browser,
    screenshot_dir,
)
from tests.e2e.conftest import fast_settings, make_site

pytestmark = [pytest.mark.browser]

ISO = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
EPOCH = re.compile(r"\b1[6-9]\d{8}(\.\d+)?\b")
MONTH = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
HEATER = "room-a-heater"


@contextlib.asynccontextmanager
async def _simulated(farm: SimFarm) -> AsyncIterator[SimFarm]:
    stop = asyncio.Event()
    task = asyncio.create_task(farm.run(stop), name="sim")
    try:
        yield farm
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def test_a_grower_runs_the_farm_from_the_edge_page(
    tmp_path: Path, farm_id: str, running_edge: Any,
) -> None:
    need_browser()
    from playwright.async_api import expect

    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    # The heater may run 3 s at a time and must then rest 10 min: a safety limit the page shows.
    heater = settings.device(HEATER)
    assert heater is not None
    heater.safety = Safety(max_on_s=3, min_off_s=600)
    edge = await running_edge(settings)
    password = settings.api.admin_password
    assert password is not None
    assert edge is not None
    url = f"http://127.0.0.1:{settings.api.port}/"
    farm = build_farm(settings, speed=10, telemetry_interval_s=1.0, seed=11)

    shots = screenshot_dir(tmp_path)
    async with _simulated(farm), browser_session() as session:
        page = await session.new_page(DESKTOP, locale="en-GB")
        page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))

        await page.goto(url)
        await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        await check_view(page, "edge-login", shots)
        await page.get_by_label("User name").fill("admin")
        await page.get_by_label("Password").fill(password.get_secret_value())
        await page.get_by_role("button", name="Log in").click()
        room = page.locator("article.room", has=page.get_by_role("heading", name="Room A"))
        await expect(room).to_be_visible(timeout=15_000)
        # Live readings, the devices online, in words.
        await expect(room.locator(".metric-value").first).not_to_have_text("no data",
                                                                          timeout=20_000)
        await expect(page.locator("#devices-summary")).to_have_text(
            re.compile(r"All \d+ devices online\."), timeout=20_000)
        await expect(page.locator("#devices")).to_contain_text("last heard just now")

        # Switch the heater on by hand for 15 min: the hold shows its time left.
        await room.get_by_label("Hand switching holds for").select_option("15")
        heater_row = room.locator("li.actuator", has_text="Heater")
        await heater_row.get_by_role("button", name="Turn on Heater").click()
        hold = heater_row.locator(".hold.manual")
        await expect(hold).to_be_visible(timeout=10_000)
        await expect(hold).to_contain_text(re.compile(
            r"Switched on by hand \(admin\): 1[45] min left, then automation takes over"
            # (a day in front when the hold ends after midnight)
            r" \(at (\d{1,2} \w{3} )?\d{2}:\d{2}\)\."))
        await expect(page.locator("#commands")).to_contain_text("Switch on")
        await expect(page.locator("#commands")).to_contain_text("by hand")
        await expect(page.locator("#commands")).to_contain_text("manual by admin for 15 min")

        # 3 s later the safety limit switches it off and says why and until when.
        safety = heater_row.locator(".hold.safety")
        await expect(safety).to_contain_text(re.compile(
            r"Held off by a safety limit \(it would be on\): resting 10 min after max runtime"
            r" \(rested \d+ s\)\. Lets go in (10|9) min \(at (\d{1,2} \w{3} )?\d{2}:\d{2}\)\."),
            timeout=15_000)
        await expect(heater_row.locator(".act-why")).to_contain_text(re.compile(
            r"Why: automation — max runtime 3 s reached \(safety\) · (just now|\d+ min ago)"))

        # Readable dates everywhere, never ISO strings or epoch seconds.
        await page.get_by_label("Stage").first.select_option("pinning")
        await expect(room.locator(".stage-row")).to_contain_text(
            re.compile(rf"since \d{{1,2}} {MONTH}"), timeout=10_000)
        await expect(page.locator("#commands")).to_contain_text("just now")
        text = await page.locator("body").inner_text()
        assert not ISO.search(text), ISO.search(text)
        assert not EPOCH.search(text), EPOCH.search(text)

        # Keyboard: Tab reaches the controls and the focus is visible.
        await page.locator("#logout").focus()
        await page.keyboard.press("Tab")
        outline = await page.evaluate(
            "() => { const s = getComputedStyle(document.activeElement);"
            " return [document.activeElement.tagName, s.outlineStyle, s.outlineWidth]; }")
        assert outline[1] != "none" and float(outline[2].removesuffix("px")) >= 2, outline

        await check_view(page, "edge-page", shots)

        # Back to automation: the hold goes.
        await hold.get_by_role("button", name="Back to auto for Heater").click()
        await expect(hold).to_be_hidden(timeout=10_000)
        await expect(page.locator("#flash")).to_contain_text("Heater: back to automation")

        # A phone in the grow room.
        await page.set_viewport_size(PHONE)
        await page.wait_for_timeout(500)
        await check_view(page, "edge-page-auto", shots, dark=False)
