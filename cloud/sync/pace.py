"""Server-driven pacing of edge batches: when this instance answers batches slowly, it asks the
edges to let their readings gather longer before the next batch.

Most of what a batch costs (the request, its transaction, the commit, the answer) is paid per
batch, not per reading: 1,000 edges sending a batch every 2 s cost the cloud and PostgreSQL far
more than the same readings in batches every 4 s. So under load, each answer to a batch carries
the header ``X-Smartfarm-Batch-Interval`` (seconds): the edge waits at least that long, instead
of its own ``batch_max_age_s``, before sending readings that are not urgent. Commands, acks,
alerts and config changes still go at once, and a full batch (a backlog) still goes without
waiting; nothing is dropped or refused, readings only reach the dashboards a little later. An
answer without the header means "your own setting": edges go back to it as soon as the load
falls.

The signal is what an edge feels: the p90 time this instance took to store a batch (pool wait,
transaction, commit) plus the p90 lag of its event loop (requests waiting to be read), over a
window. Above ``high_s`` the interval grows by a quarter (from the floor, ``floor_s``: the
edges' default age, below which asking is pointless); below ``low_s`` it shrinks by a tenth and
is dropped under the floor; in between it holds. After each change it holds for at least the
interval it asked for, the time every edge needs to have heard it and acted on it, so it never
piles increase on increase before the first one could show.

Latency says little below the load this instance can take and jumps past it (queues grow), so
a controller that only followed it would keep stepping over that cliff and back, every step a
burst of slow answers. So the interval at which batches became slow (the onset, not the larger
ones asked while the queue drained) is remembered until ``memory_s`` after the last slow window,
and the interval does not shrink below a tenth above it meanwhile: asking for slightly older
readings on the dashboards costs little, slow answers cost every edge.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable

from shared.sync import BATCH_INTERVAL_HEADER

log = logging.getLogger(__name__)

HEADER = BATCH_INTERVAL_HEADER
MIN_SAMPLES = 5  # fewer batches than this in a window: too few to judge, the interval holds
GROW = 1.25
SHRINK = 0.9
CLIFF_MARGIN = 1.1
JITTER = 0.2


def _p90(samples: list[float]) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


class BatchPacer:
    """One per instance (``EdgeSync.pacer``). ``observe`` each stored batch's time and each loop
    lag sample; ``interval_s()`` is what the next answer asks for (0: nothing)."""

    def __init__(
        self,
        *,
        high_s: float = 0.06,
        low_s: float = 0.02,
        max_s: float = 30.0,
        floor_s: float = 2.0,
        window_s: float = 2.0,
        memory_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < low_s < high_s:
            raise ValueError("pacing needs 0 < low_s < high_s")
        self.high_s, self.low_s, self.max_s = high_s, low_s, max_s
        self.floor_s, self.window_s, self.memory_s = floor_s, window_s, memory_s
        self._clock = clock
        self._random = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self._interval = 0.0
        self._batches: list[float] = []
        self._lags: list[float] = []
        self._window_from = clock()
        self._hold_until = 0.0
        self._cliff, self._cliff_at = 0.0, -math.inf  # the interval batches became slow at
        self._slow = False
        self.last_signal_s = 0.0

    @property
    def enabled(self) -> bool:
        return self.max_s > 0

    def observe(self, batch_s: float) -> None:
        """A batch was stored here in ``batch_s`` seconds (from its handler's start)."""
        self._batches.append(batch_s)
        self._roll()

    def observe_lag(self, lag_s: float) -> None:
        """The event loop ran a timer ``lag_s`` seconds late."""
        self._lags.append(lag_s)

    def interval_s(self) -> float:
        """Seconds the edges should let readings gather (0: their own setting)."""
        self._roll()
        return self._interval

    def _roll(self) -> None:
        now = self._clock()
        if now - self._window_from < self.window_s:
            return
        batches, lags = self._batches, self._lags
        self._batches, self._lags, self._window_from = [], [], now
        if not self.enabled or len(batches) < MIN_SAMPLES:
            if self._interval and not batches:  # no batches at all: nothing to pace
                self._set(0.0, now, 0.0)
            return
        signal = _p90(batches) + _p90(lags)
        self.last_signal_s = signal
        slow = signal > self.high_s
        if slow:
            if not self._slow:  # the onset: the interval at which batches became slow
                self._cliff = max(self._interval, self.floor_s)
            self._cliff_at = now  # remembered from the last slow window on
        self._slow = slow
        if now < self._hold_until:
            return
        if slow:  # too fast for this instance: back off
            self._set(min(self.max_s, max(self._interval, self.floor_s) * GROW), now, signal)
        elif signal < self.low_s and self._interval:
            shrunk = self._interval * SHRINK
            if now - self._cliff_at < self.memory_s:  # not back over the cliff so soon
                shrunk = max(shrunk, min(self._interval, self._cliff * CLIFF_MARGIN))
            self._set(shrunk if shrunk >= self.floor_s else 0.0, now, signal)

    def _set(self, interval: float, now: float, signal: float) -> None:
        if interval == self._interval:
            return
        log.log(
            logging.INFO if (interval == 0) != (self._interval == 0) else logging.DEBUG,
            "edge batches take %.0f ms (p90, loop lag included): asking edges for a batch every"
            " %.1f s (was %.1f; 0 = their own setting)",
            signal * 1000, interval, self._interval,
        )
        self._interval = interval
        self._hold_until = now + max(self.window_s, interval)

    def header(self) -> dict[str, str]:
        """The answer's header asking for the interval, or none. Each answer asks for the
        interval give or take a fifth, at random: edges whose batches were answered together
        (after a stall, or when the interval changed) would otherwise go on sending together,
        in bursts that make batches slow again although the average load is low."""
        interval = self.interval_s()
        if not interval:
            return {}
        return {HEADER: f"{interval * self._random.uniform(1 - JITTER, 1 + JITTER):.2f}"}

    async def watch_loop(self, every_s: float = 0.1) -> None:
        """Sample this event loop's lag until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + every_s
            await asyncio.sleep(every_s)
            self.observe_lag(max(0.0, loop.time() - due))
