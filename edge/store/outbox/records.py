"""Outbox records as they go up: the next batch read from SQLite (outbox rows first, then
readings) and encoded through shared.sync's record types, one JSON document per record, ready to
be joined into a ``Batch`` body (edge/batch_body.py).

Outbox rows hold their data as JSON text written by the SQL triggers (schema.sql); it is decoded
into its kind's type and encoded again, so what goes up is what the type says. A row that does
not fit its type (a hand-edited database) goes up as it is, for the cloud to quarantine: one bad
row must not stall the outbox. Every function takes a ``sqlite3.Connection`` and runs inside the
caller's transaction.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from edge.store.outbox.cursor import QUARANTINE, OutboxError, Segment, marks
from shared.sync import (
    KIND_NAMES,
    RECORD_DATA,
    RECORD_TYPES,
    Downsampled,
    MergedReadingData,
    QuarantineData,
    ReadingData,
    ReadingRecord,
    Record,
)

log = logging.getLogger(__name__)

_encode: Final = msgspec.json.Encoder().encode
_decode_values: Final = msgspec.json.Decoder(list[float]).decode
# Outbox kind code -> (decode the row's data into the kind's type, make the record).
_DECODE: Final[dict[int, Callable[[str], Any]]] = {
    code: msgspec.json.Decoder(RECORD_DATA[kind]).decode for code, kind in KIND_NAMES.items()
}
_RECORD: Final[dict[int, Callable[..., Record]]] = {
    code: RECORD_TYPES[kind] for code, kind in KIND_NAMES.items()
}


class _Untyped(msgspec.Struct):
    """A record whose data does not fit its kind's type: sent as it is."""

    seq: int
    kind: str
    at: float
    data: Any


@dataclass(frozen=True, slots=True)
class Prepared:
    """One batch's records as JSON (``records[i]`` has seq ``first_seq + i``)."""

    segment: Segment
    first_seq: int
    records: list[bytes]
    size: int  # bytes of the records' JSON

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.records) - 1


class SeriesCache:
    """series key -> (device_id, room_id, metric names). Series rows never change, so the cache
    lives as long as its owner."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[str, str, list[str]]] = {}

    def get(self, conn: sqlite3.Connection, key: int) -> tuple[str, str, list[str]]:
        found = self._known.get(key)
        if found is None:
            row = conn.execute(
                "SELECT device_id, room_id, metrics FROM series WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                raise OutboxError(f"series {key} is missing")
            found = (str(row[0]), str(row[1]), [str(name) for name in json.loads(row[2])])
            self._known[key] = found
        return found


def _reading_records(
    conn: sqlite3.Connection,
    series: SeriesCache,
    first_seq: int,
    low: int,
    high: int | None,
    limit: int,
) -> list[tuple[int, bytes]]:
    rows = conn.execute(
        "SELECT r.id, r.series, r.ts, r.recv_ms, r.ts_replaced, r.vals, m.n, m.period_s"
        " FROM readings r LEFT JOIN reading_means m ON m.reading_id = r.id"
        " WHERE r.id >= ? AND (? IS NULL OR r.id <= ?) ORDER BY r.id LIMIT ?",
        (low, high, high, limit),
    ).fetchall()
    out = []
    seq = first_seq
    for rid, key, ts, recv_ms, replaced, vals, n, period in rows:
        device_id, room_id, names = series.get(conn, key)
        try:
            values = _decode_values(vals)
        except msgspec.MsgspecError as exc:
            raise OutboxError(f"reading {rid}: values {vals[:80]!r}: {exc}") from None
        if len(values) != len(names):
            raise OutboxError(f"reading {rid}: {len(values)} values for {len(names)} metrics")
        by_name = dict(zip(names, values, strict=True))
        data = (
            ReadingData(device_id, room_id, ts, by_name, bool(replaced)) if n is None
            else MergedReadingData(device_id, room_id, ts, by_name, bool(replaced),
                                   downsampled=Downsampled(n, float(period)))
        )
        out.append((rid, _encode(ReadingRecord(seq, ts + recv_ms / 1000, data))))
        seq += 1
    return out


def _quarantine_data(row: sqlite3.Row | tuple[Any, ...]) -> QuarantineData:
    topic, payload, original_size, reason, received_at = row
    if topic is None:  # the quarantine row was deleted by hand: keep the seq, say so
        return QuarantineData(topic="", reason="quarantine row no longer on the edge",
                              payload_b64="", original_size=0, received_at=None)
    return QuarantineData(
        topic=topic,
        reason=reason,
        payload_b64=base64.b64encode(bytes(payload)).decode("ascii"),
        original_size=original_size,
        received_at=received_at,
    )


def _outbox_record(seq: int, oid: int, code: int, at: float, data: str | None) -> bytes:
    try:
        return _encode(_RECORD[code](seq, at, _DECODE[code](data or "null")))
    except msgspec.MsgspecError as exc:
        log.warning("outbox row %d (%s) does not fit its type (%s): sent as it is",
                    oid, KIND_NAMES[code], exc)
    try:
        loose = msgspec.json.decode(data or "null")
    except msgspec.DecodeError:
        loose = data
    return _encode(_Untyped(seq, KIND_NAMES[code], at, loose))


def _outbox_records(
    conn: sqlite3.Connection, first_seq: int, low: int, high: int | None, limit: int
) -> list[tuple[int, bytes]]:
    rows = conn.execute(
        "SELECT o.id, o.kind, o.at, o.data, q.topic, q.payload, q.original_size, q.reason,"
        " q.received_at FROM outbox o LEFT JOIN quarantine q ON o.kind = ? AND q.id = o.ref"
        " WHERE o.id >= ? AND (? IS NULL OR o.id <= ?) ORDER BY o.id LIMIT ?",
        (QUARANTINE, low, high, high, limit),
    ).fetchall()
    out = []
    for seq, row in enumerate(rows, start=first_seq):
        oid, code, at, data = row[0], row[1], row[2], row[3]
        if code not in KIND_NAMES:
            raise OutboxError(f"outbox row {oid} has unknown kind {code}")
        if code == QUARANTINE:
            text = _encode(_RECORD[code](seq, at, _quarantine_data(row[4:])))
        else:
            text = _outbox_record(seq, oid, code, at, data)
        out.append((oid, text))
    return out


def prepare_new(
    conn: sqlite3.Connection,
    series: SeriesCache,
    max_records: int,
    max_bytes: int,
    made_at: float,
) -> Prepared | None:
    """The next batch of records not yet given seqs (outbox rows first, then readings), up to
    ``max_records`` and about ``max_bytes``; None when nothing waits. Nothing is written: pass
    the result to ``assign`` before sending it."""
    m = marks(conn)
    records: list[bytes] = []
    size = 0
    outbox_to = m.assigned_outbox
    for oid, text in _outbox_records(conn, m.next_seq, m.assigned_outbox + 1, None, max_records):
        if records and size + len(text) > max_bytes:
            break
        records.append(text)
        size += len(text) + 1
        outbox_to = oid
    n_outbox = len(records)
    readings_to = m.assigned_reading
    space = max_records - n_outbox
    if space > 0 and size < max_bytes:
        for rid, text in _reading_records(
            conn, series, m.next_seq + n_outbox, m.assigned_reading + 1, None, space
        ):
            if records and size + len(text) > max_bytes:
                break
            records.append(text)
            size += len(text) + 1
            readings_to = rid
    if not records:
        return None
    segment = Segment(
        first_seq=m.next_seq,
        n_outbox=n_outbox,
        n_readings=len(records) - n_outbox,
        outbox_from=m.assigned_outbox + 1,
        outbox_to=outbox_to,
        readings_from=m.assigned_reading + 1,
        readings_to=readings_to,
        made_at=made_at,
    )
    return Prepared(segment, segment.first_seq, records, size)


def prepare_segment(
    conn: sqlite3.Connection, series: SeriesCache, segment: Segment, from_seq: int
) -> Prepared:
    """An assigned segment's records again (a resend), from ``from_seq`` to its end."""
    outbox = _outbox_records(
        conn, segment.first_seq, segment.outbox_from, segment.outbox_to, segment.n_outbox + 1
    )
    readings = _reading_records(
        conn, series, segment.first_seq + segment.n_outbox, segment.readings_from,
        segment.readings_to, segment.n_readings + 1,
    )
    if len(outbox) != segment.n_outbox or len(readings) != segment.n_readings:
        raise OutboxError(
            f"segment at seq {segment.first_seq} has {len(outbox)}+{len(readings)} rows,"
            f" {segment.n_outbox}+{segment.n_readings} expected"
        )
    records = [text for _, text in outbox] + [text for _, text in readings]
    records = records[from_seq - segment.first_seq :]
    return Prepared(segment, from_seq, records, sum(len(r) + 1 for r in records))
