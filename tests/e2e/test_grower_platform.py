"""The dashboard as a platform, in Chromium on the real chain (simulator ▶ edge ▶ cloud ▶
browser): a session that survives a new tab and a reload, tabs that sign out together, "sign
out everywhere" ending another browser's session; and the sign-in, farm and room views at a
phone's and a laptop's width with no serious accessibility violation (axe-core), no sideways
scrolling, no control too small to tap, keyboard focus that shows, and no console error.
Screenshots of each view at both widths land in $SMARTFARM_SCREENSHOTS (else the test's
temporary folder)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cloud.page import STATIC_DIR
from edge.config import load_config
from firmware_sim.farm import build_farm
from tests.chaos.conftest import PASSWORD, Cloud, cloud, until
from tests.e2e.browser import (
    DESKTOP,
    PHONE,
    browser_session,
    check_view,
    need_browser,
    screenshot_dir,
)
from tests.e2e.conftest import make_site
from tests.e2e.test_edge_cloud import EDGE_ID, online_farm, simulated

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud,)
EMAIL = "owner@sync.test"
REFRESH_KEY = "smartfarm.refresh"


async def sign_in(page: Any, url: str) -> None:
    await page.goto(url + "/#/login")
    await page.fill("#email", EMAIL)
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")


async def _shows(page: Any, selector: str, what: str, timeout: float = 20_000) -> None:
    try:
        await page.wait_for_selector(selector, timeout=timeout)
    except Exception as exc:
        text = await page.evaluate("document.body.innerText")
        stored = await page.evaluate(f"localStorage.getItem('{REFRESH_KEY}') !== null")
        raise AssertionError(f"no {what} at {page.url} (refresh token stored: {stored}); "
                             f"the page shows: {text!r}") from exc


async def signed_in_view(page: Any) -> None:
    """The single farm opens by itself: its room card shows."""
    await _shows(page, 'a.room[data-room="room-a"]', "farm view")


async def sign_in_page(page: Any) -> None:
    await _shows(page, "#email", "sign-in page")


async def open_menu(page: Any) -> None:
    await page.click("#menu > summary")
    await page.wait_for_selector("#logout", state="visible")


async def test_a_session_survives_new_tabs_and_signs_out_together(
    cloud: Any, tmp_path: Path, farm_id: str
) -> None:
    need_browser()
    the_cloud: Cloud = await cloud()
    await the_cloud.provision(load_config(make_site(tmp_path / "site", farm_id)), EDGE_ID)
    url = the_cloud.url
    async with browser_session() as session:
        # Refused refresh tokens (the revoked sessions below) are 401s Chromium logs as errors.
        session.allow(r"status of 401")
        laptop = await session.new_context(DESKTOP)
        first = await laptop.new_page()
        assets: list[tuple[str, int, str]] = []

        def seen(resp: Any) -> None:
            if "/static/" in resp.url:
                assets.append((resp.url, resp.status, resp.headers.get("content-encoding", "")))

        first.on("response", seen)
        await sign_in(first, url)
        await signed_in_view(first)
        # The scripts and styles came gzipped; a reload only revalidates them (304, no body).
        scripts = [a for a in assets if a[0].endswith((".js", ".css"))]
        assert len(scripts) >= 10 and all(a[1] == 200 for a in scripts), assets
        # (gzip only where it shrinks the file: a near-empty stylesheet goes as it is)
        plain = [a[0] for a in scripts if a[2] != "gzip"
                 and (STATIC_DIR / a[0].rsplit("/", 1)[1]).stat().st_size > 200]
        assert plain == [], plain
        assets.clear()
        await first.reload()
        await signed_in_view(first)
        scripts = [a for a in assets if a[0].endswith((".js", ".css"))]
        assert len(scripts) >= 10 and all(a[1] == 304 for a in scripts), assets
        first.remove_listener("response", seen)
        assert await first.evaluate(f"Boolean(localStorage.getItem('{REFRESH_KEY}'))")

        # A new tab of the same browser: signed in, no sign-in form; a reload too.
        second = await laptop.new_page()
        await second.goto(f"{url}/#/farm/{farm_id}")
        await signed_in_view(second)
        assert await second.locator("#email").count() == 0
        await second.reload()
        await signed_in_view(second)

        # Both tabs need a new access token at the same moment: they take turns with the one
        # refresh token (a replay would end the session), and both stay signed in, time and
        # again (tokens copied between the browser's processes late once made this fail).
        for _ in range(4):
            for page in (first, second):
                await page.evaluate("sessionStorage.clear()")
            await asyncio.gather(first.reload(), second.reload())
            await asyncio.gather(signed_in_view(first), signed_in_view(second))
        third = await laptop.new_page()
        await third.goto(url + "/")
        await signed_in_view(third)
        await third.close()

        # Signing out in one tab signs out the other, which says why.
        await open_menu(first)
        await first.click("#logout")
        await sign_in_page(first)
        assert "signed out" in (await first.text_content("#notice") or "")
        await sign_in_page(second)
        assert "another tab" in (await second.text_content("#notice") or "")
        assert await second.evaluate(f"localStorage.getItem('{REFRESH_KEY}')") is None

        # Signing in again in one tab brings the other along.
        await sign_in(first, url)
        await signed_in_view(first)
        await signed_in_view(second)

        # Another browser (its own storage) signs in too; "sign out everywhere" from the laptop
        # ends that browser's session as well as this one.
        phone_browser = await session.new_context(PHONE, is_mobile=True, has_touch=True)
        phone = await phone_browser.new_page()
        await sign_in(phone, url)
        await signed_in_view(phone)

        await open_menu(first)
        await first.click("#logout-all")
        await first.wait_for_selector("#logout-all-confirm", state="visible")
        await first.click("#logout-all-yes")
        await sign_in_page(first)
        notice = await first.text_content("#notice") or ""
        # The laptop, the phone, and the test's own API client (signed in as the same owner).
        assert "Signed out everywhere (3 sessions ended)" in notice, notice
        await sign_in_page(second)
        # The phone's next need of a token fails: a new tab, or the next page load.
        phone_tab = await phone_browser.new_page()
        await phone_tab.goto(url + "/")
        await sign_in_page(phone_tab)
        await phone.reload()
        await sign_in_page(phone)
        assert await phone.evaluate(f"localStorage.getItem('{REFRESH_KEY}')") is None
        sessions = await the_cloud.rows(
            "SELECT count(*) AS live FROM refresh_tokens WHERE revoked_at IS NULL")
        assert sessions[0]["live"] == 0


async def test_every_view_is_accessible_at_a_phone_and_a_laptop_width(
    cloud: Any, tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    need_browser()
    the_cloud: Cloud = await cloud()
    edge: Any
    edge, _ = await online_farm(the_cloud, tmp_path, farm_id, running_edge, batch_max_age_s=0.2)
    farm = build_farm(edge.settings, speed=10, telemetry_interval_s=1.0, seed=7)
    shots = screenshot_dir(tmp_path)
    async with simulated(farm), browser_session() as session:
        page = await session.new_page(PHONE)
        await page.goto(the_cloud.url + "/")
        await page.wait_for_selector("#email")

        # The sign-in form takes the focus; before it come only the brand and the skip link,
        # which shows when focused and takes focus to the view; focus is always visible.
        assert await page.evaluate("document.activeElement.id") == "email"
        await page.keyboard.press("Shift+Tab")
        assert await page.evaluate("document.activeElement.className") == "brand"
        await page.keyboard.press("Shift+Tab")
        assert await page.evaluate("document.activeElement.id") == "skip"
        assert await page.locator("#skip").is_visible()
        box = await page.locator("#skip").bounding_box()
        assert box is not None and box["y"] >= 0 and box["height"] >= 44, box
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("none", ""), outline
        await page.keyboard.press("Enter")
        assert await page.evaluate("document.activeElement.id") == "view"
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == "email"
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("none", ""), outline
        await check_view(page, "login", shots)

        # A wrong password: announced, and the fields marked.
        session.allow(r"status of 401")
        await page.fill("#email", EMAIL)
        await page.fill("#password", "not the password")
        await page.press("#password", "Enter")
        error = page.locator("#login-error")
        await error.wait_for(state="visible")
        assert await error.get_attribute("role") == "alert"
        assert await error.text_content() == "Wrong email or password."
        assert await page.get_attribute("#password", "aria-invalid") == "true"
        await check_view(page, "login-error", shots)

        # Signed in by keyboard alone.
        await page.fill("#password", PASSWORD)
        await page.press("#password", "Enter")
        await signed_in_view(page)
        await until(lambda: readings(the_cloud), 20, "readings in the cloud", 0.3)
        await page.reload()
        await signed_in_view(page)
        await page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
        await check_view(page, "farm", shots)

        # The account menu, open, at both widths.
        await open_menu(page)
        await check_view(page, "farm-menu", shots)
        await page.keyboard.press("Escape")
        assert not await page.evaluate("document.getElementById('menu').open")

        await page.click('a.room[data-room="room-a"]')
        await page.wait_for_selector('figure.chart[data-metric="temperature_c"]', timeout=15_000)
        await page.wait_for_timeout(500)  # the first chart data and live state
        await check_view(page, "room", shots)

        # A grower with two farms starts from the list of farms.
        await the_cloud.api("POST", "/api/farms", {"id": f"{farm_id}-b", "name": "Hill farm"})
        await page.click(".brand")
        await page.wait_for_selector(f'a[href="#/farm/{farm_id}-b"]', timeout=10_000)
        await check_view(page, "farms", shots)
    for name in ("login", "farm", "room", "farms"):
        for width in ("390", "1366"):
            assert (shots / f"{name}-{width}.png").stat().st_size > 5_000, (name, width)
    print(f"screenshots and axe results: {shots}")


async def readings(the_cloud: Cloud) -> bool:
    rows = await the_cloud.rows("SELECT count(*) AS n FROM sensor_data")
    return bool(rows[0]["n"] >= 3)
