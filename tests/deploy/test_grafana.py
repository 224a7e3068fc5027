"""The Grafana dashboards in deploy/grafana/ load, and every PromQL expression in them names only
metrics (and labels) that a real edge and a real cloud expose on /metrics."""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud.app import init_app
from edge.app import EdgeApp
from tests.cloud.conftest import make_settings
from tests.e2e.conftest import fast_settings, make_site

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
SUFFIXES = {
    "counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",),
    "untyped": ("",),
}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan"}
Exposed = dict[str, set[str]]  # series name → label names


def exposition(text: str) -> Exposed:
    """Every series name the text can carry (by family type) with the family's label names."""
    out: Exposed = {}
    for family in text_string_to_metric_families(text):
        labels = {k for sample in family.samples for k in sample.labels} - {"le", "quantile"}
        for suffix in SUFFIXES.get(family.type, ("",)):
            out.setdefault(family.name + suffix, set()).update(labels)
    return out


def metric_names(expr: str) -> tuple[set[str], dict[str, set[str]]]:
    """(bare metric names, labels used per metric in selectors and by/without clauses)."""
    grafana_vars = re.sub(r"\$\{?\w+\}?", "x", expr)
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', grafana_vars)
    labels: dict[str, set[str]] = {}
    for name, selector in re.findall(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", no_strings):
        labels.setdefault(name, set()).update(re.findall(r"([A-Za-z_]\w*)\s*[=!]~?", selector))
    grouping = set()
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", no_strings):
        grouping.update(x.strip() for x in clause.split(",") if x.strip())
    bare = re.sub(r"\{[^}]*\}", "", no_strings)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    names = {
        m.group(1) for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", bare)
        if m.group(1).lower() not in PROMQL_WORDS
    }
    for name in names:
        labels.setdefault(name, set()).update(grouping)
    return names, labels


def exprs(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target and templating query."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield f"panel {panel['title']!r}", target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(board["panels"])
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert inner, f"variable {var['name']}: unexpected query {query!r}"
            yield f"variable {var['name']!r}", inner.group(1)


def test_metric_name_extraction() -> None:
    names, labels = metric_names(
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{instance=~"$instance",'
        ' status=~"5.."}[$__rate_interval]))) / time() - max(b_total offset 5m) or vector(0)')
    assert names == {"a_bucket", "b_total"}
    assert labels["a_bucket"] == {"instance", "status", "le", "route"}


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


@pytest.fixture
async def edge_metrics(tmp_path: Path, farm_id: str) -> AsyncIterator[Exposed]:
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    app = EdgeApp(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        async with asyncio.timeout(20):
            await app.broker_connected.wait()
        yield exposition(await scrape(f"http://127.0.0.1:{app.api_port}/metrics"))
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


@pytest.fixture
async def cloud_metrics(aiohttp_client: Any, db_dsn: str, tmp_path: Path) -> Exposed:
    client = await aiohttp_client(init_app(make_settings(db_dsn, tmp_path)))
    assert (await client.get("/health")).status == 200
    resp = await client.get("/metrics")
    assert resp.status == 200
    return exposition(await resp.text())


def check_board(name: str, exposed: Exposed) -> None:
    board = json.loads((GRAFANA / name).read_text())
    assert board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    ds = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert [v["name"] for v in ds] == ["DS_PROMETHEUS"]
    seen = 0
    problems = []
    panel_ids = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(board["panels"]):
        panel_ids.append(panel["id"])
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    assert len(panel_ids) == len(set(panel_ids)), "duplicate panel ids"
    for where, expr in exprs(board):
        names, labels = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric in {expr!r}")
        for metric in names:
            seen += 1
            if metric not in exposed:
                problems.append(f"{where}: {metric} is not exposed")
                continue
            known = exposed[metric] | TARGET_LABELS | {"le"}
            # Labels are only known for families that had samples in this scrape.
            if exposed[metric] and (unknown := labels.get(metric, set()) - known):
                problems.append(f"{where}: {metric} has no label(s) {sorted(unknown)}")
    assert not problems, "\n".join(problems)
    assert seen >= 20


async def test_edge_dashboard_uses_only_exposed_metrics(edge_metrics: Exposed) -> None:
    assert "smartfarm_edge_readings_total" in edge_metrics
    check_board("smartfarm-edge.json", edge_metrics)


async def test_cloud_dashboard_uses_only_exposed_metrics(cloud_metrics: Exposed) -> None:
    assert "smartfarm_http_request_duration_seconds_bucket" in cloud_metrics
    check_board("smartfarm-cloud.json", cloud_metrics)


def test_dashboards_are_distinct_and_importable() -> None:
    boards = [json.loads(p.read_text()) for p in sorted(GRAFANA.glob("*.json"))]
    assert len(boards) >= 2
    assert len({b["uid"] for b in boards}) == len(boards)
    for board in boards:
        assert board["id"] is None  # importable into any Grafana
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24
