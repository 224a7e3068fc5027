"""Server-driven pacing over real HTTP and PostgreSQL: while batches take this instance longer
than ``sync.pace_high_ms``, its answers ask edges for a longer batch interval (header
``X-Smartfarm-Batch-Interval``), the metric shows it, every record is still stored once, and
once batches are fast again the answers stop asking. The thresholds are set so that every real
batch counts as slow (or fast), and the pacer's window is shortened: the test does not depend on
how fast this machine is."""

from __future__ import annotations

import asyncio
import re

import pytest

from cloud.sync.service import EDGE_SYNC
from shared.sync import BATCH_INTERVAL_HEADER, BatchAck
from tests.cloud import world as w
from tests.cloud.test_edge_sync import batch, ok, reading, readings_of, sync_client, upload

pytestmark = pytest.mark.postgres
__all__ = ["sync_client"]  # the fixture, from the sync tests


async def _round(client, seq: int, n: int = 6) -> tuple[int, list[str | None]]:  # type: ignore[no-untyped-def]
    """``n`` one-reading batches from ``seq`` + 1; the interval header of each answer."""
    asked = []
    for _ in range(n):
        seq += 1
        resp = await upload(client, batch([reading(seq)]))
        ack = BatchAck.model_validate(await ok(resp))
        assert ack.acked_seq == seq and ack.inserted == 1
        asked.append(resp.headers.get(BATCH_INTERVAL_HEADER))
    return seq, asked


async def _interval_metric(client) -> float:  # type: ignore[no-untyped-def]
    text = await (await client.get("/metrics")).text()
    found = re.search(r"^smartfarm_sync_batch_interval_seconds (\S+)$", text, re.M)
    assert found, "the interval metric is exported"
    return float(found.group(1))


async def test_a_slow_instance_asks_edges_to_wait_longer_and_stops_when_fast(  # type: ignore[no-untyped-def]
    sync_client, world_dsn
) -> None:
    client = await sync_client(pace_high_ms=0.002, pace_low_ms=0.001, pace_max_s=30)
    pacer = client.app[EDGE_SYNC].pacer
    pacer.window_s = 0.2
    baseline = len(await readings_of(world_dsn, w.SENSOR_B))
    seq, asked = await _round(client, 0)
    assert asked == [None] * 6  # nothing is asked before a window has been judged
    await asyncio.sleep(0.25)
    seq, asked = await _round(client, seq)
    values = [float(a) for a in asked if a is not None]
    assert values, asked
    assert all(2.0 <= v <= 3.0 for v in values), values  # 2.5 s give or take a fifth
    assert await _interval_metric(client) == pytest.approx(2.5)

    pacer.high_s, pacer.low_s, pacer.memory_s = 60.0, 30.0, 0.0  # every batch is fast now
    for _ in range(120):  # each step down holds as long as it asks (~3 s): ~15 s in all
        await asyncio.sleep(0.25)
        seq, asked = await _round(client, seq)
        if asked[-1] is None:
            break
    assert asked[-1] is None, "the answers stop asking once batches are fast"
    assert await _interval_metric(client) == 0
    assert len(await readings_of(world_dsn, w.SENSOR_B)) == baseline + 2 * seq  # two metrics


async def test_pacing_off_never_asks(sync_client) -> None:  # type: ignore[no-untyped-def]
    client = await sync_client(pace_high_ms=0.002, pace_low_ms=0.001, pace_max_s=0)
    client.app[EDGE_SYNC].pacer.window_s = 0.1
    seq = 0
    for _ in range(4):
        seq, asked = await _round(client, seq)
        assert asked == [None] * 6
        await asyncio.sleep(0.15)


def test_the_band_must_be_a_band() -> None:
    from cloud.sync.settings import SyncConfig

    with pytest.raises(ValueError, match="pace_low_ms must be below"):
        SyncConfig(pace_high_ms=50, pace_low_ms=50)
