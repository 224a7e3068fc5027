"""Devices waiting for adoption (``edge.onboarding``): one row each, every change also queued
for the cloud as a ``pending_device`` outbox record."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from edge.store.outbox.cursor import append
from shared.sync import PendingDeviceData, PendingState

_SELECT = ("SELECT device_id, state, first_seen, last_seen, attempts, address, client_id,"
           " room_id, updated_at, kind, actuator, claim_key_hash FROM pending_devices")


@dataclass(frozen=True, slots=True)
class PendingDevice:
    device_id: str
    state: PendingState
    first_seen: float
    last_seen: float
    attempts: int
    address: str
    client_id: str
    room_id: str | None
    updated_at: float
    kind: str | None = None
    actuator: str | None = None
    # sha256 (hex) of the key of its first keyed claim login (None: it knocked without one).
    claim_key_hash: str | None = None

    def record(self) -> PendingDeviceData:
        return PendingDeviceData(
            device_id=self.device_id, state=self.state, first_seen=self.first_seen,
            last_seen=self.last_seen, attempts=self.attempts, address=self.address,
            client_id=self.client_id, at=self.updated_at, room_id=self.room_id,
            kind=self.kind, actuator=self.actuator,
            claim_mode=self.claim_key_hash is not None,
        )


def _row(row: tuple[object, ...]) -> PendingDevice:
    return PendingDevice(*row)  # type: ignore[arg-type]


def get(conn: sqlite3.Connection, device_id: str) -> PendingDevice | None:
    row = conn.execute(_SELECT + " WHERE device_id = ?", (device_id,)).fetchone()
    return None if row is None else _row(row)


def listing(conn: sqlite3.Connection,
            states: tuple[str, ...] = ("pending",)) -> list[PendingDevice]:
    """Rows in one of ``states``, the most recently seen first."""
    rows = conn.execute(_SELECT + " ORDER BY last_seen DESC, device_id").fetchall()
    return [row for row in map(_row, rows) if row.state in states]


def count_pending(conn: sqlite3.Connection) -> int:
    return int(conn.execute(
        "SELECT count(*) FROM pending_devices WHERE state = 'pending'").fetchone()[0])


def save(conn: sqlite3.Connection, device: PendingDevice, report: bool) -> None:
    """Insert or replace the row; ``report`` queues it for the cloud too."""
    conn.execute(
        "INSERT OR REPLACE INTO pending_devices (device_id, state, first_seen, last_seen,"
        " attempts, address, client_id, room_id, updated_at, kind, actuator, claim_key_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (device.device_id, device.state, device.first_seen, device.last_seen, device.attempts,
         device.address, device.client_id, device.room_id, device.updated_at, device.kind,
         device.actuator, device.claim_key_hash),
    )
    if report:
        append(conn, device.record(), device.updated_at)
