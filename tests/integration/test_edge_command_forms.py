"""The edge's local API takes the seed's command forms too (``{"action": "set_humidity",
"value": 90}``: `set` on the room's humidifier), and names the field of anything else in a 422
problem. A real edge (embedded broker, store, local API) over real HTTP."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.conftest import fast_settings, make_site

PROBLEM = "application/problem+json"


async def post(app: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    api = app.settings.api
    login = aiohttp.BasicAuth(api.admin_user, api.admin_password.get_secret_value())
    async with aiohttp.ClientSession(auth=login) as session, session.post(
        f"http://127.0.0.1:{app.api_port}/api/commands", json=body
    ) as resp:
        return resp.status, await resp.json(), resp.content_type


def stored(db: Path, command_id: str) -> tuple[str, str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT device_id, action, value FROM commands WHERE command_id = ?",
                           (command_id,)).fetchone()
    finally:
        conn.close()
    return row[0], row[1], row[2]


async def test_the_local_api_takes_the_seeds_forms(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    settings = fast_settings(make_site(tmp_path / "site", farm_id))
    app = await running_edge(settings)
    status, body, _ = await post(app, {"action": "set_humidity", "value": 90})
    assert status == 202, body
    assert (body["device_id"], body["action"]) == ("room-a-humidifier", "set")
    await app.db.write(lambda conn: None, urgent=True)
    device_id, action, value = stored(settings.db_path, body["command_id"])
    assert (device_id, action, json.loads(value)) == ("room-a-humidifier", "set", 90)
    status, body, _ = await post(app, {"device_id": "room-a-light", "action": "set_light",
                                       "value": 40})
    assert status == 202 and body["action"] == "set", body
    status, body, _ = await post(app, {"device_id": "room-a-fan", "action": "on"})
    assert status == 202 and body["override_until"] is not None, body


async def test_the_local_api_names_the_field_of_a_form_it_cannot_take(
    tmp_path: Path, farm_id: str, running_edge: Any
) -> None:
    app = await running_edge(fast_settings(make_site(tmp_path / "site", farm_id)))
    for body, field in (
        ({"device_id": "room-a-fan", "action": "blink"}, "action"),
        ({"action": "set_humidity", "value": 150}, "value"),
        ({"action": "set_humidity"}, "value"),
        ({"device_id": "room-a-fan", "action": "set_humidity", "value": 50}, "device_id"),
        ({"action": "on"}, "device_id"),
    ):
        status, problem, content_type = await post(app, body)
        assert (status, content_type) == (422, PROBLEM), (body, problem)
        assert [e["field"] for e in problem["errors"]] == [field], (body, problem)
