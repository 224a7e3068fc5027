"""The grower's "why", cloud side: the edge's automation report stored (newest wins) and read back
with sources, holds and safety holds in words; holds with a duration and "back to auto" going
down as commands; device safety limits stored and pushed to the edge with the config."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from cloud.db import downlink
from cloud.db.database import Database
from cloud.sync.link import build_config, cloud_command
from shared.sync import CloudCommand, CloudRelease
from tests.cloud import world as w
from tests.cloud.test_edge_sync import batch, ok, problem, record, upload

pytestmark = pytest.mark.postgres

STATE = f"/api/rooms/{w.ROOM_B}/automation-state"


def report(
    at: float, *, hold_until: float | None = None, stage: str = "fruiting"
) -> dict[str, Any]:
    hum = {
        "device_id": w.ACTUATOR_B,
        "on": True,
        "since": at - 30,
        "hold": None if hold_until is None else {"on": True, "until": hold_until, "by": "Ana",
                                                 "source": "cloud"},
        "safety_hold": {"on": True, "reason": "min_on", "until": at + 120,
                        "detail": "min on 180 s (on for 60 s)"},
        "safety": {"min_on_s": 180, "min_off_s": 120, "max_on_s": 7200, "max_duty": None},
        "reason": "humidity_pct 80.0 < 85 (rule wf-b-rh)",
    }
    rule = {"type": "threshold", "id": "wf-b-rh", "room_id": w.ROOM_B, "actuator": w.ACTUATOR_B,
            "metric": "humidity_pct", "on_below": 85, "off_above": 90, "for_s": 0,
            "enabled": True, "source": "profile", "description": "keep RH"}
    return {
        "room_id": w.ROOM_B,
        "stage": stage,
        "rules": [
            {"id": "wf-b-rh", "actuator": w.ACTUATOR_B, "type": "threshold", "enabled": True,
             "source": "profile", "rule": rule, "overrides": False},
            {"id": w.RULE_B, "actuator": w.ACTUATOR_B, "type": "threshold", "enabled": True,
             "source": "cloud", "rule": {**rule, "id": w.RULE_B, "source": "user"},
             "overrides": False},
        ],
        "actuators": [hum],
        "seen": {w.SENSOR_B: at - 5, w.ACTUATOR_B: at - 1, "not-ours": at},
        "at": at,
    }


async def _rows(dsn: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def test_the_edges_report_is_read_back_with_sources_holds_and_safety_in_words(
    world_client, auth, world_dsn: str  # type: ignore[no-untyped-def]
) -> None:
    before = await ok(await world_client.get(STATE, headers=auth("viewer")))
    assert before["reported"] is False
    # Before any report the cloud's own rules are listed, as not yet run by the edge.
    assert [(r["id"], r["applied"]) for r in before["rules"]] == [(w.RULE_B, False)]

    now = time.time()
    await ok(await upload(world_client, batch([record(1, "automation", report(
        now, hold_until=now + 1800))])))
    got = await ok(await world_client.get(STATE, headers=auth("viewer")))
    assert got["reported"] is True and got["edge_id"] == w.EDGE and got["stage"] == "fruiting"
    rules = {r["id"]: r for r in got["rules"]}
    assert rules["wf-b-rh"]["source"] == "profile" and rules["wf-b-rh"]["cloud_version"] is None
    assert rules[w.RULE_B]["source"] == "cloud" and rules[w.RULE_B]["cloud_version"] == 1
    assert all(r["applied"] for r in got["rules"])
    (hum,) = got["actuators"]
    assert hum["device_id"] == w.ACTUATOR_B and hum["on"] is True and hum["mode"] == "hold"
    assert (hum["hold"]["by"], hum["hold"]["source"]) == ("Ana", "cloud")
    assert hum["safety_hold"]["text"] == "on: minimum on-time"
    assert hum["safety"]["min_on_s"] == 180
    # Last seen moved forward from the edge's any-message last-seen (an unknown id is ignored).
    seen = {d["device_id"]: d["last_seen"] for d in got["devices"]}
    assert seen[w.SENSOR_B] is not None and seen[w.ACTUATOR_B] is not None

    # An older report (resent, reordered) does not overwrite the newer one.
    await ok(await upload(world_client, batch([record(2, "automation", report(
        now - 600, stage="pinning"))])))
    again = await ok(await world_client.get(STATE, headers=auth("viewer")))
    assert again["stage"] == "fruiting"
    # A newer one without the hold: back to auto (the safety hold still shown).
    await ok(await upload(world_client, batch([record(3, "automation", report(now + 1))])))
    auto = await ok(await world_client.get(STATE, headers=auth("viewer")))
    assert auto["actuators"][0]["mode"] == "safety" and auto["actuators"][0]["hold"] is None

    # A report about a room the farm does not have is kept in quarantine, not stored.
    stray = {**report(now + 2), "room_id": w.OTHER_ROOM}
    await ok(await upload(world_client, batch([record(4, "automation", stray)])))
    kept = await _rows(world_dsn, "SELECT reason FROM edge_quarantine WHERE seq = 4")
    assert "not registered in this farm" in kept[0]["reason"]
    assert len(await _rows(world_dsn, "SELECT 1 FROM room_automation")) == 1


async def test_a_hold_and_back_to_auto_go_down_as_commands(
    world_client, auth, world_dsn: str  # type: ignore[no-untyped-def]
) -> None:
    url = f"/api/rooms/{w.ROOM_B}/holds"
    made = await ok(await world_client.post(
        url, json={"device_id": w.ACTUATOR_B, "action": "on", "minutes": 45},
        headers=auth("operator")), 201)
    assert made["action"] == "on" and made["hold_minutes"] == 45 and made["status"] == "pending"

    bad = await problem(await world_client.post(
        url, json={"device_id": w.ACTUATOR_B, "action": "on", "minutes": 0},
        headers=auth("operator")), 422)
    assert bad["errors"][0]["field"] == "body.minutes"
    sensor = await problem(await world_client.post(
        url, json={"device_id": w.SENSOR_B, "action": "off", "minutes": 10},
        headers=auth("operator")), 422)
    assert sensor["errors"][0]["field"] == "body.device_id"
    assert (await world_client.post(url, json={"device_id": w.ACTUATOR_B, "action": "on",
                                               "minutes": 5}, headers=auth("viewer"))).status == 403

    released = await ok(await world_client.delete(
        f"{url}/{w.ACTUATOR_B}", headers=auth("operator")), 202)
    assert released["action"] == "auto" and released["hold_minutes"] is None
    await problem(await world_client.delete(f"{url}/{w.SENSOR_B}", headers=auth("operator")), 422)

    # What the edge is sent: the hold with its duration and who asked, then the release.
    db = await Database.connect(world_dsn, min_size=1, max_size=1)
    try:
        rows, _ = await downlink.pending_commands(db, w.FARM, ttl_s=600)
    finally:
        await db.close()
    sent = {row["id"]: cloud_command(row, 600) for row in rows}
    hold = sent[made["id"]]
    assert isinstance(hold, CloudCommand) and hold.hold_minutes == 45
    (who,) = await _rows(world_dsn, "SELECT coalesce(nullif(display_name, ''), email) AS name"
                         " FROM users WHERE email = %s", (w.World().email("operator"),))
    assert hold.by == who["name"]  # the display name, else the email
    release = sent[released["id"]]
    assert isinstance(release, CloudRelease) and release.device_id == w.ACTUATOR_B

    # The page reads the newest hold or release per actuator with the name of who sent it.
    got = await ok(await world_client.get(STATE, headers=auth("viewer")))
    (hum,) = got["actuators"]
    assert hum["last_hold"]["action"] == "auto" and hum["last_hold"]["by"]
    assert hum["mode"] == "unknown"  # the edge has not reported yet


async def test_safety_limits_are_stored_and_go_to_the_edge_with_the_config(
    world_client, auth, world_dsn: str  # type: ignore[no-untyped-def]
) -> None:
    url = f"/api/devices/{w.ACTUATOR_B}"
    db = await Database.connect(world_dsn, min_size=1, max_size=1)
    try:
        version = await downlink.farm_version(db, w.FARM)
        limits = {"min_on_s": 120, "min_off_s": 60, "max_on_s": 3600}
        out = await ok(await world_client.patch(url, json={"safety": limits},
                                                headers=auth("operator")))
        assert out["safety"] == {**limits, "max_duty": None}
        assert await downlink.farm_version(db, w.FARM) > version
        push = build_config(await downlink.snapshot(db, w.FARM))
        spec = next(d for d in push.devices if d.id == w.ACTUATOR_B)
        assert spec.safety is not None and spec.safety.min_on_s == 120
        got = await ok(await world_client.get(url, headers=auth("viewer")))
        assert got["safety"]["max_on_s"] == 3600

        bad = await problem(await world_client.patch(
            url, json={"safety": {"min_on_s": -1}}, headers=auth("operator")), 422)
        assert bad["errors"][0]["field"].startswith("body.safety")
        sensor = await problem(await world_client.patch(
            f"/api/devices/{w.SENSOR_B}", json={"safety": limits}, headers=auth("operator")), 422)
        assert sensor["errors"][0]["field"] == "body.safety"

        # Renaming leaves the limits; null puts the role's default back.
        await ok(await world_client.patch(url, json={"name": "fogger"}, headers=auth("operator")))
        assert (await ok(await world_client.get(url, headers=auth("viewer"))))["safety"]
        cleared = await ok(await world_client.patch(url, json={"safety": None},
                                                    headers=auth("operator")))
        assert cleared["safety"] is None
        push = build_config(await downlink.snapshot(db, w.FARM))
        assert next(d for d in push.devices if d.id == w.ACTUATOR_B).safety is None

        # A new actuator may come with its limits.
        made = await ok(await world_client.post(
            f"/api/rooms/{w.ROOM_B}/devices",
            json={"kind": "actuator", "actuator": "heater", "safety": {"min_on_s": 600}},
            headers=auth("owner")), 201)
        assert made["safety"]["min_on_s"] == 600
        bad_new = await problem(await world_client.post(
            f"/api/rooms/{w.ROOM_B}/devices", json={"kind": "sensor", "safety": {}},
            headers=auth("owner")), 422)
        assert "safety" in str(bad_new["errors"])
    finally:
        await db.close()
