"""A grower operating a farm from the dashboard, in headless Chromium on the real chain
(simulator ▶ edge ▶ cloud ▶ browser):

an alarm the edge raises appears in the room with its severity; the grower acknowledges it with a
note and finds it in the farm's alarm history, which follows it live to "cleared" when the edge
says the condition ended; switching the fan shows in the room's command audit with the user and
the device's answer (and in the farm's audit); a harvest with its weight and a note logged in the
room's logbook are listed there, beside the stage the room was created in.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cloud.db.database import Database
from cloud.notify.episodes import Episodes
from cloud.notify.settings import NotifyConfig
from firmware_sim.farm import build_farm
from tests.chaos.conftest import PASSWORD, Cloud, cloud, until
from tests.e2e.browser import PHONE, browser_session, horizontal_overflow, screenshot_dir
from tests.e2e.test_edge_cloud import online_farm, simulated

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud)
FAILED = "failed:room-a-fan"


class _NoQueue:
    async def defer(self, task: str, **kwargs: Any) -> int | None:
        return None


async def process_alerts(the_cloud: Cloud) -> None:
    """What the process_alerts job does (the test cloud runs no worker): edge alerts, uploaded
    and turned into events by the trigger, folded into alarms."""
    db = await Database.connect(the_cloud.dsn, min_size=1, max_size=1)
    try:
        await Episodes(db, _NoQueue(), NotifyConfig(), email_possible=False).run(
            now=datetime.now(UTC)
        )
    finally:
        await db.close()


async def alarm_state(the_cloud: Cloud, want: str) -> dict[str, Any] | None:
    await process_alerts(the_cloud)
    found = await the_cloud.rows(
        "SELECT id, severity, state FROM alert_episodes WHERE key = %s ORDER BY id DESC LIMIT 1",
        (FAILED,),
    )
    return found[0] if found and found[0]["state"] == want else None


async def sign_in(page: Any, url: str) -> None:
    await page.goto(url + "/")
    await page.fill("#email", "owner@sync.test")
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")


async def no_overflow(page: Any, what: str) -> None:
    overflow = await horizontal_overflow(page)
    assert overflow <= 1, f"{what} is {overflow}px wider than a phone"


async def test_a_grower_handles_an_alarm_audits_a_switch_and_keeps_the_logbook(
    cloud: Any, tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    edge, _ = await online_farm(the_cloud, tmp_path, farm_id, running_edge, batch_max_age_s=0.2)
    farm = build_farm(edge.settings, speed=10, telemetry_interval_s=1.0, seed=7)
    room_url = f"#/farm/{farm_id}/room/room-a"
    async with simulated(farm), browser_session(axe=False) as session:
        shots = screenshot_dir(tmp_path)
        page = await session.new_page({"width": 1366, "height": 1000})
        await sign_in(page, the_cloud.url)
        await page.locator('a.room[data-room="room-a"]').wait_for(timeout=15_000)
        await page.goto(the_cloud.url + "/" + room_url)
        await page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
        # The room has loaded (its logbook last) and subscribed to its live updates.
        await page.wait_for_selector('li.log-entry[data-kind="stage"]', timeout=10_000)
        await page.wait_for_timeout(500)

        # ---- an alarm raised on the edge, which calls it mere information ------------------
        await edge.alerts.raise_alert(
            FAILED, kind="command_failed", room_id="room-a", device_id="room-a-fan",
            severity="info", message="actuator room-a-fan refused command c-17: relay stuck",
        )
        alarm = await until(lambda: alarm_state(the_cloud, "active"), 30, "the alarm", 0.3)
        assert alarm["severity"] == "warning"  # a refused command is at least a warning
        item = page.locator(f'section.alerts li.alarm[data-alert="{alarm["id"]}"]')
        await item.wait_for(timeout=10_000)  # live: the page was open before it started
        assert await item.get_attribute("data-severity") == "warning"
        assert (await item.locator(".badge").text_content()) == "Warning"
        assert "Command failed" in (await item.text_content() or "")

        await item.locator("button", has_text="Acknowledge").click()
        await item.locator('input[name="note"]').fill("checking the fan relay")
        await item.locator('form button[type="submit"]').click()
        acked = page.locator(
            f'li.alarm[data-alert="{alarm["id"]}"][data-status="acknowledged"]')
        await acked.wait_for(timeout=10_000)
        text = await acked.text_content() or ""
        assert "Acknowledged by owner@sync.test" in text and "checking the fan relay" in text
        await page.screenshot(path=str(shots / "operate-room-alarm.png"), full_page=True)

        # The farm's alarm history has it; the grower clears it there once fixed.
        await page.click("text=Alarm history")
        await page.wait_for_selector("h1:has-text('Alarms')")
        assert await page.input_value("#alarm-room") == "room-a"  # it came from the room
        await page.select_option("#alarm-status", "acknowledged")
        await page.click("form.operate-filters button[type=submit]")
        await page.wait_for_selector('ul[aria-busy="false"] li.alarm')
        row = page.locator(f'li.alarm[data-alert="{alarm["id"]}"]')
        await row.wait_for(timeout=10_000)
        assert await row.get_attribute("data-status") == "acknowledged"
        assert await page.locator("li.alarm").count() == 1
        await page.select_option("#alarm-status", "")
        await page.click("form.operate-filters button[type=submit]")
        await page.wait_for_selector('ul[aria-busy="false"] li.alarm')
        await row.locator("button", has_text="Clear").click()
        await row.locator('input[name="note"]').fill("relay replaced")
        await row.locator('form button[type="submit"]').click()
        await page.wait_for_selector(
            f'li.alarm[data-alert="{alarm["id"]}"][data-status="cleared"]', timeout=10_000)
        history = await page.locator(f'li.alarm[data-alert="{alarm["id"]}"]').text_content()
        assert "Cleared by owner@sync.test" in (history or "")
        assert "relay replaced" in (history or "")
        assert "Acknowledged by owner@sync.test" in (history or "")
        assert await alarm_state(the_cloud, "resolved") is not None

        # ---- a switch, audited with the user and the device's answer ------------------------
        await page.goto(the_cloud.url + "/" + room_url)
        fan = page.locator('li.device[data-device="room-a-fan"]')
        await fan.locator('button[data-action="on"]').click()
        await page.wait_for_selector(
            'li.device[data-device="room-a-fan"] ol.life[data-status="acked"]', timeout=15_000)
        audited = page.locator('section.audit-section li.audit-row[data-outcome="acked"]'
                               '[data-origin="user"]')
        await audited.first.wait_for(timeout=15_000)
        line = await audited.first.text_content() or ""
        assert "Switched on: room-a-fan" in line and "owner@sync.test" in line, line
        assert "device answered in" in line, line

        # ---- the logbook: a harvest with its weight and a note ------------------------------
        logbook = page.locator("section.logbook-section")
        assert "Stage: Fruiting" in (await logbook.text_content() or "")
        await logbook.locator("button", has_text="Log harvest").click()
        await page.fill("#log-harvest-weight", "3.25")
        await page.fill("#log-harvest-note", "tray 4 heavy")
        await logbook.locator('form.log-form button[type="submit"]').click()
        harvest = logbook.locator('li.log-entry[data-kind="harvest"]')
        await harvest.wait_for(timeout=10_000)
        assert "Harvest 3.25 kg (flush 1)" in (await harvest.text_content() or "")
        assert "tray 4 heavy" in (await harvest.text_content() or "")
        # ... and is a marker on every chart, read from the logbook's own route.
        await page.reload()
        marker = page.locator('figure.chart[data-metric="temperature_c"] g.marker.kind-harvest')
        await marker.wait_for(timeout=15_000)
        assert "Harvest 3.25 kg" in (await marker.locator("title").text_content() or "")
        await harvest.wait_for(timeout=10_000)
        await logbook.locator("button", has_text="Add note").click()
        await page.fill("#log-note-text", "misting nozzle 2 cleaned")
        await logbook.locator('form.log-form button[type="submit"]').click()
        note = logbook.locator('li.log-entry[data-kind="note"]')
        await note.wait_for(timeout=10_000)
        assert "misting nozzle 2 cleaned" in (await note.text_content() or "")
        assert "by owner@sync.test" in (await note.text_content() or "")
        kinds = await logbook.locator("li.log-entry").evaluate_all(
            "els => els.map(e => e.dataset.kind)")
        assert kinds[:2] == ["note", "harvest"] and kinds[-1] == "stage", kinds
        # A harvest without a weight: the refusal shows at the field (the API's 422 is logged
        # by Chromium: expected).
        session.allow(r"status of 422")
        await logbook.locator("button", has_text="Log harvest").click()
        await logbook.locator('form.log-form button[type="submit"]').click()
        error = page.locator("#log-harvest-weight-error")
        await error.wait_for(state="visible", timeout=10_000)
        assert await page.get_attribute("#log-harvest-weight", "aria-invalid") == "true"
        await page.screenshot(path=str(shots / "operate-room.png"), full_page=True)
        await logbook.locator("button", has_text="Cancel").click()
        # A note written by mistake goes, after a second click.
        await note.locator("button", has_text="Remove note").click()
        await note.locator("button", has_text="Yes, remove").click()
        await note.wait_for(state="detached", timeout=10_000)
        assert await logbook.locator('li.log-entry[data-kind="harvest"]').count() == 1
        # A new batch, with its substrate: it heads the yield box.
        await logbook.locator("button", has_text="New batch").click()
        await page.fill("#log-batch-strain", "Blue oyster PoHu")
        await page.fill("#log-batch-substrate", "straw")
        await page.fill("#log-batch-dry", "12.5")
        await logbook.locator('form.log-form button[type="submit"]').click()
        batch = logbook.locator('li.log-entry[data-kind="batch"]')
        await batch.wait_for(timeout=10_000)
        assert "New batch: Blue oyster PoHu" in (await batch.text_content() or "")
        assert "12.5 kg dry substrate" in (await batch.text_content() or "")
        yield_box = logbook.locator(".yield-box", has_text="12.5 kg dry")
        await yield_box.wait_for(timeout=10_000)
        heading = await yield_box.text_content() or ""
        assert "Current batch: Blue oyster PoHu on straw" in heading and "day 1" in heading

        # The farm's command audit lists the switch too.
        await page.goto(the_cloud.url + f"/#/farm/{farm_id}/alarms/audit")
        farm_row = page.locator('li.audit-row[data-origin="user"][data-outcome="acked"]')
        await farm_row.first.wait_for(timeout=10_000)
        assert "owner@sync.test" in (await farm_row.first.text_content() or "")

        # ---- a phone: the room and the alarms fit the screen --------------------------------
        phone = await session.new_page(PHONE, device_scale_factor=2, is_mobile=True)
        await sign_in(phone, the_cloud.url)
        await phone.locator('a.room[data-room="room-a"]').wait_for(timeout=15_000)
        await phone.goto(the_cloud.url + "/" + room_url)
        await phone.wait_for_selector('li.log-entry[data-kind="harvest"]', timeout=10_000)
        await phone.locator("button", has_text="New batch").click()
        await no_overflow(phone, "the room page")
        await phone.goto(the_cloud.url + f"/#/farm/{farm_id}/alarms")
        await phone.wait_for_selector(f'li.alarm[data-alert="{alarm["id"]}"]', timeout=10_000)
        await no_overflow(phone, "the alarm history")
        await phone.goto(the_cloud.url + f"/#/farm/{farm_id}/alarms/audit")
        await phone.locator("li.audit-row").first.wait_for(timeout=10_000)
        await no_overflow(phone, "the command audit")
        await phone.screenshot(path=str(shots / "operate-phone.png"), full_page=True)
    # Leaving the session checked both pages: no other console error and no page error.
    print(f"screenshots: {shots}/operate-*.png")


async def test_a_switch_made_while_the_room_still_loads_shows_the_device_answer(
    cloud: Any, tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    """A grower who switches a fan the moment the room's devices show (its audit and logbook
    still loading, as on a slow phone link) sees the device's answer there: the page listens to
    the room's live updates before a control can be used, not once everything has loaded."""
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    edge, _ = await online_farm(the_cloud, tmp_path, farm_id, running_edge, batch_max_age_s=0.2)
    farm = build_farm(edge.settings, speed=10, telemetry_interval_s=1.0, seed=7)
    slow = asyncio.Event()

    async def slow_audit(route: Any) -> None:
        # The room's audit answers late: the room keeps loading while the grower switches.
        await asyncio.wait_for(slow.wait(), 20)
        await route.continue_()

    async with simulated(farm), browser_session(axe=False) as session:
        context = await session.new_context({"width": 1366, "height": 1000})
        await context.route(re.compile(r".*/api/rooms/room-a/command-audit\?.*"), slow_audit)
        page = await context.new_page()
        await sign_in(page, the_cloud.url)
        await page.locator('a.room[data-room="room-a"]').wait_for(timeout=15_000)
        await page.goto(the_cloud.url + f"/#/farm/{farm_id}/room/room-a")
        fan = page.locator('li.device[data-device="room-a-fan"]')
        await fan.locator('button[data-action="on"]').click()
        try:
            await page.wait_for_selector(
                'li.device[data-device="room-a-fan"] ol.life[data-status="acked"]',
                timeout=15_000)
        finally:
            slow.set()
        # The audit, once it answers, lists the same switch.
        audited = page.locator('section.audit-section li.audit-row[data-outcome="acked"]')
        await audited.first.wait_for(timeout=15_000)
