"""Every view of the grower's app, on the real chain (simulator ▶ edge ▶ cloud ▶ Chromium), with
something in it: a farm with readings, an alarm, a hold, a logbook, a member invited, an edge.

Each view is checked at 390 and 1366 px, in the light and the dark colour scheme: axe-core
finds no serious or critical violation, nothing scrolls sideways, no control on a phone is
under 44 px, and the browser logs no error. A screenshot of each is saved (the test's folder, or
``SMARTFARM_SCREENSHOTS``). With ``SMARTFARM_GALLERY=DIR`` (``make gallery``) the light-scheme
screenshots are also copied to DIR with an index: docs/gallery is made this way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.farm import build_farm
from tests.chaos.conftest import PASSWORD, Cloud, cloud, until
from tests.e2e.browser import PHONE, browser_session, check_view, screenshot_dir
from tests.e2e.test_edge_cloud import online_farm, simulated
from tests.e2e.test_grower_operate import process_alerts

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud,)
EMAIL = "owner@sync.test"

# (file name, what a reader sees), in the order a grower meets them.
VIEWS = [
    ("login", "Sign in"),
    ("invite", "Accepting an invitation"),
    ("farms", "A grower's farms"),
    ("farm", "A farm at a glance: rooms against their targets, edges, alarms"),
    ("room", "A room: now, charts with actuator lanes and logbook markers, devices with holds,"
             " the rules the edge runs, alarms, logbook, command audit"),
    ("setup-rooms", "Set-up: rooms (species, stage, start date)"),
    ("setup-devices", "Set-up: devices, their credentials once with a QR code, safety limits"),
    ("setup-edges", "Set-up: edge gateways and their registration command"),
    ("setup-members", "Set-up: members, invitations and room grants"),
    ("alarms", "Alarms: severity, acknowledge, clear, history"),
    ("audit", "Command audit: who switched what, and the outcome"),
    ("account", "Account: notification settings with a test, sign out everywhere"),
    ("edge-login", "The edge's own page (works with no internet): sign in"),
    ("edge", "The edge's own page: rooms, holds with time left, devices, commands"),
]


async def _readings(the_cloud: Cloud) -> int:
    found = await the_cloud.rows("SELECT count(*) AS n FROM sensor_data")
    return int(found[0]["n"]) if found and found[0]["n"] > 3 else 0


async def _open(page: Any, url: str, selector: str) -> None:
    await page.goto(url)
    await page.wait_for_selector(selector, timeout=15_000)
    await page.wait_for_timeout(400)  # the view's second round of data and live state


def _write_gallery(shots: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    lines = [
        "# The grower's app: every view at a phone's and a laptop's width",
        "",
        "Made by `make gallery` (tests/e2e/test_grower_gallery.py) on the real chain: simulator,"
        " edge, cloud and Chromium. Each view passed axe-core (no serious or critical violation),"
        " has no sideways scrolling and, at 390 px, no control under 44 px, in the light and the"
        " dark scheme (the dark screenshots stay in the test's output).",
        "",
        "| view | 390 px | 1366 px |",
        "|---|---|---|",
    ]
    for name, what in VIEWS:
        for width in ("390", "1366"):
            shutil.copyfile(shots / f"{name}-{width}.png", target / f"{name}-{width}.png")
        lines.append(f"| {what} | ![{name} at 390 px]({name}-390.png) "
                     f"| ![{name} at 1366 px]({name}-1366.png) |")
    (target / "README.md").write_text("\n".join(lines) + "\n")


async def test_every_view_of_the_growers_app_at_both_widths(
    cloud: Any, tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    edge: Any
    edge, _ = await online_farm(the_cloud, tmp_path, farm_id, running_edge, batch_max_age_s=0.2)
    farm = build_farm(edge.settings, speed=10, telemetry_interval_s=1.0, seed=3)
    shots = screenshot_dir(tmp_path)
    base = the_cloud.url + "/#/farm/" + farm_id
    room = f"{base}/room/room-a"

    # Something to see: a logbook, a hold, an alarm, an invitation, a second farm.
    await the_cloud.api("POST", f"/api/rooms/room-a/logbook?farm_id={farm_id}",
                        {"kind": "note", "text": "Pins showing on the north shelf"})
    await the_cloud.api("POST", f"/api/rooms/room-a/harvests?farm_id={farm_id}",
                        {"weight_kg": 4.2})
    invited = await the_cloud.api("POST", f"/api/farms/{farm_id}/members",
                                  {"email": "picker@example.com", "role": "operator",
                                   "room_ids": ["room-a"]})
    invite_token = invited["invite_token"]
    await the_cloud.api("POST", "/api/farms", {"id": f"{farm_id}-b", "name": "Hill farm"})

    async with simulated(farm), browser_session() as session:
        await until(lambda: _readings(the_cloud), 30, "readings in the cloud", 0.3)
        await the_cloud.api("POST", f"/api/rooms/room-a/holds?farm_id={farm_id}",
                            {"device_id": "room-a-fan", "action": "on", "minutes": 30})
        await edge.alerts.raise_alert(
            "failed:room-a-fan", kind="command_failed", room_id="room-a",
            device_id="room-a-fan", severity="warning",
            message="actuator room-a-fan refused command c-17: relay stuck")
        await until(lambda: _alarm(the_cloud), 30, "the alarm in the cloud", 0.3)

        visitor = await session.new_page(PHONE)
        await _open(visitor, the_cloud.url + "/", "#email")
        await check_view(visitor, "login", shots)
        await _open(visitor, f"{the_cloud.url}/#/invite/{invite_token}", "#invite-password")
        await check_view(visitor, "invite", shots)

        page = await session.new_page(PHONE)
        await _open(page, the_cloud.url + "/", "#email")
        await page.fill("#email", EMAIL)
        await page.fill("#password", PASSWORD)
        await page.press("#password", "Enter")
        await page.wait_for_selector(f'a[href="#/farm/{farm_id}-b"]', timeout=15_000)
        await check_view(page, "farms", shots)
        await _open(page, base, 'a.room[data-room="room-a"]')
        await check_view(page, "farm", shots)
        await _open(page, room, 'figure.chart[data-metric="temperature_c"]')
        await page.wait_for_selector('li.device[data-device="room-a-fan"][data-mode="hold"]',
                                     timeout=20_000)
        await page.wait_for_selector("li.log-entry", timeout=10_000)
        await check_view(page, "room", shots)
        for tab in ("rooms", "devices", "edges", "members"):
            await _open(page, f"{base}/setup/{tab}", f'a[aria-current="page"][href$="/{tab}"]')
            await check_view(page, f"setup-{tab}", shots)
        await _open(page, f"{base}/alarms", "li.alarm")
        await check_view(page, "alarms", shots)
        await _open(page, f"{base}/alarms/audit", "li.audit-row")
        await check_view(page, "audit", shots)
        await _open(page, the_cloud.url + "/#/account", "text=Send test")
        await check_view(page, "account", shots)

        settings = edge.settings
        password = settings.api.admin_password
        assert password is not None
        edge_page = await session.new_page(PHONE, locale="en-GB")
        await _open(edge_page, f"http://127.0.0.1:{settings.api.port}/", "text=Log in")
        await check_view(edge_page, "edge-login", shots)
        await edge_page.get_by_label("User name").fill("admin")
        await edge_page.get_by_label("Password").fill(password.get_secret_value())
        await edge_page.get_by_role("button", name="Log in").click()
        await edge_page.wait_for_selector("article.room li.actuator .hold.manual:not([hidden])",
                                          timeout=20_000)
        await check_view(edge_page, "edge", shots)

    for name, _ in VIEWS:
        for width in ("390", "1366"):
            assert (shots / f"{name}-{width}.png").stat().st_size > 5_000, (name, width)
    gallery = os.environ.get("SMARTFARM_GALLERY")
    if gallery:
        _write_gallery(shots, Path(gallery))
    print(f"screenshots and axe results: {shots}")


async def _alarm(the_cloud: Cloud) -> bool:
    await process_alerts(the_cloud)
    found = await the_cloud.rows("SELECT count(*) AS n FROM alert_episodes WHERE state = 'active'")
    return bool(found and found[0]["n"])
