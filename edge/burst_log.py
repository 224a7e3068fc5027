"""Refused messages logged without flooding the log: the first of a burst at WARNING, then one
summary per window with counts by reason (the quarantine table keeps every one of them)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Final

log = logging.getLogger("edge.ingest")  # the ingest's refusals, under the ingest's name

BURST_WINDOW_S: Final = 10.0


class BurstLog:
    """Log the first refused message of a burst at WARNING, then one summary per window."""

    def __init__(self, window_s: float = BURST_WINDOW_S) -> None:
        self.window_s = window_s
        self._opened: float | None = None
        self._suppressed: Counter[str] = Counter()

    def note(self, now: float, kind: str, topic: str, reason: str) -> None:
        if self._opened is not None and now - self._opened < self.window_s:
            self._suppressed[kind] += 1
            return
        self.flush()
        self._opened = now
        log.warning("quarantined a message on %.200r (%s): %s", topic, kind, reason)

    def flush(self, now: float | None = None) -> None:
        """Log the summary of the window (if it has closed, when ``now`` is given)."""
        if now is not None and self._opened is not None and now - self._opened < self.window_s:
            return
        total = sum(self._suppressed.values())
        if total:
            detail = ", ".join(f"{k}: {n}" for k, n in self._suppressed.most_common())
            log.warning(
                "%d more messages quarantined in the last %.0f s (%s)", total, self.window_s, detail
            )
        self._suppressed.clear()
        if now is not None:
            self._opened = None
