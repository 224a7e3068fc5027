"""The browser harness every dashboard test uses: the system's Chromium driven by Playwright,
every console error and page error recorded (a test fails on any it did not expect), axe-core's
accessibility check, a no-sideways-scrolling check, and screenshots at a phone's and a laptop's
width.

    async with browser_session() as session:
        page = await session.new_page(PHONE)
        ...
        await check_view(page, "farm", shots)   # both widths: overflow, axe, screenshots
        session.allow("status of 401")          # an expected error (a wrong password)
    # leaving the block fails the test on any other console or page error

axe-core is not fetched here: ``make test`` puts a pinned, integrity-checked copy in the venv
(``python -m tests.e2e.browser fetch-axe``; ``AXE_PATH``). Without it (or without Playwright or
Chromium) a browser test is skipped with the reason, or fails when SMARTFARM_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import urllib.request
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--force-color-profile=srgb", "--hide-scrollbars"]
AXE_VERSION = "4.14.1"
AXE_URL = f"https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz"
AXE_INTEGRITY = ("sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuF"
                 "ooJpZe37OgudVGtQ==")
AXE_PATH = Path(sys.prefix) / "share" / "axe-core" / "axe.min.js"
# sha256 of package/axe.min.js in that tarball: a copy already in place is checked against it.
AXE_SHA256 = "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}
WIDTHS = {"390": PHONE, "1366": DESKTOP}
FAILING_IMPACTS = ("serious", "critical")


def _require_or_skip(problem: str) -> None:
    if os.environ.get("SMARTFARM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"SMARTFARM_REQUIRE_BROWSER=1 but {problem}")
    pytest.skip(problem)


def need_browser(*, axe: bool = True) -> None:
    """Skip (or, with SMARTFARM_REQUIRE_BROWSER=1, fail) unless Playwright, Chromium and (when
    ``axe``) the axe-core file are all here."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _require_or_skip("the playwright package is missing (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        _require_or_skip(f"{CHROMIUM} is missing (apt install chromium)")
    if axe and not AXE_PATH.exists():
        _require_or_skip(f"{AXE_PATH} is missing (make test fetches it: "
                         "python -m tests.e2e.browser fetch-axe)")


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``$SMARTFARM_SCREENSHOTS`` when set (kept after the run), else the
    test's own temporary folder."""
    chosen = os.environ.get("SMARTFARM_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Problems:
    """Console errors and uncaught page errors seen on every page of a session."""

    seen: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        def console(message: Any) -> None:
            if message.type == "error":
                where = message.location.get("url", "") if message.location else ""
                self.seen.append(f"console: {message.text} ({where})")

        page.on("console", console)
        page.on("pageerror", lambda error: self.seen.append(f"page error: {error}"))

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [p for p in self.seen if not any(a.search(p) for a in self.allowed)]


class Session:
    """A launched Chromium: contexts (separate browsers, as far as storage goes) and pages,
    every one watched for errors."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.problems = Problems()

    def allow(self, pattern: str) -> None:
        """A console error the test expects (a regex searched in the message)."""
        self.problems.allow(pattern)

    async def new_context(self, viewport: dict[str, int] | None = None, **options: Any) -> Any:
        context = await self.browser.new_context(viewport=viewport or DESKTOP, **options)
        context.on("page", self.problems.watch)
        return context

    async def new_page(self, viewport: dict[str, int] | None = None, **options: Any) -> Any:
        """A page in a context of its own."""
        context = await self.new_context(viewport, **options)
        return await context.new_page()


@contextlib.asynccontextmanager
async def browser_session(*, axe: bool = True) -> AsyncIterator[Session]:
    """Chromium for one test; on the way out, the test fails on any unexpected console or page
    error (Content-Security-Policy violations included: Chromium reports them as errors)."""
    need_browser(axe=axe)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        session = Session(browser)
        try:
            yield session
        finally:
            await browser.close()
    unexpected = session.problems.unexpected()
    assert not unexpected, "errors in the browser:\n  " + "\n  ".join(unexpected)


def _axe_source() -> str:
    if not AXE_PATH.exists():
        need_browser()
    return AXE_PATH.read_text()


def format_violations(violations: Iterable[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        lines.append(f"[{v.get('impact')}] {v['id']}: {v['help']} ({v.get('helpUrl', '')})")
        for node in v.get("nodes", [])[:8]:
            target = " ".join(str(t) for t in node.get("target", []))
            summary = (node.get("failureSummary") or "").replace("\n", " ")
            lines.append(f"    at {target}: {summary[:300]}")
        if len(v.get("nodes", [])) > 8:
            lines.append(f"    … and {len(v['nodes']) - 8} more")
    return "\n".join(lines)


async def run_axe(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (WCAG 2.x A/AA and best practices).
    Injected through the DevTools protocol, which the page's Content-Security-Policy does not
    govern: the page itself stays under its real policy."""
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(_axe_source())
    result: dict[str, Any] = await page.evaluate(
        """async () => await axe.run(document, {
            resultTypes: ['violations'],
            runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa',
                                            'wcag22aa', 'best-practice']},
        })""")
    violations: list[dict[str, Any]] = result["violations"]
    return violations


async def check_axe(page: Any, view_name: str, save_to: Path | None = None) -> list[dict[str, Any]]:
    """Fail on any serious or critical axe violation, listed readably; return the minor ones
    (also saved as ``axe-<view>.json`` in ``save_to`` when given)."""
    violations = await run_axe(page)
    if save_to is not None:
        (save_to / f"axe-{view_name}.json").write_text(json.dumps(violations, indent=1))
    bad = [v for v in violations if v.get("impact") in FAILING_IMPACTS]
    assert not bad, f"axe: {len(bad)} serious/critical on {view_name}:\n{format_violations(bad)}"
    return [v for v in violations if v.get("impact") not in FAILING_IMPACTS]


async def horizontal_overflow(page: Any) -> int:
    """How many CSS pixels the page is wider than the window (0: no sideways scrolling).
    Measured against the layout viewport (the root's clientWidth), not ``innerWidth``: in a
    mobile context (``is_mobile``) Chromium zooms out to fit what overflows, and ``innerWidth``
    grows with it, so an overflowing phone page would measure 0."""
    return int(await page.evaluate(
        "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        " - document.documentElement.clientWidth"))


async def small_targets(page: Any, minimum: int = 44) -> list[str]:
    """Visible buttons, inputs, selects and summaries (not links inside text) smaller than
    ``minimum`` CSS pixels either way (checkboxes and radios count their label)."""
    found: list[str] = await page.evaluate(
        """(minimum) => {
          const out = [];
          for (const el of document.querySelectorAll('button, select, summary, input, a.button')) {
            const box = el.getBoundingClientRect();
            if (!box.width || !box.height || getComputedStyle(el).visibility === 'hidden') continue;
            let w = box.width, hgt = box.height;
            if (el.type === 'checkbox' || el.type === 'radio') {
              const label = el.closest('label')
                || (el.id && document.querySelector(`label[for="${el.id}"]`));
              if (label) {
                const lb = label.getBoundingClientRect();
                w = Math.max(w, lb.width); hgt = Math.max(hgt, lb.height);
              }
              if (Math.min(w, hgt) >= 24) continue;  // WCAG 2.2 AA for a labelled box
            }
            if (w + 0.5 < minimum || hgt + 0.5 < minimum) {
              const name = (el.getAttribute('aria-label') || el.textContent || el.name
                || el.id || '').trim().slice(0, 40);
              const size = `${Math.round(w)}×${Math.round(hgt)}`;
              out.push(`${el.tagName.toLowerCase()} "${name}" ${size}`);
            }
          }
          return out;
        }""",
        minimum)
    return found


async def screenshots(page: Any, name: str, folder: Path) -> list[Path]:
    """Full-page PNGs of the page at 390×844 and 1366×900: ``<name>-390.png``, ``<name>-1366.png``
    in ``folder``; the page is left at its first size."""
    first = page.viewport_size
    paths = []
    for label, size in WIDTHS.items():
        await page.set_viewport_size(size)
        await page.wait_for_timeout(150)  # layout and any resize handlers
        path = folder / f"{name}-{label}.png"
        await page.screenshot(path=str(path), full_page=True)
        paths.append(path)
    if first:
        await page.set_viewport_size(first)
    return paths


async def check_view(page: Any, name: str, folder: Path, *, targets: bool = True,
                     dark: bool = True) -> None:
    """The whole check of a view at both widths: no sideways scrolling, no serious axe
    violation, (at the phone's width) no control under 44 px, and a screenshot of each
    (``<name>-390.png``, ``<name>-1366.png``); with ``dark``, the same again in the dark colour
    scheme (``<name>-dark-390.png``…), where contrast is checked anew."""
    first = page.viewport_size
    schemes = ("light", "dark") if dark else ("light",)
    try:
        for scheme in schemes:
            await page.emulate_media(color_scheme=scheme)
            suffix = "-dark" if scheme == "dark" else ""
            for label, size in WIDTHS.items():
                await page.set_viewport_size(size)
                await page.wait_for_timeout(150)
                where = f"{name}{suffix} at {label} px"
                overflow = await horizontal_overflow(page)
                assert overflow <= 1, f"{where} is {overflow} px wider than the window"
                await check_axe(page, f"{name}{suffix}-{label}", folder)
                if targets and label == "390":
                    small = await small_targets(page)
                    assert not small, f"{where}: controls under 44 px: {small}"
                await page.screenshot(path=str(folder / f"{name}{suffix}-{label}.png"),
                                      full_page=True)
    finally:
        await page.emulate_media(color_scheme="light")
        if first:
            await page.set_viewport_size(first)


# ---- fetching axe-core (make test) --------------------------------------------------------------

def _check_integrity(data: bytes, integrity: str) -> None:
    algo, _, expected = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != expected:
        raise SystemExit(f"axe-core tarball integrity mismatch: {algo}-{got} != {integrity}")


def axe_in_place(target: Path = AXE_PATH) -> bool:
    """Whether ``target`` already holds the pinned axe.min.js, byte for byte."""
    return target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == AXE_SHA256


def fetch_axe(target: Path = AXE_PATH, url: str = AXE_URL, integrity: str = AXE_INTEGRITY,
              *, force: bool = False) -> Path:
    """Download the pinned axe-core tarball from the npm registry, check its integrity (the
    registry's sha512) and put ``axe.min.js`` at ``target`` (nothing to do when the pinned file
    is there already, unless ``force``)."""
    if not force and axe_in_place(target):
        return target
    with urllib.request.urlopen(url, timeout=60) as resp:  # a fixed https URL
        data = resp.read()
    _check_integrity(data, integrity)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile("package/axe.min.js")
        if member is None:
            raise SystemExit("axe-core tarball has no package/axe.min.js")
        script = member.read()
    if hashlib.sha256(script).hexdigest() != AXE_SHA256:
        raise SystemExit(f"package/axe.min.js is not the pinned axe {AXE_VERSION}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(script)
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.browser")
    parser.add_argument("command", choices=["fetch-axe"])
    parser.add_argument("--target", type=Path, default=AXE_PATH)
    parser.add_argument("--force", action="store_true", help="download even if in place")
    args = parser.parse_args(argv)
    path = fetch_axe(args.target, force=args.force)
    print(f"axe-core {AXE_VERSION} → {path} ({path.stat().st_size} bytes, integrity checked)")


if __name__ == "__main__":
    main()
