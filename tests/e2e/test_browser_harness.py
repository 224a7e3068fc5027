"""The browser harness itself catches what it promises to: a console error or an uncaught
exception fails the test, axe's serious violations fail it (listed readably), a page wider than a
phone and a control too small to tap are found, and screenshots come in both widths."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from tests.e2e.browser import (
    AXE_PATH,
    PHONE,
    _check_integrity,
    axe_in_place,
    browser_session,
    check_axe,
    check_view,
    horizontal_overflow,
    need_browser,
    run_axe,
    screenshots,
    small_targets,
)

GOOD = """<!doctype html><html lang="en"><head><title>ok</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>Farm</h1><label for="n">Name</label>
<input id="n" style="min-height:44px;width:100%">
<button style="min-height:44px;min-width:44px">Save</button></main></body></html>"""


@pytest.mark.browser
async def test_console_and_page_errors_fail_the_test() -> None:
    need_browser()
    with pytest.raises(AssertionError, match="console: boom"):
        async with browser_session() as session:
            page = await session.new_page()
            await page.set_content(GOOD)
            await page.evaluate("console.error('boom')")
    with pytest.raises(AssertionError, match=r"page error: .*kaput"):
        async with browser_session() as session:
            page = await session.new_page()
            await page.set_content(GOOD)
            await page.evaluate("setTimeout(() => { throw new Error('kaput'); })")
            await page.wait_for_timeout(100)
    # An expected one, allowed by pattern, does not.
    async with browser_session() as session:
        session.allow("expected 401")
        page = await session.new_page()
        await page.set_content(GOOD)
        await page.evaluate("console.error('an expected 401')")
        await page.evaluate("console.warn('warnings are not errors')")


@pytest.mark.browser
async def test_axe_finds_serious_violations_and_passes_a_clean_page(tmp_path: Path) -> None:
    need_browser()
    async with browser_session() as session:
        page = await session.new_page()
        await page.set_content(GOOD)
        minor = await check_axe(page, "good", tmp_path)  # raises on serious ones
        assert all(v["impact"] in ("minor", "moderate") for v in minor), minor
        assert (tmp_path / "axe-good.json").exists()
        await page.set_content(
            '<!doctype html><html lang="en"><head><title>bad</title></head><body><main>'
            '<h1>x</h1><button></button><input id="q">'
            '<p style="color:#aaa;background:#fff">faint text</p></main></body></html>')
        violations = {v["id"] for v in await run_axe(page)}
        assert {"button-name", "label", "color-contrast"} <= violations, violations
        with pytest.raises(AssertionError) as caught:
            await check_axe(page, "bad")
        report = str(caught.value)
        assert "[critical] button-name" in report and "at button" in report, report
        assert "color-contrast" in report


@pytest.mark.browser
async def test_overflow_targets_and_screenshots(tmp_path: Path) -> None:
    need_browser()
    async with browser_session() as session:
        page = await session.new_page(PHONE)
        await page.set_content(GOOD)
        assert await horizontal_overflow(page) == 0
        assert await small_targets(page) == []
        shots = tmp_path / "shots"  # not $SMARTFARM_SCREENSHOTS: that is for the real views
        shots.mkdir()
        paths = await screenshots(page, "good", shots)
        assert [p.name for p in paths] == ["good-390.png", "good-1366.png"]
        assert all(p.stat().st_size > 1000 for p in paths)
        assert page.viewport_size == PHONE  # left as it was
        await check_view(page, "good", shots)
        assert (shots / "good-dark-1366.png").exists()

        await page.set_content(GOOD.replace("<h1>Farm</h1>", '<h1 style="width:600px">Farm</h1>')
                               .replace("min-height:44px;min-width:44px", "height:20px"))
        assert await horizontal_overflow(page) >= 200
        small = await small_targets(page)
        assert len(small) == 1 and small[0].startswith('button "Save"') and small[0].endswith("×20")
        with pytest.raises(AssertionError, match="wider than the window"):
            await check_view(page, "wide", shots)

        # A phone in a mobile context zooms out to fit the wide page: still found.
        phone = await session.new_page(PHONE, device_scale_factor=2, is_mobile=True)
        await phone.set_content(GOOD.replace("<h1>Farm</h1>", '<h1 style="width:600px">Farm</h1>'))
        assert await phone.evaluate("window.innerWidth") > PHONE["width"]  # the zoom out
        assert await horizontal_overflow(phone) >= 200


def test_the_axe_download_is_checked(tmp_path: Path) -> None:
    data = b"a tarball"
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    _check_integrity(data, f"sha512-{digest}")
    with pytest.raises(SystemExit, match="integrity mismatch"):
        _check_integrity(data + b"!", f"sha512-{digest}")
    # A file in place that is not the pinned one is not taken for it.
    (tmp_path / "axe.min.js").write_text("/*! axe v4.14.1 */ window.axe = {run() {}};")
    assert not axe_in_place(tmp_path / "axe.min.js")
    assert not axe_in_place(tmp_path / "missing.js")
    if AXE_PATH.exists():  # make test put it there
        assert axe_in_place(AXE_PATH)
