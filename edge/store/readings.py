"""Telemetry readings in SQLite: insert once per message, latest per device or room, time ranges.

Layout (see schema.sql): a reading row holds a small series key, ts, the receive offset and the
values as a JSON array; the series row holds device, room and the metric names. Readings have no
index but their id: ``reading_blocks`` bounds the ts of each 1024 ids, which is how time ranges
are found, and the writer remembers the (series, ts) of recent readings to refuse a redelivery
(older ones are looked up through the blocks). Every function takes a ``sqlite3.Connection`` and
runs inside the caller's transaction (Database.write / read).
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from shared.models import Telemetry

DEFAULT_LIMIT = 10_000
BLOCK_SHIFT = 10  # reading_blocks.block = readings.id >> 10 (the trigger in schema.sql)
# Per series the writer remembers the ts of its last SEEN_PER_SERIES readings (at start, those of
# the last SEEN_WINDOW_S): a reading older than that is checked against the database instead.
SEEN_WINDOW_S = 600.0
SEEN_PER_SERIES = 32  # a redelivery follows within seconds; ~1 KB per series

# Every query below finds readings with ts in [:since, :until) the same way: the blocks whose
# bounds overlap the range (reading_blocks_max_ts), then their id ranges of readings.
_SEED_SQL = (
    "SELECT r.series, r.ts FROM reading_blocks b JOIN readings r"
    " ON r.id >= b.block << 10 AND r.id < (b.block + 1) << 10"
    " WHERE b.max_ts > :since AND b.min_ts < :until AND r.ts >= :since AND r.ts < :until"
)
_STORED_SQL = (
    "SELECT r.vals FROM reading_blocks b JOIN readings r"
    " ON r.id >= b.block << 10 AND r.id < (b.block + 1) << 10"
    " WHERE b.max_ts > :since AND b.min_ts < :until AND r.ts >= :since AND r.ts < :until"
    " AND r.series = :key LIMIT 1"
)


class ReadingConflict(Exception):
    """The series already holds a reading at this timestamp, with other values: not a
    redelivery but a device (or a forger) contradicting what was stored. Never overwritten."""

    def __init__(self, ts: float, stored: str, offered: str) -> None:
        super().__init__(
            f"a reading at {ts!r} with values {stored} is stored; this one has {offered}"
        )
        self.ts = ts


# What storing one reading did: a new row, nothing (the same reading again: a redelivery), or
# nothing because a different reading holds its timestamp (the caller quarantines it).
Outcome = Literal["new", "duplicate", "conflict"]


class Latest(NamedTuple):
    """The newest value of one metric: unpacks as ``value, ts, device_id``."""

    value: float
    ts: float
    device_id: str


@dataclass(frozen=True, slots=True)
class StoredReading:
    id: int
    device_id: str
    room_id: str
    ts: float
    received_at: float
    ts_replaced: bool
    data: dict[str, float]


def _number(value: float) -> str:
    # 850.0 is stored as 850: two bytes less per integral value, read back as a float.
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be stored as a reading value")
    return repr(value)  # what json.dumps writes: the shortest form that round-trips


def encode_values(values: list[float]) -> str:
    """A JSON array, no spaces; floats keep Python's shortest round-trip form (lossless)."""
    return "[" + ",".join([_number(v) for v in values]) + "]"


@dataclass(slots=True)
class _Seen:
    """One series: every stored reading with ts >= ``floor`` has its ts in ``ts``."""

    floor: float
    ts: deque[float] = field(default_factory=deque)  # a short scan beats a set's memory

    def add(self, ts: float) -> None:
        if ts < self.floor:
            return  # below the floor the database is asked anyway
        self.ts.append(ts)
        if len(self.ts) > SEEN_PER_SERIES:
            self.floor = max(self.floor, math.nextafter(self.ts.popleft(), math.inf))


@dataclass(slots=True)
class _Memory:
    """What the writer connection learned of the readings: series keys, and per series the ts of
    its recent readings (from ``floor`` on, once seeded from the database). Lives in the writer
    connection's cache, which the writer empties when a write is rolled back."""

    series: dict[tuple[str, str, tuple[str, ...]], int] = field(default_factory=dict)
    seen: dict[int, _Seen] = field(default_factory=dict)
    floor: float | None = None

    def seed(self, conn: sqlite3.Connection, floor: float) -> None:
        self.floor = floor
        rows = conn.execute(_SEED_SQL, {"since": floor, "until": math.inf}).fetchall()
        for key, ts in sorted(rows, key=lambda row: row[1]):
            self.of(int(key)).add(float(ts))

    def of(self, key: int) -> _Seen:
        seen = self.seen.get(key)
        if seen is None:
            assert self.floor is not None
            seen = self.seen[key] = _Seen(self.floor)
        return seen


def _memory(conn: sqlite3.Connection) -> _Memory | None:
    """The writer connection's memory (Database's writer has a ``cache``); None elsewhere."""
    cache: dict[str, Any] | None = getattr(conn, "cache", None)
    if cache is None:
        return None
    memory = cache.get(__name__)
    if memory is None:
        memory = cache[__name__] = _Memory()
    return memory


def _stored(conn: sqlite3.Connection, key: int, ts: float) -> str | None:
    """The values series ``key`` holds at ``ts`` (through the blocks), or None."""
    row = conn.execute(
        _STORED_SQL, {"since": ts, "until": math.nextafter(ts, math.inf), "key": key}
    ).fetchone()
    return None if row is None else str(row[0])


def decode_values(text: str) -> list[float]:
    return [float(v) for v in json.loads(text)]


def series_key(
    conn: sqlite3.Connection, device_id: str, room_id: str, metrics: list[str], now: float
) -> int:
    """The key of (device, room, sorted metric names), created (at ``now``) on first use."""
    memory = _memory(conn)
    if memory is not None:
        ident = (device_id, room_id, tuple(metrics))
        found = memory.series.get(ident)
        if found is None:
            found = memory.series[ident] = _series_key(conn, device_id, room_id, metrics, now)
        return found
    return _series_key(conn, device_id, room_id, metrics, now)


def _series_key(
    conn: sqlite3.Connection, device_id: str, room_id: str, metrics: list[str], now: float
) -> int:
    names = json.dumps(metrics, separators=(",", ":"))
    row = conn.execute(
        "SELECT key FROM series WHERE device_id = ? AND room_id = ? AND metrics = ?",
        (device_id, room_id, names),
    ).fetchone()
    if row is not None:
        return int(row[0])
    row = conn.execute(
        "INSERT INTO series (device_id, room_id, metrics, created_at)"
        " VALUES (?, ?, ?, ?) RETURNING key",
        (device_id, room_id, names, now),
    ).fetchone()
    return int(row[0])


_INSERT_SQL = "INSERT INTO readings (series, ts, recv_ms, ts_replaced, vals) VALUES "
_ROW_SQL = "(?, ?, ?, ?, ?)"
MANY_CHUNK = 500  # rows per multi-row INSERT (5 variables each; SQLite allows 32 766)


def _row(
    conn: sqlite3.Connection,
    tel: Telemetry,
    room_id: str,
    received_at: float,
    pending: dict[tuple[int, float], str] | None = None,
) -> tuple[tuple[Any, ...], _Seen | None, float] | None:
    """The readings row for ``tel`` (with its series' memory and ts), or None if the same
    reading is stored (or in ``pending``: rows about to be inserted, which the database cannot
    see yet; ``tel``'s is added to it). ReadingConflict if another reading holds its ts."""
    names = sorted(tel.data)
    key = series_key(conn, tel.device_id, room_id, names, received_at)
    ts = tel.timestamp.timestamp() if tel.timestamp is not None else received_at
    vals = encode_values([tel.data[n] for n in names])
    if pending is not None:
        held = pending.get((key, ts))
        if held is not None:
            _same(ts, held, vals)
            return None
    memory = _memory(conn)
    seen = None
    if memory is not None:
        if memory.floor is None:
            memory.seed(conn, min(ts, received_at) - SEEN_WINDOW_S)
        seen = memory.of(key)
    if seen is None or ts < seen.floor or ts in seen.ts:
        # Possibly stored (the memory knows it is, or cannot tell): the database decides.
        stored = _stored(conn, key, ts)
        if stored is not None:
            _same(ts, stored, vals)
            return None
    if pending is not None:
        pending[(key, ts)] = vals
    return (key, ts, round((received_at - ts) * 1000), int(tel.timestamp_replaced), vals), seen, ts


def _same(ts: float, stored: str, offered: str) -> None:
    """A reading found at ``ts`` again: a redelivery if its values are the same, else
    ReadingConflict."""
    if stored != offered:
        raise ReadingConflict(ts, stored, offered)


def insert_reading(
    conn: sqlite3.Connection, tel: Telemetry, room_id: str, received_at: float
) -> int | None:
    """Store one telemetry message (received_at in unix seconds); return its row id, or None if
    the same device already sent the same metrics with the same timestamp and values (a QoS 1
    redelivery); ReadingConflict if that timestamp holds other values. Call it last in a write:
    once it returns an id, the writer's memory counts the row as stored.

    No "latest" row is kept up to date here: the automation holds the latest values in memory,
    and upserting one per reading cost ~210 bytes written per reading (its pages are rewritten
    by every group commit). ``latest_by_room`` reads them from the readings index instead.
    """
    found = _row(conn, tel, room_id, received_at)
    if found is None:
        return None
    row, seen, ts = found
    cur = conn.execute(_INSERT_SQL + _ROW_SQL, row)
    reading_id = cur.lastrowid
    assert reading_id is not None
    if seen is not None:
        seen.add(ts)
    return reading_id


def insert_readings(
    conn: sqlite3.Connection,
    batch: list[tuple[Telemetry, str, float]],
    on_conflict: Callable[[int, ReadingConflict], None] | None = None,
) -> list[Outcome]:
    """``insert_reading`` for many (telemetry, room, received_at), in order, with multi-row
    INSERTs: what became of each (a conflict stores nothing: ``on_conflict(index, error)`` is
    told instead of raising). Ids are given in
    order, as one by one. On the writer's connection only (its memory catches a redelivery
    within the batch); if it raises, the caller must roll the transaction back (the writer then
    forgets its memory)."""
    memory = _memory(conn)
    rows: list[Any] = []
    out: list[Outcome] = []
    pending: dict[tuple[int, float], str] = {}
    for index, (tel, room_id, received_at) in enumerate(batch):
        try:
            if memory is None:
                out.append("new" if insert_reading(conn, tel, room_id, received_at) else
                           "duplicate")
                continue
            found = _row(conn, tel, room_id, received_at, pending)
        except ReadingConflict as exc:
            out.append("conflict")
            if on_conflict is not None:
                on_conflict(index, exc)
            continue
        out.append("duplicate" if found is None else "new")
        if found is not None:
            row, seen, ts = found
            rows.extend(row)
            if seen is not None:
                seen.add(ts)  # now, so that a duplicate further on is caught
    start, left = 0, len(rows) // 5
    while left:
        # Chunks of MANY_CHUNK, then powers of two: few distinct statements to cache.
        n = MANY_CHUNK if left >= MANY_CHUNK else 1 << (left.bit_length() - 1)
        conn.execute(_many_sql(n), rows[start : start + 5 * n])
        start, left = start + 5 * n, left - n
    return out


@functools.cache
def _many_sql(n: int) -> str:
    return _INSERT_SQL + ",".join([_ROW_SQL] * n)


def _merge_latest(rows: list[sqlite3.Row]) -> dict[str, Latest]:
    out: dict[str, Latest] = {}
    for row in rows:
        for name, value in zip(json.loads(row["metrics"]), decode_values(row["vals"]), strict=True):
            seen = out.get(name)
            if seen is None or row["ts"] > seen.ts:
                out[name] = Latest(value, row["ts"], row["device_id"])
    return out


# The newest reading of each series within LATEST_LOOKBACK_S of the newest reading overall (the
# blocks that may hold that last hour), so a series silent for longer is not searched for.
LATEST_LOOKBACK_S = 3600.0

# The newest reading per series in the lookback (SQLite's bare column next to max()).
_LATEST_SQL = (
    "SELECT s.device_id, s.metrics, r.ts, r.vals FROM series s JOIN ("
    "  SELECT r.series, max(r.ts) AS ts, r.vals FROM reading_blocks b JOIN readings r"
    "  ON r.id >= b.block << 10 AND r.id < (b.block + 1) << 10"
    "  WHERE b.max_ts > :since AND b.min_ts < :until AND r.ts >= :since AND r.ts < :until"
    "  GROUP BY r.series) r ON r.series = s.key"
    " WHERE s.{column} = :match"
)


def _lookback(conn: sqlite3.Connection) -> float:
    # max_ts is a bound above the newest ts (by up to two minutes): look back that much further.
    newest = conn.execute("SELECT max(max_ts) FROM reading_blocks").fetchone()[0]
    return (newest or 0.0) - LATEST_LOOKBACK_S - 120.0


def _latest(conn: sqlite3.Connection, column: str, match: str) -> dict[str, Latest]:
    sql = _LATEST_SQL.format(column=column)
    params = {"since": _lookback(conn), "until": math.inf, "match": match}
    return _merge_latest(conn.execute(sql, params).fetchall())


def latest_by_room(conn: sqlite3.Connection, room_id: str) -> dict[str, Latest]:
    """For each metric reported in the room recently, its newest value, time and device."""
    return _latest(conn, "room_id", room_id)


def latest_by_device(conn: sqlite3.Connection, device_id: str) -> dict[str, Latest]:
    """For each metric the device reported recently (in any room), its newest value and time."""
    return _latest(conn, "device_id", device_id)


def readings_between(
    conn: sqlite3.Connection,
    room_id: str,
    since: float,
    until: float,
    metric: str | None = None,
    limit: int = DEFAULT_LIMIT,
    *,
    device_id: str | None = None,
) -> list[StoredReading]:
    """Readings of a room with since <= ts < until, oldest first, at most ``limit``.

    With ``metric``, only readings carrying it, and ``data`` holds just that metric.
    """
    rows = conn.execute(
        "SELECT r.id, r.ts, r.recv_ms, r.ts_replaced, r.vals, s.device_id, s.room_id, s.metrics"
        " FROM reading_blocks b JOIN readings r"
        " ON r.id >= b.block << 10 AND r.id < (b.block + 1) << 10"
        " JOIN series s ON s.key = r.series"
        " WHERE b.max_ts > :since AND b.min_ts < :until AND r.ts >= :since AND r.ts < :until"
        " AND r.series IN ("
        "   SELECT key FROM series WHERE room_id = :room"
        "   AND (:device IS NULL OR device_id = :device)"
        "   AND (:metric IS NULL OR EXISTS ("
        "     SELECT 1 FROM json_each(series.metrics) WHERE json_each.value = :metric)))"
        " ORDER BY r.ts, r.id LIMIT :limit",
        {
            "since": since,
            "until": until,
            "room": room_id,
            "device": device_id,
            "metric": metric,
            "limit": limit,
        },
    ).fetchall()
    out: list[StoredReading] = []
    for row in rows:
        data = dict(zip(json.loads(row["metrics"]), decode_values(row["vals"]), strict=True))
        if metric is not None:
            data = {metric: data[metric]}
        out.append(
            StoredReading(
                id=row["id"],
                device_id=row["device_id"],
                room_id=row["room_id"],
                ts=row["ts"],
                received_at=row["ts"] + row["recv_ms"] / 1000,
                ts_replaced=bool(row["ts_replaced"]),
                data=data,
            )
        )
    return out


def count(conn: sqlite3.Connection, room_id: str | None = None) -> int:
    """How many readings are stored (in one room, or in all)."""
    if room_id is None:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
    else:
        row = conn.execute(
            "SELECT count(*) FROM readings"
            " WHERE series IN (SELECT key FROM series WHERE room_id = ?)",
            (room_id,),
        ).fetchone()
    return int(row[0])
