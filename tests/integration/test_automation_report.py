"""The edge's automation report (outbox kind "automation"): every rule with its source, holds and
safety holds with their end, last seen; sent when it changes and now and then; a cloud hold and
its release ("back to auto") carried out by the downlink; safety limits from the cloud applied."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge.automation_report import AutomationReporter, room_report, safety_hold
from edge.config import RoomConfig
from edge.config_sync import overlay
from edge.downlink import Downlink
from shared.models import utcnow
from shared.rules import ActuatorState, Blocked, Safety, ThresholdRule
from shared.sync import (
    AutomationData,
    CloudCommand,
    CloudRelease,
    ConfigPush,
    DeviceSpec,
    RoomSpec,
)
from tests.integration.test_outbox import Edge, build_edge, close_edge, make_settings

LOCAL_RH = ThresholdRule(id="room-a-rh", room_id="room-a", actuator="hum-a",
                         metric="humidity_pct", on_below=86, off_above=89, for_s=0)


@pytest.fixture
async def edge(farm_id: str, tmp_path: Path) -> AsyncIterator[Edge]:
    settings = make_settings(farm_id, tmp_path, url="http://127.0.0.1:9", edge_id="edge-1",
                             token="t")
    settings.rooms[0] = RoomConfig(id="room-a", name="Oyster room", species="oyster",
                                   stage="fruiting", rules=[LOCAL_RH])
    built = await build_edge(settings, tmp_path / "edge.db")
    yield built
    await close_edge(built)


async def _reports(edge: Edge) -> list[AutomationData]:
    rows = await edge.db.read(lambda conn: conn.execute(
        "SELECT data FROM outbox WHERE kind = 8 ORDER BY id").fetchall())
    return [msgspec.json.decode(r["data"], type=AutomationData) for r in rows]


def test_a_safety_hold_says_which_limit_and_until_when() -> None:
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    limits = Safety(min_on_s=180, min_off_s=120, max_on_s=3600, max_duty=0.5)
    on = ActuatorState(on=True, since=now - timedelta(seconds=60))
    held = safety_hold(Blocked(actuator="h", wanted_on=False, reason="min on 180 s (on for 60 s)"),
                       on, limits, now)
    assert held is not None and (held.on, held.reason) == (True, "min_on")
    assert held.until == (now + timedelta(seconds=120)).timestamp()
    off = ActuatorState(on=False, since=now - timedelta(seconds=30))
    held = safety_hold(Blocked(actuator="h", wanted_on=True, reason="min off 120 s (off for 30 s)"),
                       off, limits, now)
    assert held is not None and held.reason == "min_off"
    assert held.until == (now + timedelta(seconds=90)).timestamp()
    rested = ActuatorState(on=False, since=now - timedelta(seconds=10), on_intervals=(
        (now - timedelta(seconds=3610), now - timedelta(seconds=10)),))
    held = safety_hold(Blocked(actuator="h", wanted_on=True, reason="resting 120 s after max "
                               "runtime (rested 10 s)"), rested, limits, now)
    assert held is not None and held.reason == "rest_after_max_on"
    assert held.until == (now + timedelta(seconds=110)).timestamp()
    duty = safety_hold(Blocked(actuator="h", wanted_on=True, reason="max duty 50% of the last "
                               "hour reached"), off, limits, now)
    assert duty is not None and duty.reason == "max_duty" and duty.until is None
    assert safety_hold(None, on, limits, now) is None


async def test_the_report_has_every_rule_with_its_source_and_the_holds(edge: Edge) -> None:
    automation = edge.automation
    now = utcnow()
    data = room_report(automation, "room-a", {"sens-a": now.timestamp()}, now)
    by_id = {r.id: r for r in data.rules}
    assert set(by_id) == {r.id for r in automation.rules("room-a")} and len(by_id) >= 3
    assert (by_id["room-a-rh"].source, by_id["room-a-rh"].overrides) == ("local", True)
    assert by_id["room-a-rh"].rule["on_below"] == 86
    assert {r.source for r in data.rules if r.id != "room-a-rh"} == {"profile"}
    assert data.seen == {"sens-a": round(now.timestamp(), 3)}

    # Dry air: the humidifier goes on; wet air at once: min on-time keeps it on, in words.
    await edge.telemetry("sens-a", humidity_pct=80)
    await edge.settle()
    assert automation.actuators["hum-a"].on
    await edge.telemetry("sens-a", humidity_pct=95)
    await edge.automation.evaluate_room("room-a")  # not waiting for the trailing evaluation
    hum = next(a for a in room_report(automation, "room-a", {}, utcnow()).actuators
               if a.device_id == "hum-a")
    assert hum.on and hum.hold is None and hum.safety_hold is not None
    assert hum.safety_hold.reason == "min_on" and hum.safety["min_on_s"] == 180
    assert hum.safety_hold.until == pytest.approx(hum.since + 180)
    assert hum.reason and "humidity_pct 80.0 < 86" in hum.reason

    # A cloud rule room: its configured rules come from the cloud.
    automation.cloud_rooms = {"room-a"}
    assert automation.rule_source("room-a", "room-a-rh") == "cloud"


async def test_reports_go_out_when_something_changes_and_now_and_then(edge: Edge) -> None:
    reporter = AutomationReporter(edge.automation, clock=utcnow, every_s=3600)
    for room_id in ("room-a", "room-b"):  # what a first evaluation switches (fresh air, …)
        await edge.automation.evaluate_room(room_id)
    assert await reporter.report() == 2  # every room, the first time
    assert await reporter.report() == 0  # nothing changed
    await edge.telemetry("sens-a", temperature_c=18)  # a reading moves last-seen only
    await edge.settle()
    assert await reporter.report() == 0
    await edge.automation.manual_command("fan-a", "on", hold_minutes=30, by="Ana")
    assert await reporter.report() == 1  # room-a: the fan is held
    reports = await _reports(edge)
    fan = next(a for a in reports[-1].actuators if a.device_id == "fan-a")
    assert fan.on and fan.hold is not None and (fan.hold.by, fan.hold.source) == ("Ana", "manual")
    assert fan.hold.until == pytest.approx(utcnow().timestamp() + 1800, abs=5)
    assert "sens-a" in reports[-1].seen
    # Every every_s even without a change (fresh last-seen and time left).
    assert await AutomationReporter(edge.automation, clock=utcnow, every_s=0).report() == 2


async def test_a_cloud_hold_and_back_to_auto(edge: Edge) -> None:
    downlink = Downlink(edge.settings, edge.db, edge.automation, edge.commands)
    now = datetime.now(UTC)
    hold = CloudCommand(command_id="h-1", device_id="fan-a", room_id="room-a", action="on",
                        hold_minutes=45, by="Ana", created_at=now,
                        expires_at=now + timedelta(minutes=1))
    answer = await downlink.handle(hold)
    assert answer is not None and answer.state == "delivered"  # type: ignore[union-attr]
    override = edge.automation.actuators["fan-a"].override
    assert override is not None and override.on and override.by == "Ana"
    data = room_report(edge.automation, "room-a", {}, utcnow())
    fan = next(a for a in data.actuators if a.device_id == "fan-a")
    assert fan.hold is not None and (fan.hold.by, fan.hold.source) == ("Ana", "cloud")
    assert (override.until - now).total_seconds() == pytest.approx(45 * 60, abs=5)
    rows = await edge.db.read(lambda conn: conn.execute(
        "SELECT action, source, reason FROM commands WHERE device_id = 'fan-a'").fetchall())
    assert [dict(r) for r in rows][-1] == {"action": "on", "source": "cloud",
                                           "reason": "manual by Ana for 45 min"}

    release = CloudRelease(command_id="a-1", device_id="fan-a", room_id="room-a", created_at=now,
                           expires_at=now + timedelta(minutes=1))
    answer = await downlink.handle(release)
    assert answer is not None and answer.state == "delivered"  # type: ignore[union-attr]
    assert answer.detail is None  # type: ignore[union-attr]  # the cloud would show it as an error
    assert edge.automation.actuators["fan-a"].override is None
    again = await downlink.handle(release)  # redelivered: answered again, not redone
    assert again is not None and again.state == "delivered"  # type: ignore[union-attr]
    assert downlink.stats.redelivered == 1
    unknown = CloudRelease(command_id="a-2", device_id="nope", room_id="room-a", created_at=now,
                           expires_at=now + timedelta(minutes=1))
    refused = await downlink.handle(unknown)
    assert refused is not None and refused.state == "rejected"  # type: ignore[union-attr]
    # It also arrives as JSON on the stream.
    raw: Any = json.loads(CloudRelease(command_id="a-3", device_id="fan-a", room_id="room-a",
                                       created_at=now, expires_at=now + timedelta(minutes=1))
                          .model_dump_json())
    assert (await downlink._dispatch(raw)) is not None


def test_safety_limits_from_the_cloud_win_over_the_files(tmp_path: Path) -> None:
    settings = make_settings("farm-1", tmp_path)
    settings.devices[1].safety = Safety(min_on_s=5)
    push = ConfigPush(version=2, rooms=[RoomSpec(id="room-a", species="oyster", stage="fruiting")],
                      devices=[
                          DeviceSpec(id="hum-a", room="room-a", kind="actuator",
                                     actuator="humidifier", safety=Safety(min_on_s=300)),
                          DeviceSpec(id="fan-a", room="room-a", kind="actuator",
                                     actuator="exhaust_fan"),
                      ])
    settings.devices[2].safety = Safety(min_off_s=7)
    _, devices = overlay(settings.rooms, settings.devices, push, "edge")
    by_id = {d.id: d for d in devices}
    assert by_id["hum-a"].safety == Safety(min_on_s=300)
    assert by_id["fan-a"].safety == Safety(min_off_s=7)  # none in the cloud: the file's
