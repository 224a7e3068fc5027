"""AI recommendations: the built-in advisor on synthetic rooms where the right advice is known,
duty cycles from command history, Bedrock through botocore's Stubber (request shape, parsing,
malformed output, throttling), runs as jobs, and the API (dedup, accept applies, dismiss)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from pydantic import TypeAdapter

from cloud.ai.bedrock import BedrockAdvisor
from cloud.ai.builtin import advise
from cloud.ai.context import build_context, switching
from cloud.ai.models import (
    ActuatorStats,
    AlertBrief,
    Band,
    MetricStats,
    RoomContext,
    Suggestion,
)
from cloud.ai.prompt import system_prompt
from cloud.ai.provider import ProviderError
from cloud.ai.settings import AiConfig, BedrockConfig
from cloud.app import init_app
from cloud.db import telemetry as telemetry_db
from shared.profiles import profile_for
from shared.rules import Rule
from tests.cloud import world as w
from tests.cloud.conftest import make_settings
from tests.cloud.jobs_env import jobs_env_fixture  # noqa: F401

pytestmark = pytest.mark.postgres

NOW = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
RULE = TypeAdapter(Rule)


def metric(
    name: str, mean: float, *, drift: float = 0.0, tib: float = 1.0, **kw: Any
) -> MetricStats:
    band = profile_for("oyster", kw.get("stage", "fruiting")).band(name)
    return MetricStats(
        metric=name,
        mean=mean,
        min=kw.get("min", mean - 1),
        max=kw.get("max", mean + 1),
        count=8640,
        first_half_mean=mean - drift / 2,
        last_half_mean=mean + drift / 2,
        drift=drift,
        time_in_band=tib,
        band=Band(min=band.min, max=band.max) if band else None,
    )


def room(**fields: Any) -> RoomContext:
    """Oyster fruiting, every metric comfortably in band, humidifier, fan and heater idle."""
    metrics = {
        "temperature_c": metric("temperature_c", 16.0),
        "humidity_pct": metric("humidity_pct", 87.5),
        "co2_ppm": metric("co2_ppm", 700.0),
    }
    metrics.update(fields.pop("metrics", {}))
    actuators = {
        "humidifier": ActuatorStats(device_id="hum", role="humidifier", duty=0.4, duty_recent=0.4),
        "exhaust_fan": ActuatorStats(device_id="fan", role="exhaust_fan", duty=0.25, switches=4),
        "heater": ActuatorStats(device_id="heat", role="heater", duty=0.1, duty_recent=0.1),
    }
    for role, changes in fields.pop("actuators", {}).items():
        actuators[role] = actuators[role].model_copy(update=changes)
    base: dict[str, Any] = {
        "room_id": "r1",
        "farm_id": "f1",
        "species": "oyster",
        "stage": "fruiting",
        "stage_started": NOW - timedelta(days=3),
        "stage_day": 3.0,
        "now": NOW,
        "window_hours": 24,
        "targets": {},
        "light_hours": 12,
        "readings": 25920,
        "metrics": metrics,
        "actuators": list(actuators.values()),
        "time_in_band_all": 0.97,
    }
    base.update(fields)
    return RoomContext(**base)


def keys(suggestions: list[Suggestion]) -> list[str]:
    return [s.key for s in suggestions]


def test_all_in_band_says_so_and_nothing_else() -> None:
    (only,) = advise(room())
    assert (only.key, only.severity, only.action) == ("all-in-band", "info", None)


def test_no_readings_is_a_warning() -> None:
    (only,) = advise(room(readings=0, metrics={}))
    assert (only.key, only.severity) == ("no-readings", "warning")


def test_rh_falling_with_the_humidifier_flat_out_means_check_its_water() -> None:
    ctx = room(
        metrics={"humidity_pct": metric("humidity_pct", 84.0, drift=-4.0, tib=0.4)},
        actuators={"humidifier": {"duty_recent": 0.95, "duty": 0.9}},
    )
    advice = advise(ctx)
    assert keys(advice) == ["humidifier-not-delivering"]
    (water,) = advice
    assert water.severity == "critical"  # and RH is below the band
    assert water.action is None  # an inspection: no click fixes an empty reservoir
    assert "86.0 %" in water.reason and "82.0 %" in water.reason and "95 %" in water.reason


def test_rh_low_with_an_idle_humidifier_means_switch_it_on() -> None:
    ctx = room(metrics={"humidity_pct": metric("humidity_pct", 80.0, tib=0.1)})
    (low,) = advise(ctx)
    assert (low.key, low.severity) == ("humidity-low", "warning")
    assert low.action is not None and low.action.model_dump() == {
        "kind": "command",
        "device_id": "hum",
        "actuator_role": "humidifier",
        "action": "on",
        "value": None,
    }
    assert "80.0 %" in low.reason and "85.0 %–90.0 %" in low.reason


def test_co2_above_band_with_the_fan_cycling_raises_fresh_air_exchange() -> None:
    fresh = {
        "type": "schedule",
        "id": "r1-fresh-air",
        "room_id": "r1",
        "actuator": "fan",
        "source": "profile",
        "cycle": {"on_s": 600, "every_s": 3600, "offset_s": 0},
    }
    ctx = room(
        metrics={"co2_ppm": metric("co2_ppm", 1250.0, tib=0.35, max=1900)},
        actuators={"exhaust_fan": {"switches": 14, "duty": 0.3}},
        rules=[fresh],
    )
    (co2,) = advise(ctx)
    assert co2.key == "co2-raise-fresh-air"
    assert "14 times" in co2.reason and "1250 ppm" in co2.reason
    assert co2.action is not None and co2.action.kind == "rule"
    rule = RULE.validate_python(co2.action.rule)  # a valid shared.rules rule, same id
    assert rule.id == "r1-fresh-air" and rule.cycle.on_s == 900 and rule.cycle.every_s == 3600


def test_temperature_drifting_down_with_the_heater_working_means_check_the_heater() -> None:
    ctx = room(
        metrics={"temperature_c": metric("temperature_c", 12.0, drift=-4.0, tib=0.8)},
        actuators={"heater": {"duty_recent": 0.85}},
    )
    (heat,) = advise(ctx)
    assert (heat.key, heat.severity) == ("heater-not-keeping-up", "warning")
    assert "14.0 °C" in heat.reason and "10.0 °C" in heat.reason and "85 %" in heat.reason


def test_pinning_overdue_proposes_the_missing_light_rule() -> None:
    ctx = room(
        stage="pinning",
        stage_day=8.5,
        metrics={
            "temperature_c": metric("temperature_c", 13.0, stage="pinning"),
            "humidity_pct": metric("humidity_pct", 96.0, stage="pinning"),
        },
        actuators={},
    )
    ctx.actuators.append(ActuatorStats(device_id="lamp", role="light"))
    (late,) = advise(ctx)
    assert late.key == "pinning-overdue" and "day 8.5" in late.reason
    assert late.action is not None and late.action.kind == "rule"
    rule = RULE.validate_python(late.action.rule)
    assert rule.actuator == "lamp" and rule.windows[0].start == "06:00"


def test_a_runaway_actuator_gets_a_one_click_off() -> None:
    alert = AlertBrief(
        kind="actuator_runaway",
        severity="critical",
        message="heat on for 95 min",
        state="active",
        device_id="heat",
        at=NOW,
    )
    advice = advise(room(alerts=[alert]))
    assert keys(advice) == ["runaway-heat"]
    assert advice[0].action is not None and advice[0].action.model_dump()["action"] == "off"


def test_duty_cycles_come_from_the_acknowledged_switching_history() -> None:
    start, end = NOW - timedelta(hours=24), NOW
    rows = [
        {"device_id": "hum", "action": "on", "value": None, "at": start - timedelta(hours=1)},
        {"device_id": "hum", "action": "off", "value": None, "at": start + timedelta(hours=6)},
        {"device_id": "hum", "action": "on", "value": None, "at": end - timedelta(hours=3)},
        {"device_id": "fan", "action": "set", "value": 0, "at": start + timedelta(hours=12)},
    ]
    duty = switching(rows, start=start, end=end)
    assert duty["hum"]["duty"] == pytest.approx(9 / 24)
    assert duty["hum"]["duty_recent"] == pytest.approx(3 / 6)
    assert duty["hum"]["switches"] == 2 and duty["hum"]["on_now"] is True
    # Unknown before its first command: the duty counts from there.
    assert duty["fan"]["duty"] == 0.0 and duty["fan"]["on_now"] is False


# ---- Bedrock ----


def _client() -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _answer(text: str, *, inputs: int = 1200, outputs: int = 300) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": inputs, "outputTokens": outputs, "totalTokens": inputs + outputs},
        "metrics": {"latencyMs": 850},
    }


GOOD = {
    "recommendations": [
        {
            "key": "humidity-low",
            "severity": "warning",
            "title": "Raise humidity",
            "reason": "RH averaged 80 % against 85-90 %",
            "action": {"kind": "command", "device_id": "hum", "action": "on", "value": None},
        }
    ]
}
FAST = BedrockConfig(model_id="anthropic.claude-test", backoff_base_s=0, max_attempts=3)


async def test_bedrock_sends_one_converse_request_and_parses_the_json_answer() -> None:
    client = _client()
    advisor = BedrockAdvisor(FAST, max_items=5, client=client)
    ctx = room()
    with Stubber(client) as stub:
        stub.add_response("converse", _answer(json.dumps(GOOD)), advisor.request(ctx))
        advice = await advisor.advise(ctx)
        stub.assert_no_pending_responses()
    request = advisor.request(ctx)
    assert request["modelId"] == "anthropic.claude-test"
    assert request["system"] == [{"text": system_prompt(5)}]
    facts = json.loads(request["messages"][0]["content"][0]["text"].split("\n", 1)[1])
    assert facts["species"] == "oyster" and facts["stage"] == "fruiting"
    assert facts["metrics"]["humidity_pct"]["band"] == {"min": 85.0, "max": 90.0}
    assert facts["actuators"][0]["device_id"] == "hum"
    assert (advice.provider, advice.model, advice.attempts) == (
        "bedrock",
        "anthropic.claude-test",
        1,
    )
    assert (advice.input_tokens, advice.output_tokens) == (1200, 300)
    assert keys(advice.suggestions) == ["humidity-low"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("I think the room is fine.", "no JSON object"),
        (
            '{"recommendations": [{"key": "x", "severity": "urgent", "title": "t", '
            '"reason": "r"}]}',
            "severity",
        ),
        ('{"recommendations": [{"key": "x"', "invalid JSON"),
        ('{"advice": []}', "recommendations"),
    ],
)
async def test_bedrock_malformed_answers_are_refused_not_stored(text: str, problem: str) -> None:
    client = _client()
    advisor = BedrockAdvisor(FAST, max_items=5, client=client)
    with Stubber(client) as stub:
        stub.add_response("converse", _answer(text, inputs=900, outputs=40))
        with pytest.raises(ProviderError, match=problem) as caught:
            await advisor.advise(room())
    assert not caught.value.transient
    assert (caught.value.input_tokens, caught.value.output_tokens) == (900, 40)  # still paid


async def test_bedrock_fenced_json_with_prose_around_is_accepted() -> None:
    client = _client()
    advisor = BedrockAdvisor(FAST, max_items=5, client=client)
    with Stubber(client) as stub:
        stub.add_response("converse", _answer("```json\n" + json.dumps(GOOD) + "\n```"))
        advice = await advisor.advise(room())
    assert keys(advice.suggestions) == ["humidity-low"]


async def test_bedrock_throttling_is_retried_with_backoff_then_reported() -> None:
    client = _client()
    advisor = BedrockAdvisor(FAST, max_items=5, client=client)
    with Stubber(client) as stub:
        stub.add_client_error("converse", "ThrottlingException", "slow down", 429)
        stub.add_client_error("converse", "ServiceUnavailableException", "busy", 503)
        stub.add_response("converse", _answer(json.dumps(GOOD)))
        advice = await advisor.advise(room())
        assert advice.attempts == 3
        for _ in range(3):
            stub.add_client_error("converse", "ThrottlingException", "slow down", 429)
        with pytest.raises(ProviderError, match="after 3 attempts") as caught:
            await advisor.advise(room())
    assert caught.value.transient and caught.value.attempts == 3


async def test_bedrock_refusals_are_not_retried() -> None:
    client = _client()
    advisor = BedrockAdvisor(FAST, max_items=5, client=client)
    with Stubber(client) as stub:
        stub.add_client_error("converse", "AccessDeniedException", "no model access", 403)
        with pytest.raises(ProviderError, match="AccessDenied") as caught:
            await advisor.advise(room())
    assert not caught.value.transient and caught.value.attempts == 1


# ---- runs as jobs, and the API ----


async def _runs(env) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return await env.db.fetch_all("SELECT * FROM ai_runs ORDER BY id")


async def test_a_bedrock_run_stores_checked_advice_and_its_token_usage(jobs_env) -> None:  # type: ignore[no-untyped-def]
    client = _client()
    config = AiConfig(provider="bedrock", bedrock=FAST)
    advisor = BedrockAdvisor(FAST, max_items=5, client=client)
    env = await jobs_env(ai=config, provider=advisor)
    answer = {
        "recommendations": [
            GOOD["recommendations"][0]
            | {"action": {"kind": "command", "device_id": w.ACTUATOR_B, "action": "on"}},
            {
                "key": "ghost",
                "severity": "info",
                "title": "Use the ghost fan",
                "reason": "CO2 fine",
                "action": {"kind": "command", "device_id": "ghost-fan", "action": "on"},
            },
        ]
    }
    with Stubber(client) as stub:
        stub.add_response("converse", _answer(json.dumps(answer), inputs=2000, outputs=250))
        await env.queue.defer("generate_ai_recommendations", room_id=w.ROOM_B, farm_id=w.FARM)
        await env.work()
    (run,) = await _runs(env)
    assert (run["provider"], run["status"], run["input_tokens"], run["output_tokens"]) == (
        "bedrock",
        "succeeded",
        2000,
        250,
    )
    recs = await env.db.fetch_all(
        "SELECT key, source, action, reason, status FROM recommendations WHERE run_id = %s "
        "ORDER BY key",
        (run["id"],),
    )
    assert [(r["key"], r["source"]) for r in recs] == [
        ("ghost", "bedrock"),
        ("humidity-low", "bedrock"),
    ]
    assert recs[0]["action"] is None and "dropped" in recs[0]["reason"]  # no such device
    assert recs[1]["action"]["device_id"] == w.ACTUATOR_B


async def test_bedrock_down_falls_back_to_the_builtin_advisor_or_retries(jobs_env) -> None:  # type: ignore[no-untyped-def]
    client = _client()
    fallback = AiConfig(provider="bedrock", bedrock=FAST)
    env = await jobs_env(ai=fallback, provider=BedrockAdvisor(FAST, max_items=5, client=client))
    with Stubber(client) as stub:
        for _ in range(3):
            stub.add_client_error("converse", "ThrottlingException", "slow down", 429)
        await env.queue.defer("generate_ai_recommendations", room_id=w.ROOM_B, farm_id=w.FARM)
        await env.work()
    (run,) = await _runs(env)
    assert run["status"] == "succeeded" and "built-in advisor answered" in run["error"]
    sources = await env.db.fetch_all(
        "SELECT DISTINCT source FROM recommendations WHERE run_id = %s", (run["id"],)
    )
    assert sources == [{"source": "builtin"}]
    # Without the fallback a throttled run is a transient failure: the job retries.
    strict = BedrockConfig(
        **(FAST.model_dump() | {"fallback_to_builtin": False, "max_attempts": 1})
    )
    env2 = await jobs_env(
        ai=AiConfig(provider="bedrock", bedrock=strict),
        provider=BedrockAdvisor(strict, max_items=5, client=client),
    )
    with Stubber(client) as stub:
        stub.add_client_error("converse", "ThrottlingException", "slow down", 429)
        stub.add_response("converse", _answer(json.dumps(GOOD)))
        await env2.queue.defer("generate_ai_recommendations", room_id=w.ROOM_A, farm_id=w.FARM)
        await env2.work()
    runs = [r for r in await _runs(env2) if r["room_id"] == w.ROOM_A]
    assert [r["status"] for r in runs] == ["failed", "succeeded"]
    jobs = await env2.jobs("generate_ai_recommendations", status="succeeded")
    (job,) = [j for j in jobs if j.task_kwargs["room_id"] == w.ROOM_A]
    assert job.attempts == 2  # failed once, retried once


async def test_the_builtin_advisor_on_the_world_room_from_its_data(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    now = datetime.now(UTC)
    ctx = await build_context(env.db, w.FARM, w.ROOM_B, now=now, window_hours=24)
    assert ctx is not None
    # Room B: two hours at ~18 °C and ~80.6 % RH (oyster fruiting wants 85-90 %).
    assert ctx.metrics["humidity_pct"].mean == pytest.approx(80.6, abs=0.05)
    assert ctx.metrics["humidity_pct"].time_in_band == 0.0
    assert ctx.metrics["temperature_c"].time_in_band == 1.0
    assert [a.device_id for a in ctx.actuators] == [w.ACTUATOR_B]
    assert ctx.rules[0]["id"] == w.RULE_B
    assert await build_context(env.db, w.FARM, "nope", now=now, window_hours=24) is None
    await env.queue.defer("generate_ai_recommendations", room_id=w.ROOM_B, farm_id=w.FARM)
    await env.work()
    recs = await env.db.fetch_all(
        "SELECT key, status, action FROM recommendations WHERE room_id = %s ORDER BY id",
        (w.ROOM_B,),
    )
    # The world's open "humidity-low" was refreshed in place, not duplicated.
    assert [(r["key"], r["status"]) for r in recs] == [("humidity-low", "open")]
    assert recs[0]["action"]["device_id"] == w.ACTUATOR_B
    # Back in band: the next run resolves it.
    fresh = [
        (now - timedelta(minutes=m), w.ROOM_B, w.SENSOR_B, "humidity_pct", 88.0)
        for m in range(0, 600, 2)
    ]
    await env.db.execute("DELETE FROM sensor_data WHERE metric = 'humidity_pct'")
    await telemetry_db.insert_readings(env.db, w.FARM, fresh)
    await env.queue.defer("generate_ai_recommendations", room_id=w.ROOM_B, farm_id=w.FARM)
    await env.work()
    statuses = await env.db.fetch_all(
        "SELECT key, status FROM recommendations WHERE room_id = %s ORDER BY id", (w.ROOM_B,)
    )
    assert ("humidity-low", "resolved") in [(r["key"], r["status"]) for r in statuses]


async def test_api_recommend_is_deduplicated_while_a_run_waits_or_runs(  # type: ignore[no-untyped-def]
    jobs_env, world_dsn, tmp_path, auth, aiohttp_client
) -> None:
    client = await aiohttp_client(init_app(make_settings(world_dsn, tmp_path)))
    url = f"/api/rooms/{w.ROOM_B}/ai/recommend"
    first = await (await client.post(url, headers=auth("operator"))).json()
    second = await (await client.post(url, headers=auth("owner"))).json()
    assert not first["deduplicated"] and second["deduplicated"]
    assert second["job_id"] == first["job_id"] and second["status"] == "queued"
    # While it runs, asking again answers with the running job.
    gate = asyncio.Event()
    started = asyncio.Event()

    class Slow:
        name, model = "builtin", None

        async def advise(self, ctx: RoomContext) -> Any:
            started.set()
            await gate.wait()
            from cloud.ai.builtin import BuiltinAdvisor

            return await BuiltinAdvisor().advise(ctx)

    env = await jobs_env(provider=Slow())
    worker = asyncio.create_task(env.work())
    await asyncio.wait_for(started.wait(), 10)
    third = await (await client.post(url, headers=auth("operator"))).json()
    assert (third["job_id"], third["status"], third["deduplicated"]) == (
        first["job_id"],
        "running",
        True,
    )
    gate.set()
    await worker
    fourth = await (await client.post(url, headers=auth("operator"))).json()
    assert not fourth["deduplicated"] and fourth["job_id"] != first["job_id"]
    # The other room is independent.
    other = await (
        await client.post(f"/api/rooms/{w.ROOM_A}/ai/recommend", headers=auth("operator"))
    ).json()
    assert not other["deduplicated"]


async def test_accept_applies_the_action_and_dismiss_closes(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    base = f"/api/rooms/{w.ROOM_B}/ai/recommendations/{world.recommendation_id}"
    viewer = await world_client.post(base + "/accept", headers=auth("viewer"))
    assert viewer.status == 403
    accepted = await world_client.post(base + "/accept", headers=auth("operator"))
    assert accepted.status == 200, await accepted.text()
    body = await accepted.json()
    assert body["status"] == "accepted" and body["applied"]["kind"] == "command"
    command_id = body["applied"]["command_id"]
    command = await (
        await world_client.get(
            f"/api/rooms/{w.ROOM_B}/commands/{command_id}", headers=auth("viewer")
        )
    ).json()
    assert (command["device_id"], command["action"], command["status"]) == (
        w.ACTUATOR_B,
        "on",
        "pending",
    )
    again = await world_client.post(base + "/accept", headers=auth("operator"))
    assert again.status == 409
    dismissed = await world_client.post(base + "/dismiss", headers=auth("operator"))
    assert dismissed.status == 409  # already accepted
    missing = await world_client.post(
        f"/api/rooms/{w.ROOM_B}/ai/recommendations/999999/dismiss", headers=auth("operator")
    )
    assert missing.status == 404
    elsewhere = await world_client.post(
        f"/api/rooms/{w.ROOM_A}/ai/recommendations/{world.recommendation_id}/accept",
        headers=auth("operator"),
    )
    assert elsewhere.status == 404  # it belongs to room B
    opened = await world_client.get(
        f"/api/rooms/{w.ROOM_B}/ai/recommendations?status=accepted", headers=auth("viewer")
    )
    assert [r["id"] for r in (await opened.json())["items"]] == [world.recommendation_id]


async def test_accepting_a_rule_suggestion_creates_or_replaces_the_rule(
    jobs_env, world_dsn, tmp_path, auth, aiohttp_client
) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    from cloud.db import recommendations as recs_db

    rule = {
        "type": "threshold",
        "id": w.RULE_B,
        "room_id": w.ROOM_B,
        "actuator": w.ACTUATOR_B,
        "metric": "humidity_pct",
        "on_below": 86,
        "off_above": 89,
    }
    (rec,) = await recs_db.store(
        env.db,
        w.FARM,
        w.ROOM_B,
        source="bedrock",
        run_id=None,
        items=[
            {
                "key": "rh-tighter",
                "severity": "info",
                "title": "Tighten the RH rule",
                "reason": "swings of 6 points",
                "action": {"kind": "rule", "rule": rule},
            }
        ],
    )
    client = await aiohttp_client(init_app(make_settings(world_dsn, tmp_path)))
    resp = await client.post(
        f"/api/rooms/{w.ROOM_B}/ai/recommendations/{rec['id']}/accept", headers=auth("operator")
    )
    assert resp.status == 200, await resp.text()
    applied = (await resp.json())["applied"]
    assert applied == {"kind": "rule", "rule_id": w.RULE_B, "version": 2}
    stored = await (
        await client.get(f"/api/rooms/{w.ROOM_B}/automation/{w.RULE_B}", headers=auth("viewer"))
    ).json()
    assert (stored["rule"]["on_below"], stored["rule"]["off_above"]) == (86, 89)


def test_the_ai_schedule_must_be_a_cron_expression() -> None:
    from cloud.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"ai\.schedule"):
        load_settings(ai={"schedule": "every 4 hours"})
    assert load_settings(ai={"schedule": "0 */2 * * *"}).ai.schedule == "0 */2 * * *"
