"""bench/edge_fleet.py in a small run: real nginx (the repo's config) in front of two real cloud
instances on real PostgreSQL, 20 simulated edges holding streams and uploading batches while
commands are sent through the REST API. The benchmark's own figures are checked against what
PostgreSQL holds at the end. No nginx: skip with the reason (fail when
SMARTFARM_REQUIRE_DEPLOY_TOOLS=1, as in CI)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import edge_fleet
from bench.nginx_site import nginx_binary
from tests.deploy.test_containers import need

pytestmark = pytest.mark.timeout(120)


def test_edge_fleet_small_run(tmp_path: Path) -> None:
    need(nginx_binary(), "nginx not installed (apt-get install nginx; .ci/run does)")
    result = edge_fleet.main([
        "--edges", "20", "--farms", "5", "--rate", "800", "--period", "1", "--seconds", "4",
        "--warmup", "1.5", "--commands", "10", "--workers", "1", "--results-dir", str(tmp_path),
        # Counted batches assume the edges' own 1 s period; pacing is tested on its own.
        "--no-pacing",
    ])
    # Every edge's stream went through nginx, and least_conn spread them over both instances.
    assert sum(result["streams_by_instance"]) == 20
    assert min(result["streams_by_instance"]) >= 5, result["streams_by_instance"]
    assert result["streams_open_at_end"] == 20 and result["stream_drops"] == 0
    assert result["errors"] == {}, result["error_samples"]
    # The paced load arrived and was acked (800/s offered; the window's edges may cut a batch).
    assert 600 <= result["readings_per_s"] <= 1000, result["readings_per_s"]
    assert all(rate > 0 for rate in result["readings_per_s_by_instance"])
    assert result["batch_ack_ms"]["count"] > 40
    # Exactly once: the seqs the edges saw acked are what PostgreSQL's marks say it stored.
    assert result["acked_seqs"] == result["database"]["sum_of_high_water_marks"] > 0
    # Commands: each reached its edge's stream, was accepted and its ack uploaded.
    assert result["commands_sent_in_window"] >= 20 and result["commands_undelivered"] == 0
    # Several edges per farm: each command reaches the edge that runs its room and no other.
    assert result["foreign_commands"] == 0
    assert result["command_delivery_ms"]["p99"] < 5_000
    statuses = result["database"]["command_status"]
    assert statuses.get("acked", 0) >= result["commands_sent_in_window"] - 5, statuses
    assert result["kib_per_stream"] and all(k is not None for k in result["kib_per_stream"])
    written = json.loads((tmp_path / "edge_fleet.json").read_text())
    assert written["targets"][1]["name"] == "batch ack p99"
    assert written["parameters"]["pacing"] is False and written["batch_interval_s"]["max"] == 1.0
    assert written["cpu_s"]["cloud-1"] > 0 and written["cpu_s"]["cloud-2"] > 0
