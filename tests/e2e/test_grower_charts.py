"""A grower's charts in headless Chromium on the real chain (simulator ▶ edge ▶ cloud ▶ browser),
with a week of older readings stored in the cloud beforehand.

Hovering shows the values at that time; a drag zooms every chart and "Reset zoom" brings the
range back; 7 and 30 days get day/date ticks on local midnights that do not overlap (at 1280 and
at 390 px); a range without readings says so; switching the fan draws its on-band under the lines;
logbook entries (the logbook route's contract, answered here by the test) become markers and the
band follows the stage that held at each moment; CSV and Parquet downloads parse.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cloud.db import telemetry as telemetry_db
from cloud.db.database import Database
from firmware_sim.farm import build_farm
from tests.chaos.conftest import PASSWORD, Cloud, cloud, until
from tests.e2e.browser import (
    PHONE,
    browser_session,
    check_axe,
    format_violations,
    horizontal_overflow,
    screenshot_dir,
)
from tests.e2e.test_edge_cloud import online_farm, simulated

pytestmark = [pytest.mark.postgres, pytest.mark.browser]
FIXTURES = (cloud)

CHART = 'figure.chart[data-metric="temperature_c"]'
MOMENT = re.compile(r"\d{1,2} [A-Z][a-z]{2} \d\d:\d\d")
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
DAY_MS = 86_400_000


async def _seed_week(dsn: str, farm_id: str) -> None:
    """Eight days of readings every 10 min, ending an hour ago (the live ones follow)."""
    end = datetime.now(UTC) - timedelta(hours=1)
    rows = []
    for i in range(8 * 144):
        at = end - timedelta(minutes=10 * i)
        phase = math.sin(i / 144 * 2 * math.pi)
        rows += [
            (at, "room-a", "room-a-sensor", "temperature_c", 17.5 + 1.5 * phase),
            (at, "room-a", "room-a-sensor", "humidity_pct", 88 + 3 * phase),
            (at, "room-a", "room-a-sensor", "co2_ppm", 900 + 200 * phase),
            # A second thermometer (since removed): two lines on the temperature chart.
            (at, "room-a", "room-a-probe", "temperature_c", 18.5 + 1.0 * phase),
        ]
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        await telemetry_db.insert_readings(db, farm_id, rows)
    finally:
        await db.close()


def _logbook(now: datetime) -> list[dict[str, Any]]:
    def entry(i: int, kind: str, ago: timedelta, title: str, **extra: Any) -> dict[str, Any]:
        return {"id": i, "kind": kind, "at": (now - ago).isoformat(), "title": title,
                "text": "", "stage": None, "weight_kg": None, "by": "owner@sync.test"} | extra

    return [
        entry(1, "stage", timedelta(days=3), "Pinning", stage="pinning"),
        entry(2, "note", timedelta(hours=5), "Soaked the floor"),
        entry(3, "harvest", timedelta(hours=3), "First flush", weight_kg=2.5),
    ]


async def _sign_in_and_open(page: Any, url: str) -> None:
    await page.goto(url + "/")
    await page.fill("#email", "owner@sync.test")
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.click('a.room[data-room="room-a"]', timeout=15_000)
    await page.wait_for_selector(f'{CHART}[data-empty="false"]', timeout=15_000)


async def _inside(page: Any, violations: list[dict[str, Any]], scope: str
                  ) -> list[dict[str, Any]]:
    """The axe violations with a node inside ``scope``; a node whose element is not found (in a
    shadow root, say) counts as inside, so nothing slips through."""
    found: list[bool] = await page.evaluate(
        """([violations, scope]) => violations.map((v) => v.nodes.some((n) => {
             const t = n.target[0];
             const el = typeof t === 'string' ? document.querySelector(t) : null;
             return el === null || el.closest(scope) !== null;
           }))""",
        [violations, scope])
    return [v for v, inside in zip(violations, found, strict=True) if inside]


async def _view(page: Any) -> tuple[int, int]:
    got = await page.eval_on_selector(CHART, "el => [el.dataset.viewFrom, el.dataset.viewTo]")
    return int(got[0]), int(got[1])


async def _ticks(page: Any) -> list[dict[str, Any]]:
    ticks: list[dict[str, Any]] = await page.eval_on_selector_all(
        f"{CHART} text.time-tick",
        """els => els.map(el => { const b = el.getBoundingClientRect();
             const d = new Date(Number(el.dataset.t));
             return { t: Number(el.dataset.t), label: el.textContent, left: b.left, right: b.right,
                      midnight: d.getHours() === 0 && d.getMinutes() === 0 }; })""",
    )
    return ticks


def _no_overlap(ticks: list[dict[str, Any]]) -> None:
    assert all(t["right"] > t["left"] for t in ticks), ticks
    for a, b in itertools.pairwise(ticks):
        assert a["right"] + 2 <= b["left"], f"tick labels overlap: {a} {b}"


async def _pick_range(page: Any, key: str, days: float) -> None:
    await page.click(f'.charts button[data-range="{key}"]')
    # Pressed once its data is in (a custom range of the same length may be on screen before).
    await page.wait_for_selector(f'.charts button[data-range="{key}"][aria-pressed="true"]')
    await page.wait_for_selector('section.charts[data-loading="false"]')

    async def spans() -> bool:
        a, b = await _view(page)
        return abs((b - a) - days * DAY_MS) < 120_000

    await until(spans, 15, f"the {key} range on the chart", 0.1)


async def test_a_grower_reads_zooms_and_exports_the_charts(
    cloud: Any, tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    edge: Any
    edge, _ = await online_farm(the_cloud, tmp_path, farm_id, running_edge, batch_max_age_s=0.2)
    await _seed_week(the_cloud.dsn, farm_id)
    now = datetime.now(UTC)
    logbook = _logbook(now)
    farm = build_farm(edge.settings, speed=10, telemetry_interval_s=1.0, seed=7)

    async def logbook_route(route: Any) -> None:
        # The logbook's contract ({"items": [...]}), answered here: this test is about the charts.
        await route.fulfill(status=200, content_type="application/json",
                            body=json.dumps({"items": logbook, "next_cursor": None}))

    async def history_route(route: Any) -> None:
        # The real answer, saying the logbook exists (until the logbook route is merged in).
        response = await route.fetch()
        body = await response.json()
        body["logbook"] = True
        await route.fulfill(response=response, body=json.dumps(body))

    async def routes(context: Any) -> None:
        await context.route(re.compile(r".*/api/rooms/room-a/logbook\?.*"), logbook_route)
        await context.route(re.compile(r".*/api/rooms/room-a/actuators/history.*"), history_route)

    async with simulated(farm), browser_session() as session:
        shots = screenshot_dir(tmp_path)
        context = await session.new_context({"width": 1280, "height": 1000},
                                            accept_downloads=True)
        await routes(context)
        page = await context.new_page()
        await _sign_in_and_open(page, the_cloud.url)

        # Every metric the room has gets a chart (CO₂ too), each with its unit.
        for metric in ("temperature_c", "humidity_pct", "co2_ppm"):
            await page.wait_for_selector(f'figure.chart[data-metric="{metric}"]')
        assert "°C" in (await page.text_content(f"{CHART} .chart-title") or "")

        # Hover: a crosshair and a tooltip with the time and the value, with its unit.
        svg = page.locator(f"{CHART} svg.plot")
        box = await svg.bounding_box()
        assert box is not None
        await page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + 60)
        tip = page.locator(f"{CHART} .chart-tip")
        await tip.wait_for(state="visible", timeout=5_000)
        text = await tip.text_content() or ""
        assert MOMENT.search(text), text
        assert re.search(r"\d+\.\d °C", text), text
        assert await page.locator(f"{CHART} line.crosshair").count() == 1
        assert "room-a-probe" in text and "room-a-sensor" in text, text
        # Two devices on one chart: a legend says which colour is which.
        assert await page.locator(f"{CHART} .chart-legend li").all_text_contents() == [
            "room-a-probe", "room-a-sensor"]
        # The same moment is marked on the other charts (no tooltip there).
        humidity = 'figure.chart[data-metric="humidity_pct"]'
        assert await page.locator(f"{humidity} line.crosshair.echo").count() == 1
        assert await page.locator(f"{humidity} .chart-tip").is_hidden()

        # Logbook entries are markers; the band follows the stage of each moment.
        assert await page.locator(f"{CHART} g.marker").count() == 2  # note, harvest (24 h)
        await _pick_range(page, "7d", 7)
        assert await page.locator(f"{CHART} g.marker.kind-stage").count() == 1
        stages = await page.eval_on_selector_all(
            f"{CHART} rect.band", "els => els.map(e => e.dataset.stage)")
        assert "pinning" in stages and "fruiting" in stages, stages

        # 7 days: a tick per day (or every other at narrow widths) on local midnights,
        # written "6 Dec", none overlapping.
        ticks = await _ticks(page)
        assert len(ticks) >= 5 and all(t["midnight"] for t in ticks), ticks
        assert all(re.fullmatch(r"\d{1,2} [A-Z][a-z]{2}", t["label"]) for t in ticks), ticks
        steps = {b["t"] - a["t"] for a, b in itertools.pairwise(ticks)}
        assert steps <= {DAY_MS, DAY_MS + 3_600_000, DAY_MS - 3_600_000}, steps
        _no_overlap(ticks)
        await _pick_range(page, "30d", 30)
        ticks = await _ticks(page)
        assert len(ticks) >= 3 and all(t["midnight"] for t in ticks), ticks
        _no_overlap(ticks)
        await page.screenshot(path=str(shots / "charts-30d.png"), full_page=True)

        # Zoom by dragging across a chart: every chart shows the same narrower window;
        # "Reset zoom" brings the whole range back.
        await _pick_range(page, "24h", 1)
        before = await _view(page)
        await page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + 80)
        await page.mouse.down()
        await page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + 80, steps=6)
        await page.mouse.up()

        async def zoomed() -> tuple[int, int] | None:
            view = await _view(page)
            return view if view[1] - view[0] < (before[1] - before[0]) * 0.6 else None

        view = await until(zoomed, 5, "the zoomed window", 0.1)
        other = await page.eval_on_selector(
            'figure.chart[data-metric="humidity_pct"]',
            "el => [Number(el.dataset.viewFrom), Number(el.dataset.viewTo)]")
        assert abs(other[0] - view[0]) < 2000 and abs(other[1] - view[1]) < 2000
        assert "Zoomed" in (await page.text_content(".charts .zoom-note") or "")
        await page.click('.charts button[data-zoom="earlier"]')
        panned = await until(
            lambda: _panned(page, view), 5, "the window moved earlier", 0.1)
        assert panned[1] - panned[0] == pytest.approx(view[1] - view[0], abs=2000)
        await page.click('.charts button[data-zoom="reset"]')
        after = await _view(page)
        assert abs((after[1] - after[0]) - (before[1] - before[0])) < 120_000
        assert after[1] >= before[1]
        # "Earlier" on the whole range: the day before, same length, from the server.
        await page.click('.charts button[data-zoom="earlier"]')

        async def half_a_day_back() -> tuple[int, int] | None:
            now = await _view(page)
            return now if abs(now[1] - (after[1] - DAY_MS // 2)) < 120_000 else None

        back = await until(half_a_day_back, 10, "the range half a day earlier", 0.1)
        assert back[1] - back[0] == pytest.approx(DAY_MS, abs=120_000)
        await page.wait_for_selector(f'{CHART}[data-empty="false"]')
        await _pick_range(page, "24h", 1)

        # Keyboard: the chart takes focus, arrows move the crosshair, + zooms, 0 resets.
        await svg.focus()
        await page.keyboard.press("ArrowLeft")
        await tip.wait_for(state="visible")
        await page.keyboard.press("+")
        await until(zoomed, 5, "the keyboard zoom", 0.1)
        await page.keyboard.press("0")
        await until(lambda: _is_full(page, before), 5, "the keyboard reset", 0.1)

        # A range without readings says so.
        await page.fill("#charts-from", "2020-01-01T00:00")
        await page.fill("#charts-to", "2020-01-02T00:00")
        await page.click('.custom-range button[type="submit"]')
        await page.wait_for_selector(f'{CHART}[data-empty="true"]', timeout=10_000)
        assert await page.locator(f"{CHART} .chart-empty").is_visible()
        assert await page.text_content(f"{CHART} .chart-empty") == "No data for this range"
        assert await page.locator(f"{CHART} path.line").count() == 0

        # "fan on": once acknowledged, the fan's lane has an on-band at that time, under the
        # lines (the automation may have run the fan before: the band must cover the ack).
        await _pick_range(page, "1h", 1 / 24)
        fan = page.locator('li.device[data-device="room-a-fan"]')
        lane = f'{CHART} g.lane[data-device="room-a-fan"]'
        await page.wait_for_selector(lane)
        await fan.locator('button[data-action="on"]').click()
        await page.wait_for_selector(
            'li.device[data-device="room-a-fan"] ol.life[data-status="acked"]', timeout=15_000)
        acked = await page.evaluate("Date.now()")

        # (an ongoing band grows with the live chart: 1 h is 3 s a pixel at this width)
        async def band_at_ack() -> list[float] | None:
            found: list[list[float]] = await page.eval_on_selector_all(
                f"{lane} rect.lane-on",
                """(els, t) => els.filter((e) => Number(e.dataset.from) <= t
                                                && t <= Number(e.dataset.to))
                     .map((e) => [Number(e.getAttribute('x')),
                                  Number(e.getAttribute('width'))])""",
                acked)
            return found[0] if found and found[0][1] >= 4 else None

        band = await until(band_at_ack, 30, "the fan's on-band at the ack", 0.5)
        # Hovering inside the on-band: the tooltip says the fan is on then.
        await svg.hover(position={"x": band[0] + band[1] / 2, "y": 60})
        await tip.wait_for(state="visible")
        assert re.search(r"room-a-fan: on|Exhaust fan: on", await tip.text_content() or "")
        history = await the_cloud.api("GET", "/api/rooms/room-a/actuators/history")
        (fan_history,) = [a for a in history["actuators"] if a["device_id"] == "room-a-fan"]
        assert fan_history["intervals"], fan_history

        # Downloads of the shown range: a wide CSV and a long Parquet file that parse.
        await page.select_option("#charts-layout", "wide")
        async with page.expect_download() as info:
            await page.click(".charts button[data-format='csv']")
        download = await info.value
        path = tmp_path / download.suggested_filename
        await download.save_as(path)
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        assert rows and {"time", "device_id", "temperature_c", "humidity_pct"} <= set(rows[0])
        assert all(ISO_Z.match(r["time"]) for r in rows)
        assert any(r["temperature_c"] for r in rows)
        await page.select_option("#charts-layout", "long")
        async with page.expect_download() as info:
            await page.click(".charts button[data-format='parquet']")
        download = await info.value
        assert download.suggested_filename.endswith("-long.parquet")
        path = tmp_path / download.suggested_filename
        await download.save_as(path)
        table = pq.read_table(path)
        assert table.column_names == ["time", "device_id", "metric", "value"]
        assert table.num_rows > 0
        assert "temperature_c" in set(table.column("metric").to_pylist())
        await page.screenshot(path=str(shots / "charts-room.png"), full_page=True)

        # A phone: 7 days still readable (no overlapping ticks), nothing wider than the screen.
        phone = await session.new_context(PHONE, device_scale_factor=2, is_mobile=True,
                                          has_touch=True)
        await routes(phone)
        small = await phone.new_page()
        await _sign_in_and_open(small, the_cloud.url)
        await _pick_range(small, "7d", 7)
        ticks = await _ticks(small)
        assert len(ticks) >= 3 and all(t["midnight"] for t in ticks), ticks
        _no_overlap(ticks)
        overflow = await horizontal_overflow(small)
        assert overflow <= 1, f"the page is {overflow}px wider than a phone"
        plot = small.locator(f"{CHART} svg.plot")
        pbox = await plot.bounding_box()
        assert pbox is not None
        await plot.tap(position={"x": pbox["width"] * 0.5, "y": 60})
        await small.locator(f"{CHART} .chart-tip").wait_for(state="visible", timeout=5_000)
        await small.screenshot(path=str(shots / "charts-phone.png"), full_page=True)

        # axe-core on a freshly opened room, the chart hovered: no serious violation on the
        # page and none at all in the charts section.
        audit = await session.new_context({"width": 1280, "height": 1000})
        await routes(audit)
        checked = await audit.new_page()
        await _sign_in_and_open(checked, the_cloud.url)
        await checked.hover(f"{CHART} svg.plot")
        minor = await check_axe(checked, "charts", shots)
        in_charts = await _inside(checked, minor, "section.charts")
        assert not in_charts, f"axe in the charts section:\n{format_violations(in_charts)}"
    # Leaving the session checked every page: no console error and no page error.
    print(f"screenshots: {shots}/charts-room.png, charts-30d.png, charts-phone.png")


async def _panned(page: Any, view: tuple[int, int]) -> tuple[int, int] | None:
    now = await _view(page)
    return now if now[0] < view[0] - 60_000 else None


async def _is_full(page: Any, before: tuple[int, int]) -> bool:
    now = await _view(page)
    return abs((now[1] - now[0]) - (before[1] - before[0])) < 120_000
