"""The outbox in SQLite: records waiting for the cloud, the segments giving them seqs, the cursor.

Readings are read straight from ``readings`` (no outbox row: see schema.sql, migration 2); every
other kind is an ``outbox`` row, most appended by triggers. Seqs are given out per batch
(``assign``) and the batch is kept as a segment, so a resend carries the same records under the same
seqs. Records are encoded here as compact JSON text, ready to be joined into a ``Batch`` body.
Every function takes a ``sqlite3.Connection`` and runs inside the caller's transaction.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from edge.store.readings import decode_values, encode_values

KIND_CODES: Final = {
    "quarantine": 1,
    "command": 2,
    "command_state": 3,
    "ack": 4,
    "alert": 5,
    "status": 6,
    "config_change": 7,
}
KIND_NAMES: Final = {code: name for name, code in KIND_CODES.items()}
# Every kind but quarantine is worth sending at once (a command state should reach the cloud
# within a second); quarantine bursts (a fuzzing client) wait for the batch age like readings.
_QUARANTINE: Final = KIND_CODES["quarantine"]

_MARK_KEYS: Final = (
    "acked_seq", "acked_outbox", "acked_reading", "next_seq", "assigned_outbox", "assigned_reading",
)


class OutboxError(Exception):
    """The outbox's bookkeeping does not add up (a bug or a hand-edited database)."""


@dataclass(frozen=True, slots=True)
class Marks:
    """The cursor: what the cloud confirmed, and where the next segment starts."""

    acked_seq: int
    acked_outbox: int
    acked_reading: int
    next_seq: int
    assigned_outbox: int
    assigned_reading: int


@dataclass(frozen=True, slots=True)
class Segment:
    first_seq: int
    n_outbox: int
    n_readings: int
    outbox_from: int
    outbox_to: int
    readings_from: int
    readings_to: int
    made_at: float

    @property
    def count(self) -> int:
        return self.n_outbox + self.n_readings

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


@dataclass(frozen=True, slots=True)
class Prepared:
    """One batch's records as JSON text (``records[i]`` has seq ``first_seq + i``)."""

    segment: Segment
    first_seq: int
    records: list[str]
    size: int  # bytes of the records' JSON

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.records) - 1


@dataclass(frozen=True, slots=True)
class Probe:
    """What is waiting beyond the assigned marks (cheap: max ids and one index probe)."""

    unassigned: int  # upper bound: merged readings leave holes in the id range
    urgent: bool


# ---- appending ----

def append(conn: sqlite3.Connection, kind: str, data: Mapping[str, Any], at: float) -> int:
    """Append one record with its data inline (kinds without a table of their own: acks)."""
    cur = conn.execute(
        "INSERT INTO outbox (kind, at, data) VALUES (?, ?, ?)",
        (KIND_CODES[kind], at, json.dumps(data, separators=(",", ":"), allow_nan=False)),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def link_cloud_command(
    conn: sqlite3.Connection,
    cloud_command_id: str,
    command_id: str | None,
    state: str,
    at: float,
    detail: str | None = None,
) -> None:
    """Remember what became of a cloud command (before its command row, so the trigger sees it)."""
    conn.execute(
        "INSERT INTO cloud_commands (cloud_command_id, command_id, state, detail, received_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (cloud_command_id) DO NOTHING",
        (cloud_command_id, command_id, state, detail, at),
    )


def cloud_command(conn: sqlite3.Connection, cloud_command_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT cloud_command_id, command_id, state, detail, received_at FROM cloud_commands"
        " WHERE cloud_command_id = ?",
        (cloud_command_id,),
    ).fetchone()
    return dict(row) if row is not None else None


# ---- sync_state ----

def get_state(conn: sqlite3.Connection, key: str, default: Any = None) -> Any:
    row = conn.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
    return default if row is None else json.loads(row[0])


def set_state(conn: sqlite3.Connection, items: Mapping[str, Any], at: float) -> None:
    conn.executemany(
        "INSERT INTO sync_state (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key)"
        " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        [(k, json.dumps(v, separators=(",", ":")), at) for k, v in items.items()],
    )


def delete_state(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM sync_state WHERE key = ?", (key,))


def marks(conn: sqlite3.Connection) -> Marks:
    rows = dict(conn.execute("SELECT key, value FROM sync_state").fetchall())
    return Marks(**{k: int(rows[k]) for k in _MARK_KEYS})


# ---- what is waiting ----

def probe(conn: sqlite3.Connection, m: Marks) -> Probe:
    newest_outbox = conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
    newest_reading = conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0]
    unassigned = max(0, newest_outbox - m.assigned_outbox) + max(
        0, newest_reading - m.assigned_reading
    )
    urgent = False
    if newest_outbox > m.assigned_outbox:
        urgent = (
            conn.execute(
                "SELECT 1 FROM outbox WHERE id > ? AND kind != ? LIMIT 1",
                (m.assigned_outbox, _QUARANTINE),
            ).fetchone()
            is not None
        )
    return Probe(unassigned, urgent)


def unsynced(conn: sqlite3.Connection, m: Marks, *, exact: bool) -> int:
    """Records the cloud has not confirmed; ``exact=False`` is an O(1) upper bound."""
    if exact:
        outbox_n = conn.execute("SELECT count(*) FROM outbox WHERE id > ?", (m.acked_outbox,))
        readings_n = conn.execute("SELECT count(*) FROM readings WHERE id > ?", (m.acked_reading,))
        return int(outbox_n.fetchone()[0]) + int(readings_n.fetchone()[0])
    newest_outbox = int(conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0])
    newest_reading = int(conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])
    return max(0, newest_outbox - m.acked_outbox) + max(0, newest_reading - m.acked_reading)


def oldest_unsynced_at(conn: sqlite3.Connection, m: Marks) -> float | None:
    """Edge time the oldest unconfirmed record was made (None when nothing waits)."""
    times = []
    row = conn.execute(
        "SELECT at FROM outbox WHERE id > ? ORDER BY id LIMIT 1", (m.acked_outbox,)
    ).fetchone()
    if row is not None:
        times.append(float(row[0]))
    row = conn.execute(
        "SELECT ts + recv_ms / 1000.0 FROM readings WHERE id > ? ORDER BY id LIMIT 1",
        (m.acked_reading,),
    ).fetchone()
    if row is not None:
        times.append(float(row[0]))
    return min(times) if times else None


# ---- segments ----

def _segment(row: sqlite3.Row | tuple[Any, ...] | None) -> Segment | None:
    return None if row is None else Segment(*row)


_SELECT_SEGMENT: Final = (
    "SELECT first_seq, n_outbox, n_readings, outbox_from, outbox_to, readings_from, readings_to,"
    " made_at FROM outbox_segments"
)


def segment_containing(conn: sqlite3.Connection, seq: int) -> Segment | None:
    row = conn.execute(
        _SELECT_SEGMENT + " WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1",
        (seq,),
    ).fetchone()
    segment = _segment(row)
    if segment is None or segment.last_seq < seq:
        return None
    return segment


def oldest_segment(conn: sqlite3.Connection) -> Segment | None:
    return _segment(
        conn.execute(
            _SELECT_SEGMENT + " ORDER BY first_seq LIMIT 1"
        ).fetchone()
    )


_NTH_ID: Final = {
    "outbox": "SELECT id FROM outbox WHERE id >= ? AND id <= ? ORDER BY id LIMIT 1 OFFSET ?",
    "readings": "SELECT id FROM readings WHERE id >= ? AND id <= ? ORDER BY id LIMIT 1 OFFSET ?",
}


def _nth_id(conn: sqlite3.Connection, table: str, low: int, high: int, n: int) -> int:
    row = conn.execute(_NTH_ID[table], (low, high, n - 1)).fetchone()
    if row is None:
        raise OutboxError(f"{table} row {n} of segment ids {low}..{high} is missing")
    return int(row[0])


def locate(conn: sqlite3.Connection, seq: int) -> tuple[int, int] | None:
    """The (outbox id, reading id) marks once every seq up to ``seq`` is acknowledged; None when
    that seq's segment is no longer kept."""
    m = marks(conn)
    if seq == m.acked_seq:
        return m.acked_outbox, m.acked_reading
    segment = segment_containing(conn, seq)
    if segment is None:
        return None
    k = seq - segment.first_seq + 1
    if k <= segment.n_outbox:
        oid = _nth_id(conn, "outbox", segment.outbox_from, segment.outbox_to, k)
        return oid, segment.readings_from - 1
    k -= segment.n_outbox
    rid = _nth_id(conn, "readings", segment.readings_from, segment.readings_to, k)
    return segment.outbox_to, rid


# ---- encoding records ----

class SeriesCache:
    """series key -> (JSON-encoded ``"device_id":…,"room_id":…``, encoded metric name prefixes).
    Series rows never change, so the cache lives as long as its owner."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[str, list[str]]] = {}

    def get(self, conn: sqlite3.Connection, key: int) -> tuple[str, list[str]]:
        found = self._known.get(key)
        if found is None:
            row = conn.execute(
                "SELECT device_id, room_id, metrics FROM series WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                raise OutboxError(f"series {key} is missing")
            ids = f'"device_id":{json.dumps(row[0])},"room_id":{json.dumps(row[1])}'
            names = [json.dumps(name) + ":" for name in json.loads(row[2])]
            found = (ids, names)
            self._known[key] = found
        return found


def _num(value: float) -> str:
    return repr(float(value))


def _reading_records(
    conn: sqlite3.Connection,
    series: SeriesCache,
    first_seq: int,
    low: int,
    high: int | None,
    limit: int,
) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT r.id, r.series, r.ts, r.recv_ms, r.ts_replaced, r.vals, m.n, m.period_s"
        " FROM readings r LEFT JOIN reading_means m ON m.reading_id = r.id"
        " WHERE r.id >= ? AND (? IS NULL OR r.id <= ?) ORDER BY r.id LIMIT ?",
        (low, high, high, limit),
    ).fetchall()
    out = []
    seq = first_seq
    for rid, key, ts, recv_ms, replaced, vals, n, period in rows:
        ids, names = series.get(conn, key)
        items = vals[1:-1].split(",") if len(vals) > 2 else []
        if len(items) != len(names):
            raise OutboxError(f"reading {rid}: {len(items)} values for {len(names)} metrics")
        values = ",".join(name + item for name, item in zip(names, items, strict=True))
        extra = "" if n is None else f',"downsampled":{{"n":{n:d},"period_s":{_num(period)}}}'
        out.append((
            rid,
            f'{{"seq":{seq},"kind":"reading","at":{_num(ts + recv_ms / 1000)},"data":{{{ids},'
            f'"ts":{_num(ts)},"ts_replaced":{"true" if replaced else "false"},'
            f'"values":{{{values}}}{extra}}}}}',
        ))
        seq += 1
    return out


def _quarantine_data(row: sqlite3.Row | tuple[Any, ...]) -> str:
    topic, payload, original_size, reason, received_at = row
    if topic is None:  # the quarantine row was deleted by hand: keep the seq, say so
        doc: dict[str, Any] = {"topic": "", "reason": "quarantine row no longer on the edge",
                               "payload_b64": "", "original_size": 0, "received_at": None}
    else:
        doc = {
            "topic": topic,
            "reason": reason,
            "payload_b64": base64.b64encode(bytes(payload)).decode("ascii"),
            "original_size": original_size,
            "received_at": received_at,
        }
    return json.dumps(doc, separators=(",", ":"))


def _outbox_records(
    conn: sqlite3.Connection, first_seq: int, low: int, high: int | None, limit: int
) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT o.id, o.kind, o.at, o.data, q.topic, q.payload, q.original_size, q.reason,"
        " q.received_at FROM outbox o LEFT JOIN quarantine q ON o.kind = ? AND q.id = o.ref"
        " WHERE o.id >= ? AND (? IS NULL OR o.id <= ?) ORDER BY o.id LIMIT ?",
        (_QUARANTINE, low, high, high, limit),
    ).fetchall()
    out = []
    for seq, row in enumerate(rows, start=first_seq):
        oid, code, at, data = row[0], row[1], row[2], row[3]
        name = KIND_NAMES.get(code)
        if name is None:
            raise OutboxError(f"outbox row {oid} has unknown kind {code}")
        body = _quarantine_data(row[4:]) if code == _QUARANTINE else data
        out.append((oid, f'{{"seq":{seq},"kind":"{name}","at":{_num(at)},"data":{body}}}'))
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
    records: list[str] = []
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


def assign(
    conn: sqlite3.Connection, segment: Segment, acked: Marks | None = None
) -> None:
    """Give the prepared records their seqs for good: store the segment and move the marks
    (and, in the same write, an ack held back since the last batch: ``acked``'s acked_* fields).
    Refuses (OutboxError) if the outbox moved since ``prepare_new``."""
    m = marks(conn)
    if (m.next_seq, m.assigned_outbox + 1, m.assigned_reading + 1) != (
        segment.first_seq, segment.outbox_from, segment.readings_from
    ):
        raise OutboxError("the outbox cursor moved since the batch was prepared")
    n_outbox = conn.execute(
        "SELECT count(*) FROM outbox WHERE id >= ? AND id <= ?",
        (segment.outbox_from, segment.outbox_to),
    ).fetchone()[0]
    n_readings = conn.execute(
        "SELECT count(*) FROM readings WHERE id >= ? AND id <= ?",
        (segment.readings_from, segment.readings_to),
    ).fetchone()[0]
    if (n_outbox, n_readings) != (segment.n_outbox, segment.n_readings):
        raise OutboxError("rows of the prepared batch changed before it was assigned")
    conn.execute(
        "INSERT INTO outbox_segments (first_seq, n_outbox, n_readings, outbox_from, outbox_to,"
        " readings_from, readings_to, made_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (segment.first_seq, segment.n_outbox, segment.n_readings, segment.outbox_from,
         segment.outbox_to, segment.readings_from, segment.readings_to, segment.made_at),
    )
    items: dict[str, int] = {
        "next_seq": segment.last_seq + 1,
        "assigned_outbox": segment.outbox_to,
        "assigned_reading": segment.readings_to,
    }
    if acked is not None and acked.acked_seq > m.acked_seq:
        items.update(acked_seq=acked.acked_seq, acked_outbox=acked.acked_outbox,
                     acked_reading=acked.acked_reading)
    set_state(conn, items, segment.made_at)


def save_acked(conn: sqlite3.Connection, acked: Marks, at: float) -> None:
    """Store an ack held back in memory (never moving the cursor backwards)."""
    if acked.acked_seq > marks(conn).acked_seq:
        set_state(conn, {"acked_seq": acked.acked_seq, "acked_outbox": acked.acked_outbox,
                         "acked_reading": acked.acked_reading}, at)


# ---- the cloud's answers ----

def set_acked(conn: sqlite3.Connection, seq: int, at: float) -> bool:
    """Every seq up to ``seq`` is stored in the cloud (a BatchAck, or a 409 rewind to seq + 1).
    False when the marks for that seq cannot be found (its segment was pruned)."""
    found = locate(conn, seq)
    if found is None:
        return False
    set_state(conn, {"acked_seq": seq, "acked_outbox": found[0], "acked_reading": found[1]}, at)
    return True


def rebase(conn: sqlite3.Connection, cloud_mark: int, at: float) -> int:
    """The cloud already holds seqs up to ``cloud_mark``, past everything this edge gave out (its
    database was replaced): take back the unconfirmed segments and number on from the cloud's
    mark, so none of their records is mistaken for a duplicate. Returns segments taken back."""
    m = marks(conn)
    dropped = conn.execute(
        "DELETE FROM outbox_segments WHERE first_seq > ?", (m.acked_seq,)
    ).rowcount
    set_state(conn, {
        "acked_seq": cloud_mark,
        "next_seq": cloud_mark + 1,
        "assigned_outbox": m.acked_outbox,
        "assigned_reading": m.acked_reading,
    }, at)
    return int(dropped)


# ---- bounded disk ----

@dataclass(frozen=True, slots=True)
class Pruned:
    segments: int
    outbox_rows: int
    readings: int
    more: bool  # a chunk limit was hit: call again


def prune(conn: sqlite3.Connection, cutoff: float, chunk: int = 20_000) -> Pruned:
    """Delete what the cloud confirmed and that is older than ``cutoff``: whole segments (never
    the newest), their outbox rows, and readings with ts < cutoff (never the newest reading, whose
    id keeps new readings numbered above every reading already sent). Bounded by ``chunk``."""
    m = marks(conn)
    newest = conn.execute("SELECT max(first_seq) FROM outbox_segments").fetchone()[0]
    if newest is None:
        return Pruned(0, 0, 0, False)
    row = conn.execute(
        "SELECT count(*), max(outbox_to) FROM outbox_segments"
        " WHERE first_seq < ? AND first_seq + n_outbox + n_readings - 1 <= ? AND made_at < ?",
        (newest, m.acked_seq, cutoff),
    ).fetchone()
    segments, outbox_to = int(row[0]), row[1]
    outbox_rows = 0
    if segments:
        conn.execute(
            "DELETE FROM outbox_segments WHERE first_seq < ?"
            " AND first_seq + n_outbox + n_readings - 1 <= ? AND made_at < ?",
            (newest, m.acked_seq, cutoff),
        )
        outbox_rows = conn.execute("DELETE FROM outbox WHERE id <= ?", (outbox_to,)).rowcount
    # Readings below the oldest kept segment are confirmed and no resend can ask for them.
    oldest = oldest_segment(conn)
    bound = min(m.acked_reading, oldest.readings_from - 1 if oldest else m.acked_reading)
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM readings WHERE ts < ? AND id <= ?"
            " AND id < (SELECT max(id) FROM readings) LIMIT ?",
            (cutoff, bound, chunk),
        )
    ]
    if ids:
        conn.executemany("DELETE FROM readings WHERE id = ?", [(i,) for i in ids])
        conn.executemany("DELETE FROM reading_means WHERE reading_id = ?", [(i,) for i in ids])
        # Time blocks left with no reading (the newest reading is never pruned: min(id) exists).
        conn.execute(
            "DELETE FROM reading_blocks WHERE block < (SELECT min(id) FROM readings) >> 10"
        )
    return Pruned(segments, outbox_rows, len(ids), len(ids) == chunk)


@dataclass(frozen=True, slots=True)
class Merged:
    examined: int
    removed: int  # readings folded into a mean (rows deleted)
    last_id: int  # continue after this id
    oldest_ts: float | None
    newest_ts: float | None


def downsample(
    conn: sqlite3.Connection, after_id: int, limit: int, period_s: float = 60.0
) -> Merged:
    """Fold the oldest readings not yet given a seq (ids > max(after_id, assigned mark), at most
    ``limit`` of them) into one mean per series and ``period_s`` bucket: the first reading of
    each bucket keeps its row and gets the (weighted) means, the others are deleted."""
    m = marks(conn)
    low = max(after_id, m.assigned_reading)
    rows = conn.execute(
        "SELECT r.id, r.series, r.ts, r.vals, coalesce(mm.n, 1)"
        " FROM readings r LEFT JOIN reading_means mm ON mm.reading_id = r.id"
        " WHERE r.id > ? ORDER BY r.id LIMIT ?",
        (low, limit),
    ).fetchall()
    if not rows:
        return Merged(0, 0, low, None, None)
    buckets: dict[tuple[int, int], list[tuple[int, list[float], int]]] = {}
    for rid, key, ts, vals, n in rows:
        buckets.setdefault((key, int(ts // period_s)), []).append((rid, decode_values(vals), n))
    removed: list[int] = []
    for members in buckets.values():
        if len(members) < 2 or len({len(v) for _, v, _ in members}) != 1:
            continue
        total = sum(n for _, _, n in members)
        means = [
            float(f"{sum(v[i] * n for _, v, n in members) / total:.6g}")
            for i in range(len(members[0][1]))
        ]
        keep = members[0][0]
        conn.execute("UPDATE readings SET vals = ? WHERE id = ?", (encode_values(means), keep))
        conn.execute(
            "INSERT INTO reading_means (reading_id, n, period_s) VALUES (?, ?, ?)"
            " ON CONFLICT (reading_id) DO UPDATE SET n = excluded.n, period_s = excluded.period_s",
            (keep, total, period_s),
        )
        removed.extend(rid for rid, _, _ in members[1:])
    if removed:
        conn.executemany("DELETE FROM readings WHERE id = ?", [(i,) for i in removed])
        conn.executemany("DELETE FROM reading_means WHERE reading_id = ?", [(i,) for i in removed])
    return Merged(len(rows), len(removed), rows[-1][0], rows[0][2], rows[-1][2])
