"""The command endpoint takes the seed's command forms — ``{"action": "set_humidity", "value": 90}``
— as well as the model's (``on`` / ``off`` / ``set``), and names the field of anything else in a
422 problem. Real HTTP, real PostgreSQL (the cloud tests' world)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cloud import world as w

pytestmark = pytest.mark.postgres
PROBLEM = "application/problem+json"
PATH = f"/api/rooms/{w.ROOM_B}/commands"


async def post(client, auth, body: dict[str, Any], status: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    resp = await client.post(PATH, json=body, headers=auth("operator"))
    assert resp.status == status, await resp.text()
    doc: dict[str, Any] = await resp.json()
    if status >= 400:
        assert resp.content_type == PROBLEM
    return doc


def fields(problem: dict[str, Any]) -> list[str]:
    return [e["field"] for e in problem["errors"]]


async def test_the_seeds_set_forms_are_set_on_that_quantitys_actuator(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    made = await post(world_client, auth,
                      {"device_id": w.ACTUATOR_B, "action": "set_humidity", "value": 90}, 201)
    assert (made["device_id"], made["action"], made["value"]) == (w.ACTUATOR_B, "set", 90)
    # The seed's own command names no device: the room's humidifier it is.
    made = await post(world_client, auth, {"action": "set_humidity", "value": 90}, 201)
    assert (made["device_id"], made["action"], made["value"]) == (w.ACTUATOR_B, "set", 90)
    # The model's forms are unchanged.
    made = await post(world_client, auth, {"device_id": w.ACTUATOR_B, "action": "on"}, 201)
    assert made["action"] == "on"


async def test_unknown_or_unfitting_forms_are_422_naming_the_field(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    problem = await post(world_client, auth,
                         {"device_id": w.ACTUATOR_B, "action": "blink", "value": 1}, 422)
    assert fields(problem) == ["body.action"]
    assert "set_humidity" in problem["errors"][0]["message"]
    problem = await post(world_client, auth, {"action": "set_humidity", "value": 150}, 422)
    assert fields(problem) == ["body.value"]
    problem = await post(world_client, auth, {"action": "set_humidity"}, 422)
    assert fields(problem) == ["body.value"]
    # No heater in room B: the form names an actuator the room does not have.
    problem = await post(world_client, auth, {"action": "set_temperature", "value": 40}, 422)
    assert fields(problem) == ["body.action"]
    assert "heater" in problem["errors"][0]["message"]
    # A device of another role than the form's quantity.
    problem = await post(world_client, auth,
                         {"device_id": w.ACTUATOR_B, "action": "set_co2", "value": 50}, 422)
    assert fields(problem) == ["body.device_id"]
    assert "exhaust_fan" in problem["errors"][0]["message"]
    # The model's forms still need a device.
    problem = await post(world_client, auth, {"action": "on"}, 422)
    assert fields(problem) == ["body.device_id"]
