"""The exception hierarchy shared by edge and cloud for wire-level problems."""
from __future__ import annotations


class SmartfarmError(Exception):
    """Base of every error smartfarm raises on purpose."""


class TopicError(SmartfarmError, ValueError):
    """An MQTT topic that does not follow the scheme or carries an unsafe id."""


class PayloadError(SmartfarmError, ValueError):
    """A payload that is not valid for its topic kind; ``reason`` is one short line."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
