"""What one accepted reading writes, in the writer's transaction: the reading (with the device's
last-seen time now and then), or a quarantine row when another reading holds its timestamp.

``store_telemetry`` runs on the store's writer thread (Database.write_nowait / write); its
``many`` form takes consecutive readings of a group at once (multi-row INSERTs).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from edge.store import devices, quarantine, readings
from shared.models import Telemetry


def store_telemetry(
    conn: sqlite3.Connection, tel: Telemetry, room_id: str, received_at: float, touch: bool,
    topic: str = "", payload: bytes = b"", max_payload: int = quarantine.DEFAULT_MAX_PAYLOAD,
) -> readings.Outcome:
    """Everything one accepted reading writes, in one savepoint: the reading, or (if another
    reading holds its timestamp) a quarantine row for it, in the same transaction."""
    if touch:
        devices.touch(conn, tel.device_id, room_id, received_at)
    try:
        # Last: once it returns, the writer's memory counts the row as stored (see there).
        new = readings.insert_reading(conn, tel, room_id, received_at) is not None
    except readings.ReadingConflict as exc:
        store_telemetry_conflict(conn, exc, tel, room_id, received_at, touch, topic, payload,
                                 max_payload)
        return "conflict"
    return "new" if new else "duplicate"


def store_telemetry_many(
    conn: sqlite3.Connection, batch: list[tuple[Any, ...]]
) -> list[readings.Outcome]:
    """``store_telemetry`` for consecutive items of a group (see Database: ``fn.many``); the
    readings go in with multi-row INSERTs, not one statement (and GIL hand-over) each."""
    for tel, room_id, received_at, touch, *_ in batch:
        if touch:
            devices.touch(conn, tel.device_id, room_id, received_at)

    def conflict(index: int, exc: readings.ReadingConflict) -> None:
        store_telemetry_conflict(conn, exc, *batch[index])

    return readings.insert_readings(
        conn, [(args[0], args[1], args[2]) for args in batch], conflict
    )


def store_telemetry_conflict(
    conn: sqlite3.Connection, exc: readings.ReadingConflict, tel: Telemetry, room_id: str,
    received_at: float, touch: bool, topic: str = "", payload: bytes = b"",
    max_payload: int = quarantine.DEFAULT_MAX_PAYLOAD,
) -> None:
    """The quarantine row of a reading refused for ReadingConflict (store_telemetry's args)."""
    quarantine.insert(conn, topic or f"(reading of {tel.device_id} in {room_id})", payload,
                      f"conflict: {exc}", received_at, max_payload)


store_telemetry.many = store_telemetry_many  # type: ignore[attr-defined]
