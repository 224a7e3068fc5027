"""Operating a farm through the API: alarms (severity from the kind, acknowledge, clear, the
history and its filters), the command audit (who or what switched what, and the outcome) and
the grow logbook (stage changes whoever made them, notes, batches, harvests), with what each
role may do. Edge records arrive through the real batch upload."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloud.db.database import Database
from cloud.notify.episodes import Episodes
from cloud.notify.settings import NotifyConfig
from tests.cloud import world as w
from tests.cloud.test_edge_sync import batch, change, farm_version, ok, problem, record, upload

pytestmark = pytest.mark.postgres


class _NoQueue:
    async def defer(self, task: str, **kwargs: Any) -> int | None:
        return None


async def _fold(dsn: str) -> None:
    """Run process_alerts as the job would: edge alerts → events → episodes."""
    db = await Database.connect(dsn, min_size=1, max_size=1)
    try:
        await Episodes(db, _NoQueue(), NotifyConfig(), email_possible=False).run(
            now=datetime.now(UTC)
        )
    finally:
        await db.close()


def _alert(
    seq: int, key: str, kind: str, severity: str, state: str = "active", **where: Any
) -> Any:
    return record(
        seq,
        "alert",
        {
            "key": key,
            "kind": kind,
            "severity": severity,
            "message": f"{kind} in {where.get('room_id')}",
            "room_id": where.get("room_id"),
            "device_id": where.get("device_id"),
            "state": state,
            "at": time.time(),
        },
    )


async def _alarms(client, headers, query: str = "") -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    page = await ok(await client.get(f"/api/farms/{w.FARM}/alerts{query}", headers=headers))
    return page["items"]  # type: ignore[no-any-return]


async def test_alarms_severity_acknowledge_clear_and_history(  # type: ignore[no-untyped-def]
    world_client, world_dsn, auth
) -> None:
    client = world_client
    # The edge reports a runaway heater as a mere warning and an out-of-band reading as info:
    # their kinds make them critical and a warning.
    await ok(
        await upload(
            client,
            batch(
                [
                    _alert(
                        1,
                        "runaway:h",
                        "actuator_runaway",
                        "warning",
                        room_id=w.ROOM_B,
                        device_id=w.ACTUATOR_B,
                    ),
                    _alert(2, "band:b:rh", "out_of_band", "info", room_id=w.ROOM_B),
                ]
            ),
        )
    )
    await _fold(world_dsn)
    active = await _alarms(client, auth("viewer"), "?status=active")
    by_kind = {a["kind"]: a for a in active}
    runaway, band = by_kind["actuator_runaway"], by_kind["out_of_band"]
    assert runaway["severity"] == "critical" and band["severity"] == "warning"
    assert runaway["status"] == "active" and runaway["acknowledged_by"] is None
    assert runaway["room_name"] == w.ROOM_B and runaway["device_name"] == w.ACTUATOR_B
    assert runaway["kind_label"] == "Actuator running away"
    critical = await _alarms(client, auth("viewer"), "?severity=critical&status=open")
    assert {a["kind"] for a in critical} == {"actuator_runaway"}
    counts = await ok(
        await client.get(f"/api/farms/{w.FARM}/alerts/counts", headers=auth("viewer"))
    )
    assert counts == {"unacknowledged": 2, "critical": 1, "open": 2}

    url = f"/api/farms/{w.FARM}/alerts/{runaway['id']}"
    await problem(await client.post(url + "/acknowledge", json={}, headers=auth("viewer")), 403)
    # The operator limited to room A does not see room B's alarms at all.
    assert runaway["id"] not in [a["id"] for a in await _alarms(client, auth("limited"))]
    await problem(await client.post(url + "/acknowledge", json={}, headers=auth("limited")), 404)
    bad = await problem(
        await client.post(url + "/acknowledge", json={"note": "x" * 501}, headers=auth("operator")),
        422,
    )
    assert bad["errors"][0]["field"] == "body.note"
    acked = await ok(
        await client.post(
            url + "/acknowledge", json={"note": "turned it off"}, headers=auth("operator")
        )
    )
    assert acked["status"] == "acknowledged" and acked["state"] == "active"
    assert (
        acked["acknowledged_by"] == "operator@example.com" and acked["ack_note"] == "turned it off"
    )
    again = await problem(
        await client.post(url + "/acknowledge", json={}, headers=auth("owner")), 409
    )
    assert "operator@example.com" in again["detail"]
    assert [a["id"] for a in await _alarms(client, auth("viewer"), "?status=acknowledged")] == [
        runaway["id"]
    ]

    # The operator clears it by hand; the band alarm clears when the edge says it ended.
    cleared = await ok(
        await client.post(url + "/clear", json={"note": "fixed"}, headers=auth("operator"))
    )
    assert cleared["status"] == "cleared" and cleared["cleared_by"] == "operator@example.com"
    assert cleared["cleared_by_operator"] and cleared["resolved_at"] is not None
    await problem(await client.post(url + "/clear", json={}, headers=auth("operator")), 409)
    await ok(
        await upload(
            client,
            batch([_alert(3, "band:b:rh", "out_of_band", "info", "resolved", room_id=w.ROOM_B)]),
        )
    )
    await _fold(world_dsn)
    history = {a["id"]: a for a in await _alarms(client, auth("viewer"), "?status=cleared")}
    assert set(history) == {runaway["id"], band["id"]}
    assert history[band["id"]]["cleared_by"] is None
    assert not history[band["id"]]["cleared_by_operator"]

    # The runaway comes back after the edge saw it end: a new alarm, not the cleared one reopened.
    await ok(
        await upload(
            client,
            batch(
                [
                    _alert(
                        4, "runaway:h", "actuator_runaway", "critical", "resolved", room_id=w.ROOM_B
                    ),
                    _alert(5, "runaway:h", "actuator_runaway", "critical", room_id=w.ROOM_B),
                ]
            ),
        )
    )
    await _fold(world_dsn)
    runaways = await _alarms(client, auth("viewer"), f"?kind=actuator_runaway&room_id={w.ROOM_B}")
    assert len(runaways) == 2 and runaways[0]["status"] == "active"
    assert runaways[1]["id"] == runaway["id"] and runaways[1]["status"] == "cleared"

    # The span keeps the alarms going on in it; pages follow the cursor.
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await _alarms(client, auth("viewer"), f"?from={future.replace('+', '%2B')}") == [
        a for a in await _alarms(client, auth("viewer"), "?status=open")
    ]
    first = await ok(
        await client.get(f"/api/farms/{w.FARM}/alerts?limit=2", headers=auth("viewer"))
    )
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = await ok(
        await client.get(
            f"/api/farms/{w.FARM}/alerts?limit=2&cursor={first['next_cursor']}",
            headers=auth("viewer"),
        )
    )
    assert {a["id"] for a in first["items"]}.isdisjoint(a["id"] for a in rest["items"])
    for query, field in (
        ("?severity=loud", "query.severity"),
        ("?status=sleeping", "query.status"),
        ("?from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z", "query.to"),
        ("?from=yesterday", "query.from"),
    ):
        body = await problem(
            await client.get(f"/api/farms/{w.FARM}/alerts{query}", headers=auth("viewer")), 422
        )
        assert body["errors"][0]["field"].startswith(field), body
    await problem(
        await client.get(f"/api/farms/{w.FARM}/alerts/999999", headers=auth("viewer")), 404
    )


def _edge_command(seq: int, cid: str, source: str, reason: str, **over: Any) -> Any:
    data = {
        "command_id": cid,
        "device_id": w.ACTUATOR_B,
        "room_id": w.ROOM_B,
        "action": "on",
        "value": None,
        "source": source,
        "reason": reason,
        "created_at": time.time() - 5,
    }
    data.update(over)
    return record(seq, "command", data)


def _ack(seq: int, cid: str, status: str = "ok", device: str = w.ACTUATOR_B) -> Any:
    return record(
        seq, "ack", {"command_id": cid, "device_id": device, "status": status, "at": time.time()}
    )


async def test_command_audit_names_who_and_the_outcome(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    client = world_client
    made = await ok(
        await client.post(
            f"/api/rooms/{w.ROOM_B}/commands",
            json={"device_id": w.ACTUATOR_B, "action": "off"},
            headers=auth("owner"),
        ),
        201,
    )
    now = time.time()
    await ok(
        await upload(
            client,
            batch(
                [
                    _edge_command(
                        1,
                        "e-1",
                        "cloud",
                        "manual by cloud for 30 min",
                        cloud_command_id=made["id"],
                        action="off",
                    ),
                    _ack(2, "e-1"),
                    _edge_command(3, "e-2", "automation", "humidity_pct 80 < 85: on"),
                    _ack(4, "e-2"),
                    _edge_command(5, "e-3", "manual", "manual by home-assistant for 15 min"),
                    record(
                        6,
                        "command_state",
                        {
                            "command_id": "e-3",
                            "state": "timed_out",
                            "at": now,
                            "error": "no ack",
                            "attempts": 3,
                        },
                    ),
                    _edge_command(
                        7,
                        "e-4",
                        "manual",
                        "manual by alice for 45 min",
                        device_id=w.ACTUATOR_A,
                        room_id=w.ROOM_A,
                    ),
                    _ack(8, "e-4", "error", w.ACTUATOR_A),
                ]
            ),
        )
    )
    page = await ok(
        await client.get(f"/api/rooms/{w.ROOM_B}/command-audit", headers=auth("viewer"))
    )
    rows = {r["command_id"]: r for r in page["items"]}
    assert set(rows) == {made["id"], w.COMMAND_B, "e-2", "e-3"}  # e-1 is the cloud command
    mine = rows[made["id"]]
    assert mine["origin"] == "user" and mine["by"] == "owner@example.com"
    # The edge's ack of its copy is the cloud command's outcome, timed from the user's click.
    assert mine["outcome"] == "acked" and mine["ack_seconds"] is not None
    assert mine["acked_at"] is not None and mine["hold_minutes"] == 30
    assert rows[w.COMMAND_B]["by"] == "operator@example.com"
    auto = rows["e-2"]
    assert auto["origin"] == "automation" and auto["by"] == "Automation"
    assert auto["outcome"] == "acked" and 0 <= auto["ack_seconds"] < 60
    assert auto["reason"] == "humidity_pct 80 < 85: on" and auto["hold_minutes"] is None
    assert auto["device_name"] == w.ACTUATOR_B and auto["actuator"] == "humidifier"
    assert auto["edge_name"] == "pi"
    ha = rows["e-3"]
    assert ha["by"] == "Home Assistant" and ha["outcome"] == "timed_out"
    assert ha["error"] == "no ack" and ha["hold_minutes"] == 15 and ha["ack_seconds"] is None
    assert [r["at"] for r in page["items"]] == sorted(
        (r["at"] for r in page["items"]), reverse=True
    )

    farm = await ok(
        await client.get(f"/api/farms/{w.FARM}/command-audit?limit=500", headers=auth("viewer"))
    )
    page_rows = {r["command_id"]: r for r in farm["items"]}
    assert page_rows["e-4"]["by"] == "Edge page (alice)" and page_rows["e-4"]["outcome"] == "failed"
    assert page_rows["e-4"]["room_name"] == w.ROOM_A
    # Filters: device, origin, outcome, room; the limited operator sees room A only.
    only_a = await ok(
        await client.get(f"/api/farms/{w.FARM}/command-audit", headers=auth("limited"))
    )
    assert {r["room_id"] for r in only_a["items"]} == {w.ROOM_A}
    for query, want in (
        (f"?device_id={w.ACTUATOR_A}", {"e-4"}),
        ("?origin=home_assistant", {"e-3"}),
        ("?outcome=acked", {made["id"], "e-2"}),
        (f"?room_id={w.ROOM_A}", {"e-4"}),
    ):
        got = await ok(
            await client.get(f"/api/farms/{w.FARM}/command-audit{query}", headers=auth("viewer"))
        )
        assert {r["command_id"] for r in got["items"]} == want, query
    first = await ok(
        await client.get(f"/api/farms/{w.FARM}/command-audit?limit=2", headers=auth("viewer"))
    )
    second = await ok(
        await client.get(
            f"/api/farms/{w.FARM}/command-audit?limit=2&cursor={first['next_cursor']}",
            headers=auth("viewer"),
        )
    )
    ids = [r["id"] for r in first["items"] + second["items"]]
    assert len(set(ids)) == 4 and ids == [r["id"] for r in farm["items"][:4]]
    body = await problem(
        await client.get(f"/api/farms/{w.FARM}/command-audit?origin=ghost", headers=auth("viewer")),
        422,
    )
    assert body["errors"][0]["field"] == "query.origin"
    await problem(
        await client.get(f"/api/rooms/{w.ROOM_B}/command-audit", headers=auth("limited")), 404
    )


async def test_logbook_records_stages_notes_batches_and_harvests(  # type: ignore[no-untyped-def]
    world_client, world_dsn, auth
) -> None:
    client = world_client
    url = f"/api/rooms/{w.ROOM_B}/logbook"
    start = await ok(await client.get(url, headers=auth("viewer")))
    assert [(e["kind"], e["stage"], e["title"]) for e in start["items"]] == [
        ("stage", "fruiting", "Stage: Fruiting")
    ]
    # A stage change in the cloud names its user; one made on the edge names the edge.
    await ok(
        await client.patch(
            f"/api/rooms/{w.ROOM_B}", json={"stage": "spawn_run"}, headers=auth("operator")
        )
    )
    base = await farm_version(world_dsn)
    edge_at = datetime.now(UTC).isoformat()
    await ok(
        await upload(
            client,
            batch(
                [
                    change(
                        1, base, {"room_id": w.ROOM_B, "stage": "pinning", "stage_started": edge_at}
                    )
                ]
            ),
        )
    )
    note = await ok(
        await client.post(
            url,
            json={"kind": "note", "text": "first pins on the top shelf"},
            headers=auth("operator"),
        ),
        201,
    )
    assert note["kind"] == "note" and note["by"] == "operator@example.com"
    assert note["title"] == "Note" and note["id"].startswith("log-")
    spawned = (datetime.now(UTC) - timedelta(days=10)).date().isoformat()
    batch_entry = await ok(
        await client.post(
            url,
            json={
                "kind": "batch",
                "strain": "Blue oyster PoHu",
                "substrate": "straw",
                "spawn_date": spawned,
                "substrate_dry_kg": 12.5,
                "text": "3 % spawn rate",
            },
            headers=auth("owner"),
        ),
        201,
    )
    assert batch_entry["title"] == "New batch: Blue oyster PoHu"
    assert batch_entry["spawn_date"] == spawned and batch_entry["substrate"] == "straw"
    yield_now = await ok(await client.get(f"/api/rooms/{w.ROOM_B}/yield", headers=auth("viewer")))
    assert yield_now["substrate"]["dry_mass_kg"] == 12.5
    harvest = await ok(
        await client.post(
            f"/api/rooms/{w.ROOM_B}/harvests",
            json={"weight_kg": 2.4, "note": "nice"},
            headers=auth("operator"),
        ),
        201,
    )
    items = (await ok(await client.get(url, headers=auth("viewer"))))["items"]
    assert [e["kind"] for e in items] == ["stage", "stage", "stage", "note", "batch", "harvest"]
    assert [e["at"] for e in items] == sorted(e["at"] for e in items)
    cloud_stage, edge_stage = items[1], items[2]
    assert cloud_stage["stage"] == "spawn_run" and cloud_stage["by"] == "operator@example.com"
    assert cloud_stage["text"] == "from Fruiting"
    assert edge_stage["stage"] == "pinning" and edge_stage["by"] == "On the edge (pi)"
    last = items[-1]
    assert last == {
        **last,
        "id": f"harvest-{harvest['id']}",
        "weight_kg": 2.4,
        "text": "nice",
        "by": "operator@example.com",
        "title": "Harvest 2.4 kg (flush 1)",
        "flush": 1,
    }
    for key in ("id", "kind", "at", "title", "text", "stage", "weight_kg", "by"):
        assert all(key in e for e in items)

    # Span, kinds, newest first and pages.
    since = items[3]["at"].replace("+", "%2B")
    later = (await ok(await client.get(f"{url}?from={since}", headers=auth("viewer"))))["items"]
    assert [e["kind"] for e in later] == ["note", "batch", "harvest"]
    until = (await ok(await client.get(f"{url}?to={since}", headers=auth("viewer"))))["items"]
    assert [e["kind"] for e in until] == ["stage", "stage", "stage"]
    picked = await ok(
        await client.get(f"{url}?kind=note&kind=harvest&order=desc", headers=auth("viewer"))
    )
    assert [e["kind"] for e in picked["items"]] == ["harvest", "note"]
    seen: list[str] = []
    cursor = ""
    while True:
        page = await ok(await client.get(f"{url}?limit=4&cursor={cursor}", headers=auth("viewer")))
        seen += [e["id"] for e in page["items"]]
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    assert seen == [e["id"] for e in items]

    # A note, a batch or a harvest recorded by mistake can go; stage changes stay.
    await problem(await client.delete(f"{url}/{note['id']}", headers=auth("viewer")), 403)
    await ok(await client.delete(f"{url}/{note['id']}", headers=auth("operator")), 204)
    await problem(await client.delete(f"{url}/{note['id']}", headers=auth("operator")), 404)
    await ok(await client.delete(f"{url}/harvest-{harvest['id']}", headers=auth("owner")), 204)
    kept = await problem(await client.delete(f"{url}/{items[0]['id']}", headers=auth("owner")), 409)
    assert "stage" in kept["detail"]
    for bogus in ("note-1", "log-x", "harvest-99999", "log-99999999999999999999"):
        await problem(await client.delete(f"{url}/{bogus}", headers=auth("owner")), 404)
    left = (await ok(await client.get(url, headers=auth("viewer"))))["items"]
    assert [e["kind"] for e in left] == ["stage", "stage", "stage", "batch"]
    harvests = await ok(await client.get(f"/api/rooms/{w.ROOM_B}/harvests", headers=auth("viewer")))
    assert harvests["items"] == []

    # Refusals name the field; viewers read but do not write.
    for body, field in (
        ({"kind": "note"}, "body.text"),
        ({"kind": "note", "text": "x", "strain": "y"}, "body.strain"),
        ({"kind": "batch", "substrate": "straw"}, "body.strain"),
        ({"kind": "harvest", "text": "x"}, "body.kind"),
        ({"kind": "batch", "strain": "x", "substrate_dry_kg": -1}, "body.substrate_dry_kg"),
        ({"kind": "note", "text": "x", "at": "2030-01-01T00:00:00"}, "body.at"),
    ):
        got = await problem(await client.post(url, json=body, headers=auth("operator")), 422)
        assert got["errors"][0]["field"] == field, (body, got)
    await problem(
        await client.post(url, json={"kind": "note", "text": "x"}, headers=auth("viewer")), 403
    )
    await problem(await client.get(url, headers=auth("limited")), 404)
    bad = await problem(
        await client.get(f"{url}?from=2030-01-02&to=2030-01-01", headers=auth("viewer")), 422
    )
    assert bad["errors"][0]["field"] == "query.from"


async def test_an_alarms_severity_follows_its_kind_never_below(world_dsn) -> None:  # type: ignore[no-untyped-def]
    db = await Database.connect(world_dsn, min_size=1, max_size=1)
    try:
        for kind, reported, want in (
            ("actuator_runaway", "info", "critical"),
            ("actuator_not_acking", "warning", "critical"),
            ("edge_offline", "notice", "critical"),
            ("out_of_band", "info", "warning"),
            ("out_of_band", "critical", "critical"),  # the reporter may know better
            ("sensor_silent", "whatever", "warning"),  # unknown words count as a warning
            ("command_failed", "error", "critical"),
            ("stage_due", "info", "info"),  # a kind with no floor keeps what it was given
            ("stage_due", "warn", "warning"),
        ):
            row = await db.fetch_one(
                "SELECT alarm_severity(%(kind)s, %(reported)s) AS s",
                {"kind": kind, "reported": reported},
            )
            assert row is not None and row["s"] == want, (kind, reported)
    finally:
        await db.close()
