"""Jittered, capped exponential backoff for every reconnect loop (edge and cloud), on tenacity's
wait strategies. Pure: it says how long to wait; the caller sleeps.

A delay is drawn from [cap/2, cap], cap = min(max_s, initial_s × 2^(failures-1)): half of it
grows steadily, half is random, so a farm's clients that lost the broker together do not come
back together, and none of them waits much less than the schedule says.
"""
from __future__ import annotations

from tenacity import RetryCallState, Retrying
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential


class Backoff:
    """``delay()`` after each failure, ``reset()`` after a success (a connection that came up).
    ``failures``: how many since the last reset."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        if initial_s < 0 or max_s < 0:
            raise ValueError("backoff: initial_s and max_s must be >= 0")
        self.initial_s = initial_s
        self.max_s = max_s
        half, half_max = initial_s / 2, max_s / 2
        # Steady half plus random half: uniform(cap/2, cap) (tenacity waits add up).
        self._wait: wait_base = wait_exponential(multiplier=half, max=half_max) + (
            wait_random_exponential(multiplier=half, max=half_max)
        )
        self._state = RetryCallState(Retrying(), None, (), {})
        self.failures = 0

    def delay(self) -> float:
        """Count a failure; the seconds to wait before the next attempt."""
        self.failures += 1
        self._state.attempt_number = self.failures
        return float(self._wait(self._state))

    def reset(self) -> None:
        """A success: the next failure waits ``initial_s`` (or so) again."""
        self.failures = 0
