"""send_notification: deliver one stored notification on one channel (a delivery row).

A delivery held back by quiet hours is dropped when its episode resolved in the meantime (the
night's alert and its "resolved" both stay in the app, nobody is woken for a closed case), and a
"resolved" goes only where the alert itself went.

A delivery that fails for good (its last attempt, or a failure no retry can fix) is counted on
the user's channel, shown with their preferences; the first such failure in a row also becomes
an in-app notification, so a broken webhook or mailbox does not go unnoticed.
"""

from __future__ import annotations

import logging
from typing import Any

from cloud.db import notifications as notes_db
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
    if row["channel"] == "webhook" and not (prefs["webhook_url"] and prefs["webhook_secret"]):
        # The user removed the webhook meanwhile: nothing is broken, there is nowhere to send.
        reason = "the webhook was removed"
        await notify_db.finish(db, delivery_id, status="skipped", reason=reason, tried=0)
        return "skipped"
    notice = _notice(row, config)
    try:
        if row["channel"] == "email":
            to = prefs["email"] or row["account_email"]
            await send_email(config.smtp, to, notice)
        else:
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
        await _failed(db, row, str(exc))
        return "failed"
    except Exception as exc:
        # A bug in a channel must not leave the delivery pending, to be queued again forever.
        log.exception("delivery %d (%s) crashed", delivery_id, row["channel"])
        await _failed(db, row, f"internal error ({type(exc).__name__})")
        return "failed"
    await notify_db.finish(db, delivery_id, status="sent")
    await notes_db.channel_ok(db, row["user_id"], row["channel"])
    return "sent"


CHANNEL_NAMES = {"email": "Email", "webhook": "Webhook"}


async def _failed(db: Database, row: dict[str, Any], error: str) -> None:
    """The delivery failed for good: mark it, count it on the channel, and on the first failure
    in a row tell the user in the app."""
    channel = row["channel"]
    if not await notify_db.finish(db, row["id"], status="failed", error=error):
        return  # finished meanwhile (a duplicate run of the job): already counted
    log.warning("delivery %d (%s) failed: %s", row["id"], channel, error)
    failures = await notes_db.channel_failed(db, row["user_id"], channel, error)
    if failures == 1:
        where = "the webhook URL" if channel == "webhook" else "the email address"
        await notes_db.add(
            db,
            user_id=row["user_id"],
            kind="delivery_failed",
            title=f"{CHANNEL_NAMES.get(channel, channel)} notifications are failing",
            body=f"The last one failed after its retries: {error[:300]}. Check {where} in your"
            " notification settings; alerts stay in the app meanwhile.",
        )
