"""send_notification: deliver one stored notification on one channel (a delivery row).

A delivery held back by quiet hours is dropped when its episode resolved in the meantime (the
night's alert and its "resolved" both stay in the app, nobody is woken for a closed case), and a
"resolved" goes only where the alert itself went.
"""

from __future__ import annotations

import logging
from typing import Any

from cloud.db import notify as notify_db
from cloud.db.database import Database
from cloud.notify import policy
from cloud.notify.delivery import DeliveryFailed, Notice
from cloud.notify.email import send_email
from cloud.notify.settings import NotifyConfig
from cloud.notify.webhook import send_webhook

log = logging.getLogger(__name__)

ALERT_SENT = """
SELECT 1 FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
WHERE n.episode_id = %(episode_id)s AND n.kind = 'alert' AND d.user_id = %(user_id)s
  AND d.channel = %(channel)s AND d.status = 'sent' LIMIT 1"""


def _notice(row: dict[str, Any], config: NotifyConfig) -> Notice:
    link = None
    if config.dashboard_url and row["room_id"]:
        link = f"{config.dashboard_url.rstrip('/')}/rooms/{row['room_id']}"
    episode = None
    if row["episode_id"] is not None:
        episode = {
            "id": row["episode_id"],
            "key": row["episode_key"],
            "state": row["episode_state"],
        }
    return Notice(
        notification_id=row["notification_id"],
        delivery_id=row["id"],
        kind=row["kind"],
        severity=row["severity"],
        title=row["title"],
        body=row["body"],
        farm_id=row["farm_id"],
        room_id=row["room_id"],
        episode=episode,
        created_at=row["created_at"],
        link=link,
    )


async def _skip_reason(db: Database, row: dict[str, Any]) -> str | None:
    if row["episode_id"] is None:
        return None
    if row["kind"] in ("alert", "reminder") and row["not_before"] is not None:
        if row["episode_state"] == "resolved":
            return "resolved during quiet hours"
    if row["kind"] == "resolved":
        params = {
            "episode_id": row["episode_id"],
            "user_id": row["user_id"],
            "channel": row["channel"],
        }
        if await db.fetch_one(ALERT_SENT, params) is None:
            return "the alert was not sent on this channel"
    return None


async def send_notification(
    db: Database, config: NotifyConfig, delivery_id: int, *, last_attempt: bool
) -> str:
    """Deliver; the outcome. A transient failure raises DeliveryFailed (to be retried) unless
    this is the last attempt, which marks the delivery failed."""
    row = await notify_db.for_send(db, delivery_id)
    if row is None or row["status"] != "pending":
        return "not pending"
    skip = await _skip_reason(db, row)
    if skip is not None:
        await notify_db.finish(db, delivery_id, status="skipped", reason=skip, tried=0)
        return "skipped"
    prefs = policy.with_defaults(row)
    notice = _notice(row, config)
    try:
        if row["channel"] == "email":
            to = prefs["email"] or row["account_email"]
            await send_email(config.smtp, to, notice)
        else:
            if not prefs["webhook_url"] or not prefs["webhook_secret"]:
                raise DeliveryFailed("no webhook URL or secret any more", transient=False)
            await send_webhook(
                prefs["webhook_url"],
                prefs["webhook_secret"],
                notice,
                timeout_s=config.webhook_timeout_s,
                allow_private=config.allow_private_webhooks,
            )
    except DeliveryFailed as exc:
        if exc.transient and not last_attempt:
            await notify_db.tried(db, delivery_id, str(exc))
            log.info("delivery %d (%s) failed, will retry: %s", delivery_id, row["channel"], exc)
            raise
        await notify_db.finish(db, delivery_id, status="failed", error=str(exc))
        log.warning("delivery %d (%s) failed: %s", delivery_id, row["channel"], exc)
        return "failed"
    await notify_db.finish(db, delivery_id, status="sent")
    return "sent"
