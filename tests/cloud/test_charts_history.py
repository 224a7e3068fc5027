"""Chart history: actuator on/off intervals (from acknowledged commands and status reports), the
bands of every stage, and the room export (CSV / Parquet, long / wide, one time format)."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg.types.json import Jsonb

from cloud.api import all_routes
from cloud.api.history import intervals
from cloud.export import widen
from shared.profiles import profile_for
from tests.cloud import world as w

pytestmark = pytest.mark.postgres

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


async def _json(resp, status: int = 200):  # type: ignore[no-untyped-def]
    assert resp.status == status, await resp.text()
    return await resp.json()


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_intervals_from_events() -> None:
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    at = [t0 + timedelta(minutes=m) for m in range(0, 100, 10)]
    events = [(at[1], True), (at[2], True), (at[3], False), (at[5], True)]
    spans, switches, end_state, known = intervals(events, initial=None, start=at[0], end=at[8])
    assert [(s.start, s.end, s.ongoing) for s in spans] == [
        (at[1], at[3], False),
        (at[5], at[8], True),
    ]
    assert switches == 2 and end_state is True  # the first 'on' from unknown is no switch
    assert known == at[1]
    # Already on at the start: the interval opens at the range's start.
    spans, switches, _, known = intervals([(at[2], False)], initial=True, start=at[0], end=at[8])
    assert [(s.start, s.end) for s in spans] == [(at[0], at[2])] and switches == 1
    assert known == at[0]
    # Events outside the range are ignored; unknown state and no events: nothing.
    assert intervals([(at[9], True)], initial=None, start=at[0], end=at[8])[0] == []


def test_widen_carries_a_row_across_batches() -> None:
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    first = [(t0, "s1", "humidity_pct", 80.0), (t0, "s1", "temperature_c", 18.0)]
    second = [(t0, "s1", "co2_ppm", 900.0), (t0 + timedelta(minutes=1), "s1", "humidity_pct", 81.0)]
    metrics = ["co2_ppm", "humidity_pct", "temperature_c"]
    rows, carry = widen(first, metrics)
    assert rows == []
    rows, carry = widen(second, metrics, carry)
    assert rows == [[t0, "s1", 900.0, 80.0, 18.0]]
    assert carry == [t0 + timedelta(minutes=1), "s1", None, 81.0, None]


def _command(
    farm: str, device: str, cid: str, action: str, at: datetime, *, value: object = None
) -> dict[str, object]:
    return {
        "edge_id": w.EDGE,
        "command_id": cid,
        "farm_id": farm,
        "room_id": w.ROOM_B,
        "device_id": device,
        "action": action,
        "value": Jsonb(value) if value is not None else None,
        "at": at,
    }


def _store(dsn: str, rows: list[dict[str, object]], ack: str = "ok") -> None:
    with psycopg.connect(dsn) as conn:
        for row in rows:
            conn.execute(
                "INSERT INTO edge_commands (edge_id, command_id, farm_id, room_id, device_id,"
                " action, value, source, state, ack_status, acked_at, created_at, updated_at)"
                " VALUES (%(edge_id)s, %(command_id)s, %(farm_id)s, %(room_id)s, %(device_id)s,"
                " %(action)s, %(value)s, 'automation', 'acked', %(ack)s, %(at)s, %(at)s, %(at)s)",
                {**row, "ack": ack},
            )


async def test_actuator_history_gives_on_intervals_and_every_stage_band(  # type: ignore[no-untyped-def]
    world_client, auth, world_dsn
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    _store(
        world_dsn,
        [
            # Before the range: on (the state at its start).
            _command(w.FARM, w.ACTUATOR_B, "c1", "on", t0 - timedelta(hours=1)),
            _command(w.FARM, w.ACTUATOR_B, "c2", "off", t0 + timedelta(minutes=30)),
            _command(w.FARM, w.ACTUATOR_B, "c3", "set", t0 + timedelta(minutes=60), value=40),
            _command(w.FARM, w.ACTUATOR_B, "c4", "set", t0 + timedelta(minutes=90), value=0),
            _command(w.FARM, w.ACTUATOR_B, "c5", "on", t0 + timedelta(minutes=120)),
        ],
    )
    # A command the device refused switched nothing.
    _store(world_dsn, [_command(w.FARM, w.ACTUATOR_B, "c6", "off", t0 + timedelta(minutes=150))],
           ack="error")
    with psycopg.connect(world_dsn) as conn:
        conn.execute("UPDATE edge_commands SET state = 'failed' WHERE command_id = 'c6'")
    query = {
        "from": t0.isoformat(),
        "to": (t0 + timedelta(hours=3)).isoformat(),
        "farm_id": w.FARM,
    }
    body = await _json(
        await world_client.get(
            f"/api/rooms/{w.ROOM_B}/actuators/history?{urlencode(query)}", headers=auth("viewer")
        )
    )
    (hum,) = body["actuators"]
    assert hum["device_id"] == w.ACTUATOR_B and hum["role"] == "humidifier"
    assert hum["on_at_start"] is True and hum["on_at_end"] is True
    spans = [(_t(i["start"]) - t0, _t(i["end"]) - t0, i["ongoing"]) for i in hum["intervals"]]
    m = timedelta(minutes=1)
    assert spans == [(0 * m, 30 * m, False), (60 * m, 90 * m, False), (120 * m, 180 * m, True)]
    assert hum["switches"] == 4
    fruiting = profile_for("oyster", "fruiting").humidity_pct
    pinning = profile_for("oyster", "pinning").co2_ppm
    assert body["bands_by_stage"]["fruiting"]["humidity_pct"] == {
        "min": fruiting.min,
        "max": fruiting.max,
    }
    assert body["bands_by_stage"]["pinning"]["co2_ppm"]["max"] == pinning.max
    assert set(body["bands_by_stage"]) == {"spawn_run", "pinning", "fruiting"}
    assert body["stage"] == "fruiting" and body["species"] == "oyster"
    assert body["device_names"][w.SENSOR_B] == w.SENSOR_B
    routes = {(r.method, r.path) for r in all_routes()}
    assert body["logbook"] == (("GET", "/api/rooms/{room_id}/logbook") in routes)


async def test_a_newer_status_report_counts_as_a_switch(world_client, auth, world_dsn) -> None:  # type: ignore[no-untyped-def]
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    _store(world_dsn, [_command(w.FARM, w.ACTUATOR_B, "c1", "on", t0 + timedelta(minutes=10))])
    with psycopg.connect(world_dsn) as conn:
        conn.execute(
            "INSERT INTO device_status (farm_id, device_id, edge_id, online, state, at)"
            " VALUES (%s, %s, %s, true, %s, %s)",
            (w.FARM, w.ACTUATOR_B, w.EDGE, Jsonb({"on": False}), t0 + timedelta(minutes=40)),
        )
    query = {"from": t0.isoformat(), "to": (t0 + timedelta(hours=1)).isoformat()}
    body = await _json(
        await world_client.get(
            f"/api/rooms/{w.ROOM_B}/actuators/history?{urlencode(query)}", headers=auth("viewer")
        )
    )
    (hum,) = body["actuators"]
    assert [(_t(i["start"]) - t0, _t(i["end"]) - t0) for i in hum["intervals"]] == [
        (timedelta(minutes=10), timedelta(minutes=40))
    ]
    assert hum["on_at_end"] is False


async def test_actuator_history_without_commands_is_unknown_and_empty(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    body = await _json(
        await world_client.get(
            f"/api/rooms/{w.ROOM_A}/actuators/history", headers=auth("viewer")
        )
    )
    (hum,) = body["actuators"]
    assert hum["intervals"] == [] and hum["on_at_start"] is None and hum["switches"] == 0
    assert hum["known_from"] is None


@pytest.mark.parametrize(
    "query",
    [
        {"from": "2024-01-02T00:00:00Z", "to": "2024-01-01T00:00:00Z"},
        {"from": "yesterday"},
        {"from": "2000-01-01T00:00:00Z", "to": "2024-01-01T00:00:00Z"},
    ],
)
async def test_actuator_history_rejects_bad_ranges(world_client, auth, query) -> None:  # type: ignore[no-untyped-def]
    resp = await world_client.get(
        f"/api/rooms/{w.ROOM_B}/actuators/history?{urlencode(query)}", headers=auth("viewer")
    )
    assert resp.status == 422 and resp.content_type == "application/problem+json"
    assert (await resp.json())["errors"]


def _range(world) -> dict[str, str]:  # type: ignore[no-untyped-def]
    start = world.start - timedelta(hours=2)
    return {"from": start.isoformat(), "to": (start + timedelta(hours=2)).isoformat()}


async def test_export_csv_long_and_wide_one_time_format(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/rooms/{w.ROOM_B}/export"
    resp = await world_client.get(f"{url}?{urlencode(_range(world))}", headers=auth("viewer"))
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    assert resp.headers["Content-Disposition"].endswith('-long.csv"')
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert len(rows) == 240 and list(rows[0]) == ["time", "device_id", "metric", "value"]
    assert all(ISO_Z.match(r["time"]) for r in rows)
    wide_q = _range(world) | {"layout": "wide", "metric": ["temperature_c", "humidity_pct"]}
    resp = await world_client.get(
        f"{url}?{urlencode(wide_q, doseq=True)}", headers=auth("viewer")
    )
    wide = list(csv.DictReader(io.StringIO(await resp.text())))
    assert list(wide[0]) == ["time", "device_id", "humidity_pct", "temperature_c"]
    assert len(wide) == 120 and len({r["time"] for r in wide}) == 120
    first = wide[0]
    assert ISO_Z.match(first["time"])
    assert float(first["temperature_c"]) == pytest.approx(18.0)
    assert float(first["humidity_pct"]) == pytest.approx(80.0)
    bucketed = await world_client.get(
        f"{url}?{urlencode(wide_q | {'bucket': '1h'}, doseq=True)}", headers=auth("viewer")
    )
    hours = list(csv.DictReader(io.StringIO(await bucketed.text())))
    assert 2 <= len(hours) <= 3 and all(r["time"].endswith(":00:00.000000Z") for r in hours)


async def test_export_parquet_parses_back(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/rooms/{w.ROOM_B}/export"
    for layout, columns, count in (
        ("long", ["time", "device_id", "metric", "value"], 240),
        ("wide", ["time", "device_id", "humidity_pct", "temperature_c"], 120),
    ):
        q = _range(world) | {"format": "parquet", "layout": layout}
        resp = await world_client.get(f"{url}?{urlencode(q)}", headers=auth("viewer"))
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/vnd.apache.parquet"
        table = pq.read_table(io.BytesIO(await resp.read()))
        assert table.column_names == columns and table.num_rows == count
        assert str(table.schema.field("time").type) == "timestamp[us, tz=UTC]"
        times = table.column("time").to_pylist()
        assert times == sorted(times)


async def test_export_of_an_empty_range_is_a_header(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    q = {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z", "layout": "wide"}
    resp = await world_client.get(f"/api/rooms/{w.ROOM_B}/export?{urlencode(q)}",
                                  headers=auth("viewer"))
    text = await resp.text()
    assert resp.status == 200 and text.splitlines()[0].startswith("time,device_id,")
    assert len(text.splitlines()) == 1
    q["format"] = "parquet"
    resp = await world_client.get(f"/api/rooms/{w.ROOM_B}/export?{urlencode(q)}",
                                  headers=auth("viewer"))
    assert pq.read_table(io.BytesIO(await resp.read())).num_rows == 0


@pytest.mark.parametrize(
    "query",
    [
        {"format": "xlsx"},
        {"layout": "tall"},
        {"bucket": "1m", "from": "2000-01-01T00:00:00Z", "to": "2000-12-01T00:00:00Z"},
        {"metric": "DROP TABLE"},
    ],
)
async def test_export_rejects_bad_queries(world_client, auth, query) -> None:  # type: ignore[no-untyped-def]
    resp = await world_client.get(
        f"/api/rooms/{w.ROOM_B}/export?{urlencode(query)}", headers=auth("viewer")
    )
    assert resp.status == 422 and resp.content_type == "application/problem+json"


async def test_export_is_the_room_of_the_caller_only(world_client, auth) -> None:  # type: ignore[no-untyped-def]
    resp = await world_client.get(f"/api/rooms/{w.OTHER_ROOM}/export", headers=auth("viewer"))
    assert resp.status == 404
    resp = await world_client.get(f"/api/rooms/{w.ROOM_B}/export", headers=auth("limited"))
    assert resp.status == 404


async def test_series_are_the_buckets_column_wise_and_smaller(world_client, auth, world) -> None:  # type: ignore[no-untyped-def]
    q = _range(world) | {"bucket": "5m"}
    resp = await world_client.get(
        f"/api/rooms/{w.ROOM_B}/series?{urlencode(q)}", headers=auth("viewer")
    )
    assert resp.status == 200
    compact = await resp.read()
    body = await resp.json()
    rows = await _json(
        await world_client.get(
            f"/api/rooms/{w.ROOM_B}/telemetry?{urlencode(q | {'agg': 'avg'})}",
            headers=auth("viewer"),
        )
    )
    by_key = {(s["device_id"], s["metric"]): s for s in body["series"]}
    assert set(by_key) == {(w.SENSOR_B, "humidity_pct"), (w.SENSOR_B, "temperature_c")}
    temp = by_key[(w.SENSOR_B, "temperature_c")]
    assert len(temp["t"]) == len(temp["avg"]) == len(temp["min"]) == len(temp["max"])
    expected = [r for r in rows["items"] if r["metric"] == "temperature_c"]
    assert [datetime.fromtimestamp(t, UTC) for t in temp["t"]] == [_t(r["time"]) for r in expected]
    assert temp["avg"] == pytest.approx([r["value"] for r in expected], abs=1e-4)
    spreads = zip(temp["min"], temp["avg"], temp["max"], strict=True)
    assert all(lo <= a <= hi for lo, a, hi in spreads)
    # Five-minute buckets of minute readings: the spread is 4 minutes' drift (0.01/min).
    assert temp["max"][1] - temp["min"][1] == pytest.approx(0.04)
    rows_size = len(json.dumps(rows["items"], separators=(",", ":")))
    assert len(compact) * 2 < rows_size, (len(compact), rows_size)
    only = await _json(
        await world_client.get(
            f"/api/rooms/{w.ROOM_B}/series?{urlencode(q | {'metric': 'humidity_pct'})}",
            headers=auth("viewer"),
        )
    )
    assert [s["metric"] for s in only["series"]] == ["humidity_pct"]
    bad = await world_client.get(
        f"/api/rooms/{w.ROOM_B}/series?{urlencode({'bucket': '7m'})}", headers=auth("viewer")
    )
    assert bad.status == 422
