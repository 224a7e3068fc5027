"""Command rows: every command the edge sends to an actuator and how it ended."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

OPEN_STATES = ("pending",)


def insert_command(
    conn: sqlite3.Connection,
    *,
    command_id: str,
    device_id: str,
    room_id: str,
    action: str,
    value: Any,
    source: str,
    reason: str,
    created_at: float,
) -> None:
    conn.execute(
        "INSERT INTO commands (command_id, device_id, room_id, action, value, source, reason,"
        " state, attempts, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
        (
            command_id,
            device_id,
            room_id,
            action,
            json.dumps(value),
            source,
            reason,
            created_at,
            created_at,
        ),
    )


def mark_attempt(conn: sqlite3.Connection, command_id: str, at: float) -> None:
    conn.execute(
        "UPDATE commands SET attempts = attempts + 1, updated_at = ? WHERE command_id = ?",
        (at, command_id),
    )


def set_state(
    conn: sqlite3.Connection,
    command_id: str,
    state: str,
    at: float,
    *,
    error: str | None = None,
    only_if_pending: bool = True,
) -> bool:
    """Move a command to a final state; returns False when it had already left `pending`."""
    sql = "UPDATE commands SET state = ?, updated_at = ?, error = COALESCE(?, error)"
    if state == "acked":
        sql += ", acked_at = ?"
        params: tuple[Any, ...] = (state, at, error, at, command_id)
    else:
        params = (state, at, error, command_id)
    sql += " WHERE command_id = ?"
    if only_if_pending:
        sql += " AND state = 'pending'"
    return conn.execute(sql, params).rowcount > 0


def supersede_pending(conn: sqlite3.Connection, device_id: str, keep: str, at: float) -> int:
    return conn.execute(
        "UPDATE commands SET state = 'superseded', updated_at = ?"
        " WHERE device_id = ? AND state = 'pending' AND command_id != ?",
        (at, device_id, keep),
    ).rowcount


def expire_pending_on_boot(conn: sqlite3.Connection, at: float) -> int:
    """Commands still pending when the edge stopped are not retried blindly: boot re-asserts."""
    return conn.execute(
        "UPDATE commands SET state = 'superseded', updated_at = ?, error = 'edge restarted'"
        " WHERE state = 'pending'",
        (at,),
    ).rowcount


def get(conn: sqlite3.Connection, command_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM commands WHERE command_id = ?", (command_id,)).fetchone()
    return _row(row) if row else None


def recent(
    conn: sqlite3.Connection,
    *,
    limit: int = 50,
    device_id: str | None = None,
    room_id: str | None = None,
) -> list[dict[str, Any]]:
    sql = "SELECT * FROM commands"
    where: list[str] = []
    params: list[str | int] = []
    if device_id:
        where.append("device_id = ?")
        params.append(device_id)
    if room_id:
        where.append("room_id = ?")
        params.append(room_id)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC LIMIT ?"
    params.append(limit)
    return [_row(r) for r in conn.execute(sql, params)]


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    try:
        out["value"] = json.loads(out["value"]) if out.get("value") is not None else None
    except (TypeError, ValueError):
        pass
    return out
