"""Adopting a new node from the cloud's set-up page, in headless Chromium against the real chain:
a node flashed with the farm's claim code knocks at a real edge (refused), the edge reports it,
an operator (not an owner) sees it under "Waiting for adoption", adopts it into a room as a
sensor, reads its credentials shown once, and the node logs in at the edge with them. On the
shared harness: no console errors (strict CSP), every field labelled, and the page checked for
overflow, axe and 44 px targets at both widths."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from edge.config import load_config
from tests.chaos.conftest import Cloud, cloud, edge_app, register_edge, until
from tests.e2e.browser import PHONE, browser_session, check_view, need_browser, screenshot_dir
from tests.e2e.conftest import make_site
from tests.e2e.test_grower_setup import UNLABELLED, _sign_in

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud, edge_app)
NODE = "esp-4b1d00"


async def _login(port: int, password: str) -> bool:
    try:
        async with aiomqtt.Client("127.0.0.1", port, username=NODE, password=password,
                                  identifier=f"{NODE}-{uuid.uuid4().hex[:4]}", timeout=5):
            return True
    except aiomqtt.MqttError:
        return False


async def test_an_operator_adopts_a_waiting_node_from_the_set_up_page(
    cloud: Any, edge_app: Any, tmp_path: Path, farm_id: str
) -> None:
    need_browser()
    from playwright.async_api import expect

    the_cloud: Cloud = await cloud()
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), "pi-1")
    run = await edge_app(register_edge(config, the_cloud.url, reg))
    port = run.app.broker.port
    assert not await _login(port, run.app.onboarding.claim_code())

    async def reported() -> bool:
        doc = await the_cloud.api("GET", f"/api/farms/{farm_id}/pending-devices")
        return [p["device_id"] for p in doc["items"]] == [NODE]

    await until(reported, 15, "the edge reporting the waiting node")
    # An operator of the farm (invited by the owner, who then stays out of it) adopts it.
    invited = await the_cloud.api("POST", f"/api/farms/{farm_id}/members",
                                  {"email": "grower@sync.test", "role": "operator"})
    operator_password = "operator-pass-123"
    async with aiohttp.ClientSession() as http, http.post(
            f"{the_cloud.url}/api/auth/accept-invite",
            json={"token": invited["invite_token"], "password": operator_password}) as resp:
        assert resp.status == 200, await resp.text()
    async with browser_session() as session:
        page = await session.new_page(PHONE)
        await _sign_in(page, the_cloud.url, "grower@sync.test", operator_password)
        await page.wait_for_selector('a.room[data-room="room-a"]')  # signed in: the farm
        await page.goto(f"{the_cloud.url}/#/farm/{farm_id}/setup/devices")
        card = page.locator("section.pending-devices")
        item = card.locator(f"li[data-pending={NODE}]")
        await expect(item).to_contain_text("at 127.0.0.1 · edge pi-1 · asked 1×",
                                           timeout=15_000)
        assert await page.evaluate(UNLABELLED) == []
        await check_view(page, "pending-devices", screenshot_dir(tmp_path))
        await item.get_by_label("Room").select_option("room-a")
        await item.get_by_label("It is").select_option("sensor")
        await item.get_by_label("Name").fill("Shelf 3 probe")
        await item.get_by_role("button", name=f"Adopt {NODE}").click()
        creds = page.locator("section.credentials")
        await expect(creds).to_be_visible(timeout=10_000)
        username = (await page.text_content("[data-secret=username]") or "").strip()
        password = (await page.text_content("[data-secret=password]") or "").strip()
        assert username == NODE and len(password) >= 24
        await expect(card).to_contain_text("No device is waiting.")
        # It is a device of the room now.
        await expect(page.locator(f"li.setup-item[data-device={NODE}]")).to_contain_text(
            "Shelf 3 probe")
    # The config push brings it to the edge: it logs in with the password the page showed.
    await until(lambda: _login(port, password), 20, "the adopted node logging in", every=0.3)
