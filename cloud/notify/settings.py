"""Settings of notifications (the ``[notify]`` section of the cloud config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class SmtpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(default=None, description="unset: email is off")
    port: int = Field(default=587, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    # STARTTLS on a plain connection (587), or TLS from the first byte (465).
    starttls: bool = True
    use_tls: bool = False
    sender: str = "smartfarm <smartfarm@localhost>"
    timeout_s: float = Field(default=15, gt=0, le=300)

    @property
    def enabled(self) -> bool:
        return self.host is not None


class NotifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # An alert still active this long after its first notification gets a reminder, then one
    # every reminder_every_min, at most max_reminders; "resolved" follows when it clears.
    reminder_after_min: float = Field(default=30, gt=0)
    reminder_every_min: float = Field(default=60, gt=0)
    max_reminders: int = Field(default=1, ge=0, le=100)
    # An alert that clears and comes back within this long continues its episode (no new
    # notification): a value hovering at a band's edge must not notify on every crossing.
    reopen_within_s: float = Field(default=600, ge=0)
    # An event older than this when it arrives (an edge that was offline uploads hours late)
    # is recorded in its episode but notifies nobody: the news is stale.
    max_event_age_min: float = Field(default=360, gt=0)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    webhook_timeout_s: float = Field(default=10, gt=0, le=120)
    # Webhooks to loopback, private and link-local addresses are refused unless allowed: a
    # user-supplied URL must not let the cloud probe its own network.
    allow_private_webhooks: bool = False
    # Links in emails and webhook payloads point here when set.
    dashboard_url: str | None = Field(default=None, pattern=r"^https?://")
