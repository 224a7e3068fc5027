"""Correcting gross edge clock errors in uploaded timestamps.

Each batch carries the edge's clock at sending (``sent_at``); the cloud measures
``offset = cloud clock at receipt − sent_at`` (network delay is small next to what matters here).
When ``|offset|`` is at most the threshold (5 min by default) every timestamp is kept as sent: the
skew is within what NTP-less devices and queueing produce anyway.

Past the threshold the edge's clock is wrong, and so is every timestamp the edge made or vetted
with it: record times (``at``), receive-time stamps (``ts_replaced`` readings) and device
timestamps the edge judged plausible against its own clock. Those are shifted by the offset. A
device timestamp that already agrees with the true clock (nearer ``at + offset`` than ``at``, i.e.
the device keeps good time and the edge does not) is kept. The same offset is applied to a whole
batch, including a backlog recorded days ago: the best estimate there is, since the edge's error
is not known for the past.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class ClockCorrection:
    offset_s: float  # cloud minus edge, seconds
    active: bool  # |offset| is past the threshold: edge-clock timestamps are shifted

    @classmethod
    def measure(cls, received_at: float, sent_at: datetime, threshold_s: float) -> ClockCorrection:
        if sent_at.tzinfo is None:  # an offset-less ISO time is UTC, not the cloud's local time
            sent_at = sent_at.replace(tzinfo=UTC)
        offset = received_at - sent_at.timestamp()
        return cls(offset_s=offset, active=abs(offset) > threshold_s)

    def record_time(self, at: float) -> float:
        """A time read on the edge's clock, in cloud time."""
        return at + self.offset_s if self.active else at

    def timestamp(self, ts: float, at: float) -> float:
        """A timestamp carried by a record made at edge time ``at``, in cloud time."""
        if not self.active:
            return ts
        if abs(ts - at) <= abs(ts - (at + self.offset_s)):
            return ts + self.offset_s
        return ts
