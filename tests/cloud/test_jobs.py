"""Background jobs on procrastinate with real PostgreSQL and real workers: the schema, the
periodic schedule, derived metrics, retention, cloud checks, retries and their metrics, two
workers sharing a queue, the in-process worker and the standalone worker command."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from procrastinate import JobContext
from procrastinate.periodic import PeriodicDeferrer
from prometheus_client import CollectorRegistry

from cloud.app import init_app
from cloud.climate import HOUR, floor_hour
from cloud.db import rules as rules_db
from cloud.db import telemetry as telemetry_db
from cloud.jobs.metrics import JobMetrics
from cloud.jobs.schema import missing_upstream_migrations, vendored_through
from cloud.jobs.tasks import TransientError, build_app
from shared.vocabulary import dew_point_c, vpd_kpa
from tests.cloud import world as w
from tests.cloud.conftest import make_settings
from tests.cloud.jobs_env import jobs_env_fixture  # noqa: F401

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]


def test_our_migrations_include_every_procrastinate_schema_migration() -> None:
    assert vendored_through() is not None
    assert missing_upstream_migrations() == [], "vendor them: see cloud/jobs/schema.py"


def test_psychrometrics_match_reference_values() -> None:
    # FAO-56 table 2.3: e°(20 °C) = 2.338 kPa, so at 50 % RH the deficit is 1.169 kPa.
    assert vpd_kpa(20.0, 50.0) == pytest.approx(1.169, abs=0.002)
    assert vpd_kpa(20.0, 100.0) == 0.0
    # Dew point of 20 °C / 50 % is 9.3 °C; saturated air is at its dew point.
    assert dew_point_c(20.0, 50.0) == pytest.approx(9.26, abs=0.05)
    assert dew_point_c(15.0, 100.0) == pytest.approx(15.0, abs=1e-6)
    assert dew_point_c(15.0, 0.0) is None


async def test_the_periodic_schedule_is_what_procrastinate_defers(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env(jobs={"periodic": True})
    registry = env.queue.app.periodic_registry.periodic_tasks
    crons = {name: task.cron for (name, _), task in registry.items()}
    assert crons == {
        "process_sensor_data": "5 * * * *",
        "check_automation_rules": "*/5 * * * *",
        "schedule_ai_recommendations": "0 */4 * * *",
        "process_alerts": "* * * * *",
        "cleanup_old_data": "30 3 * * *",
        "make_partitions": "20 * * * *",
        "predict_yield": "15 4 * * *",
        "retry_stalled_jobs": "*/5 * * * *",
    }
    at = datetime(2030, 5, 1, 4, 0, 30, tzinfo=UTC).timestamp()
    for _ in range(2):  # a second worker's deferrer at the same moment adds nothing
        deferrer = PeriodicDeferrer(registry=env.queue.app.periodic_registry, max_delay=600)
        await deferrer.defer_jobs(deferrer.get_previous_tasks(at=at))
    jobs = await env.jobs()
    # Ticks within the last 10 min: 04:00 for the minutely, 5-minutely and 4-hourly tasks.
    assert sorted(j.task_name for j in jobs) == [
        "check_automation_rules",
        "process_alerts",
        "retry_stalled_jobs",
        "schedule_ai_recommendations",
    ]
    assert {j.task_kwargs["timestamp"] for j in jobs} == {int(at) - 30}


async def test_process_sensor_data_stores_derived_metrics_per_hour(jobs_env, world) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    await env.queue.defer("process_sensor_data")
    await env.work()
    rows = await env.db.fetch_all(
        "SELECT * FROM room_hourly WHERE room_id = %s ORDER BY hour", (w.ROOM_B,)
    )
    first = floor_hour(world.start - timedelta(hours=2))
    assert [r["hour"] for r in rows] == [first + i * HOUR for i in range(len(rows))]
    # Two hours of minutely readings; only complete hours are computed.
    current = floor_hour(datetime.now(UTC))
    minutes = [world.start - timedelta(hours=2) + timedelta(minutes=i) for i in range(120)]
    assert sum(r["minutes"] for r in rows) == sum(m < current for m in minutes)
    assert len(rows) >= 2
    for row in rows:
        # 18-19.2 °C and 80-81.2 % RH (the world's readings rise 0.01 a minute; which minutes
        # fall into which clock hour depends on when the test runs): VPD ≈ 0.41-0.42 kPa, dew
        # point ≈ 14.5-15.9 °C; RH is below the oyster fruiting band (85-90 %) all the time,
        # temperature inside 10-21 °C all the time.
        assert row["vpd_kpa"] == pytest.approx(
            vpd_kpa(row["temperature_c"], row["humidity_pct"]), rel=0.01
        )
        assert row["dew_point_c"] == pytest.approx(
            dew_point_c(row["temperature_c"], row["humidity_pct"]), abs=0.05
        )
        assert 0.35 < row["vpd_kpa"] < 0.45
        assert 14 < row["dew_point_c"] < 16
        assert row["in_band_temperature"] == 1.0
        assert row["in_band_humidity"] == 0.0
        assert row["in_band_all"] == 0.0
        assert (row["species"], row["stage"]) == ("oyster", "fruiting")
    # Nothing changed: nothing recomputed. A late upload into one hour: that hour only.
    await env.queue.defer("process_sensor_data")
    await env.work()
    late = rows[0]["hour"] + timedelta(minutes=59, seconds=30)
    late_row = (late, w.ROOM_B, w.SENSOR_B, "humidity_pct", 95.0)
    await telemetry_db.insert_readings(env.db, w.FARM, [late_row])
    before = {r["hour"]: r["computed_at"] for r in rows}
    await env.queue.defer("process_sensor_data")
    await env.work()
    after = await env.db.fetch_all(
        "SELECT hour, computed_at, in_band_humidity FROM room_hourly WHERE room_id = %s",
        (w.ROOM_B,),
    )
    changed = [r["hour"] for r in after if r["computed_at"] != before[r["hour"]]]
    assert changed == [rows[0]["hour"]]
    fixed = next(r for r in after if r["hour"] == rows[0]["hour"])
    # That minute's mean (≈80 and 95) is now in the band: one minute of the hour's.
    assert fixed["in_band_humidity"] == pytest.approx(1 / rows[0]["minutes"])


async def test_cleanup_folds_days_and_expires_raw_readings(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env(jobs={"raw_retention_days": 90})
    old_day = floor_hour(datetime.now(UTC) - timedelta(days=100)).replace(hour=0)
    old = [
        (old_day + timedelta(minutes=10 * i), w.ROOM_B, w.SENSOR_B, "temperature_c", 15.0 + i)
        for i in range(6)
    ]
    await telemetry_db.insert_readings(env.db, w.FARM, old)
    await env.queue.defer("cleanup_old_data")
    await env.work()
    raw_old = await env.db.fetch_one(
        "SELECT count(*) AS n FROM sensor_data WHERE time < now() - interval '90 days'"
    )
    assert raw_old == {"n": 0}
    recent = await env.db.fetch_one("SELECT count(*) AS n FROM sensor_data")
    assert recent == {"n": 240}  # the world's two hours stay
    daily = await env.db.fetch_one(
        "SELECT count, sum, min, max FROM sensor_daily "
        "WHERE room_id = %s AND metric = 'temperature_c' AND day = %s",
        (w.ROOM_B, old_day),
    )
    assert daily == {"count": 6, "sum": 105.0, "min": 15.0, "max": 20.0}
    hourly = await env.db.fetch_one(
        "SELECT sum(count) AS n FROM sensor_hourly WHERE room_id = %s AND hour < %s",
        (w.ROOM_B, old_day + timedelta(days=1)),
    )
    assert hourly == {"n": 6}  # the rollups outlive the raw rows
    # Idempotent: a second run changes no figure.
    await env.queue.defer("cleanup_old_data")
    await env.work()
    again = await env.db.fetch_one(
        "SELECT count, sum FROM sensor_daily WHERE room_id = %s AND metric = 'temperature_c' "
        "AND day = %s",
        (w.ROOM_B, old_day),
    )
    assert again == {"count": 6, "sum": 105.0}


async def _events(env) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    rows = await env.db.fetch_all(
        "SELECT key, state FROM alert_events WHERE source = 'cloud' ORDER BY id"
    )
    return [(r["key"], r["state"]) for r in rows]


async def test_cloud_checks_watch_rooms_without_a_connected_edge(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    now = datetime.now(UTC)
    # An orphaned rule (its actuator is in another room), found whatever the edges do.
    await rules_db.create(
        env.db,
        w.FARM,
        w.ROOM_B,
        "orphan",
        {
            "type": "threshold",
            "id": "orphan",
            "room_id": w.ROOM_B,
            "actuator": w.ACTUATOR_A,
            "metric": "humidity_pct",
            "on_below": 85,
            "off_above": 90,
        },
        None,
    )
    await env.db.execute(
        "UPDATE edges SET last_seen = %s WHERE id = %s", (now - timedelta(hours=1), w.EDGE)
    )
    rows = [
        (now - timedelta(minutes=m), w.ROOM_B, w.SENSOR_B, "humidity_pct", 70.0) for m in range(5)
    ]
    await telemetry_db.insert_readings(env.db, w.FARM, rows)
    await env.queue.defer("check_automation_rules")
    await env.work()
    started = {
        (f"edge:{w.EDGE}", "active"),
        (f"band:{w.ROOM_B}:humidity_pct", "active"),
        (f"rule:{w.ROOM_B}:orphan", "active"),
    }
    assert set(await _events(env)) == started
    # The queued process_alerts folded them into episodes.
    episodes = await env.db.fetch_all(
        "SELECT key, kind, severity, state FROM alert_episodes ORDER BY key"
    )
    assert [(e["kind"], e["severity"]) for e in episodes] == [
        ("out_of_band", "warning"),
        ("edge_offline", "critical"),
        ("rule_orphaned", "warning"),
    ]
    # Same conditions: no new events.
    await env.queue.defer("check_automation_rules")
    await env.work()
    assert len(await _events(env)) == 3
    # The edge is back: its alert ends, and the band is the edge's business again.
    await env.db.execute("UPDATE edges SET last_seen = now() WHERE id = %s", (w.EDGE,))
    await env.queue.defer("check_automation_rules")
    await env.work()
    events = await _events(env)
    assert set(events[3:]) == {
        (f"edge:{w.EDGE}", "resolved"),
        (f"band:{w.ROOM_B}:humidity_pct", "resolved"),
    }
    active = await env.db.fetch_all("SELECT key FROM alert_episodes WHERE state = 'active'")
    assert [r["key"] for r in active] == [f"rule:{w.ROOM_B}:orphan"]


async def test_transient_failures_retry_and_are_counted(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    env.metrics = JobMetrics(CollectorRegistry())
    calls = {"flaky": 0}

    async def flaky(context: JobContext) -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise TransientError("remote throttled")
        return "ok"

    async def broken(context: JobContext) -> None:
        raise ValueError("a bug: not retried")

    retry = env.queue.app.tasks["send_notification"].retry_strategy
    env.queue.app.task(name="flaky", pass_context=True, retry=retry)(flaky)
    env.queue.app.task(name="broken", pass_context=True, retry=retry)(broken)
    await env.queue.defer("flaky")
    await env.queue.defer("broken")
    await env.work()
    assert calls["flaky"] == 2
    status = {j.task_name: j.status for j in await env.jobs()}
    assert status == {"flaky": "succeeded", "broken": "failed"}
    jobs = env.metrics.jobs
    assert jobs.labels("flaky", "retry")._value.get() == 1
    assert jobs.labels("flaky", "succeeded")._value.get() == 1
    assert jobs.labels("broken", "failed")._value.get() == 1
    stats = await env.queue.stats()
    assert stats["failed_24h"] == {"broken": 1}
    assert stats["retried_24h"] == {"flaky": 1}


async def test_two_workers_never_run_the_same_job_twice(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    await env.db.execute("CREATE TABLE ran (job_id bigint, worker text)")

    async def record(context: JobContext, n: int) -> None:
        await asyncio.sleep(0.01)
        await env.db.execute(
            "INSERT INTO ran VALUES (%s, %s)", (context.job.id, context.worker_name)
        )

    env.queue.app.task(name="record", pass_context=True)(record)
    for n in range(40):
        await env.queue.defer("record", n=n)
    other = await jobs_env()
    other.queue.app.task(name="record", pass_context=True)(record)
    await asyncio.gather(env.work(concurrency=3), other.work(concurrency=3))
    rows = await env.db.fetch_all("SELECT job_id, count(*) AS n FROM ran GROUP BY job_id")
    assert len(rows) == 40 and all(r["n"] == 1 for r in rows)


async def test_the_api_defers_and_its_in_process_worker_runs(  # type: ignore[no-untyped-def]
    world_dsn, tmp_path, auth, aiohttp_client
) -> None:
    settings = make_settings(world_dsn, tmp_path, jobs={"in_process_worker": True})
    client = await aiohttp_client(init_app(settings))
    url = f"/api/rooms/{w.ROOM_B}/ai/recommend"
    queued = await client.post(url, headers=auth("operator"))
    assert queued.status == 202, await queued.text()
    job_id = (await queued.json())["job_id"]
    for _ in range(100):
        runs = await (
            await client.get(f"/api/rooms/{w.ROOM_B}/ai/runs", headers=auth("viewer"))
        ).json()
        if runs["items"] and runs["items"][0]["status"] == "succeeded":
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"job {job_id} did not run")
    assert runs["items"][0]["provider"] == "builtin"
    health = await (await client.get("/health")).json()
    assert health["jobs"] == "ok" and health["job_queue"]["workers"] == 1
    # At least this one run counted (the periodic scheduler may have queued the room's run too,
    # depending on the time of day the test runs).
    counted = 'smartfarm_jobs_total{outcome="succeeded",task="generate_ai_recommendations"} '
    for _ in range(50):  # counted as the task returns, a moment after its row says succeeded
        metrics = await (await client.get("/metrics")).text()
        line = next((m for m in metrics.splitlines() if m.startswith(counted)), None)
        if line is not None:
            break
        await asyncio.sleep(0.1)
    assert line is not None and float(line.removeprefix(counted)) >= 1, metrics[-3000:]


@pytest.mark.timeout(60)
async def test_the_worker_command_runs_jobs_and_stops_on_sigterm(jobs_env, world_dsn) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    await env.queue.defer("process_sensor_data")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smartfarm_cli",
        "cloud",
        "worker",
        "--concurrency",
        "1",
        cwd=REPO,
        env={
            **os.environ,
            "DATABASE_URL": world_dsn,
            "PYTHONPATH": str(REPO),
            "SMARTFARM_CLOUD_MIGRATE_ON_START": "false",
            "SMARTFARM_CLOUD_JOBS__PERIODIC": "false",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(200):
            done = await env.jobs("process_sensor_data", status="succeeded")
            if done:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the worker process ran nothing")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
    with psycopg.connect(world_dsn) as conn:
        workers = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
    assert workers == (0,)  # it unregistered on its way out


def test_the_job_app_knows_every_task() -> None:
    app = build_app(make_settings("unused", Path("/tmp")))
    assert {
        "process_sensor_data",
        "check_automation_rules",
        "schedule_ai_recommendations",
        "generate_ai_recommendations",
        "process_alerts",
        "send_notification",
        "cleanup_old_data",
        "predict_yield",
    } <= set(app.tasks)
    assert app.tasks["generate_ai_recommendations"].queue == "ai"
    assert app.tasks["send_notification"].queue == "notify"
    assert math.isfinite(app.tasks["send_notification"].retry_strategy.max_attempts)


async def test_health_reports_a_queue_nobody_works(jobs_env, world_client) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    health = await (await world_client.get("/health")).json()
    assert health["jobs"] == "ok" and health["job_queue"]["waiting"] == 0
    await env.queue.defer("predict_yield")
    await env.db.execute("UPDATE procrastinate_events SET at = now() - interval '1 hour'")
    health = await (await world_client.get("/health")).json()
    assert health["jobs"] == "down"
    assert health["job_queue"]["waiting"] == 1 and health["job_queue"]["workers"] == 0
    assert health["job_queue"]["oldest_waiting_s"] >= 3600
    assert health["status"] == "ok"  # the API itself still serves


async def test_a_job_left_running_by_a_dead_worker_runs_again(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    manager = env.queue.app.job_manager
    await env.queue.defer("generate_ai_recommendations", lock="ai:wf-b", room_id=w.ROOM_B)
    dead = await manager.register_worker()
    taken = await manager.fetch_job(queues=None, worker_id=dead)  # …and then it was SIGKILLed
    assert taken is not None and taken.task_name == "generate_ai_recommendations"
    await env.db.execute(
        "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '5 minutes'"
    )
    await env.work()  # the job's lock is held by the dead worker: nothing can run it
    assert [j.status for j in await env.jobs("generate_ai_recommendations")] == ["doing"]
    await env.queue.defer("retry_stalled_jobs")
    await env.work()
    assert [j.status for j in await env.jobs("generate_ai_recommendations")] == ["succeeded"]
