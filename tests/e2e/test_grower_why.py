"""The grower sees why the farm does what it does, in headless Chromium on the real chain:
simulator ▶ edge ▶ cloud ▶ browser and back.

The room page lists every rule the edge runs (as many as the edge has, each with its source); a
profile rule changed on the page becomes a cloud override the edge then runs; the fan held on for a
chosen time from the page shows who holds it and the time left, while the edge really holds it
(its override and its command to the fan); "Back to auto" returns it to automation on the edge and
on the page; safety limits changed on the page reach the edge and come back in words.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.farm import build_farm
from shared.rules import Safety
from tests.chaos.conftest import PASSWORD, Cloud, cloud, until
from tests.e2e.browser import PHONE, browser_session, horizontal_overflow, screenshot_dir
from tests.e2e.test_edge_cloud import online_farm, simulated

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud)

FAN = "room-a-fan"
HUMIDIFIER = "room-a-humidifier"


def _fan_commands(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT command_id, action, source, reason, state FROM commands WHERE device_id = ?"
        " ORDER BY created_at", (FAN,)).fetchall()
    return [dict(r) for r in rows]


async def test_the_room_page_shows_why_and_holds_the_fan_then_back_to_auto(
    cloud: Any, tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    edge, _ = await online_farm(the_cloud, tmp_path, farm_id, running_edge,
                                batch_max_age_s=0.2)
    farm = build_farm(edge.settings, speed=10, telemetry_interval_s=1.0, seed=7)
    edge_rules = {r.id for r in edge.automation.rules("room-a")}
    assert len(edge_rules) >= 3, edge_rules  # humidity, CO₂, fresh air at least

    async def reported() -> bool:
        rows = await the_cloud.rows(
            "SELECT state FROM room_automation WHERE room_id = 'room-a'", ())
        return bool(rows) and len(rows[0]["state"]["rules"]) == len(edge_rules)

    async with simulated(farm), browser_session(axe=False) as session:
        await until(reported, 20, "the edge's first automation report in the cloud")
        shots = screenshot_dir(tmp_path)
        page = await session.new_page({"width": 1366, "height": 1000})
        await page.goto(the_cloud.url + "/")
        await page.fill("#email", "owner@sync.test")
        await page.fill("#password", PASSWORD)
        await page.click("button[type=submit]")
        await page.click('a.room[data-room="room-a"]', timeout=15_000)
        await page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)

        # Every rule the edge runs, each with its source.
        panel = page.locator('section.rules-panel[data-reported="true"]')
        await panel.wait_for(timeout=15_000)
        shown = await page.eval_on_selector_all(
            'li.rule[data-applied="true"]', "els => els.map(e => e.dataset.rule)")
        assert sorted(shown) == sorted(edge_rules)
        sources = await page.eval_on_selector_all(
            "li.rule .why-source", "els => els.map(e => e.textContent)")
        assert sources and set(sources) == {"From profile"}, sources
        assert "rule(s) here" in (await page.text_content(".why-reported") or "")

        # Change the humidity rule (a profile rule): it is saved as a cloud override, the
        # edge runs it, and the page says so.
        await page.click('button.rule-edit[data-rule="room-a-rh"]')
        await page.fill("#rule-on", "86")
        assert await page.locator("label[for=rule-on]").text_content() == "On below (%)"
        await page.click('form.rule-form button[type="submit"]')
        override = page.locator('li.rule[data-rule="room-a-rh"][data-source="override"]'
                                '[data-applied="true"]')
        await override.wait_for(timeout=20_000)
        rh = next(r for r in edge.automation.rules("room-a") if r.id == "room-a-rh")
        assert rh.on_below == 86 and edge.automation.rule_source("room-a", rh.id) == "cloud"
        assert "below 86 %" in (await override.text_content() or "")
        count = await page.locator('li.rule[data-applied="true"]').count()
        assert count == len(edge.automation.rules("room-a"))

        # Hold the fan on for an hour from the page.
        fan = page.locator(f'li.device[data-device="{FAN}"]')
        await fan.locator("select[name=minutes]").select_option("60")
        held_at = datetime.now(UTC)
        await fan.locator('button[data-action="on"]').click()
        await page.wait_for_selector(
            f'li.device[data-device="{FAN}"][data-mode="hold"]', timeout=20_000)
        mode = await fan.locator(".why-mode").text_content() or ""
        assert re.search(r"held on by owner\S* for 1 h — (59|60) min left", mode), mode
        # The edge really holds it: its override, and its command to the fan.
        state = edge.automation.actuators[FAN]
        assert state.override is not None and state.override.on
        left = state.override.until - held_at
        assert timedelta(minutes=59) < left <= timedelta(minutes=60, seconds=5), left
        commands = await edge.db.read(_fan_commands)
        assert commands[-1]["action"] == "on" and commands[-1]["source"] == "cloud", commands
        assert "for 60 min" in commands[-1]["reason"]
        await until(lambda: farm.actuators[FAN].level > 0, 10, "the fan running")
        back = fan.locator("button.why-auto")
        assert await back.is_visible()
        await page.screenshot(path=str(shots / "why-held.png"), full_page=True)

        # Back to auto: the hold ends on the edge, and the page shows automation again.
        await back.click()
        await page.wait_for_selector(
            f'li.device[data-device="{FAN}"]:not([data-mode="hold"])', timeout=20_000)
        assert edge.automation.actuators[FAN].override is None
        mode = await fan.locator(".why-mode").text_content() or ""
        assert mode.startswith("auto"), mode
        assert await back.is_hidden()
        last = await the_cloud.rows(
            "SELECT action, status, error FROM commands WHERE device_id = %s"
            " ORDER BY created_at DESC LIMIT 1", (FAN,))
        assert (last[0]["action"], last[0]["status"], last[0]["error"]) == (
            "auto", "delivered", None), last

        # Last seen comes from the edge's any-message last-seen.
        seen = await fan.locator(".why-seen").text_content() or ""
        assert seen.startswith("last seen") and "never" not in seen, seen

        # The humidifier's safety limits, changed on the page: a bad value is refused next
        # to its field (the refusal's 422 is logged by Chromium: expected); saved ones reach
        # the edge, which applies them and reports them back.
        session.allow(r"status of 422")
        hum = page.locator(f'li.device[data-device="{HUMIDIFIER}"]')
        await hum.locator("button.why-edit-limits").click()
        await page.fill(f"#limit-{HUMIDIFIER}-min_on_s", "2")
        await page.fill(f"#limit-{HUMIDIFIER}-max_on_s", "-1")
        await hum.locator("form.why-limits-form button[type=submit]").click()
        error = page.locator(f"#limit-{HUMIDIFIER}-max_on_s-error")
        await error.wait_for(state="visible", timeout=10_000)
        assert "greater than 0" in (await error.text_content() or "")
        await page.fill(f"#limit-{HUMIDIFIER}-max_on_s", "90")
        await hum.locator("form.why-limits-form button[type=submit]").click()
        device = edge.settings.device(HUMIDIFIER)
        await until(lambda: edge.automation.safety_of(edge.settings.device(HUMIDIFIER))
                    == Safety(min_on_s=120, max_on_s=5400), 20, "the edge's new limits")
        assert device is not None
        limits = hum.locator(".why-limits")
        await page.wait_for_function(
            "el => el.textContent.includes('at most 1.5 h on at a time')",
            arg=await limits.element_handle(), timeout=20_000)
        assert "at least 2 min on" in (await limits.text_content() or "")

        # A phone: nothing wider than the screen.
        await page.set_viewport_size(PHONE)
        overflow = await horizontal_overflow(page)
        assert overflow <= 1, f"the page is {overflow}px wider than a phone"
        await fan.locator("button.why-edit-limits").click()
        await page.click('button.rule-edit[data-rule="room-a-light"]')
        await page.screenshot(path=str(shots / "why-phone.png"), full_page=True)
        await fan.screenshot(path=str(shots / "why-phone-fan.png"))
        form = page.locator("form.rule-form")
        await form.screenshot(path=str(shots / "why-phone-rule.png"))
    # Leaving the session: no other console error and no page error.
