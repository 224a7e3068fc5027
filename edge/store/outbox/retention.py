"""Bounded disk for the outbox: pruning what the cloud confirmed, and merging unsent readings
into means (the backlog cap policy of edge/outbox.py). Every function takes a
``sqlite3.Connection`` and runs inside the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from edge.store.outbox.cursor import marks, oldest_segment
from edge.store.readings import decode_values, encode_values


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
