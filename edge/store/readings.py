"""Telemetry readings in SQLite: insert once per message, latest per device or room, time ranges.

Layout (see schema.sql): a reading row holds a small series key, ts, the receive offset and the
values as a JSON array; the series row holds device, room and the metric names. Every function takes
a ``sqlite3.Connection`` and runs inside the caller's transaction (Database.write / read).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import NamedTuple

from shared.models import Telemetry

DEFAULT_LIMIT = 10_000


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


def _compact(value: float) -> float | int:
    # 850.0 is stored as 850: two bytes less per integral value, read back as a float.
    return int(value) if value.is_integer() and abs(value) < 1e15 else value


def encode_values(values: list[float]) -> str:
    """A JSON array, no spaces; floats keep Python's shortest round-trip form (lossless)."""
    return json.dumps([_compact(v) for v in values], separators=(",", ":"), allow_nan=False)


def decode_values(text: str) -> list[float]:
    return [float(v) for v in json.loads(text)]


def series_key(
    conn: sqlite3.Connection, device_id: str, room_id: str, metrics: list[str], now: float
) -> int:
    """The key of (device, room, sorted metric names), created (at ``now``) on first use."""
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


def insert_reading(
    conn: sqlite3.Connection, tel: Telemetry, room_id: str, received_at: float
) -> int | None:
    """Store one telemetry message (received_at in unix seconds); return its row id, or None if
    the same device already sent the same metrics with the same timestamp (a QoS 1 redelivery).

    No "latest" row is kept up to date here: the automation holds the latest values in memory,
    and upserting one per reading cost ~210 bytes written per reading (its pages are rewritten
    by every group commit). ``latest_by_room`` reads them from the readings index instead.
    """
    names = sorted(tel.data)
    key = series_key(conn, tel.device_id, room_id, names, received_at)
    ts = tel.timestamp.timestamp() if tel.timestamp is not None else received_at
    vals = encode_values([tel.data[n] for n in names])
    cur = conn.execute(
        "INSERT INTO readings (series, ts, recv_ms, ts_replaced, vals) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (ts, series) DO NOTHING",
        (key, ts, round((received_at - ts) * 1000), int(tel.timestamp_replaced), vals),
    )
    if cur.rowcount != 1:
        return None
    reading_id = cur.lastrowid
    assert reading_id is not None
    return reading_id


def _merge_latest(rows: list[sqlite3.Row]) -> dict[str, Latest]:
    out: dict[str, Latest] = {}
    for row in rows:
        for name, value in zip(json.loads(row["metrics"]), decode_values(row["vals"]), strict=True):
            seen = out.get(name)
            if seen is None or row["ts"] > seen.ts:
                out[name] = Latest(value, row["ts"], row["device_id"])
    return out


# The newest reading of each series within LATEST_LOOKBACK_S of the newest reading overall:
# an index range at the end of (ts, series), so a series silent for longer is not searched for.
LATEST_LOOKBACK_S = 3600.0

_LATEST_SQL = (
    "SELECT s.device_id, s.metrics, r.ts, r.vals FROM series s"
    " JOIN readings r ON r.id = (SELECT r2.id FROM readings r2"
    "  WHERE r2.series = s.key AND r2.ts >= ? ORDER BY r2.ts DESC LIMIT 1)"
    " WHERE s.{column} = ?"
)


def _lookback(conn: sqlite3.Connection) -> float:
    newest = conn.execute("SELECT max(ts) FROM readings").fetchone()[0]
    return (newest or 0.0) - LATEST_LOOKBACK_S


def latest_by_room(conn: sqlite3.Connection, room_id: str) -> dict[str, Latest]:
    """For each metric reported in the room recently, its newest value, time and device."""
    sql = _LATEST_SQL.format(column="room_id")
    return _merge_latest(conn.execute(sql, (_lookback(conn), room_id)).fetchall())


def latest_by_device(conn: sqlite3.Connection, device_id: str) -> dict[str, Latest]:
    """For each metric the device reported recently (in any room), its newest value and time."""
    sql = _LATEST_SQL.format(column="device_id")
    return _merge_latest(conn.execute(sql, (_lookback(conn), device_id)).fetchall())


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
        " FROM readings r JOIN series s ON s.key = r.series"
        " WHERE r.ts >= :since AND r.ts < :until AND r.series IN ("
        "   SELECT key FROM series WHERE room_id = :room"
        "   AND (:device IS NULL OR device_id = :device)"
        "   AND (:metric IS NULL OR EXISTS ("
        "     SELECT 1 FROM json_each(series.metrics) WHERE json_each.value = :metric)))"
        " ORDER BY r.ts LIMIT :limit",
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
