"""What a channel sends (``Notice``) and how it fails (``DeliveryFailed``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.errors import SmartfarmError


class DeliveryFailed(SmartfarmError):
    """A channel could not deliver; ``transient`` ones are retried with backoff."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Notice:
    notification_id: int
    delivery_id: int
    kind: str
    severity: str
    title: str
    body: str
    farm_id: str | None
    room_id: str | None
    episode: dict[str, Any] | None
    created_at: datetime
    link: str | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.notification_id,
            "delivery_id": self.delivery_id,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "body": self.body,
            "farm_id": self.farm_id,
            "room_id": self.room_id,
            "episode": self.episode,
            "created_at": self.created_at.isoformat(),
            "url": self.link,
        }
