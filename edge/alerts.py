"""Alerts the edge raises on its own: out of band, silent sensor, actuator not acking, runaway.

Each condition has a stable key, so a condition that persists is one alert (its count and
last_at move) rather than a stream; it is resolved when the condition clears.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from edge.store import alerts as alert_rows
from edge.store.db import Database
from shared.models import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Band:
    low: float | None
    high: float | None

    def contains(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


class AlertMonitor:
    def __init__(
        self,
        db: Database,
        *,
        out_of_band_after: timedelta,
        silent_after: timedelta,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._out_of_band_after = out_of_band_after
        self._silent_after = silent_after
        self._clock = clock
        self._out_since: dict[tuple[str, str], datetime] = {}
        self._active: set[str] = set()
        self.raised = 0

    async def load(self) -> None:
        self._active = await self._db.read(alert_rows.active_keys)

    @property
    def active(self) -> set[str]:
        return set(self._active)

    async def raise_alert(
        self,
        key: str,
        *,
        kind: str,
        message: str,
        severity: str = "warning",
        room_id: str | None = None,
        device_id: str | None = None,
    ) -> None:
        at = self._clock().timestamp()
        new = await self._db.write(
            lambda conn: alert_rows.raise_alert(
                conn, key=key, kind=kind, severity=severity, message=message, at=at,
                room_id=room_id, device_id=device_id,
            )
        )
        if new:
            self.raised += 1
            self._active.add(key)
            log.warning("alert %s: %s", kind, message)

    async def resolve(self, key: str) -> None:
        if key not in self._active:
            return
        if await self._db.write(alert_rows.resolve, key, self._clock().timestamp()):
            log.info("alert resolved: %s", key)
        self._active.discard(key)

    # ---- periodic checks ----
    async def check_bands(
        self,
        room_id: str,
        latest: Mapping[str, tuple[float, datetime]],
        bands: Mapping[str, Band],
    ) -> None:
        """Out of band for longer than the threshold -> alert; back in band -> resolved."""
        now = self._clock()
        for metric, band in bands.items():
            key = f"band:{room_id}:{metric}"
            reading = latest.get(metric)
            if reading is None or band.contains(reading[0]):
                self._out_since.pop((room_id, metric), None)
                if reading is not None:
                    await self.resolve(key)
                continue
            since = self._out_since.setdefault((room_id, metric), now)
            if now - since >= self._out_of_band_after:
                minutes = (now - since).total_seconds() / 60
                await self.raise_alert(
                    key, kind="out_of_band", room_id=room_id,
                    message=(f"{room_id}: {metric} {reading[0]:g} outside "
                             f"[{_fmt(band.low)}, {_fmt(band.high)}] for {minutes:.0f} min"),
                )

    async def check_silent(self, last_seen: Mapping[str, tuple[str, datetime | None]]) -> None:
        """``last_seen``: sensor device id -> (room id, last telemetry time or None)."""
        now = self._clock()
        for device_id, (room_id, seen) in last_seen.items():
            key = f"silent:{device_id}"
            if seen is not None and now - seen < self._silent_after:
                await self.resolve(key)
                continue
            if seen is None:
                continue  # never heard from since install: not yet a silence
            minutes = (now - seen).total_seconds() / 60
            await self.raise_alert(
                key, kind="sensor_silent", room_id=room_id, device_id=device_id,
                message=f"sensor {device_id} in {room_id} silent for {minutes:.0f} min",
            )

    async def check_runaway(
        self, device_id: str, room_id: str, on_for: timedelta | None, max_on: timedelta | None
    ) -> None:
        key = f"runaway:{device_id}"
        if on_for is not None and max_on is not None and on_for > max_on:
            await self.raise_alert(
                key, kind="actuator_runaway", room_id=room_id, device_id=device_id,
                severity="critical",
                message=(f"{device_id} on for {on_for.total_seconds() / 60:.0f} min, "
                         f"longer than its max runtime {max_on.total_seconds() / 60:.0f} min"),
            )
        else:
            await self.resolve(key)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
