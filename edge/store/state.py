"""Automation state persisted as JSON by key, so timers and actuator states survive restarts."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any


def save_many(conn: sqlite3.Connection, items: Mapping[str, Any], at: float) -> None:
    conn.executemany(
        "INSERT INTO automation_state (key, value, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        [(key, json.dumps(value, separators=(",", ":")), at) for key, value in items.items()],
    )


def delete(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM automation_state WHERE key = ?", (key,))


def load_prefix(conn: sqlite3.Connection, prefix: str) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT key, value FROM automation_state WHERE key >= ? AND key < ?",
        (prefix, prefix + "\uffff"),
    )
    return {key[len(prefix) :]: json.loads(value) for key, value in rows}
