"""schemathesis against /apispec.json of the running app (real server on a free port, real
PostgreSQL, an owner's bearer token): no server errors, every response as the document says.

Path parameters point at the test world's real farm, room, device… most of the time, so the
fuzzer gets past "404" into the handlers. A second, short pass runs the DELETE operations last.
``SMARTFARM_FUZZ_SEED`` / ``SMARTFARM_FUZZ_EXAMPLES`` explore further than CI's fixed seed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from aiohttp import web

from cloud import appkeys
from cloud.api import all_routes
from cloud.app import init_app
from tests.cloud import world as w
from tests.cloud.conftest import auth_settings, make_settings
from tests.conftest import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SEED = os.environ.get("SMARTFARM_FUZZ_SEED", "20240501")
EXAMPLES = int(os.environ.get("SMARTFARM_FUZZ_EXAMPLES", "15"))
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",  # schema-invalid input must be refused (4xx)
        "missing_required_header",
        "unsupported_method",
        "ignored_auth",
        "use_after_free",
        "ensure_resource_availability",
    )
)
# How often a path parameter is the world's real id rather than a generated one.
REAL_ID_SHARE = 0.8


def _config(world: w.World, alert_id: int, entry_id: str) -> str:
    real = {
        "farm_id": [w.FARM],
        "room_id": [w.ROOM_B],
        "device_id": [w.SENSOR_B, w.ACTUATOR_B],
        "rule_id": [w.RULE_B],
        "command_id": [w.COMMAND_B],
        "edge_id": [w.EDGE],
        "user_id": [world.user_ids["viewer"]],
        "notification_id": [world.notification_ids["owner"]],
        "recommendation_id": [world.recommendation_id],
        "alert_id": [str(alert_id)],  # a path parameter: a string in the schema
        "entry_id": [entry_id],
        "pending_device_id": [w.PENDING],
    }
    lines = ['hooks = "tests.cloud.schemathesis_hooks"', ""]
    for name, values in real.items():
        rendered = ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values)
        lines += [f"[dictionaries.{name}]", f"values = [{rendered}]", ""]
    params = [
        f'"path.{name}" = {{ dictionary = "{name}", probability = {REAL_ID_SHARE} }}'
        for name in real
    ]
    # The first block leaves DELETE alone (random ids: 404s), so the world survives the run;
    # the second pass (--include-method DELETE) then deletes real resources.
    lines += ["[[operations]]", 'exclude-method = "DELETE"', "[operations.parameters]", *params]
    lines += ["", "[[operations]]", 'include-method = "DELETE"', "[operations.parameters]"]
    lines += params
    return "\n".join(lines) + "\n"


async def _schemathesis(
    base: str, token: str, config: Path, cwd: Path, *extra: str
) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--no-color",
        "--config-file",
        str(config),
        "run",
        f"{base}/apispec.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--seed",
        SEED,
        "--workers",
        "1",
        "--output-truncate",
        "true",
        *extra,
        cwd=cwd,  # its .hypothesis cache stays out of the repository
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=200)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _report(output: str) -> str:
    """The failures section (and summary) of a schemathesis run, bounded for the assertion."""
    start = output.find("FAILURES")
    return output[start if start >= 0 else -4000 :][:12_000]


@pytest.mark.timeout(300)
async def test_fuzzing_the_openapi_document_finds_no_errors(  # type: ignore[no-untyped-def]
    world_dsn, world, tokens, tmp_path
) -> None:
    # The per-token limit would answer 429 (documented, but it would starve the fuzzer).
    settings = make_settings(world_dsn, tmp_path, auth=auth_settings(api_per_token=1_000_000))
    app = init_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    config = tmp_path / "schemathesis.toml"
    alarm, note = await w.add_alarm(world_dsn), await w.add_note(world_dsn)
    await w.add_pending(world_dsn)
    config.write_text(_config(world, alarm, note))
    token = tokens.issue(world.user_ids["owner"], ttl_s=3600)
    base = f"http://127.0.0.1:{port}"
    try:
        code, output = await _schemathesis(
            base,
            token,
            config,
            tmp_path,
            "--exclude-method",
            "DELETE",
            # Signing out everywhere would end the fuzzer's own session (every token it holds is
            # refused from then on); tests/cloud/test_platform_http.py covers that route.
            "--exclude-path",
            "/api/auth/logout-all",
            "--max-examples",
            str(EXAMPLES),
            "--phases",
            "examples,coverage,fuzzing",
        )
        assert code == 0, _report(output)
        assert "Tested:" in output and "passed" in output
        code, output = await _schemathesis(
            base,
            token,
            config,
            tmp_path,
            "--include-method",
            "DELETE",
            "--max-examples",
            "5",
            "--phases",
            "examples,fuzzing",
        )
        assert code == 0, _report(output)
    finally:
        await runner.cleanup()
    registry = app[appkeys.METRICS].registry
    # The server's own count: nothing reached the catch-all (a 500) in either pass.
    assert registry.get_sample_value("smartfarm_http_unexpected_errors_total") == 0
    # And the fuzzer got past authentication and 404s into most handlers.
    answered = {
        (sample.labels["method"], sample.labels["route"])
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "smartfarm_http_request_duration_seconds_count"
        and sample.labels["status"].startswith("2")
        and sample.labels["route"].startswith("/api/")
    }
    protected = [r for r in all_routes() if r.scope != "public"]
    missed = sorted({(r.method, r.path) for r in protected} - answered)
    assert len(answered) >= 0.8 * len(protected), f"never answered 2xx: {missed}"
