"""The outbox cursor in SQLite: appending records, the segments giving them seqs, the marks.

Every function takes a ``sqlite3.Connection`` and runs inside the caller's transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from shared.sync import KIND_CODES, RECORD_DATA

# Every kind but quarantine is worth sending at once (a command state should reach the cloud
# within a second); quarantine bursts (a fuzzing client) wait for the batch age like readings.
QUARANTINE: Final = KIND_CODES["quarantine"]
_KIND_OF: Final = {data: kind for kind, data in RECORD_DATA.items()}

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
class Probe:
    """What is waiting beyond the assigned marks (cheap: max ids and one index probe)."""

    unassigned: int  # upper bound: merged readings leave holes in the id range
    urgent: bool


# ---- appending ----

def append(conn: sqlite3.Connection, data: msgspec.Struct, at: float) -> int:
    """Append one record with its data inline (kinds without a table of their own: acks); its
    kind is its data's type (shared.sync)."""
    cur = conn.execute(
        "INSERT INTO outbox (kind, at, data) VALUES (?, ?, ?)",
        (KIND_CODES[_KIND_OF[type(data)]], at, msgspec.json.encode(data).decode()),
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
                (m.assigned_outbox, QUARANTINE),
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
