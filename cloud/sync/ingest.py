"""Storing one uploaded batch exactly once (``POST /api/edge/v1/batches``).

In one transaction: lock the edge's row (and look up the ids the records name, in the same round
trip), skip the records at or below its high-water mark
(duplicates of an earlier, answered or unanswered, upload), refuse a batch that starts past the
mark + 1 (a gap: the edge resends from ``expected_seq``), then store every new record
— readings by binary COPY, the rest into their tables, config edits last — and move the mark.
Records the cloud cannot use (malformed, or naming a room or device this farm does not have: ids
are per farm, so another farm's ids are simply unknown here) are kept in ``edge_quarantine`` with
the reason: they count as stored, so one bad record never stalls
an edge's outbox.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloud.db import audit
from cloud.db import sync as sync_db
from cloud.db.database import Database
from cloud.db.telemetry import Reading
from cloud.errors import Conflict, Forbidden, Unauthorized
from cloud.sync.clock import ClockCorrection
from cloud.sync.decode import DecodedBatch
from cloud.sync.records import (
    AckItem,
    AlertItem,
    AutomationItem,
    CommandItem,
    CommandStateItem,
    ConfigChangeItem,
    PendingDeviceItem,
    ReadingItem,
    StatusItem,
)
from cloud.sync.writer import BatchWriter, Counts, ParsedRecord, stage
from shared.sync import BatchAck

log = logging.getLogger(__name__)

# Told a batch's stored readings once its transaction committed (cloud.sync.announce).
Announce = Callable[[str, list[Reading]], None]


class SeqGap(Conflict):
    """409: the batch starts past high-water + 1; the body names ``expected_seq``."""

    slug = "seq-gap"

    def __init__(self, expected_seq: int, first_seq: int) -> None:
        super().__init__(
            f"batch starts at seq {first_seq}; resend from {expected_seq}",
            expected_seq=expected_seq,
        )


class ForeignReference(Forbidden):
    """403: the batch names another edge or farm than its token's; nothing was stored."""

    slug = "foreign-reference"

    def __init__(self, foreign: dict[str, list[str]], detail: str | None = None) -> None:
        named = "; ".join(f"{kind}s {', '.join(ids[:5])}" for kind, ids in foreign.items())
        super().__init__(detail or f"this edge's token may not write to {named}", foreign=foreign)
        self.foreign = foreign


@dataclass
class _Refs:
    """Ids the records name, looked up in the edge's farm; ``maybe_commands`` are edge command
    ids that may be cloud ids (source "cloud")."""

    rooms: set[str] = field(default_factory=set)
    devices: set[str] = field(default_factory=set)
    commands: set[str] = field(default_factory=set)
    maybe_commands: set[str] = field(default_factory=set)


def _references(parsed: list[ParsedRecord]) -> _Refs:
    refs = _Refs()
    rooms, devices, commands = refs.rooms, refs.devices, refs.commands
    for p in parsed:
        item = p.item
        if item.__class__ is ReadingItem:  # most records: the cheapest test first
            rooms.add(item.room_id)
            devices.add(item.device_id)
            continue
        if isinstance(item, StatusItem | CommandItem):
            rooms.add(item.room_id)
            devices.add(item.device_id)
        elif isinstance(item, AckItem):
            devices.add(item.device_id)
        elif isinstance(item, AlertItem):
            rooms.update(x for x in (item.room_id,) if x)
            devices.update(x for x in (item.device_id,) if x)
        elif isinstance(item, ConfigChangeItem) and item.change.room_id:
            rooms.add(item.change.room_id)
        elif isinstance(item, AutomationItem):
            rooms.add(item.room_id)
            devices.update(item.seen)
        elif isinstance(item, PendingDeviceItem):
            rooms.update(x for x in (item.room_id,) if x)
            devices.add(item.device_id)
        if isinstance(item, CommandItem | CommandStateItem) and item.cloud_command_id:
            commands.add(item.cloud_command_id)
        if isinstance(item, CommandItem) and item.source == "cloud":
            refs.maybe_commands.add(item.command_id)
    return refs


class UnknownToken(Unauthorized):
    """401: no edge has the token an upload came with."""

    def __init__(self) -> None:
        super().__init__("unknown or revoked edge token")


def _foreign(edge: dict[str, Any], batch: DecodedBatch) -> ForeignReference | None:
    """The refusal of a batch that names another edge or farm than its token's, if it does."""
    edge_id, farm_id = edge["id"], edge["farm_id"]
    if batch.edge_id == edge_id and batch.farm_id == farm_id:
        return None
    wrong = {"edge": [batch.edge_id]} if batch.edge_id != edge_id else {"farm": [batch.farm_id]}
    # Said in full: the edge shows it in its alert, and the fix is in the edge's config.
    return ForeignReference(
        wrong,
        f"this token belongs to edge {edge_id} of farm {farm_id}, not edge {batch.edge_id}"
        f" of farm {batch.farm_id}: set the edge's cloud.edge_id (and farm_id) to match, or"
        " give it the token of the edge it is configured as",
    )


async def store_batch(
    db: Database,
    edge: dict[str, Any],
    batch: DecodedBatch,
    *,
    received_at: float | None = None,
    clock_threshold_s: float = 300,
    announce: Announce | None = None,
) -> tuple[BatchAck, Counts]:
    """Store ``batch`` from ``edge`` (its authenticated row) exactly once; the answer for it.
    ``announce`` is told the readings once they are committed."""
    refused = _foreign(edge, batch)
    if refused is not None:
        await _report(db, edge, batch, refused.foreign)
        raise refused
    _, ack, counts = await _store(db, batch, edge=edge, token_hash=None, received_at=received_at,
                                  clock_threshold_s=clock_threshold_s, announce=announce)
    return ack, counts


async def store_batch_for_token(
    db: Database,
    token_hash: str,
    batch: DecodedBatch,
    *,
    received_at: float | None = None,
    clock_threshold_s: float = 300,
    announce: Announce | None = None,
) -> tuple[dict[str, Any], BatchAck, Counts]:
    """``store_batch`` for the edge whose token hashes to ``token_hash``, found (and locked) by
    the transaction's first statement rather than a query of its own: many edges sending small
    batches made that second round trip a tenth of the cloud's work per batch. The edge's row
    (what ``sync_db.edge_by_token`` reads), the answer and the counts; UnknownToken when no
    edge has the token (nothing is stored)."""
    return await _store(db, batch, edge=None, token_hash=token_hash, received_at=received_at,
                        clock_threshold_s=clock_threshold_s, announce=announce)


async def _store(
    db: Database,
    batch: DecodedBatch,
    *,
    edge: dict[str, Any] | None,
    token_hash: str | None,
    received_at: float | None,
    clock_threshold_s: float,
    announce: Announce | None,
) -> tuple[dict[str, Any], BatchAck, Counts]:
    edge_id, farm_id = batch.edge_id, batch.farm_id  # the token's, once checked
    received = time.time() if received_at is None else received_at
    clock = ClockCorrection.measure(received, batch.sent_at, clock_threshold_s)
    parsed = batch.parsed
    # The ids of every record, before the mark says which are new: the lookup then shares the
    # lock's round trip (a resent batch's duplicates only add a few ids to it).
    refs = _references(parsed)
    ids = {"rooms": refs.rooms, "devices": refs.devices,
           "commands": refs.commands | refs.maybe_commands}
    # A backlog's batches of readings: their COPY data made before the lock, which each of an
    # edge's batches waits for while the one before it is stored.
    staged = stage(parsed, farm_id, clock)
    try:
        async with db.bulk_cursor() as cur:
            # The transaction is opened and ended by hand, so that BEGIN shares the lock's round
            # trip and COMMIT the closing pipeline's (psycopg's transaction() costs one each).
            try:
                if token_hash is not None:
                    row, owners = await sync_db.lock_token_with_owners(
                        cur, token_hash, farm_id, begin=True, **ids
                    )
                    if row is None:
                        raise UnknownToken
                    edge = row
                    refused = _foreign(edge, batch)
                    if refused is not None:
                        raise refused  # rolled back: the lock and the lookup are undone
                else:
                    row, owners = await sync_db.lock_edge_with_owners(
                        cur, farm_id, edge_id, begin=True, **ids
                    )
                    if row is None:
                        raise Unauthorized("this edge has been removed")
                high_water = int(row["high_water"])
                before = row["clock_offset_s"]
                if batch.first_seq > high_water + 1:
                    raise SeqGap(high_water + 1, batch.first_seq)
                fresh = parsed[max(0, high_water + 1 - batch.first_seq) :]
                counts = Counts(duplicates=len(parsed) - len(fresh))
                writer = None
                if fresh:
                    writer = BatchWriter(
                        cur, edge_id=edge_id, farm_id=farm_id, owners=owners, clock=clock
                    )
                    counts = await writer.write(
                        fresh, staged if len(fresh) == len(parsed) else None
                    )
                    counts.duplicates = len(parsed) - len(fresh)
                    counts.inserted = len(fresh)
                acked = max(high_water, batch.last_seq)
                # The batch's last statements, the new mark and the COMMIT go in one round trip
                # (a pipeline): with many edges sending small batches, round trips are most of
                # the cloud's work.
                async with cur.connection.pipeline():
                    if writer is not None:
                        await writer.flush()
                    await sync_db.finish(
                        cur, farm_id, edge_id, high_water=acked, offset_s=clock.offset_s,
                        commit=True,
                    )
            except BaseException:
                await sync_db.rollback(cur)
                raise
        if announce is not None and writer is not None:
            announce(farm_id, writer.readings)  # committed: the dashboards may show them
    except ForeignReference as exc:
        assert edge is not None
        await _report(db, edge, batch, exc.foreign)
        raise
    if clock.active and (before is None or abs(before) <= clock_threshold_s):
        # Once per episode, not per batch (a backlog drains at many batches a second).
        log.warning(
            "edge %s clock is off by %+.0f s; its timestamps are corrected",
            edge_id,
            -clock.offset_s,
        )
    ack = BatchAck(
        acked_seq=acked,
        inserted=counts.inserted,
        duplicates=counts.duplicates,
        clock_offset_s=round(clock.offset_s, 3),
    )
    assert edge is not None
    return edge, ack, counts


async def _report(
    db: Database, edge: dict[str, Any], batch: DecodedBatch, foreign: dict[str, list[str]]
) -> None:
    log.warning(
        "refused batch %d-%d from edge %s (farm %s): it names %s",
        batch.first_seq,
        batch.last_seq,
        edge["id"],
        edge["farm_id"],
        foreign,
    )
    await audit.record(
        db,
        user_id=None,
        farm_id=edge["farm_id"],
        action="edge.batch_refused",
        target=edge["id"],
        detail={"first_seq": batch.first_seq, "last_seq": batch.last_seq, "foreign": foreign},
    )
