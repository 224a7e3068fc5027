"""Settings of the live dashboard (the ``[live]`` section of the cloud config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Readings pushed per device and second at most; faster readings are merged (newest value
    # per metric) and sent at the end of the interval. Charts gain nothing from more.
    reading_rate_hz: float = Field(default=2.0, gt=0, le=100)
    # Messages waiting for one browser; a client this far behind is dropped (close 4408) rather
    # than buffered without bound or allowed to hold up the others.
    queue_size: int = Field(default=1000, ge=8, le=100_000)
    # A single send blocked this long (the client stopped reading) also drops the client.
    send_timeout_s: float = Field(default=10, gt=0, le=300)
    # WebSocket ping interval; a client that misses the pong is disconnected.
    heartbeat_s: float = Field(default=25, gt=0, le=600)
    # Without ?token=, the first message must be {"type": "auth", "token": …} within this long.
    auth_timeout_s: float = Field(default=10, gt=0, le=120)
    max_subscriptions: int = Field(default=64, ge=1, le=10_000)
    # How often edge presence (online/offline) is re-read for the farms someone watches.
    presence_poll_s: float = Field(default=5, gt=0, le=600)
