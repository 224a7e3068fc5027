"""Simulated time: real time, or accelerated (60× makes a simulated minute pass every second).

Everything in the simulator that waits (telemetry intervals, room physics) goes through a Clock,
so a test can run a day of farm in minutes. Payload timestamps, network timeouts and reconnect
backoff stay in real time.
"""
from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    speed: float

    def now(self) -> datetime:
        """The simulated time, an aware UTC datetime."""
        ...

    def elapsed(self) -> float:
        """Simulated seconds since the clock started (monotonic)."""
        ...

    async def sleep(self, sim_seconds: float) -> None:
        """Wait until ``sim_seconds`` of simulated time have passed."""
        ...


class AcceleratedClock:
    """Simulated time runs ``speed`` times faster than real time from ``start`` (default: now).

    Anchored on ``time.monotonic`` so a wall-clock jump on the host does not move simulated time.
    """

    def __init__(self, speed: float = 1.0, start: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = float(speed)
        self._start = start if start is not None else datetime.now(UTC)
        if self._start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        return (time.monotonic() - self._t0) * self.speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.elapsed())

    async def sleep(self, sim_seconds: float) -> None:
        await asyncio.sleep(max(0.0, sim_seconds) / self.speed)


class RealClock(AcceleratedClock):
    """Simulated time is real time."""

    def __init__(self) -> None:
        super().__init__(1.0)

    def now(self) -> datetime:
        return datetime.now(UTC)


def make_clock(speed: float = 1.0, start: datetime | None = None) -> Clock:
    """Real time at speed 1 with no fixed start; accelerated otherwise."""
    if speed == 1.0 and start is None:
        return RealClock()
    return AcceleratedClock(speed, start)
