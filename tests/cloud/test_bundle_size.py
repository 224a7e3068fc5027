"""The dashboard's weight: every static asset, raw and as served (gzip, as the app compresses it
at start), and the total, against a budget. Always printed (``pytest -s`` shows it); written to
``bench/results/bundle.json`` and ``bundle.md`` when SMARTFARM_BUNDLE_REPORT=1 (``make bundle``).

The budget is what a grower's phone loads on a first visit over a farm's mobile link: every
file, gzipped, at most ``BUDGET_GZIP_BYTES``; no single script or stylesheet above
``BUDGET_FILE_GZIP_BYTES`` (a file that big wants splitting)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloud.page import STATIC_DIR, load_assets

BUDGET_GZIP_BYTES = 120 * 1024
BUDGET_FILE_GZIP_BYTES = 30 * 1024
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def bundle_report(folder: Path = STATIC_DIR) -> dict[str, Any]:
    files = []
    for name, asset in sorted(load_assets(folder).items()):
        served = len(asset.gzipped) if asset.gzipped is not None else len(asset.body)
        files.append({"name": name, "type": asset.content_type.split(";")[0],
                      "raw_bytes": len(asset.body), "gzip_bytes": served})
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
        "total_raw_bytes": sum(f["raw_bytes"] for f in files),
        "total_gzip_bytes": sum(f["gzip_bytes"] for f in files),
        "budget_gzip_bytes": BUDGET_GZIP_BYTES,
        "budget_file_gzip_bytes": BUDGET_FILE_GZIP_BYTES,
    }


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Dashboard bundle ({report['measured_at']})",
        "",
        "| file | type | raw | gzip |",
        "|---|---|---:|---:|",
    ]
    for f in report["files"]:
        lines.append(f"| {f['name']} | {f['type']} | {_kb(f['raw_bytes'])} | "
                     f"{_kb(f['gzip_bytes'])} |")
    lines.append(f"| **total** ({len(report['files'])} files) | | "
                 f"**{_kb(report['total_raw_bytes'])}** | **{_kb(report['total_gzip_bytes'])}** |")
    lines += ["", f"Budget: {_kb(report['budget_gzip_bytes'])} gzipped in all, "
              f"{_kb(report['budget_file_gzip_bytes'])} per file."]
    return "\n".join(lines) + "\n"


def test_the_dashboard_fits_its_budget(tmp_path: Path) -> None:
    report = bundle_report()
    table = markdown(report)
    print("\n" + table)
    if os.environ.get("SMARTFARM_BUNDLE_REPORT") == "1":
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "bundle.json").write_text(json.dumps(report, indent=1) + "\n")
        (RESULTS / "bundle.md").write_text(table)
    names = {f["name"] for f in report["files"]}
    assert {"index.html", "app.js", "app.css", "api.js"} <= names
    # Every file the folder holds is in the report (nothing served goes unweighed).
    on_disk = {p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}
    assert names == on_disk
    heavy = [f"{f['name']} {_kb(f['gzip_bytes'])}" for f in report["files"]
             if f["gzip_bytes"] > BUDGET_FILE_GZIP_BYTES]
    assert not heavy, f"over {_kb(BUDGET_FILE_GZIP_BYTES)} gzipped each: {heavy}"
    assert report["total_gzip_bytes"] <= BUDGET_GZIP_BYTES, (
        f"the dashboard is {_kb(report['total_gzip_bytes'])} gzipped, over its budget of "
        f"{_kb(BUDGET_GZIP_BYTES)}:\n{table}")


def test_the_report_counts_what_is_served(tmp_path: Path) -> None:
    (tmp_path / "a.js").write_text("export const x = 'grow';\n" * 200)
    (tmp_path / "b.png").write_bytes(b"\x89PNG" + bytes(100))
    report = bundle_report(tmp_path)
    by_name = {f["name"]: f for f in report["files"]}
    assert by_name["a.js"]["raw_bytes"] == 5000
    assert by_name["a.js"]["gzip_bytes"] < 200  # repetitive text shrinks a lot
    assert by_name["b.png"]["gzip_bytes"] == by_name["b.png"]["raw_bytes"] == 104  # stored as is
    assert report["total_gzip_bytes"] == by_name["a.js"]["gzip_bytes"] + 104
    assert "| **total** (2 files)" in markdown(report)
