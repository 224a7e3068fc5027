"""Firmware updates over the LAN, end to end: a real edge (embedded broker, SQLite, local API)
and simulated nodes, no internet and no cloud.

An installer stores images with ``smartfarm edge firmware add``; the operator offers one to a
device through the local API; the device gets an ``ota`` command, downloads the image from the
edge with the command's one-off link, checks it and runs it; its status reports the new version,
which the API shows as installed. A corrupted image is refused by the device (it keeps its
firmware), a withdrawn or used link stops working, and bad requests get problems naming the field.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.cli import edge_main
from firmware_sim.farm import SimFarm, build_farm
from tests.e2e.browser import DESKTOP, browser_session, check_view, need_browser, screenshot_dir
from tests.e2e.conftest import fast_settings, make_site, query, wait_for

HEATER = "room-a-heater"
SENSOR = "room-a-sensor"


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


def _image(path: Path, size: int = 64 * 1024) -> Path:
    path.write_bytes(b"\xe9" + os.urandom(size - 1))  # an ESP application image's magic byte
    return path


async def _json(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with session.request(method, url, **kw) as resp:
        body = await resp.json(content_type=None) if resp.content_length != 0 else None
        return resp.status, body


async def test_an_operator_updates_nodes_from_the_edge_over_the_lan(
    tmp_path: Path, farm_id: str, running_edge: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_site(tmp_path / "site", farm_id)
    # Images before the edge runs: one for the heater only, one for any device.
    heater_img = _image(tmp_path / "heater.ota.bin")
    generic_img = _image(tmp_path / "generic.ota.bin", 40_000)
    assert edge_main(["firmware", "add", str(heater_img), "--version", "1.2.0",
                      "--device", HEATER, "--config", str(config)]) == 0
    assert edge_main(["firmware", "add", str(generic_img), "--version", "1.3.0",
                      "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"stored firmware 1.2.0 for {HEATER}: 65536 bytes" in out
    assert hashlib.sha256(heater_img.read_bytes()).hexdigest() in out
    # The same version for the same device again, a non-image, a device the edge lacks: refused.
    assert edge_main(["firmware", "add", str(heater_img), "--version", "1.5.0",
                      "--config", str(config)]) == 2
    assert edge_main(["firmware", "add", str(_image(tmp_path / "other.bin")), "--version",
                      "1.2.0", "--config", str(config)]) == 2
    (tmp_path / "node.yaml").write_text("esphome:\n  name: x\n" * 40)
    assert edge_main(["firmware", "add", str(tmp_path / "node.yaml"), "--version", "9",
                      "--config", str(config)]) == 2
    assert edge_main(["firmware", "add", str(generic_img), "--version", "2.0",
                      "--device", "nope", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "this image is already stored as version 1.2.0" in err
    assert f"version 1.2.0 is already stored for {HEATER}" in err
    assert "first byte is not 0xE9" in err
    assert "--device nope: not a device" in err

    settings = fast_settings(config)
    settings.automation.command_timeout_s = 3.0
    base = f"http://127.0.0.1:{settings.api.port}"
    settings.api.firmware_base_url = base  # the nodes run on this machine
    await running_edge(settings)
    password = settings.api.admin_password
    assert password is not None
    auth = aiohttp.BasicAuth("admin", password.get_secret_value())
    farm = build_farm(settings, speed=10, telemetry_interval_s=1.0, seed=3)
    heater, sensor = farm.actuators[HEATER], farm.sensors[SENSOR]

    async with _simulated(farm), aiohttp.ClientSession(auth=auth) as http:
        async def firmware() -> dict[str, Any]:
            status, body = await _json(http, "GET", f"{base}/api/firmware")
            assert status == 200, body
            return body  # type: ignore[no-any-return]

        async def running(device: str, version: str) -> bool:
            return (await firmware())["devices"].get(device, {}).get("version") == version

        async def until(coro_fn: Any, what: str, timeout: float = 20) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                if await coro_fn():
                    return
                await asyncio.sleep(0.2)
            raise AssertionError(f"timed out waiting for {what}: {await firmware()}")

        await until(lambda: running(HEATER, "0.1"), "the heater's first status")
        await until(lambda: running(SENSOR, "0.1"), "the sensor's first status")
        listing = await firmware()
        assert [(i["version"], i["devices"]) for i in listing["images"]] == [
            ("1.3.0", []), ("1.2.0", [HEATER])]
        assert listing["updates"] == []

        # Bad offers: problems naming the field, nothing sent.
        sent_before = len(heater.received)
        cases = [
            (HEATER, {"version": "9.9"}, 422, "version"),          # no such image
            (SENSOR, {"version": "1.2.0"}, 422, "version"),        # pinned to the heater
            (HEATER, {"version": "../x"}, 422, "version"),         # not a version
            (HEATER, {"version": "1.2.0", "x": 1}, 422, "x"),      # unknown field
        ]
        for device, body, code, field in cases:
            status, problem = await _json(http, "POST", f"{base}/api/devices/{device}/firmware",
                                          json=body)
            assert status == code, (body, problem)
            assert field in {e["field"] for e in problem["errors"]}, problem
        status, problem = await _json(http, "POST", f"{base}/api/devices/ghost/firmware",
                                      json={"version": "1.2.0"})
        assert status == 404 and "ghost" in problem["detail"]
        status, problem = await _json(http, "POST", f"{base}/api/devices/{HEATER}/firmware",
                                      data="version=1.2.0")
        assert status == 415
        assert len(heater.received) == sent_before

        # The heater's own image: offered, downloaded, checked, installed.
        status, offer = await _json(http, "POST", f"{base}/api/devices/{HEATER}/firmware",
                                    json={"version": "1.2.0"})
        assert status == 202, offer
        assert offer["sha256"] == hashlib.sha256(heater_img.read_bytes()).hexdigest()
        await until(lambda: running(HEATER, "1.2.0"), "the heater to run 1.2.0")
        assert heater.ota_log == ["installed 1.2.0"]
        update = next(u for u in (await firmware())["updates"] if u["device_id"] == HEATER)
        assert update["state"] == "installed", update
        assert update["from_firmware"] == "smartfarm-sim/0.1"
        assert update["running"] == "smartfarm-sim/1.2.0"
        assert update["downloaded_at"] and update["installed_at"]
        # The command the device got: the contract's ota form, acked.
        command = json.loads(next(p for p in heater.received if b'"ota"' in p))
        assert command["action"] == "ota" and command["device_id"] == HEATER
        assert command["command_id"] == offer["command_id"]
        fw = command["firmware"]
        assert fw["version"] == "1.2.0" and fw["size"] == 65536
        assert fw["md5"] == hashlib.md5(heater_img.read_bytes()).hexdigest()
        assert fw["url"].startswith(f"{base}/firmware/") and fw["url"].endswith(".bin")
        rows = query(settings.db_path, "SELECT state FROM commands WHERE command_id = ?",
                     (offer["command_id"],))
        assert rows[0]["state"] == "acked"
        # The link died with the install; the page lists the device's version.
        async with http.get(fw["url"]) as resp:
            assert resp.status == 404
        status, devices = await _json(http, "GET", f"{base}/api/devices")
        assert next(d for d in devices if d["id"] == HEATER)["status"]["firmware"] == (
            "smartfarm-sim/1.2.0")
        # Offering what it already runs is refused.
        status, problem = await _json(http, "POST", f"{base}/api/devices/{HEATER}/firmware",
                                      json={"version": "1.2.0"})
        assert status == 422 and "already runs 1.2.0" in problem["errors"][0]["message"]

        # A generic image to the sensor (sensors take ota commands too), from the command
        # line: it goes through the running edge's local API (in a thread: it blocks).
        capsys.readouterr()
        cli = ["--config", str(config)]
        assert await asyncio.to_thread(
            edge_main, ["firmware", "offer", SENSOR, "--version", "9.9", *cli]) == 2
        assert await asyncio.to_thread(
            edge_main, ["firmware", "offer", SENSOR, "--version", "1.3.0", *cli]) == 0
        out, err = capsys.readouterr()
        assert "the edge refused: version: no firmware '9.9' for room-a-sensor" in err
        assert f"firmware 1.3.0 offered to {SENSOR}" in out and base in out
        await until(lambda: running(SENSOR, "1.3.0"), "the sensor to run 1.3.0")
        assert sensor.ota_log == ["installed 1.3.0"]
        assert await asyncio.to_thread(edge_main, ["firmware", "status", *cli]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert any(line.split() == [SENSOR, "smartfarm-sim/1.3.0", "1.3.0", "installed"]
                   for line in lines), lines
        assert any(line.split() == [HEATER, "smartfarm-sim/1.2.0", "1.2.0", "installed"]
                   for line in lines), lines

        # A corrupted image on the edge: the device checks it and keeps its firmware.
        broken = _image(tmp_path / "broken.ota.bin", 30_000)
        assert edge_main(["firmware", "add", str(broken), "--version", "1.4.0",
                          "--device", HEATER, "--config", str(config)]) == 0
        digest = hashlib.sha256(broken.read_bytes()).hexdigest()
        stored = settings.data_path / "firmware" / f"{digest}.bin"
        stored.write_bytes(b"\xe9" + os.urandom(30_000 - 1))
        status, offer = await _json(http, "POST", f"{base}/api/devices/{HEATER}/firmware",
                                    json={"version": "1.4.0"})
        assert status == 202
        await wait_for(lambda: heater.ota_log[1:], 20, "the heater to refuse 1.4.0")
        assert heater.ota_log[1] == "failed 1.4.0: MD5 mismatch"
        assert await running(HEATER, "1.2.0")
        update = next(u for u in (await firmware())["updates"] if u["device_id"] == HEATER)
        async def failed() -> bool:
            updates = (await firmware())["updates"]
            return next(u for u in updates if u["device_id"] == HEATER)["state"] == "failed"

        await until(failed, "the edge to record the failed update")
        update = next(u for u in (await firmware())["updates"] if u["device_id"] == HEATER)
        assert update["version"] == "1.4.0" and update["downloaded_at"], update
        assert update["detail"] == "update failed: MD5 mismatch", update
        fw = json.loads(heater.received[-1])["firmware"]
        async with http.get(fw["url"]) as resp:  # a failed offer's link is dead
            assert resp.status == 404

        # Offered again to a device that is busy (it ignores commands), then withdrawn: the
        # link works until then, and stops working at once; withdrawing again is a 404.
        heater.fail_mode = "ignore"
        status, offer = await _json(http, "POST", f"{base}/api/devices/{HEATER}/firmware",
                                    json={"version": "1.4.0"})
        assert status == 202
        await wait_for(lambda: offer["command_id"].encode() in heater.received[-1], 10,
                       "the new offer to reach the heater")
        fw = json.loads(heater.received[-1])["firmware"]
        async with http.get(fw["md5_url"]) as resp:
            assert resp.status == 200 and (await resp.text()) == fw["md5"]
        async with http.delete(f"{base}/api/devices/{HEATER}/firmware") as resp:
            assert resp.status == 204
        for link in (fw["url"], fw["md5_url"]):
            async with http.get(link) as resp:
                assert resp.status == 404
                assert resp.content_type == "application/problem+json"
        async with http.delete(f"{base}/api/devices/{HEATER}/firmware") as resp:
            assert resp.status == 404
        # Guessed links: 404, never a file.
        for name in ("x.bin", "../edge.db", "A" * 32 + ".exe", "A" * 32 + ".bin"):
            async with http.get(f"{base}/firmware/{name}") as resp:
                assert resp.status == 404, name

    # The CLI lists and removes images.
    assert edge_main(["firmware", "list", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "1.4.0" in listed and "1.3.0" in listed and HEATER in listed
    assert edge_main(["firmware", "remove", "1.4.0", "--config", str(config)]) == 0
    assert not stored.exists()
    assert edge_main(["firmware", "remove", "1.4.0", "--config", str(config)]) == 2


@pytest.mark.browser
async def test_a_grower_updates_a_node_from_the_edge_page(
    tmp_path: Path, farm_id: str, running_edge: Any,
) -> None:
    need_browser()
    from playwright.async_api import expect

    config = make_site(tmp_path / "site", farm_id)
    image = _image(tmp_path / "heater.bin")
    settings = fast_settings(config)
    settings.automation.command_timeout_s = 3.0
    await running_edge(settings)
    password = settings.api.admin_password
    assert password is not None
    url = f"http://127.0.0.1:{settings.api.port}/"
    farm = build_farm(settings, speed=10, telemetry_interval_s=1.0, seed=5)
    shots = screenshot_dir(tmp_path)
    refused = re.compile(r"status of 422")
    async with _simulated(farm), browser_session() as session:
        # Chromium logs the update the edge refuses (no LAN address yet, below) as a failed
        # resource: expected, once.
        session.allow(refused.pattern)
        page = await session.new_page(DESKTOP, locale="en-GB")
        await page.goto(url)
        await page.get_by_label("User name").fill("admin")
        await page.get_by_label("Password").fill(password.get_secret_value())
        await page.get_by_role("button", name="Log in").click()
        panel = page.locator("#firmware-section")
        row = panel.locator(f"tr[data-device='{HEATER}']")
        await expect(row.locator(".fw-running")).to_have_text("smartfarm-sim/0.1",
                                                              timeout=20_000)
        # The image is added on the page (the edge computes its checksums): for the heater.
        await expect(row).to_contain_text("no image for it")
        upload = panel.locator("#firmware-upload")
        await upload.get_by_label("Image (.ota.bin)").set_input_files(str(image))
        await upload.get_by_label("Version").fill("1.2.0")
        await upload.get_by_label("For").select_option(HEATER)
        await upload.get_by_role("button", name="Add image").click()
        await expect(panel.locator("#firmware-note")).to_contain_text(
            "Firmware 1.2.0 added (sha256", timeout=10_000)
        await expect(panel.locator("#firmware-images")).to_contain_text(
            f"1.2.0 · {HEATER} · 64 KB")
        # The sensor has no image of its own: no button to press.
        sensor_row = panel.locator(f"tr[data-device='{SENSOR}']")
        await expect(sensor_row).to_contain_text("no image for it")

        # Opened at the loopback address, the page cannot tell devices where to download:
        # it says so and what to do.
        await row.get_by_role("button", name="Update").click()
        await expect(panel.locator("#firmware-note")).to_contain_text(
            "api.firmware_base_url", timeout=10_000)
        assert not any(b'"ota"' in p for p in farm.actuators[HEATER].received)

        # With the LAN address configured (what `edge.toml` api.firmware_base_url does):
        settings.api.firmware_base_url = url.rstrip("/")
        await row.get_by_role("button", name="Update").click()
        await expect(panel.locator("#firmware-note")).to_have_text(
            "Firmware 1.2.0 offered to Heater.", timeout=10_000)
        await expect(row.locator(".fw-update")).to_contain_text("1.2.0: installed",
                                                                timeout=20_000)
        await expect(row.locator(".fw-running")).to_have_text("smartfarm-sim/1.2.0")
        await expect(page.locator("#devices")).to_contain_text("firmware smartfarm-sim/1.2.0")

        assert sum(bool(refused.search(p)) for p in session.problems.seen) == 1, \
            session.problems.seen

        await check_view(page, "edge-firmware", shots)
    # Leaving the session failed the test on any other console or page error.
