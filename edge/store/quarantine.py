"""Messages the ingest refused, kept with their topic, raw payload (bounded) and reason."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final

TOPIC_MAX_CHARS: Final = 512
REASON_MAX_CHARS: Final = 1_000
DEFAULT_MAX_PAYLOAD: Final = 4_096


@dataclass(frozen=True, slots=True)
class QuarantinedMessage:
    id: int
    received_at: float
    topic: str
    payload: bytes  # at most the configured bound; original_size tells what was cut
    original_size: int
    reason: str


def _text(value: str, limit: int) -> str:
    # A topic or reason may hold lone surrogates or NULs from a broken client; SQLite needs UTF-8.
    return value[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def insert(
    conn: sqlite3.Connection,
    topic: str,
    payload: bytes,
    reason: str,
    received_at: float,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    original_size: int | None = None,
) -> int:
    """Record one refused message; return its row id. ``original_size`` when ``payload`` is
    only the head of it (a packet too large to keep whole)."""
    raw = bytes(payload)
    cur = conn.execute(
        "INSERT INTO quarantine (received_at, topic, payload, original_size, reason)"
        " VALUES (?, ?, ?, ?, ?)",
        (
            received_at,
            _text(topic, TOPIC_MAX_CHARS),
            raw[: max(0, max_payload)],
            len(raw) if original_size is None else original_size,
            _text(reason, REASON_MAX_CHARS),
        ),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def recent(conn: sqlite3.Connection, limit: int = 100) -> list[QuarantinedMessage]:
    """The newest refused messages first."""
    rows = conn.execute(
        "SELECT id, received_at, topic, payload, original_size, reason FROM quarantine"
        " ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        QuarantinedMessage(
            id=r["id"],
            received_at=r["received_at"],
            topic=r["topic"],
            payload=bytes(r["payload"]),
            original_size=r["original_size"],
            reason=r["reason"],
        )
        for r in rows
    ]


def count(conn: sqlite3.Connection, since: float | None = None) -> int:
    """How many messages were refused (received at or after ``since``, if given)."""
    if since is None:
        row = conn.execute("SELECT count(*) FROM quarantine").fetchone()
    else:
        row = conn.execute(
            "SELECT count(*) FROM quarantine WHERE received_at >= ?", (since,)
        ).fetchone()
    return int(row[0])
