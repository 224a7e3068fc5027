"""A farm with two real edges, in Chromium: the farm page shows each edge's health (rooms it
runs, upload backlog, software version, clock) and the set-up page moves a room from one edge to
the other, which the edges then follow. axe-core and the no-sideways-scrolling check on both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from tests.chaos.conftest import (
    PASSWORD,
    Cloud,
    Registration,
    cloud,
    edge_app,
    fast_settings,
    make_site,
    register_edge,
    until,
)
from tests.e2e.browser import PHONE, browser_session, check_view, screenshot_dir

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud, edge_app)
ROOM = "room-a"


async def test_the_farm_page_shows_edge_health_and_set_up_moves_a_room(
    cloud: Any, tmp_path: Path, farm_id: str, edge_app: Any
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    config_a = make_site(tmp_path / "a", farm_id)
    reg_a = await the_cloud.provision(load_config(config_a), "edge-a")
    made_b = await the_cloud.api("POST", f"/api/farms/{farm_id}/edges",
                                 {"id": "edge-b", "name": "Barn Pi"})
    config_b = make_site(tmp_path / "b", farm_id, rooms=())
    register_edge(config_a, the_cloud.url, reg_a)
    register_edge(config_b, the_cloud.url, Registration(farm_id, "edge-b", made_b["token"]))
    edge_a = (await edge_app(fast_settings(config_a))).app
    edge_b = (await edge_app(fast_settings(config_b))).app

    async def reported() -> bool:
        found = await the_cloud.rows(
            "SELECT backlog, software_version FROM edges WHERE farm_id = %s", (farm_id,))
        return len(found) == 2 and all(r["software_version"] for r in found)

    await until(reported, 20, "both edges' health")
    await until(lambda: ROOM in edge_a.automation.rooms, 10, "the room on edge A")
    shots = screenshot_dir(tmp_path)
    base = f"{the_cloud.url}/#/farm/{farm_id}"

    async with browser_session() as session:
        page = await session.new_page(PHONE)
        await page.goto(the_cloud.url + "/")
        await page.fill("#email", "owner@sync.test")
        await page.fill("#password", PASSWORD)
        await page.press("#password", "Enter")
        await page.wait_for_selector("[data-edge-health='edge-b']", timeout=15_000)
        health_a = await page.text_content("[data-edge-health='edge-a']") or ""
        health_b = await page.text_content("[data-edge-health='edge-b']") or ""
        assert "RoomsRoom A" in health_a and "Roomsnone" in health_b, (health_a, health_b)
        assert "to upload" in health_a and "Version0." in health_b.replace(" ", "")
        await check_view(page, "farm-edges", shots)

        # Set-up: the room runs on edge A; move it to the barn's edge.
        await page.goto(f"{base}/setup/rooms")
        item = page.locator(f"li.setup-item[data-room='{ROOM}']")
        await item.locator("[data-room-edge='edge-a']").wait_for()
        await page.click("button[aria-label='Move room Room A to another edge']")
        await item.get_by_label("Edge gateway").select_option("edge-b")
        await check_view(page, "setup-rooms-move", shots)
        await item.locator("button:has-text('Move room')").click()
        await page.wait_for_selector(f"li[data-room='{ROOM}'] [data-room-edge='edge-b']")
        room = await the_cloud.api("GET", f"/api/rooms/{ROOM}")
        assert room["edge_id"] == "edge-b"
        await until(lambda: ROOM in edge_b.automation.rooms, 10, "the room on edge B")
        await until(lambda: ROOM not in edge_a.automation.rooms, 10, "edge A to let it go")

        # A new room is given its edge as it is added.
        add = page.locator("form[aria-labelledby='add-room-h']")
        await add.get_by_label("Name", exact=True).fill("Room C")
        await add.get_by_label("Edge gateway").select_option("edge-a")
        await add.locator("button:has-text('Add room')").click()
        await page.wait_for_selector("li.setup-item:has-text('Room C') [data-room-edge='edge-a']")
        added = [r for r in (await the_cloud.api("GET", f"/api/farms/{farm_id}/rooms"))["items"]
                 if r["name"] == "Room C"]
        assert [r["edge_id"] for r in added] == ["edge-a"]
        await until(lambda: added[0]["id"] in edge_a.automation.rooms, 10, "Room C on edge A")

        # The edges tab says who runs what.
        await page.goto(f"{base}/setup/edges")
        await page.wait_for_selector("[data-edge-rooms='edge-b']")
        assert "runs Room A" in (await page.text_content("[data-edge-rooms='edge-b']") or "")
        assert "runs Room C" in (await page.text_content("[data-edge-rooms='edge-a']") or "")
        await check_view(page, "setup-edges-rooms", shots)
