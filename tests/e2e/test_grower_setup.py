"""A grower sets up a farm from the web, in headless Chromium against the real chain: create the
farm, a room, register the edge (the page's command sets up a real edge, which syncs), say where
devices find it, add a sensor and read its credentials and QR code shown once, flash them into a
simulated node, and see its readings on the room page. Then invite a member with a room grant,
and save notification settings and send a test to a local webhook receiver.

Skipped with the reason when Playwright or /usr/bin/chromium is missing, unless
SMARTFARM_REQUIRE_BROWSER=1 (CI), where that is a failure.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import segno
from aiohttp import web

from cloud import appkeys
from cloud.notify.webhook import verify
from edge.cli import edge_main
from edge.config import load_config
from firmware_sim.provision import build_node, load_provisioning
from tests.chaos.conftest import FAST_CLOUD, PASSWORD, Cloud, cloud, until
from tests.conftest import free_port
from tests.e2e.browser import (
    DESKTOP,
    PHONE,
    browser_session,
    check_view,
    horizontal_overflow,
    need_browser,
    screenshot_dir,
)
from tests.e2e.conftest import fast_settings
from tests.e2e.test_edge_cloud import simulated

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud,)
# Form fields without a <label> (screen readers would announce them without a name).
UNLABELLED = """[...document.querySelectorAll('input, select, textarea')]
  .filter((el) => el.type !== 'hidden' && el.labels.length === 0).map((el) => el.outerHTML)"""


async def _sign_in(page: Any, url: str, email: str, password: str) -> None:
    await page.goto(url + "/#/login")
    await page.fill("#email", email)
    await page.fill("#password", password)
    await page.click("button[type=submit]")


async def test_a_grower_sets_up_a_farm_from_the_web_and_sees_a_new_sensor_report(
    cloud: Any, tmp_path: Path, running_edge: Any
) -> None:
    need_browser()

    the_cloud: Cloud = await cloud(command_ttl_s=60)
    # The webhook receiver is on loopback: let this cloud deliver there (off in production).
    app = the_cloud.runners[the_cloud.url].app
    app[appkeys.SETTINGS].notify.allow_private_webhooks = True
    hooks: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        hooks.append({"headers": dict(request.headers), "body": await request.read()})
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    hook_runner = web.AppRunner(receiver, access_log=None)
    await hook_runner.setup()
    hook_port = free_port()
    await web.TCPSite(hook_runner, "127.0.0.1", hook_port).start()

    sim_stop: list[Any] = []
    shots = screenshot_dir(tmp_path)
    async with browser_session() as session:
        try:
            page = await session.new_page(DESKTOP)
            await _sign_in(page, the_cloud.url, "owner@sync.test", PASSWORD)

            # No farm yet: create one from the farm list; the set-up opens on its rooms.
            await page.wait_for_selector("text=New farm")
            await page.get_by_label("Farm name").fill("Hillside mushrooms")
            await page.click("button:has-text('Create farm')")
            await page.wait_for_url(re.compile(r".*#/farm/[^/]+/setup/rooms$"))
            farm_id = unquote(page.url.split("#/farm/")[1].split("/")[0])

            # A room: name, species, stage, stage start.
            await page.get_by_label("Name", exact=True).fill("Fruiting 1")
            await page.get_by_label("Species").select_option("oyster")
            await page.get_by_label("Grow stage").select_option("fruiting")
            await page.get_by_label("Stage started on").fill("2026-01-05")
            await page.click("button:has-text('Add room')")
            item = page.locator("li.setup-item[data-room]")
            await item.wait_for()
            room_id = await item.get_attribute("data-room")
            assert room_id
            assert "since 5 Jan" in (await item.text_content() or "")
            room = await the_cloud.api("GET", f"/api/rooms/{room_id}")
            assert room["name"] == "Fruiting 1" and room["stage"] == "fruiting"
            assert room["stage_started"].startswith("2026-01-0")  # local midnight, 5 Jan

            # A second room: edited (a new stage), then deleted after a confirmation.
            await page.get_by_label("Name", exact=True).fill("Spare")
            await page.get_by_label("Grow stage").select_option("spawn_run")
            await page.click("button:has-text('Add room')")
            spare = page.locator("li.setup-item", has_text="Spare")
            await spare.wait_for()
            await page.click("button[aria-label='Edit room Spare']")
            await spare.get_by_label("Grow stage").select_option("pinning")
            await spare.locator("button:has-text('Save room')").click()
            await page.wait_for_selector("li.setup-item:has-text('Pinning')")
            await page.click("button[aria-label='Delete room Spare']")
            await spare.locator("button:has-text('Cancel')").click()
            await page.click("button[aria-label='Delete room Spare']")
            await spare.locator("button:has-text('Delete room')").click()
            await spare.wait_for(state="detached")
            rooms = await the_cloud.api("GET", f"/api/farms/{farm_id}/rooms")
            assert [r["id"] for r in rooms["items"]] == [room_id]

            # The edge: register it, and run the set-up command the page shows, on a new site.
            await page.click("nav.tabs >> text=Edge gateways")
            await page.get_by_label("Name", exact=True).fill("Shed Pi")
            await page.click("button:has-text('Register edge')")
            init = await page.text_content("[data-secret=init] code")
            register = await page.text_content("[data-secret=register] code")
            token = (await page.text_content("[data-secret=token]") or "").strip()
            assert init and register and token.startswith("sfe_")
            assert token in init and token in register and the_cloud.url in init
            argv = shlex.split(init)
            assert argv[:4] == ["smartfarm", "edge", "init", "/srv/smartfarm"]
            site = tmp_path / "site"
            argv[3] = str(site)
            argv += ["--broker-port", str(free_port()), "--api-port", str(free_port())]
            # The command asks the cloud whom the token belongs to: off the event loop.
            assert await asyncio.to_thread(edge_main, argv[2:]) == 0
            config = site / "edge.toml"
            with config.open("a") as fh:  # the [cloud] section is the file's last
                for key, value in FAST_CLOUD.items():
                    fh.write(f"{key} = {json.dumps(value)}\n")
            assert load_config(config).farm_id == farm_id
            edge = await running_edge(fast_settings(config))
            await until(lambda: edge.automation.rooms.get(room_id), 20, "the room on the edge")
            await page.reload()  # the list as it is now: the edge has synced, it is online
            await page.wait_for_selector("li[data-edge][data-online=true]", timeout=15_000)
            assert "online · last heard" in (await page.text_content("li[data-edge]") or "")

            # Where devices find the edge, then a sensor: credentials and QR shown once.
            host, port = edge.mqtt_address()
            await page.click("nav.tabs >> text=Devices")
            await page.get_by_label("Edge address on the farm network").fill(host)
            await page.get_by_label("MQTT port").fill(str(port))
            await page.click("button:has-text('Save address')")
            await page.wait_for_selector(f"text=devices connect to {host}:{port}")
            await page.get_by_label("Room", exact=True).select_option(room_id)
            await page.get_by_label("Kind").select_option("actuator")
            assert await page.get_by_label("Switches").is_visible()
            assert await page.get_by_label("Minimum on (min)").is_visible()
            await page.get_by_label("Kind").select_option("sensor")
            assert not await page.get_by_label("Switches").is_visible()  # a sensor has no role
            assert not await page.get_by_label("Minimum on (min)").is_visible()
            await page.get_by_label("Name", exact=True).fill("Climate probe")
            await page.click("button:has-text('Add device')")
            card = page.locator("section.credentials")
            await card.wait_for()
            device_id = await card.get_attribute("data-device")
            assert device_id
            username = (await page.text_content("[data-secret=username]") or "").strip()
            password = (await page.text_content("[data-secret=password]") or "").strip()
            assert username == device_id and len(password) >= 24
            assert await page.text_content("[data-cred=broker]") == f"{host}:{port}"
            topics = await card.locator("ul.topics code").all_text_contents()
            assert f"farm/{farm_id}/room/{room_id}/telemetry/{device_id}" in topics
            assert f"farm/{farm_id}/room/{room_id}/command/{device_id}" in topics
            await page.click("summary:has-text('Provisioning text')")
            text = (await page.text_content("[data-secret=provisioning] code") or "").strip()
            qr = card.locator("figure.qr img")
            src = await qr.get_attribute("src") or ""
            assert "QR code with the MQTT credentials" in (await qr.get_attribute("alt") or "")
            assert await qr.evaluate("img => img.complete && img.naturalWidth > 0")
            expected = io.BytesIO()
            segno.make(text, error="m", micro=False).save(
                expected, kind="svg", scale=4, border=4, dark="#000", light="#fff",
                title=f"MQTT credentials of device {device_id}", xmldecl=False)
            assert base64.b64decode(src.split(",", 1)[1]) == expected.getvalue()
            await page.screenshot(path=str(tmp_path / "setup-credentials.png"), full_page=True)
            await page.click("button:has-text('I have saved them')")
            assert await page.locator("section.credentials").count() == 0  # shown once
            await page.click("button[aria-label='Rename device Climate probe']")
            row = page.locator(f"li[data-device='{device_id}']")
            await row.get_by_label("Name", exact=True).fill("Climate probe north")
            await page.click("button:has-text('Save name')")
            await row.locator("text=Climate probe north").wait_for()

            # "Flash" them into a simulated node: it logs in to the edge and reports.
            prov = load_provisioning(text)
            assert (prov.username, prov.password, prov.host, prov.port) == (
                username, password, host, port)
            node_farm = build_node(prov, speed=10, telemetry_interval_s=1.0)
            sim = simulated(node_farm)
            await sim.__aenter__()
            sim_stop.append(sim)
            stored = await until(lambda: the_cloud.rows(
                "SELECT metric FROM sensor_data WHERE device_id = %s AND farm_id = %s",
                (device_id, farm_id)), 30, "the new sensor's readings in the cloud")
            assert {"temperature_c", "humidity_pct"} <= {r["metric"] for r in stored}
            await page.goto(f"{the_cloud.url}/#/farm/{farm_id}/room/{room_id}")
            now = page.locator('.metric[data-metric="temperature_c"] dd')
            await now.wait_for()
            await until(lambda: _shown(now), 20, "the probe's temperature on the room page")

            # A member with a grant for this room only, invited from the page.
            await page.goto(f"{the_cloud.url}/#/farm/{farm_id}/setup/members")
            await page.get_by_label("Email", exact=True).fill("picker@example.com")
            await page.get_by_label("Role", exact=True).select_option("operator")
            await page.get_by_label("All rooms, including rooms added later").uncheck()
            await page.get_by_label("Fruiting 1").check()
            await page.click("button:has-text('Invite')")
            link = (await page.text_content("[data-secret=invite-link]") or "").strip()
            assert "#/invite/sfi_" in link
            pending = page.locator("li[data-invite='picker@example.com']")
            await pending.wait_for()
            assert "Operator · Fruiting 1" in (await pending.text_content() or "")
            invite_token = unquote(link.split("#/invite/")[1])
            # The invitee opens the link in their own browser and chooses a password.
            invitee = await session.new_page(PHONE)
            await invitee.goto(the_cloud.url + "/#/invite/" + link.split("#/invite/")[1])
            await invitee.get_by_label("Password (at least 10 characters)").fill("picker pw 1")
            await invitee.get_by_label("The same password again").fill("picker pw 2")
            await invitee.click("button:has-text('Join the farm')")
            await invitee.wait_for_selector("text=The two passwords differ.")
            await invitee.get_by_label("The same password again").fill("picker pw 1")
            await invitee.click("button:has-text('Join the farm')")
            # Signed in: the one farm opens, with the granted room only.
            await invitee.wait_for_selector(f"a.room[data-room='{room_id}']", timeout=15_000)
            assert await invitee.locator("a.room").count() == 1
            await invitee.close()
            again = await the_cloud.session.post(  # type: ignore[union-attr]
                the_cloud.url + "/api/auth/accept-invite",
                json={"token": invite_token, "password": "another password"})
            assert again.status == 401  # the link worked once
            members = await the_cloud.api("GET", f"/api/farms/{farm_id}/members")
            picker = next(m for m in members["items"] if m["email"] == "picker@example.com")
            assert picker["role"] == "operator" and picker["room_ids"] == [room_id]

            # Notification settings with a webhook, and "Send test" through it.
            await page.goto(f"{the_cloud.url}/#/account")
            await page.get_by_label("Webhook URL").fill(f"http://127.0.0.1:{hook_port}/hook")
            await page.get_by_label("Quiet hours (critical alarms still come through)").check()
            await page.get_by_label("Quiet from").fill("21:30")
            await page.get_by_label("Quiet until").fill("06:15")
            await page.get_by_label("Time zone").select_option("Europe/Paris")
            await page.click("button:has-text('Save settings')")
            secret = (await page.text_content("[data-secret=webhook-secret]") or "").strip()
            assert len(secret) >= 16
            prefs = await the_cloud.api("GET", "/api/users/me/notification-preferences")
            assert (prefs["quiet_start"], prefs["quiet_end"], prefs["timezone"]) == (
                "21:30", "06:15", "Europe/Paris")
            await page.click("button:has-text('Send test')")
            await page.wait_for_selector("li[data-channel=webhook][data-status=sent]")
            assert await page.locator("li[data-channel=email][data-status=off]").count() == 1
            assert len(hooks) == 1
            sent = hooks[0]
            assert verify(secret, sent["headers"]["X-Smartfarm-Timestamp"], sent["body"],
                          sent["headers"]["X-Smartfarm-Signature"])
            assert json.loads(sent["body"])["kind"] == "test"

            # A phone: every set-up page fits the screen.
            phone = await session.new_page(PHONE, device_scale_factor=2, is_mobile=True)
            await _sign_in(phone, the_cloud.url, "owner@sync.test", PASSWORD)
            await phone.wait_for_selector("nav.farm-links")  # the single farm opens by itself
            assert await horizontal_overflow(phone) <= 1, "the farm overview is wider than a phone"
            for where in ("setup/rooms", "setup/devices", "setup/edges", "setup/members"):
                await phone.goto(f"{the_cloud.url}/#/farm/{farm_id}/{where}")
                await phone.wait_for_selector("nav.tabs a[aria-current=page]")
                await phone.wait_for_selector("section.card")
                await check_view(phone, where.replace("/", "-"), shots)
                unlabelled = await phone.evaluate(UNLABELLED)
                assert unlabelled == [], f"{where}: fields without a label: {unlabelled}"
            await phone.get_by_label("Email", exact=True).fill("second@example.com")
            await phone.click("button:has-text('Invite')")
            await phone.wait_for_selector("[data-secret=invite-link]")
            overflow = await horizontal_overflow(phone)
            assert overflow <= 1, "the invitation link is wider than a phone"
            await phone.screenshot(path=str(shots / "setup-members-phone.png"), full_page=True)
            await phone.goto(f"{the_cloud.url}/#/account")
            await phone.wait_for_selector("text=Alarm notifications")
            assert await horizontal_overflow(phone) <= 1, "the account page is wider than a phone"
            await check_view(phone, "account", shots)
        finally:
            for sim in sim_stop:
                await sim.__aexit__(None, None, None)
            await hook_runner.cleanup()


async def _shown(cell: Any) -> bool:
    text = (await cell.text_content() or "").strip()
    return text not in ("", "–")
