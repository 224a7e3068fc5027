"""CommittedAcks on a real store: a broker's QoS 1 message is acknowledged only once the writes
queued before its barrier are committed, in the order received; QoS 0 needs none; a lone message
waits for the group's timer and a run of URGENT_UNACKED commits at once; a closed store leaves
messages unacknowledged for the broker to send again. (The whole path against Mosquitto, with
SIGKILLs: tests/chaos/test_acked_never_lost.py.)"""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiomqtt
import pytest

from edge.ingest import CommittedAcks
from edge.store.db import Database
from shared.mqtt_client import MqttClient


class Acks:
    """Where acknowledgements go (MqttClient.ack's contract), with what was committed then."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.acked: list[tuple[int, int]] = []  # (mid, rows committed when it was acked)

    def ack(self, message: aiomqtt.Message) -> None:
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT count(*) FROM probe").fetchone()[0]
        finally:
            conn.close()
        self.acked.append((message.mid, rows))


def message(mid: int, qos: int = 1) -> aiomqtt.Message:
    return aiomqtt.Message("farm/f/room/r/telemetry/d", b"{}", qos, False, mid, None)


def insert(conn: sqlite3.Connection, value: int) -> None:
    conn.execute("INSERT INTO probe (v) VALUES (?)", (value,))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "edge.db", commit_interval_ms=1000)
    await database.open()
    await database.write(lambda conn: conn.execute("CREATE TABLE probe (v INTEGER)"), urgent=True)
    yield database
    await database.close()


def committed_acks(db: Database, sink: Acks) -> CommittedAcks:
    return CommittedAcks(cast(MqttClient, sink), db)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_a_run_is_acknowledged_in_order_once_its_writes_are_committed(
    db: Database, tmp_path: Path
) -> None:
    sink = Acks(tmp_path / "edge.db")
    acks = committed_acks(db, sink)
    for mid in (1, 2, 3):
        db.write_nowait(insert, mid)  # what the ingest queued for the message
        acks.took(message(mid), more=mid < 3)
    assert sink.acked == [] and acks.unacked == 3
    await until(lambda: len(sink.acked) == 3)
    assert sink.acked == [(1, 3), (2, 3), (3, 3)]  # every row committed before any ack
    assert acks.unacked == 0


async def test_a_lone_message_waits_for_the_group_and_a_run_of_ten_commits_at_once(
    db: Database, tmp_path: Path
) -> None:
    sink = Acks(tmp_path / "edge.db")
    acks = committed_acks(db, sink)
    loop = asyncio.get_running_loop()
    started = loop.time()
    db.write_nowait(insert, 1)
    acks.took(message(1), more=False)
    await until(lambda: sink.acked)
    lone = loop.time() - started
    assert lone >= 0.7, f"a lone message was committed at once ({lone:.3f} s)"

    started = loop.time()
    for mid in range(2, 2 + CommittedAcks.URGENT_UNACKED):
        db.write_nowait(insert, mid)
        acks.took(message(mid), more=False)  # each alone, but ten wait: urgent
    await until(lambda: len(sink.acked) == 1 + CommittedAcks.URGENT_UNACKED)
    assert loop.time() - started < 0.5  # not the group timer's second
    assert [mid for mid, _ in sink.acked] == list(range(1, 2 + CommittedAcks.URGENT_UNACKED))


async def test_qos0_needs_no_acknowledgement(db: Database, tmp_path: Path) -> None:
    sink = Acks(tmp_path / "edge.db")
    acks = committed_acks(db, sink)
    acks.took(message(0, qos=0), more=False)
    assert acks.unacked == 0
    await asyncio.sleep(1.2)
    assert sink.acked == []


async def test_a_closed_store_leaves_the_messages_unacknowledged(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Acks(tmp_path / "edge.db")
    acks = committed_acks(db, sink)
    await db.close()
    acks.took(message(7), more=False)
    assert sink.acked == [] and acks.failed == 1 and acks.unacked == 0
    assert "left unacknowledged" in caplog.text
