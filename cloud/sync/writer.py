"""Storing the new records of one batch on the batch's transaction cursor: readings (one INSERT
when few, binary COPY when many), quarantine rows, edge commands and their cloud commands, alerts,
device status, and config edits last. A record the cloud cannot use is kept in
``edge_quarantine`` with the reason."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from argon2 import PasswordHasher

from cloud.db import automation_state as automation_db
from cloud.db import pending as pending_db
from cloud.db import sync as sync_db
from cloud.db.database import Cursor
from cloud.db.telemetry import (
    BinaryCopy,
    EpochReading,
    EpochRow,
    Reading,
    binary_copy,
    copy_binary,
    insert_with_latest,
    upsert_latest,
)
from cloud.sync.clock import ClockCorrection
from cloud.sync.reconcile import Reconciler
from cloud.sync.records import (
    AckItem,
    AlertItem,
    AutomationItem,
    CommandItem,
    CommandStateItem,
    ConfigChangeItem,
    Item,
    PendingDeviceItem,
    QuarantineItem,
    ReadingItem,
    RecordError,
    StatusItem,
)
from shared.sync import OutboxRecord

log = logging.getLogger(__name__)

# The argon2id profile of the edges' broker password files, for a password nobody keeps.
_UNUSABLE = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)

# Edge command states → the cloud command's status (the edge's "pending" means published).
CLOUD_STATUS = {
    "pending": "delivered",
    "acked": "acked",
    "failed": "failed",
    "timed_out": "timed_out",
    "superseded": "failed",
    "expired": "expired",
}


@dataclass
class Counts:
    """What one batch did, for the log and the metrics."""

    inserted: int = 0
    duplicates: int = 0
    readings: int = 0
    quarantined: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class ParsedRecord(Protocol):
    """A record and its typed item, or the reason it cannot be used (``Parsed``, or a reading
    as the batch decoder's fast path makes it)."""

    @property
    def record(self) -> OutboxRecord: ...
    @property
    def item(self) -> Item | None: ...
    @property
    def error(self) -> str | None: ...


@dataclass(slots=True)
class Parsed:
    """A record (``OutboxRecord``, or the batch decoder's struct of the same shape) and its typed
    item, or the reason it cannot be used."""

    record: OutboxRecord
    item: Item | None
    error: str | None = None


# Up to this many rows a batch's readings go in by one INSERT in the batch's closing pipeline;
# past it, by binary COPY (faster per row, but a round trip of its own: COPY cannot be pipelined).
INSERT_MAX_ROWS = 2_000

# Unix seconds from 2000 to 2100: after clock correction, anything else is not a real time.
PLAUSIBLE_FROM, PLAUSIBLE_TO = 946_684_800.0, 4_102_444_800.0


def _when(seconds: float) -> datetime:
    """A corrected time as a datetime; RecordError (the record is quarantined) if implausible."""
    if not PLAUSIBLE_FROM <= seconds <= PLAUSIBLE_TO:  # also false for NaN
        raise RecordError(f"time {seconds!r} is implausible even after clock correction")
    return datetime.fromtimestamp(seconds, UTC)


def _rows(readings: list[EpochReading]) -> list[Reading]:
    """A row per metric of each reading, with its time as a datetime (one datetime object per
    reading: ``array_params`` formats it once)."""
    out: list[Reading] = []
    append = out.append
    for ts, room, device, values in readings:
        when = datetime.fromtimestamp(ts, UTC)
        for metric, value in values.items():
            append((when, room, device, metric, value))
    return out


def _with_datetimes(rows: list[EpochRow]) -> list[Reading]:
    return [(datetime.fromtimestamp(ts, UTC), room, device, metric, value)
            for ts, room, device, metric, value in rows]


@dataclass(frozen=True, slots=True)
class Staged:
    """A batch of readings alone, its COPY data made before its transaction: each batch of an
    edge waits for the one before it to commit (the edge's row lock), and this work then need
    not. ``BatchWriter.write`` uses it only when every record is new and every (room, device)
    is the farm's; otherwise it does the work again, record by record."""

    pairs: frozenset[tuple[str, str]]
    n_rows: int
    copy: BinaryCopy


def stage(parsed: list[ParsedRecord], farm_id: str, clock: ClockCorrection) -> Staged | None:
    """``parsed``'s rows as COPY data, if it holds nothing but readings with plausible times and
    more rows than an INSERT takes (a backlog drain's batches); None otherwise."""
    readings: list[EpochReading] = []
    append = readings.append
    pairs: set[tuple[str, str]] = set()
    active = clock.active
    n_rows = 0
    for p in parsed:
        item = p.item
        if item.__class__ is not ReadingItem:
            return None
        ts = item.ts if not active else clock.timestamp(item.ts, p.record.at)
        if not PLAUSIBLE_FROM <= ts <= PLAUSIBLE_TO:
            return None
        pairs.add((item.room_id, item.device_id))
        append((ts, item.room_id, item.device_id, item.values))
        n_rows += len(item.values)
    if n_rows <= INSERT_MAX_ROWS:
        return None
    return Staged(frozenset(pairs), n_rows, binary_copy(farm_id, readings))


class BatchWriter:
    """Stores the new records of one batch on one transaction cursor."""

    def __init__(
        self,
        cur: Cursor,
        *,
        edge_id: str,
        farm_id: str,
        owners: dict[str, dict[str, str]],
        clock: ClockCorrection,
    ) -> None:
        self.cur = cur
        self.edge_id = edge_id
        self.farm_id = farm_id
        self.owners = owners
        self.clock = clock
        self.counts = Counts()
        self._quarantine: list[dict[str, Any]] = []
        self._pairs: dict[tuple[str, str], bool] = {}  # (room, device) -> both this farm's
        self._readings: list[Reading] = []
        self._copied = False  # the readings went in by COPY (a big batch)

    def _ours(self, kind: str, ident: str) -> bool:
        return self.owners[kind].get(ident) == self.farm_id

    def _time(self, seconds: float, record: OutboxRecord) -> datetime:
        return _when(self.clock.timestamp(seconds, record.at))

    def _made_at(self, record: OutboxRecord) -> datetime:
        """When the record was made, in cloud time; now if the edge's ``at`` is not a time."""
        try:
            return _when(self.clock.record_time(record.at))
        except RecordError:
            return datetime.now(UTC)

    def _reject(self, record: OutboxRecord, reason: str) -> None:
        """Keep a record the cloud cannot use, whole, with the reason."""
        payload = json.dumps(record.model_dump(mode="json"), separators=(",", ":")).encode()
        self._quarantine.append(
            {
                "edge_id": self.edge_id,
                "seq": record.seq,
                "farm_id": self.farm_id,
                "origin": "cloud",
                "received_at": self._made_at(record),
                "topic": "",
                "reason": reason,
                "payload": payload,
                "original_size": len(payload),
            }
        )

    def _reading_rejected(self, record: OutboxRecord, item: ReadingItem, ours: bool) -> None:
        if not ours:
            self._reject(record, "reading: room or device not registered in this farm")
            return
        ts = self.clock.timestamp(item.ts, record.at)
        self._reject(record, f"reading: time {ts!r} is implausible even after clock correction")

    async def write(self, parsed: list[ParsedRecord], staged: Staged | None = None) -> Counts:
        """Store ``parsed`` (the batch's new records); ``staged``, ``stage``'s answer for the
        same records, when the batch had no duplicates."""
        if staged is not None and all(
            self._ours("room", room) and self._ours("device", device)
            for room, device in staged.pairs
        ):
            self.counts.by_kind["reading"] = len(parsed)
            await copy_binary(self.cur, staged.copy.data)
            self._readings = _with_datetimes(staged.copy.newest)
            self._copied = True
            self.counts.readings = staged.n_rows
            return self.counts
        readings: list[EpochReading] = []
        later: list[ParsedRecord] = []
        changes: list[ParsedRecord] = []
        kinds = self.counts.by_kind
        n_readings = 0
        n_rows = 0
        # Readings inline: this loop is the per-reading work of a backlog drain, kept to a few
        # dictionary lookups and one tuple per reading (times stay floats: a big batch goes to
        # binary_copy, which needs no datetime).
        pairs = self._pairs
        append = readings.append
        clock = self.clock if self.clock.active else None
        for p in parsed:
            item = p.item
            if item.__class__ is ReadingItem:
                n_readings += 1
                room, device = item.room_id, item.device_id
                ours = pairs.get((room, device))
                if ours is None:
                    ours = self._ours("room", room) and self._ours("device", device)
                    pairs[room, device] = ours
                ts = item.ts if clock is None else clock.timestamp(item.ts, p.record.at)
                if not (ours and PLAUSIBLE_FROM <= ts <= PLAUSIBLE_TO):
                    self._reading_rejected(p.record, item, ours)
                    continue
                append((ts, room, device, item.values))
                n_rows += len(item.values)
                continue
            record = p.record
            kinds[record.kind] = kinds.get(record.kind, 0) + 1
            if item is None:
                self._reject(record, p.error or "unusable record")
            elif isinstance(item, QuarantineItem):
                self._edge_quarantine(record, item)
            elif isinstance(item, ConfigChangeItem):
                changes.append(p)
            else:
                later.append(p)
        if n_readings:
            kinds["reading"] = kinds.get("reading", 0) + n_readings
        if n_rows > INSERT_MAX_ROWS:
            copied = binary_copy(self.farm_id, readings)
            await copy_binary(self.cur, copied.data)
            # sensor_latest and the live announcement need only each series' newest row.
            self._readings = _with_datetimes(copied.newest)
            self._copied = True
        else:
            self._readings = _rows(readings)
        self.counts.readings = n_rows
        for p in later:
            await self._guarded(p.record, self._other(p.record, p.item))
        reconciler = Reconciler(self.cur, farm_id=self.farm_id, edge_id=self.edge_id)
        for p in changes:
            assert isinstance(p.item, ConfigChangeItem)
            await self._guarded(p.record, self._change(reconciler, p.record, p.item))
        self.counts.quarantined = len(self._quarantine)
        return self.counts

    async def flush(self) -> None:
        """The statements that need no answer: a small batch's readings, the latest values and
        the quarantine rows. The caller runs them in a pipeline (one round trip), so ``write``
        must have run first: nothing here may need a result."""
        readings = self._readings
        if self._copied:
            await upsert_latest(self.cur, self.farm_id, readings)
        else:
            await insert_with_latest(self.cur, self.farm_id, readings)
        await sync_db.quarantine(self.cur, self._quarantine)

    @property
    def readings(self) -> list[Reading]:
        """What the dashboards are told about once committed: the readings ``write`` stored, or
        for a batch that went by COPY, the newest of each (room, device, metric) among them, in
        batch order (the same announcement, and the same sensor_latest rows)."""
        return self._readings

    async def _guarded(self, record: OutboxRecord, work: Coroutine[Any, Any, None]) -> None:
        """Store one record in a savepoint: a value the database refuses quarantines the record
        instead of failing the batch (which the edge would resend forever)."""
        try:
            async with self.cur.connection.transaction():
                await work
        except RecordError as exc:
            self._reject(record, f"{record.kind}: {exc}")
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            log.warning("edge %s seq %d refused by the database: %s", self.edge_id, record.seq, exc)
            self._reject(record, f"{record.kind}: refused by the database: {exc.sqlstate}")

    async def _change(
        self, reconciler: Reconciler, record: OutboxRecord, item: ConfigChangeItem
    ) -> None:
        await reconciler.apply(item, seq=record.seq, at=self._time(item.at, record))

    def _received(self, item: QuarantineItem, record: OutboxRecord) -> datetime:
        if item.received_at is None:
            return self._made_at(record)
        try:
            return self._time(item.received_at, record)
        except RecordError:
            return self._made_at(record)

    def _edge_quarantine(self, record: OutboxRecord, item: QuarantineItem) -> None:
        try:
            payload = base64.b64decode(item.payload_b64, validate=True)
        except (binascii.Error, ValueError):
            payload = item.payload_b64.encode()
        self._quarantine.append(
            {
                "edge_id": self.edge_id,
                "seq": record.seq,
                "farm_id": self.farm_id,
                "origin": "edge",
                "received_at": self._received(item, record),
                "topic": item.topic,
                "reason": item.reason,
                "payload": payload,
                "original_size": item.original_size or len(payload),
            }
        )

    async def _other(self, record: OutboxRecord, item: Item | None) -> None:
        base = {"edge_id": self.edge_id, "farm_id": self.farm_id}
        if isinstance(item, CommandItem):
            cloud_id = item.cloud_command_id
            if (
                cloud_id is None
                and item.source == "cloud"
                and self._ours("command", item.command_id)
            ):
                cloud_id = item.command_id  # the edge kept the cloud's id as its own
            at = self._time(item.created_at, record)
            params = {**base, **item.model_dump(exclude={"created_at"}), "at": at}
            params["cloud_command_id"] = cloud_id
            cloud_id = await sync_db.edge_command(self.cur, params)
            await self._cloud_state(cloud_id, item.command_id, "pending", None, at)
        elif isinstance(item, CommandStateItem):
            at = self._time(item.at, record)
            params = {**base, **item.model_dump(exclude={"at"}), "at": at}
            cloud_id = await sync_db.edge_command_state(self.cur, params)
            await self._cloud_state(cloud_id, item.command_id, item.state, item.error, at)
        elif isinstance(item, AckItem):
            at = self._time(item.at, record)
            params = {**base, **item.model_dump(exclude={"at"}), "at": at}
            cloud_id = await sync_db.edge_ack(self.cur, params)
            state = "acked" if item.status == "ok" else "failed"
            await self._cloud_state(cloud_id, item.command_id, state, item.error, at)
        elif isinstance(item, AlertItem):
            # An alert about a room or device the farm does not have (an edge still running
            # `edge init`'s demo rooms, say) would page users about rooms they cannot see.
            unknown = [
                f"{kind} {ident}"
                for kind, ident in (("room", item.room_id), ("device", item.device_id))
                if ident is not None and not self._ours(kind, ident)
            ]
            if unknown:
                self._reject(
                    record, f"alert {item.key}: {' and '.join(unknown)} not registered in this farm"
                )
                return
            at = self._time(item.at, record)
            await sync_db.alert(self.cur, {**base, **item.model_dump(exclude={"at"}), "at": at})
        elif isinstance(item, StatusItem):
            if not self._ours("device", item.device_id):
                self._reject(record, "status: device not registered in this farm")
                return
            at = self._time(item.at, record)
            await sync_db.status(self.cur, {**base, **item.model_dump(exclude={"at"}), "at": at})
        elif isinstance(item, AutomationItem):
            await self._automation(record, item)
        elif isinstance(item, PendingDeviceItem):
            await self._pending_device(record, item, base)

    async def _pending_device(
        self, record: OutboxRecord, item: PendingDeviceItem, base: dict[str, str]
    ) -> None:
        """Store the edge's report of a device that asked to join. One adopted on the edge's own
        page (into a room of this farm) becomes a device of the farm here too, so its readings
        are kept: registered with a password nobody knows (the edge's own secret for it wins
        at the edge; the cloud never sees that one)."""
        await pending_db.report(self.cur, {
            **base, **item.model_dump(exclude={"at", "first_seen", "last_seen", "kind",
                                               "actuator"}),
            "first_seen": self._time(item.first_seen, record),
            "last_seen": self._time(item.last_seen, record),
            "at": self._time(item.at, record),
        })
        room_id = item.room_id
        if (item.state != "adopted" or room_id is None or item.kind is None
                or (item.kind == "actuator") != (item.actuator is not None)):
            return
        if not self._ours("room", room_id) or item.device_id in self.owners["device"]:
            return  # a room of no farm here, or a device already registered (in some farm)
        unusable = await asyncio.to_thread(_UNUSABLE.hash, secrets.token_urlsafe(24))
        if await pending_db.register_adopted(self.cur, {
            "farm_id": self.farm_id, "id": item.device_id, "room_id": room_id,
            "kind": item.kind, "actuator": item.actuator, "hash": unusable,
        }):
            self.owners["device"][item.device_id] = self.farm_id
            log.info("device %s adopted on edge %s into room %s: registered", item.device_id,
                     self.edge_id, room_id)

    async def _automation(self, record: OutboxRecord, item: AutomationItem) -> None:
        """A room's effective automation: kept with every edge time in cloud time."""
        if not self._ours("room", item.room_id):
            self._reject(record, f"automation: room {item.room_id} not registered in this farm")
            return
        fix = self.clock.record_time
        state = item.model_dump(mode="json")
        state["at"] = fix(item.at)
        for actuator in state["actuators"]:
            for key in ("since",):
                if actuator[key] is not None:
                    actuator[key] = fix(actuator[key])
            for hold in (actuator["hold"], actuator["safety_hold"]):
                if hold is not None and hold.get("until") is not None:
                    hold["until"] = fix(hold["until"])
        seen = {}
        for device_id, ts in item.seen.items():
            if self._ours("device", device_id):
                try:
                    seen[device_id] = _when(fix(ts))
                except RecordError:
                    continue
        state["seen"] = {d: t.timestamp() for d, t in seen.items()}
        await automation_db.store(
            self.cur, farm_id=self.farm_id, edge_id=self.edge_id, room_id=item.room_id,
            seq=record.seq, at=self._time(item.at, record), state=state, seen=seen,
        )

    async def _cloud_state(
        self,
        cloud_id: str | None,
        edge_command_id: str,
        state: str,
        error: str | None,
        at: datetime,
    ) -> None:
        """Carry an edge command's state over to the cloud command it executes, if any."""
        status = CLOUD_STATUS.get(state)
        if status is None:
            return
        if cloud_id is None:
            cloud_id = await sync_db.cloud_id_of(
                self.cur, self.farm_id, self.edge_id, edge_command_id
            )
            if cloud_id is None:
                return
        if state == "superseded" and error is None:
            error = "superseded by a newer command to the same device"
        await sync_db.cloud_command_state(
            self.cur,
            command_id=cloud_id,
            farm_id=self.farm_id,
            status=status,
            error=error,
            edge_id=self.edge_id,
            edge_command_id=edge_command_id,
            at=at,
        )
