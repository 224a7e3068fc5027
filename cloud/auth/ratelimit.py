"""In-process rate limits: sliding windows (per IP, per token), token buckets (unauthenticated
requests per client address) and progressive login delays (per account and address).

Per instance: with N cloud instances a client gets at most N× the limit, which is still a hard
bound against password guessing; a shared store can replace this class behind the same interface.
"""

from __future__ import annotations

import time
from collections import deque

from cloud.errors import RateLimited

_MAX_KEYS = 100_000  # bound memory under a spray of distinct keys


class SlidingWindow:
    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._hits: dict[str, deque[float]] = {}

    def _prune(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= _MAX_KEYS:
                self._evict(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        return hits

    def _evict(self, now: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window_s]:
            del self._hits[key]
        if len(self._hits) >= _MAX_KEYS:
            self._hits.clear()

    def check(self, key: str, *, now: float | None = None) -> None:
        """Raise RateLimited (with Retry-After) when ``key`` is at its limit; record nothing."""
        now = time.monotonic() if now is None else now
        hits = self._prune(key, now)
        if len(hits) >= self.limit:
            raise RateLimited(hits[0] + self.window_s - now)

    def hit(self, key: str, *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._prune(key, now).append(now)

    def take(self, key: str, *, now: float | None = None) -> None:
        """check + hit in one step."""
        now = time.monotonic() if now is None else now
        self.check(key, now=now)
        self.hit(key, now=now)

    def reset(self, key: str) -> None:
        self._hits.pop(key, None)


class TokenBucket:
    """Per key, a bucket of ``capacity`` tokens refilled at ``per_s`` a second; each request
    takes one. Bursts up to ``capacity`` pass, a steady flood gets ``per_s`` a second."""

    def __init__(self, capacity: int, per_s: float) -> None:
        self.capacity = capacity
        self.per_s = per_s
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of)

    def _level(self, key: str, now: float) -> float:
        tokens, since = self._buckets.get(key, (float(self.capacity), now))
        return min(float(self.capacity), tokens + (now - since) * self.per_s)

    def take(self, key: str, *, now: float | None = None) -> None:
        """Take a token for ``key``, or raise RateLimited (Retry-After: until one is back)."""
        now = time.monotonic() if now is None else now
        tokens = self._level(key, now)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            raise RateLimited((1 - tokens) / self.per_s)
        if key not in self._buckets and len(self._buckets) >= _MAX_KEYS:
            self._evict(now)
        self._buckets[key] = (tokens - 1, now)

    def _evict(self, now: float) -> None:
        for key in [k for k in self._buckets if self._level(k, now) >= self.capacity]:
            del self._buckets[key]
        if len(self._buckets) >= _MAX_KEYS:
            self._buckets.clear()


class LoginThrottle:
    """Failed logins per (account, client address): the first ``free`` are answered at once,
    then each further attempt from there waits 1 s after the last failure, doubling per failure
    up to ``max_delay_s``; a success forgets the pair, and so does ``forget_s`` without a
    failure. Keyed by the pair, never by the account alone: a guesser slows only themselves,
    and the account's owner, from another address, gets in at once."""

    def __init__(self, free: int, *, max_delay_s: float, forget_s: float) -> None:
        self.free = free
        self.max_delay_s = max_delay_s
        self.forget_s = forget_s
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}  # -> (count, last)

    def check(self, key: tuple[str, str], *, now: float | None = None) -> None:
        """Raise RateLimited (Retry-After: the rest of the wait) while ``key`` must wait."""
        now = time.monotonic() if now is None else now
        found = self._failures.get(key)
        if found is None:
            return
        count, last = found
        if now - last >= self.forget_s:
            del self._failures[key]
            return
        if count < self.free:
            return
        wait = min(self.max_delay_s, 2.0 ** (count - self.free))
        if now < last + wait:
            raise RateLimited(last + wait - now, "too many failed logins from this address;"
                              " wait before trying again")

    def fail(self, key: tuple[str, str], *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if key not in self._failures and len(self._failures) >= _MAX_KEYS:
            self._evict(now)
        count, _ = self._failures.get(key, (0, now))
        self._failures[key] = (count + 1, now)

    def reset(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)

    def _evict(self, now: float) -> None:
        for key in [k for k, (_, last) in self._failures.items() if now - last >= self.forget_s]:
            del self._failures[key]
        if len(self._failures) >= _MAX_KEYS:
            self._failures.clear()
