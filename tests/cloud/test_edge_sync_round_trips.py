"""Batch storage in few round trips (cloud/sync/ingest.py, writer.py): the edge's lock and the id
lookup share one statement, a small batch's readings go in by one INSERT in the closing pipeline,
a big one's by COPY. Both paths store each value once and fold the newest into sensor_latest;
a record that needs quarantine still gets its row through the pipeline. Real HTTP, real
PostgreSQL."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from cloud.app import init_app
from cloud.db import sync as sync_db
from cloud.db.database import Database
from cloud.errors import Unauthorized
from cloud.sync.decode import decode_batch
from cloud.sync.ingest import store_batch
from cloud.sync.writer import INSERT_MAX_ROWS
from tests.cloud import world as w
from tests.cloud.conftest import make_settings
from tests.cloud.test_edge_sync import batch, ok, reading, rows, upload

pytestmark = pytest.mark.postgres


@pytest.fixture
async def client(world_dsn, tmp_path, aiohttp_client):  # type: ignore[no-untyped-def]
    return await aiohttp_client(init_app(make_settings(world_dsn, tmp_path)))


async def _values(dsn: str) -> list[tuple[str, float]]:
    found = await rows(dsn, "SELECT metric, value FROM sensor_data WHERE device_id = %s"
                            " ORDER BY time, metric", (w.SENSOR_B,))
    return [(r["metric"], r["value"]) for r in found]


@pytest.mark.parametrize("n", [3, INSERT_MAX_ROWS // 2 + 1])  # 2 metrics each: INSERT, COPY
async def test_small_and_big_batches_store_each_value_once(client, world_dsn, n) -> None:  # type: ignore[no-untyped-def]
    before = await _values(world_dsn)
    t0 = time.time() - n
    first = [reading(s, ts=t0 + s, values={"temperature_c": float(s), "co2_ppm": 400.0 + s})
             for s in range(1, n + 1)]
    ack = await ok(await upload(client, batch(first)))
    assert (ack["acked_seq"], ack["inserted"], ack["duplicates"]) == (n, n, 0)
    # Resent with one more record: only that one is new.
    more = [*first, reading(n + 1, ts=t0 + n + 1, values={"temperature_c": -1.5})]
    ack = await ok(await upload(client, batch(more)))
    assert (ack["acked_seq"], ack["inserted"], ack["duplicates"]) == (n + 1, 1, n)
    stored = Counter(await _values(world_dsn)) - Counter(before)
    expected = Counter(pair for s in range(1, n + 1)
                       for pair in [("co2_ppm", 400.0 + s), ("temperature_c", float(s))])
    expected[("temperature_c", -1.5)] += 1
    assert stored == expected and sum(stored.values()) == 2 * n + 1
    latest = {r["metric"]: r["value"] for r in await rows(
        world_dsn, "SELECT metric, value FROM sensor_latest WHERE device_id = %s",
        (w.SENSOR_B,))}
    assert latest["temperature_c"] == -1.5 and latest["co2_ppm"] == 400.0 + n
    mark = await rows(world_dsn, "SELECT high_water FROM edges WHERE id = %s", (w.EDGE,))
    assert mark == [{"high_water": n + 1}]


async def test_quarantine_and_foreign_ids_in_one_small_batch(client, world_dsn) -> None:  # type: ignore[no-untyped-def]
    records = [reading(1), reading(2, device=w.OTHER_DEVICE, room=w.OTHER_ROOM), reading(3)]
    ack = await ok(await upload(client, batch(records)))
    assert (ack["acked_seq"], ack["inserted"]) == (3, 3)
    kept = await rows(world_dsn, "SELECT seq, reason FROM edge_quarantine WHERE edge_id = %s",
                      (w.EDGE,))
    assert [r["seq"] for r in kept] == [2] and "not registered in this farm" in kept[0]["reason"]
    other = await rows(world_dsn, "SELECT count(*) AS n FROM sensor_data WHERE device_id = %s",
                       (w.OTHER_DEVICE,))
    assert other == [{"n": 0}]


async def test_lock_with_owners_sees_only_the_edges_farm(world_dsn) -> None:  # type: ignore[no-untyped-def]
    db = await Database.connect(world_dsn, min_size=1, max_size=2)
    try:
        async with db.transaction() as cur:
            row, owners = await sync_db.lock_edge_with_owners(
                cur, w.FARM, w.EDGE, rooms=[w.ROOM_B, w.OTHER_ROOM, "nowhere"],
                devices=[w.SENSOR_B, w.OTHER_DEVICE], commands=[w.COMMAND_B, "c-none"])
        assert row is not None and row["id"] == w.EDGE and row["high_water"] == 0
        assert owners == {"room": {w.ROOM_B: w.FARM}, "device": {w.SENSOR_B: w.FARM},
                          "command": {w.COMMAND_B: w.FARM}}
        edge = await db.fetch_one("SELECT * FROM edges WHERE id = %s", (w.EDGE,))
        assert edge is not None
        await db.execute("DELETE FROM edges WHERE id = %s", (w.EDGE,))
        async with db.transaction() as cur:
            row, owners = await sync_db.lock_edge_with_owners(
                cur, w.FARM, w.EDGE, rooms=[w.ROOM_B], devices=[w.SENSOR_B], commands=[])
        assert row is None and not any(owners.values())
        # A batch from an edge removed after it authenticated stores nothing.
        count = "SELECT count(*) AS n FROM sensor_data WHERE device_id = %s"
        before = await rows(world_dsn, count, (w.SENSOR_B,))
        body = json.dumps(batch([reading(1)])).encode()
        with pytest.raises(Unauthorized):
            await store_batch(db, edge, decode_batch(body))
        assert await rows(world_dsn, count, (w.SENSOR_B,)) == before
    finally:
        await db.close()


async def test_array_literals_store_exactly_what_lists_would(world_dsn) -> None:  # type: ignore[no-untyped-def]
    """insert_with_latest and upsert_latest send their arrays as literals built in C: odd strings (a
    quote, a backslash, "NULL", commas, spaces), whole and fractional seconds and extreme floats
    come back exactly as given."""
    from datetime import UTC, datetime

    from cloud.db.telemetry import array_params, insert_with_latest

    t1 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    t2 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    plain = [(t1, w.ROOM_B, "lit-a", "NULL", 1), (t2, w.ROOM_B, "lit-a", "x y,z", -2.5e-300),
             (t2, w.ROOM_B, "lit-b", "{m}", 1.7976931348623157e308)]
    odd = [(t1, w.ROOM_B, 'lit-"q"', "back\\slash", 0.1)]
    assert all(isinstance(v, str) for v in array_params(plain).values())
    assert isinstance(array_params(odd)["device"], list)  # escaped by psycopg instead
    db = await Database.connect(world_dsn, min_size=1, max_size=2)
    try:
        async with db.transaction() as cur:
            for batch_ in (plain, odd):
                await insert_with_latest(cur, w.FARM, batch_)  # type: ignore[arg-type]
        got = await rows(world_dsn, "SELECT time, room_id, device_id, metric, value"
                         " FROM sensor_data WHERE device_id LIKE 'lit-%%' ORDER BY value")
        want = sorted([*plain, *odd], key=lambda r: r[4])
        assert [tuple(r.values()) for r in got] == [(*r[:4], float(r[4])) for r in want]
        latest = await rows(world_dsn, "SELECT time, device_id, metric, value FROM sensor_latest"
                            " WHERE device_id LIKE 'lit-%%' ORDER BY value")
        assert [tuple(r.values()) for r in latest] == [(r[0], *r[2:4], float(r[4])) for r in want]
    finally:
        await db.close()


async def test_a_big_batch_quarantines_only_another_farms_reading(client, world_dsn) -> None:  # type: ignore[no-untyped-def]
    """A batch big enough to go by COPY, its rows made before its transaction: one reading of
    another farm's device among them is quarantined, not stored, and the rest are."""
    count = ("SELECT device_id, count(*) AS n FROM sensor_data WHERE device_id IN (%s, %s)"
             " GROUP BY device_id")
    before = {r["device_id"]: r["n"] for r in await rows(world_dsn, count,
                                                          (w.SENSOR_B, w.OTHER_DEVICE))}
    n = INSERT_MAX_ROWS + 10
    t0 = time.time() - n
    records = [reading(s, ts=t0 + s, values={"co2_ppm": 400.0}) for s in range(1, n + 1)]
    records[n // 2] = reading(n // 2 + 1, ts=t0, device=w.OTHER_DEVICE, room=w.OTHER_ROOM,
                              values={"co2_ppm": 400.0})
    ack = await ok(await upload(client, batch(records)))
    assert (ack["acked_seq"], ack["inserted"], ack["duplicates"]) == (n, n, 0)
    kept = await rows(world_dsn, "SELECT seq, reason FROM edge_quarantine WHERE edge_id = %s",
                      (w.EDGE,))
    assert [r["seq"] for r in kept] == [n // 2 + 1]
    assert "not registered in this farm" in kept[0]["reason"]
    after = {r["device_id"]: r["n"] for r in await rows(world_dsn, count,
                                                         (w.SENSOR_B, w.OTHER_DEVICE))}
    assert after.get(w.SENSOR_B, 0) - before.get(w.SENSOR_B, 0) == n - 1
    assert after.get(w.OTHER_DEVICE, 0) == before.get(w.OTHER_DEVICE, 0)
