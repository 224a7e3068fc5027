"""What the edge's page reads besides the basics: each actuator's safety hold (reason, when it
lets go), the last command that explains its state, the session state asked without a 401, and
the version in /health."""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from edge.config import DeviceConfig
from shared.about import package_version
from shared.rules import Safety
from tests.integration.test_edge_api import CSRF, PASSWORD, build_edge, make_app, make_settings


async def _login(client: Any) -> None:
    resp = await client.post("/api/login", json={"username": "admin", "password": PASSWORD})
    assert resp.status == 200


async def test_session_state_answers_200_logged_in_or_not(
    farm_id: str, tmp_path: Path, aiohttp_client: Any,
) -> None:
    edge = await build_edge(make_settings(farm_id, tmp_path), tmp_path)
    try:
        client = await aiohttp_client(make_app(edge))
        resp = await client.get("/api/session/state")
        assert resp.status == 200
        assert await resp.json() == {"logged_in": False, "user": None, "expires_at": None}
        client.session.cookie_jar.update_cookies({"smartfarm_edge_session": "forged.token"})
        assert (await (await client.get("/api/session/state")).json())["logged_in"] is False
        client.session.cookie_jar.clear()
        await _login(client)
        state = await (await client.get("/api/session/state")).json()
        assert state["logged_in"] is True and state["user"] == "admin"
        assert datetime.fromisoformat(state["expires_at"]) > datetime.now().astimezone()
        # Still a public read only: nothing else opens without a session.
        client.session.cookie_jar.clear()
        assert (await client.get("/api/rooms")).status == 401
        health = await (await client.get("/health")).json()
        assert health["version"] == package_version()
    finally:
        await edge.commands.close()
        await edge.db.close()


async def test_a_safety_hold_is_shown_with_its_reason_and_when_it_lets_go(
    farm_id: str, tmp_path: Path, aiohttp_client: Any,
) -> None:
    settings = make_settings(farm_id, tmp_path)
    settings.devices.append(DeviceConfig(
        id="heat-a", room="room-a", kind="actuator", actuator="heater",
        safety=Safety(max_on_s=1, min_off_s=600)))
    edge = await build_edge(settings, tmp_path)
    try:
        client = await aiohttp_client(make_app(edge))
        await _login(client)
        resp = await client.post("/api/commands", headers=CSRF,
                                 json={"device_id": "heat-a", "action": "on", "hold_minutes": 20})
        assert resp.status == 202
        await edge.settle()
        room = await (await client.get("/api/rooms/room-a")).json()
        heater = next(a for a in room["actuators"] if a["id"] == "heat-a")
        assert heater["on"] is True and heater["safety_hold"] is None
        assert heater["override"]["by"] == "admin"
        assert heater["last_command"]["source"] == "manual"
        assert heater["last_command"]["reason"] == "manual by admin for 20 min"
        assert heater["last_command"]["action"] == "on"

        # Past its max runtime the heater is switched off and rests 10 min, override or not.
        state = edge.automation.actuators["heat-a"]
        assert state.since is not None
        earlier = timedelta(seconds=5)  # as if switched on 5 s ago
        edge.automation.actuators["heat-a"] = state.model_copy(update={
            "since": state.since - earlier,
            "on_intervals": tuple((start - earlier, end) for start, end in state.on_intervals),
        })
        await edge.automation.evaluate_room("room-a")
        await edge.settle()
        room = await (await client.get("/api/rooms/room-a")).json()
        heater = next(a for a in room["actuators"] if a["id"] == "heat-a")
        assert heater["on"] is False
        assert heater["last_command"]["source"] == "automation"
        assert heater["last_command"]["reason"] == "max runtime 1 s reached (safety)"
        hold = heater["safety_hold"]
        assert hold["wanted_on"] is True
        assert hold["reason"].startswith("resting 600 s after max runtime")
        lets_go = datetime.fromisoformat(hold["until"]) - datetime.now().astimezone()
        assert timedelta(minutes=9) < lets_go <= timedelta(minutes=10)
        # The other actuators have nothing held back.
        assert all(a["safety_hold"] is None for a in room["actuators"] if a["id"] != "heat-a")
    finally:
        await edge.commands.close()
        await edge.db.close()
