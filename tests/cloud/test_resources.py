"""Each resource: happy path, validation, not found, pagination; telemetry buckets and CSV."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from urllib.parse import urlencode

import psycopg
import pytest

from tests.cloud import world as w

pytestmark = pytest.mark.postgres


async def _json(resp, status: int = 200):  # type: ignore[no-untyped-def]
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_farm_crud_and_pagination(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    owner = auth("owner")
    for i in range(3):
        await _json(
            await world_client.post(
                "/api/farms", json={"id": f"pf-{i}", "name": f"F{i}"}, headers=owner
            ),
            201,
        )
    seen: list[str] = []
    cursor = None
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await _json(await world_client.get(f"/api/farms?{urlencode(query)}", headers=owner))
        assert len(page["items"]) <= 2
        seen += [f["id"] for f in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(["pf-0", "pf-1", "pf-2", w.FARM])
    dup = await world_client.post("/api/farms", json={"id": "pf-0", "name": "again"}, headers=owner)
    assert dup.status == 409
    bad_tz = await world_client.post(
        "/api/farms", json={"name": "x", "timezone": "Mars/Base"}, headers=owner
    )
    assert bad_tz.status == 422
    farm = await _json(
        await world_client.patch("/api/farms/pf-1", json={"name": "Renamed"}, headers=owner)
    )
    assert farm["name"] == "Renamed" and farm["role"] == "owner"
    assert (await world_client.delete("/api/farms/pf-1", headers=owner)).status == 204
    assert (await world_client.get("/api/farms/pf-1", headers=owner)).status == 404


async def test_room_stage_change_restarts_the_stage_clock(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    before = await _json(await world_client.get(f"/api/rooms/{w.ROOM_B}", headers=auth("viewer")))
    room = await _json(
        await world_client.patch(
            f"/api/rooms/{w.ROOM_B}", json={"stage": "pinning"}, headers=auth("operator")
        )
    )
    assert room["stage"] == "pinning" and room["stage_started"] > before["stage_started"]
    bad = await world_client.patch(
        f"/api/rooms/{w.ROOM_B}", json={"stage": "harvest"}, headers=auth("operator")
    )
    assert bad.status == 422
    assert (await world_client.get("/api/rooms/nope", headers=auth("owner"))).status == 404


async def test_device_registration_returns_credentials_once(world_client, auth, world_dsn) -> None:  # type: ignore[no-untyped-def]
    resp = await world_client.post(
        f"/api/rooms/{w.ROOM_B}/devices",
        json={"id": "fan-9", "kind": "actuator", "actuator": "exhaust_fan"},
        headers=auth("owner"),
    )
    device = await _json(resp, 201)
    mqtt = device["mqtt"]
    assert mqtt["username"] == "fan-9" and len(mqtt["password"]) >= 24
    assert mqtt["subscribe_topics"] == [f"farm/{w.FARM}/room/{w.ROOM_B}/command/fan-9"]
    again = await _json(await world_client.get("/api/devices/fan-9", headers=auth("viewer")))
    assert "mqtt" not in again and mqtt["password"] not in str(again)
    with psycopg.connect(world_dsn) as conn:
        stored = conn.execute("SELECT credentials_hash FROM devices WHERE id = 'fan-9'").fetchone()
    assert (
        stored is not None
        and stored[0].startswith("$argon2id$")
        and mqtt["password"] not in stored[0]
    )
    bad = await world_client.post(
        f"/api/rooms/{w.ROOM_B}/devices", json={"kind": "actuator"}, headers=auth("owner")
    )
    assert bad.status == 422
    page = await _json(
        await world_client.get(f"/api/rooms/{w.ROOM_B}/devices?limit=2", headers=auth("viewer"))
    )
    assert len(page["items"]) == 2 and page["next_cursor"]


async def test_latest_per_device(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    latest = await _json(
        await world_client.get(f"/api/devices/{w.SENSOR_B}/latest", headers=auth("viewer"))
    )
    values = {r["metric"]: r["value"] for r in latest["readings"]}
    assert values == {
        "temperature_c": pytest.approx(18 + 1.19),
        "humidity_pct": pytest.approx(80 + 1.19),
    }
    assert latest["room_id"] == w.ROOM_B


def _range(world) -> dict[str, str]:  # type: ignore[no-untyped-def]
    start = world.start - timedelta(hours=2)
    return {"from": start.isoformat(), "to": (start + timedelta(hours=2)).isoformat()}


async def test_telemetry_raw_rows_page_by_cursor(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/rooms/{w.ROOM_B}/telemetry"
    query = _range(world) | {"metric": "temperature_c", "limit": 50}
    rows: list[dict] = []
    cursor = None
    while True:
        q = query | ({"cursor": cursor} if cursor else {})
        page = await _json(await world_client.get(f"{url}?{urlencode(q)}", headers=auth("viewer")))
        rows += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(rows) == 120
    times = [r["time"] for r in rows]
    assert times == sorted(times) and len(set(times)) == 120
    both = await _json(
        await world_client.get(
            f"{url}?{urlencode(_range(world) | {'limit': 10000})}", headers=auth("viewer")
        )
    )
    assert len(both["items"]) == 240


async def test_telemetry_buckets_are_aggregated_in_sql(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/rooms/{w.ROOM_B}/telemetry"
    q = _range(world) | {"metric": "humidity_pct", "bucket": "1h", "agg": "max"}
    body = await _json(await world_client.get(f"{url}?{urlencode(q)}", headers=auth("viewer")))
    assert body["bucket"] == "1h" and body["agg"] == "max"
    assert sum(b["count"] for b in body["items"]) == 120
    assert max(b["value"] for b in body["items"]) == pytest.approx(80 + 1.19)
    assert all(datetime.fromisoformat(b["time"]).minute == 0 for b in body["items"])


@pytest.mark.parametrize(
    "query",
    [
        {"bucket": "7m"},
        {"agg": "median"},
        {"from": "2024-01-02T00:00:00Z", "to": "2024-01-01T00:00:00Z"},
        {"from": "yesterday"},
        {"metric": "DROP TABLE"},
        {"bucket": "1m", "from": "2000-01-01T00:00:00Z", "to": "2024-01-01T00:00:00Z"},
        {"limit": "100000"},
        {"cursor": "eyJub3QiOiJhIGxpc3QifQ"},
    ],
)
async def test_telemetry_rejects_bad_queries(world_client, auth, query) -> None:  # type: ignore[no-untyped-def]
    resp = await world_client.get(
        f"/api/rooms/{w.ROOM_B}/telemetry?{urlencode(query)}", headers=auth("viewer")
    )
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["errors"]


async def test_telemetry_csv_streams_every_row(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/rooms/{w.ROOM_B}/telemetry?{urlencode(_range(world) | {'limit': 5})}"
    resp = await world_client.get(url, headers=auth("viewer") | {"Accept": "text/csv"})
    assert resp.status == 200 and resp.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert len(rows) == 240  # CSV ignores paging: the whole range
    assert set(rows[0]) == {"time", "device_id", "metric", "value"}
    query = urlencode(_range(world) | {"bucket": "1h", "format": "csv"})
    bucketed = await world_client.get(
        f"/api/rooms/{w.ROOM_B}/telemetry?{query}",
        headers=auth("viewer"),
    )
    lines = (await bucketed.text()).splitlines()
    assert lines[0] == "bucket,device_id,metric,avg,count" and len(lines) > 1


async def test_commands_are_stored_pending_and_listed(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/rooms/{w.ROOM_B}/commands"
    made = await _json(
        await world_client.post(
            url,
            json={"device_id": w.ACTUATOR_B, "action": "set", "value": 40},
            headers=auth("operator"),
        ),
        201,
    )
    assert made["status"] == "pending" and made["id"]
    got = await _json(await world_client.get(f"{url}/{made['id']}", headers=auth("viewer")))
    assert got["value"] == 40
    page = await _json(await world_client.get(f"{url}?limit=1", headers=auth("viewer")))
    assert page["items"][0]["id"] == made["id"] and page["next_cursor"]
    rest = await _json(
        await world_client.get(
            f"{url}?limit=5&cursor={page['next_cursor']}", headers=auth("viewer")
        )
    )
    assert [c["id"] for c in rest["items"]] == [w.COMMAND_B]
    for body in (
        {"device_id": w.SENSOR_B, "action": "on"},  # not an actuator
        {"device_id": w.ACTUATOR_A, "action": "on"},  # another room's device
        {"device_id": w.ACTUATOR_B, "action": "set"},  # set needs a value
        {"device_id": w.ACTUATOR_B, "action": "set", "value": 140},
        {"device_id": w.ACTUATOR_B, "action": "explode"},
    ):
        resp = await world_client.post(url, json=body, headers=auth("operator"))
        assert resp.status == 422, body
    assert (await world_client.get(f"{url}/nope", headers=auth("viewer"))).status == 404


async def test_automation_rules_lifecycle(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/rooms/{w.ROOM_B}/automation"
    rule = {
        "type": "schedule",
        "id": "light",
        "room_id": w.ROOM_B,
        "actuator": w.ACTUATOR_B,
        "windows": [{"start": "22:00", "end": "06:00"}],
    }
    made = await _json(await world_client.post(url, json=rule, headers=auth("operator")), 201)
    assert made["version"] == 1 and made["rule"]["windows"][0]["start"] == "22:00"
    assert (await world_client.post(url, json=rule, headers=auth("operator"))).status == 409
    patched = await _json(
        await world_client.patch(
            f"{url}/light",
            json={"changes": {"enabled": False}, "version": 1},
            headers=auth("operator"),
        )
    )
    assert patched["version"] == 2 and patched["rule"]["enabled"] is False
    stale = await world_client.patch(
        f"{url}/light", json={"changes": {"enabled": True}, "version": 1}, headers=auth("operator")
    )
    assert stale.status == 409
    invalid = await world_client.patch(
        f"{url}/{w.RULE_B}", json={"changes": {"on_below": 95}}, headers=auth("operator")
    )
    assert invalid.status == 422  # on_below must stay below off_above
    bad_rules = [
        rule | {"id": "x1", "windows": []},
        rule | {"id": "x2", "actuator": w.SENSOR_B},
        rule | {"id": "x3", "room_id": w.ROOM_A},
        {
            "type": "threshold",
            "id": "x4",
            "room_id": w.ROOM_B,
            "actuator": w.ACTUATOR_B,
            "metric": "co2_ppm",
        },
    ]
    for body in bad_rules:
        resp = await world_client.post(url, json=body, headers=auth("operator"))
        assert resp.status == 422, body
    page = await _json(await world_client.get(f"{url}?limit=1", headers=auth("viewer")))
    assert page["items"][0]["id"] == "light" and page["next_cursor"]
    assert (await world_client.delete(f"{url}/light", headers=auth("operator"))).status == 204
    assert (await world_client.get(f"{url}/light", headers=auth("viewer"))).status == 404


async def test_ai_recommend_queues_a_run(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    # The run itself is a background job (tests/cloud/test_ai.py runs it with a worker).
    queued = await _json(
        await world_client.post(f"/api/rooms/{w.ROOM_B}/ai/recommend", headers=auth("operator")),
        202,
    )
    assert queued["status"] == "queued" and not queued["deduplicated"]
    listed = await _json(
        await world_client.get(f"/api/rooms/{w.ROOM_B}/ai/recommendations", headers=auth("viewer"))
    )
    assert [r["id"] for r in listed["items"]] == [world.recommendation_id]


async def test_notifications_list_and_mark_read(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    page = await _json(
        await world_client.get("/api/notifications?unread=true", headers=auth("viewer"))
    )
    assert [n["title"] for n in page["items"]] == ["hello viewer"]
    mine = world.notification_ids["viewer"]
    read = await _json(
        await world_client.post(f"/api/notifications/{mine}/read", headers=auth("viewer"))
    )
    assert read["read_at"]
    theirs = world.notification_ids["owner"]
    assert (
        await world_client.post(f"/api/notifications/{theirs}/read", headers=auth("viewer"))
    ).status == 404
    page = await _json(
        await world_client.get("/api/notifications?unread=true", headers=auth("viewer"))
    )
    assert page["items"] == []
    marked = await _json(
        await world_client.post("/api/notifications/read-all", headers=auth("owner"))
    )
    assert marked["marked"] == 1


async def test_edge_register_and_rotate(world_client, auth, world_dsn) -> None:  # type: ignore[no-untyped-def]
    made = await _json(
        await world_client.post(
            f"/api/farms/{w.FARM}/edges", json={"id": "pi-2"}, headers=auth("owner")
        ),
        201,
    )
    first = made["token"]
    rotated = await _json(
        await world_client.post("/api/edges/pi-2/rotate-token", headers=auth("owner"))
    )
    assert rotated["token"] != first and rotated["token"].startswith("sfe_")
    with psycopg.connect(world_dsn) as conn:
        stored = conn.execute("SELECT token_hash FROM edges WHERE id = 'pi-2'").fetchone()
    from cloud.auth.tokens import token_hash

    assert stored == (token_hash(rotated["token"]),)
    page = await _json(await world_client.get(f"/api/farms/{w.FARM}/edges", headers=auth("owner")))
    assert {e["id"] for e in page["items"]} == {w.EDGE, "pi-2"} and "token" not in page["items"][0]
    assert (await world_client.get("/api/edges/nope", headers=auth("owner"))).status == 404


async def test_mutations_are_audited(world_client, auth, world_dsn) -> None:  # type: ignore[no-untyped-def]
    await world_client.patch(
        f"/api/rooms/{w.ROOM_B}", json={"name": "B!"}, headers=auth("operator")
    )
    with psycopg.connect(world_dsn) as conn:
        row = conn.execute(
            "SELECT action, target, detail FROM audit_log ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert row == ("room.update", w.ROOM_B, {"name": "B!"})
