"""Commands do not queue behind batches (cloud/db/database.py ``bulk_cursor``): with every
batch transaction stuck, a user's command is still created and pushed down the edge's stream at
once, and the stuck batches are all stored once they can go on. Real HTTP, real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from cloud.db.database import RESERVED
from tests.cloud import world as w
from tests.cloud.test_edge_sync import (
    EDGE,
    batch,
    farm_version,
    hello,
    ok,
    quiet,
    reading,
    receive,
    rows,
    sync_client,
    upload,
)

pytestmark = pytest.mark.postgres

POOL_MAX = 4  # tests.cloud.conftest.make_settings
__all__ = ["sync_client"]  # the fixture, from the sync tests


async def test_a_command_is_delivered_while_batches_hold_the_bulk_lane(  # type: ignore[no-untyped-def]
    sync_client, world_dsn, auth
) -> None:
    client = await sync_client(command_ttl_s=3600)
    async with client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws:
        await hello(ws, await farm_version(world_dsn))
        await receive(ws, "command")  # the world's command, created before the edge connected
        # Another session holds the edge's row: every upload's transaction waits on its lock,
        # holding a connection, as batches do when the database cannot keep up.
        async with await psycopg.AsyncConnection.connect(world_dsn) as blocker:
            await blocker.execute("BEGIN")
            await blocker.execute("SELECT 1 FROM edges WHERE id = %s FOR UPDATE", (w.EDGE,))
            body = batch([reading(1), reading(2)])
            uploads = [asyncio.create_task(upload(client, body)) for _ in range(3 * POOL_MAX)]
            waiting = POOL_MAX - RESERVED
            async with asyncio.timeout(5):  # as many as the bulk lane admits wait on the lock
                while len(await rows(world_dsn, "SELECT pid FROM pg_stat_activity WHERE"
                                                " datname = current_database()"
                                                " AND wait_event_type = 'Lock'")) < waiting:
                    await asyncio.sleep(0.05)
            started = time.monotonic()
            created = await ok(await client.post(
                f"/api/rooms/{w.ROOM_B}/commands",
                json={"device_id": w.ACTUATOR_B, "action": "set", "value": 55},
                headers=auth("operator"),
            ), 201)
            pushed = await receive(ws, "command", timeout=2.0)
            took = time.monotonic() - started
            assert pushed["command_id"] == created["id"] and took < 2.0
            assert not any(task.done() for task in uploads)  # the batches are still stuck
            await blocker.execute("ROLLBACK")
        answers = [await ok(resp) for resp in await asyncio.gather(*uploads)]
    assert sorted(a["inserted"] for a in answers) == [0] * (3 * POOL_MAX - 1) + [2]
    assert {a["acked_seq"] for a in answers} == {2}


async def test_a_stream_whose_batches_come_here_costs_no_heartbeat_statement(  # type: ignore[no-untyped-def]
    sync_client, world_dsn
) -> None:
    """The stream's heartbeat marks its edge seen only when no batch of it was stored here within
    half a heartbeat: counted by a statement trigger on edges, a busy edge's heartbeats cost no
    UPDATE beyond its batches' own; an idle one's still do."""
    async with await psycopg.AsyncConnection.connect(world_dsn, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE edge_updates (at timestamptz DEFAULT clock_timestamp());"
            " CREATE FUNCTION count_edge_update() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN INSERT INTO edge_updates DEFAULT VALUES; RETURN NULL; END $$;"
            " CREATE TRIGGER count_edge_update AFTER UPDATE ON edges"
            " FOR EACH STATEMENT EXECUTE FUNCTION count_edge_update()")
    client = await sync_client(heartbeat_s=0.4)

    async def updates() -> int:
        return int((await rows(world_dsn, "SELECT count(*) AS n FROM edge_updates"))[0]["n"])

    async with client.ws_connect("/api/edge/v1/stream", headers=EDGE) as ws:
        await hello(ws, await farm_version(world_dsn))
        reader = asyncio.create_task(quiet(ws, 60))  # reads on: the socket answers the pings
        await asyncio.sleep(0.3)
        before = await updates()
        seq = 0
        for _ in range(24):  # ~2.4 s: six heartbeats, a batch every 0.1 s
            seq += 1
            await ok(await upload(client, batch([reading(seq)])))
            await asyncio.sleep(0.1)
        busy = await updates() - before
        assert busy == seq  # each batch's own mark, no heartbeat's
        before = await updates()
        await asyncio.sleep(1.3)  # three heartbeats without batches
        idle = await updates() - before
        assert idle >= 2
        reader.cancel()
