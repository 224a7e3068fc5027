"""An upload's edge token is checked by the batch's own transaction (cloud/api/edge_sync.py
``_ingest_by_token``, cloud/sync/ingest.py ``store_batch_for_token``): a wrong token is still
answered 401 before any other problem, counts against its address, and stores nothing; a body
past ``PREAUTH_BYTES`` has its token checked before the rest of it is read. Real HTTP, real
PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator

import pytest

from cloud.api.edge_sync import PREAUTH_BYTES
from cloud.app import init_app
from cloud.sync.settings import SyncConfig
from tests.cloud import world as w
from tests.cloud.conftest import make_settings
from tests.cloud.test_edge_sync import Factory, batch, ok, problem, reading, rows, upload

pytestmark = pytest.mark.postgres
WRONG = {"Authorization": "Bearer wrong"}


@pytest.fixture
def sync_client(world_dsn, tmp_path, aiohttp_client) -> Factory:  # type: ignore[no-untyped-def]
    async def make(**sync: object):  # type: ignore[no-untyped-def]
        settings = make_settings(world_dsn, tmp_path, sync=SyncConfig(**sync))  # type: ignore[arg-type]
        return await aiohttp_client(init_app(settings))

    return make


async def _stored(dsn: str) -> tuple[int, int]:
    mark = await rows(dsn, "SELECT high_water FROM edges WHERE id = %s", (w.EDGE,))
    n = await rows(dsn, "SELECT count(*) AS n FROM sensor_data WHERE device_id = %s",
                   (w.SENSOR_B,))
    return mark[0]["high_water"], n[0]["n"]


async def test_a_wrong_token_is_told_so_first_and_stores_nothing(sync_client, world_dsn) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client(max_batch_bytes=64 * 1024)
    before = await _stored(world_dsn)
    gz = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    bodies = [
        ("valid", await upload(client, batch([reading(1)]), headers=WRONG)),
        ("another edge", await upload(client, batch([reading(1)], edge_id="e-else"),
                                      headers=WRONG)),
        ("gzip bomb", await client.post(
            "/api/edge/v1/batches", data=gzip.compress(b"[" + b" " * (10 * 2**20) + b"]"),
            headers={**WRONG, **gz})),
        ("not gzip", await client.post("/api/edge/v1/batches", data=b"not gzip at all",
                                       headers={**WRONG, **gz})),
        ("malformed", await upload(client, b"{nope", headers=WRONG)),
        ("text/plain", await upload(client, b"{}", headers={**WRONG,
                                                            "Content-Type": "text/plain"})),
        ("gap", await upload(client, batch([reading(2), reading(4)]), headers=WRONG)),
        ("protocol", await upload(client, batch([reading(1)], protocol=99), headers=WRONG)),
    ]
    for what, resp in bodies:
        body = await problem(resp, 401)
        assert "edge token" in body["detail"], what
    assert await _stored(world_dsn) == before
    # The right token, same bodies: now each gets its own answer.
    await problem(await upload(client, b"{nope"), 400)
    await problem(await upload(client, batch([reading(1)], edge_id="e-else")), 403)
    ack = await ok(await upload(client, batch([reading(1)])))
    assert ack["acked_seq"] == 1 and (await _stored(world_dsn))[0] == 1


async def test_a_big_body_has_its_token_checked_before_it_is_all_read(  # type: ignore[no-untyped-def]
    sync_client, world_dsn
) -> None:
    client = await sync_client()
    _, before = await _stored(world_dsn)
    never = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield b'{"edge_id": "' + w.EDGE.encode() + b'", "pad": "'
        for _ in range(PREAUTH_BYTES // 4096 + 2):
            yield b"x" * 4096
        await never.wait()  # the rest never comes: only a check before the end can answer
        yield b'"}'

    resp = await asyncio.wait_for(client.post(
        "/api/edge/v1/batches", data=endless(),
        headers={**WRONG, "Content-Type": "application/json"}), 10)
    await problem(resp, 401)
    # A right token's big batch passes the same check and is stored whole.
    t0 = time.time() - 3000
    big = batch([reading(s, ts=t0 + s) for s in range(1, 1501)])
    assert len(json.dumps(big)) > PREAUTH_BYTES
    ack = await ok(await upload(client, big))
    assert (ack["acked_seq"], ack["inserted"]) == (1500, 1500)
    assert await _stored(world_dsn) == (1500, before + 3000)


async def test_a_refused_batch_leaves_no_transaction_or_lock_behind(world_dsn, caplog) -> None:  # type: ignore[no-untyped-def]
    """The batch transaction is opened and ended by hand (BEGIN and COMMIT pipelined): after
    every refusal the pool's one connection is outside any transaction, the edge's row is free
    again and nothing was stored; the next batch goes in."""
    import logging

    from cloud.auth.tokens import token_hash
    from cloud.db.database import Database
    from cloud.errors import Unauthorized
    from cloud.sync.decode import decode_batch
    from cloud.sync.ingest import ForeignReference, SeqGap, UnknownToken, store_batch_for_token

    caplog.set_level(logging.WARNING, logger="psycopg")
    db = await Database.connect(world_dsn, min_size=1, max_size=1)
    good = token_hash("t")
    try:
        refusals = [
            (SeqGap, good, batch([reading(5)])),
            (UnknownToken, token_hash("wrong"), batch([reading(1)])),
            (ForeignReference, good, batch([reading(1)], farm_id=w.OTHER_FARM)),
        ]
        for kind, hashed, body in refusals:
            with pytest.raises(kind):
                await store_batch_for_token(db, hashed, decode_batch(json.dumps(body).encode()))
            row = await db.fetch_one("SELECT pg_current_xact_id_if_assigned() AS x")
            assert row == {"x": None}, kind  # not inside a leftover transaction
            async with db.transaction() as cur:  # the edge's row is not still locked
                await cur.execute("SELECT id FROM edges WHERE id = %s FOR UPDATE NOWAIT",
                                  (w.EDGE,))
        assert issubclass(UnknownToken, Unauthorized)
        edge, ack, _ = await store_batch_for_token(
            db, good, decode_batch(json.dumps(batch([reading(1)])).encode()))
        assert edge["id"] == w.EDGE and ack.acked_seq == 1
        # The announcement's transaction skipped its WAL flush wait; the batch's did not, and
        # the connection keeps the server's setting.
        assert await db.fetch_one("SHOW synchronous_commit") == {"synchronous_commit": "on"}
        assert not [r for r in caplog.records if r.name.startswith("psycopg")]
    finally:
        await db.close()
