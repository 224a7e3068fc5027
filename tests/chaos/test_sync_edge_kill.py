"""The edge as a real process, SIGKILLed 20 times at random moments of its uploads (with a batch
in flight, after the cloud committed one the edge never heard of, between batches), restarted each
time, the simulator publishing throughout: in the end PostgreSQL holds every seq it gave out,
once. And the seq assignment a batch carries is on disk (fsynced) before the batch leaves."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from bench.sync_drain import queue_readings
from edge.config import load_config
from edge.outbox import Outbox
from edge.store import outbox as outbox_rows
from edge.store.db import Database
from firmware_sim.farm import build_farm
from tests.chaos.conftest import (
    Cloud,
    drained,
    edge_query,
    kill,
    make_site,
    register_edge,
    start_edge_process,
    tally,
    until,
)
from tests.chaos.proxy import FaultProxy

pytestmark = pytest.mark.postgres

EDGE_ID = "edge-killed"
KILLS = 20
BACKLOG = 40_000
MOMENTS = ("with a batch in flight", "after the commit, before the answer", "between batches")


@pytest.mark.slow
async def test_edge_sigkilled_twenty_times_during_uploads(
    cloud: Any, tmp_path: Path, farm_id: str
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    rnd = random.Random(8675309)
    async with FaultProxy([the_cloud.url]) as proxy:
        config = make_site(tmp_path / "site", farm_id)
        reg = await the_cloud.provision(load_config(config), EDGE_ID)
        settings = register_edge(config, proxy.url, reg, batch_max_records=300)
        db = settings.db_path
        queue_readings(db, [("room-a-sensor", "room-a")], BACKLOG,
                       metrics=("co2_ppm", "humidity_pct"))
        log = tmp_path / "edge.log"
        farm = build_farm(settings, speed=60, telemetry_interval_s=2, seed=13)
        for node in farm.nodes:
            node.backoff_max_s = 0.3  # back within a life of the edge, however many it had
        stop = asyncio.Event()
        sim = asyncio.create_task(farm.run(stop))
        moments: list[str] = []
        marks: list[int] = []
        proc = None
        try:
            for _ in range(KILLS):
                proc = start_edge_process(config, log)
                moment = rnd.choice(MOMENTS)
                await _kill_during_uploads(proxy, proc, moment, rnd.randint(1, 3), rnd)
                moments.append(moment)
                marks.append(await the_cloud.high_water(EDGE_ID))
                assert proc.returncode == -signal.SIGKILL
            # The last life runs until everything is up, then stops cleanly (storing its cursor).
            proc = start_edge_process(config, log)
            live = edge_query(db, "SELECT count(*) FROM readings")[0][0]
            await until(lambda: edge_query(db, "SELECT count(*) FROM readings")[0][0] > live + 20,
                        30, "the simulator's readings in the last life")
            stop.set()
            await asyncio.wait_for(sim, 10)
            await drained(the_cloud, db, EDGE_ID, 60)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sim, 10)
            if proc is not None:
                kill(proc)
    counted = await tally(the_cloud, db, EDGE_ID, reg.farm_id)
    print(counted.summary(), f"kills at: {moments}", f"cloud mark after each: {marks}",
          sep="\n")
    counted.assert_exactly_once()
    assert edge_query(db, "PRAGMA integrity_check") == [("ok",)]
    # Every kind of moment was hit, and the uploads were under way at every kill.
    assert set(moments) == set(MOMENTS), moments
    assert 0 < marks[-1] < counted.edge_seqs - 300, marks  # a backlog left at the last kill
    assert counted.readings > BACKLOG + 20, counted.summary()  # the simulator's, too
    assert "Traceback" not in log.read_text()


async def _kill_during_uploads(
    proxy: FaultProxy, proc: Any, moment: str, after: int, rnd: random.Random
) -> None:
    """SIGKILL ``proc`` once ``after`` of its batches went through the proxy, at ``moment``."""
    seen = 0
    killed = asyncio.Event()
    timer: asyncio.TimerHandle | None = None

    def now() -> None:
        kill(proc)
        killed.set()

    async def on_request(path: str, upstream: str) -> None:
        nonlocal seen
        if path.endswith("/batches") and not killed.is_set():
            seen += 1
            if moment == MOMENTS[0] and seen == after:
                now()  # the request still reaches the cloud, which commits it

    async def on_answer(path: str, upstream: str) -> None:
        nonlocal timer
        if path.endswith("/batches") and not killed.is_set() and seen >= after:
            if moment == MOMENTS[1]:
                now()  # committed in the cloud; the edge dies before it hears so
            elif moment == MOMENTS[2] and timer is None:
                # After the answer is out: the edge is storing it, preparing the next batch…
                timer = asyncio.get_running_loop().call_later(rnd.uniform(0.0, 0.15), now)

    proxy.on_request, proxy.on_answer = on_request, on_answer
    try:
        started = time.monotonic()
        while not killed.is_set():
            if proc.poll() is not None:
                raise AssertionError(f"the edge exited by itself ({proc.returncode})")
            if time.monotonic() - started > 40:
                raise AssertionError(f"no upload to kill during ({seen} batches seen)")
            await asyncio.sleep(0.01)
    finally:
        proxy.on_request = proxy.on_answer = None
        if timer is not None:
            timer.cancel()


def _synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


async def test_seqs_are_fsynced_before_their_batch_leaves(tmp_path: Path) -> None:
    """A power cut (not just a crash) must not lose the assignment of seqs already sent: else
    the same seqs would be given to other records, which the cloud would skip as duplicates."""
    path = tmp_path / "edge.db"
    queue_readings(path, [("sens-a", "room-a")], 50)
    db = Database(path, commit_interval_ms=500)
    await db.open()
    try:
        assert await db.write(_synchronous, durable=True) == 2  # FULL: the WAL is fsynced
        assert await db.write(_synchronous) == 1  # NORMAL for every other group
        asked: list[tuple[Any, dict[str, Any]]] = []
        write = db.write

        async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
            asked.append((fn, kwargs))
            return await write(fn, *args, **kwargs)

        db.write = spy  # type: ignore[method-assign]
        outbox = Outbox(db, retention_days=30, max_unsynced_rows=10**6)
        batch = await outbox.next_batch(20, 10**6)
        assert batch is not None and batch.last_seq == 20
        following = await outbox.next_after(batch, 20, 10**6)
        assert following is not None and following.first_seq == 21
        assigned = [kw for fn, kw in asked if fn is outbox_rows.assign]
        assert assigned == [{"urgent": True, "durable": True}] * 2
        assert await outbox.next_after(following, 20, 10**6) is None  # only 10 left: not full
    finally:
        await db.close()
