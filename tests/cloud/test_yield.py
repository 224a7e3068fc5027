"""Yield prediction: the documented model's figures, the daily job, recorded harvests and the
error of past predictions, through the API with a real worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cloud.ai.yields import climate_factor, predict
from cloud.app import init_app
from tests.cloud import world as w
from tests.cloud.conftest import make_settings
from tests.cloud.jobs_env import jobs_env_fixture  # noqa: F401

pytestmark = pytest.mark.postgres


def test_the_model_multiplies_mass_efficiency_flush_share_and_climate() -> None:
    # 10 kg dry substrate, oyster (BE 50 / 75 / 100 %), first flush (half the crop), all in band.
    assert predict("oyster", 10.0, 1, 1.0) == {
        "expected_kg": 3.75,
        "low_kg": 2.5,
        "high_kg": 5.0,
        "factor": 1.0,
    }
    # Never in band keeps 60 %; the second flush is 30 % of the crop.
    assert predict("oyster", 10.0, 2, 0.0) == {
        "expected_kg": 1.35,
        "low_kg": 0.9,
        "high_kg": 1.8,
        "factor": 0.6,
    }
    assert predict("shiitake", 10.0, 5, 1.0)["expected_kg"] == 0.0  # past the fourth flush
    assert climate_factor(None) == 1.0 and climate_factor(0.5) == pytest.approx(0.8)
    low, high = (
        predict("lions_mane", 10.0, 1, 1.0)["low_kg"],
        predict("oyster", 10.0, 1, 1.0)["low_kg"],
    )
    assert low < high  # lion's mane is the least productive of the three


async def test_substrate_harvests_and_prediction_error_through_the_api(  # type: ignore[no-untyped-def]
    jobs_env, world_dsn, tmp_path, auth, aiohttp_client
) -> None:
    env = await jobs_env()
    client = await aiohttp_client(init_app(make_settings(world_dsn, tmp_path)))
    room = f"/api/rooms/{w.ROOM_B}"
    # The room has fruited for three days; its two hours of readings were all below the RH band.
    await env.db.execute(
        "UPDATE rooms SET stage_started = now() - interval '3 days' WHERE id = %s", (w.ROOM_B,)
    )
    await env.queue.defer("process_sensor_data")
    for bad in ({}, {"wet_mass_kg": 25}, {"dry_mass_kg": 0}, {"dry_mass_kg": 5, "extra": 1}):
        resp = await client.put(room + "/substrate", json=bad, headers=auth("operator"))
        assert resp.status == 422, bad
    loaded = (datetime.now(UTC) - timedelta(days=4)).isoformat()
    resp = await client.put(
        room + "/substrate",
        json={"wet_mass_kg": 25, "moisture_pct": 60, "loaded_at": loaded},
        headers=auth("operator"),
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["dry_mass_kg"] == pytest.approx(10.0)
    empty = await (await client.get(room + "/yield", headers=auth("viewer"))).json()
    assert empty["current"] is None and "biological efficiency" in empty["model"]
    await env.work()  # derived metrics, then the prediction the substrate change queued
    report = await (await client.get(room + "/yield", headers=auth("viewer"))).json()
    current = report["current"]
    assert current["flush"] == 1 and current["time_in_band"] == 0.0 and current["factor"] == 0.6
    assert (current["expected_kg"], current["low_kg"], current["high_kg"]) == (2.25, 1.5, 3.0)
    assert current["inputs"]["climate_minutes"] > 0
    # The first flush comes in at 2.0 kg: 11 % under the prediction, inside its range.
    resp = await client.post(room + "/harvests", json={"weight_kg": 2.0}, headers=auth("operator"))
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["flush"] == 1
    await env.work()
    report = await (await client.get(room + "/yield", headers=auth("viewer"))).json()
    (flush,) = report["flushes"]
    assert flush["actual_kg"] == 2.0 and flush["predicted_kg"] == 2.25
    assert flush["error_kg"] == -0.25 and flush["error_pct"] == -11.1
    assert flush["within_range"] is True
    assert report["mean_abs_error_pct"] == 11.1
    # The next flush is predicted now (30 % of the crop, no climate since the harvest yet).
    assert report["current"]["flush"] == 2 and report["current"]["expected_kg"] == 2.25
    second = await client.post(
        room + "/harvests",
        json={"weight_kg": 1.2, "flush": 2, "note": "small"},
        headers=auth("operator"),
    )
    assert second.status == 201
    page = await (await client.get(room + "/harvests?limit=1", headers=auth("viewer"))).json()
    assert [h["weight_kg"] for h in page["items"]] == [1.2] and page["next_cursor"]
    rest = await (
        await client.get(f"{room}/harvests?cursor={page['next_cursor']}", headers=auth("viewer"))
    ).json()
    assert [h["weight_kg"] for h in rest["items"]] == [2.0] and rest["next_cursor"] is None
    bad = await client.post(room + "/harvests", json={"weight_kg": -1}, headers=auth("operator"))
    assert bad.status == 422


async def test_rooms_without_substrate_or_outside_fruiting_are_not_predicted(jobs_env) -> None:  # type: ignore[no-untyped-def]
    env = await jobs_env()
    await env.db.execute(
        "INSERT INTO room_substrate (farm_id, room_id, dry_mass_kg) VALUES (%s, %s, 10)",
        (w.FARM, w.ROOM_A),
    )
    await env.db.execute("UPDATE rooms SET stage = 'spawn_run' WHERE id = %s", (w.ROOM_A,))
    await env.queue.defer("predict_yield")
    await env.work()
    rows = await env.db.fetch_all("SELECT room_id FROM yield_predictions")
    assert rows == []
    await env.db.execute("UPDATE rooms SET stage = 'pinning' WHERE id = %s", (w.ROOM_A,))
    await env.queue.defer("predict_yield")
    await env.work()
    rows = await env.db.fetch_all("SELECT room_id, flush FROM yield_predictions")
    assert rows == [{"room_id": w.ROOM_A, "flush": 1}]
