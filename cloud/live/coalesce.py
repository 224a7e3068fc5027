"""Readings coalesced per device: at most ``rate_hz`` messages a second, none lost in meaning.

The first reading of a device in an interval goes out at once (no added latency at normal
rates); later ones in the same interval are merged — newest value per metric — and the merge is
sent when the interval ends. A backlog drain of thousands of readings a second per device thus
reaches browsers as a few messages carrying the newest values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class DeviceReading:
    farm_id: str
    room_id: str
    device_id: str
    time: float  # unix seconds of the newest value
    values: dict[str, float]
    ingested_at: float | None  # when the newest part was committed

    def merge(self, newer: DeviceReading) -> None:
        if newer.time >= self.time:
            self.values.update(newer.values)
            self.time = newer.time
            self.ingested_at = newer.ingested_at
        else:  # an older reading arriving late only fills in metrics we lack
            for metric, value in newer.values.items():
                self.values.setdefault(metric, value)


class Coalescer:
    def __init__(self, rate_hz: float, emit: Callable[[DeviceReading], None]) -> None:
        self.interval = 1.0 / rate_hz
        self._emit = emit
        # (farm, device) → loop time of its last message: device ids are per farm
        self._last: dict[tuple[str, str], float] = {}
        self._pending: dict[tuple[str, str], DeviceReading] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def offer(self, reading: DeviceReading) -> None:
        key = (reading.farm_id, reading.device_id)
        pending = self._pending.get(key)
        if pending is not None:
            pending.merge(reading)
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self._last.get(key)
        if last is None or now - last >= self.interval:
            self._last[key] = now
            self._emit(reading)
            return
        self._pending[key] = reading
        self._timers[key] = loop.call_at(last + self.interval, self._flush, key)

    def _flush(self, key: tuple[str, str]) -> None:
        self._timers.pop(key, None)
        reading = self._pending.pop(key, None)
        if reading is not None:
            self._last[key] = asyncio.get_running_loop().time()
            self._emit(reading)

    def prune(self) -> None:
        """Forget devices quiet for a whole interval (bounded memory with many devices)."""
        horizon = asyncio.get_running_loop().time() - self.interval
        for key in [k for k, at in self._last.items() if at < horizon and k not in self._pending]:
            del self._last[key]

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._pending.clear()
