"""Alert rows: raised once per condition (de-duplicated by key), counted, resolved."""

from __future__ import annotations

import sqlite3
from typing import Any


def raise_alert(
    conn: sqlite3.Connection,
    *,
    key: str,
    kind: str,
    severity: str,
    message: str,
    at: float,
    room_id: str | None = None,
    device_id: str | None = None,
) -> bool:
    """Open an alert, or bump the active one with the same key. True when newly opened."""
    bumped = conn.execute(
        "UPDATE alerts SET last_at = ?, count = count + 1, message = ?, severity = ?"
        " WHERE key = ? AND state = 'active'",
        (at, message, severity, key),
    ).rowcount
    if bumped:
        return False
    conn.execute(
        "INSERT INTO alerts (key, kind, room_id, device_id, severity, message, state,"
        " first_at, last_at, count) VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, 1)",
        (key, kind, room_id, device_id, severity, message, at, at),
    )
    return True


def resolve(conn: sqlite3.Connection, key: str, at: float) -> bool:
    return (
        conn.execute(
            "UPDATE alerts SET state = 'resolved', resolved_at = ?"
            " WHERE key = ? AND state = 'active'",
            (at, key),
        ).rowcount
        > 0
    )


def active_keys(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT key FROM alerts WHERE state = 'active'")}


def listing(
    conn: sqlite3.Connection, *, active_only: bool = False, limit: int = 100
) -> list[dict[str, Any]]:
    sql = "SELECT * FROM alerts"
    if active_only:
        sql += " WHERE state = 'active'"
    sql += " ORDER BY (state = 'active') DESC, last_at DESC LIMIT ?"
    return [dict(r) for r in conn.execute(sql, (limit,))]
