"""process_alerts: alert events → episodes → notifications, never a storm.

One episode per condition (farm, source, key): its start notifies once, a reminder follows after
``reminder_after_min`` while it lasts (at most ``max_reminders``), and "resolved" once it has
stayed resolved for ``reopen_within_s`` — a condition flapping at a band's edge continues its
episode silently instead of notifying each crossing. Every notification is stored in-app for
each farm member who may see the room; email and webhook deliveries follow each user's
preferences (severity, quiet hours, hourly cap) and are queued as send_notification jobs in the
same transaction.

``notify_alert`` is the entry point for code outside the edge sync (whose alerts arrive through
a trigger on ``edge_alerts``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Protocol

from cloud.db import alerts as alerts_db
from cloud.db import notify as notify_db
from cloud.db.database import Cursor, Database
from cloud.errors import DatabaseUnavailable
from cloud.notify import policy
from cloud.notify.settings import NotifyConfig

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
LABELS = {
    "out_of_band": "Out of band",
    "sensor_silent": "Sensor silent",
    "actuator_not_acking": "Actuator not acknowledging",
    "actuator_runaway": "Actuator running away",
    "command_failed": "Command failed",
    "edge_offline": "Edge offline",
    "rule_orphaned": "Rule without its actuator",
}
MAX_EVENTS = 1000  # per run; a backlog continues in the next run


class JobQueue(Protocol):
    """What notifications need of the job queue (``cloud.jobs.queue.JobQueue`` is one): jobs
    run notifications, so notify asks for this shape instead of importing ``cloud.jobs``."""

    async def defer(
        self,
        task: str,
        *,
        cur: Cursor | None = None,
        queueing_lock: str | None = None,
        schedule_at: datetime | None = None,
        **kwargs: Any,
    ) -> int | None: ...


async def notify_alert(
    db: Database,
    *,
    farm_id: str,
    source: str,
    key: str,
    kind: str,
    severity: str,
    message: str,
    state: str,
    room_id: str | None = None,
    device_id: str | None = None,
    at: datetime | None = None,
    queue: JobQueue | None = None,
) -> int:
    """Record an alert's start (``state`` "active") or end ("resolved"); repeats of an active
    one are harmless. With ``queue``, process_alerts runs at once instead of at the next sweep.
    The event's id."""
    event_id = await alerts_db.add_event(
        db,
        farm_id=farm_id,
        source=source,
        key=key,
        kind=kind,
        severity=policy.severity(severity),
        message=message,
        state=state,
        room_id=room_id,
        device_id=device_id,
        at=at,
    )
    if queue is not None:
        await queue.defer("process_alerts", queueing_lock="process_alerts")
    return event_id


class Episodes:
    def __init__(
        self, db: Database, queue: JobQueue, config: NotifyConfig, *, email_possible: bool
    ) -> None:
        self.db = db
        self.queue = queue
        self.config = config
        self.email_possible = email_possible

    async def run(self, *, now: datetime) -> dict[str, int]:
        """Fold pending events, send due notices; counts of what was done."""
        out = {"events": 0, "notices": 0, "requeued": 0}
        for _ in range(MAX_EVENTS):
            event: dict[str, Any] | None = None
            try:
                async with self.db.transaction() as cur:
                    claimed = await alerts_db.claim_events(cur, limit=1)
                    if not claimed:
                        break
                    event = claimed[0]
                    out["notices"] += await self._fold(cur, event, now)
                    await alerts_db.processed(cur, event["id"])
            except DatabaseUnavailable:
                raise
            except Exception:
                if event is None:
                    raise
                # One bad event must not block the ones behind it.
                log.exception("alert event %s could not be processed", event["id"])
                async with self.db.transaction() as cur:
                    await alerts_db.processed(cur, event["id"])
            out["events"] += 1
        async with self.db.transaction() as cur:
            for episode in await alerts_db.due(cur, now=now, limit=200):
                out["notices"] += await self._due(cur, episode, now)
        out["requeued"] = await self._requeue(now)
        return out

    async def _fold(self, cur: Cursor, event: dict[str, Any], now: datetime) -> int:
        cfg = self.config
        event = {**event, "severity": policy.severity(event["severity"])}
        farm, source, key, at = event["farm_id"], event["source"], event["key"], event["at"]
        # An event the edge held for hours (offline) updates the record but notifies nobody.
        fresh = now - at <= timedelta(minutes=cfg.max_event_age_min)
        if event["state"] == "active":
            current = await alerts_db.active(cur, farm, source, key)
            if current is not None:
                await alerts_db.touch(cur, current["id"], event)
                return 0
            window = timedelta(seconds=cfg.reopen_within_s)
            earlier = await alerts_db.recently_resolved(cur, farm, source, key, since=at - window)
            if earlier is not None:
                episode = await alerts_db.reopen(cur, earlier["id"], event)
                more = episode["notified"] and episode["reminders"] < cfg.max_reminders
                next_at = now + timedelta(minutes=cfg.reminder_after_min) if more else None
                await alerts_db.schedule(cur, episode["id"], next_at=next_at)
                return 0
            episode = await alerts_db.create(cur, event)
            sent = await self._notify(cur, episode, "alert", now) if fresh else 0
            more = sent > 0 and cfg.max_reminders > 0
            next_at = at + timedelta(minutes=cfg.reminder_after_min) if more else None
            await alerts_db.schedule(cur, episode["id"], next_at=next_at, notified=sent > 0)
            return sent
        current = await alerts_db.active(cur, farm, source, key)
        if current is None:
            return 0  # an end without a known start: nothing was said, nothing to take back
        episode = await alerts_db.resolve(cur, current["id"], at)
        next_at = at + timedelta(seconds=cfg.reopen_within_s) if episode["notified"] else None
        await alerts_db.schedule(cur, episode["id"], next_at=next_at)
        return 0

    async def _due(self, cur: Cursor, episode: dict[str, Any], now: datetime) -> int:
        cfg = self.config
        if episode["state"] == "resolved":
            sent = await self._notify(cur, episode, "resolved", now)
            await alerts_db.schedule(cur, episode["id"], next_at=None)
            return sent
        if episode["reminders"] >= cfg.max_reminders:
            await alerts_db.schedule(cur, episode["id"], next_at=None)
            return 0
        sent = await self._notify(cur, episode, "reminder", now)
        more = episode["reminders"] + 1 < cfg.max_reminders
        next_at = now + timedelta(minutes=cfg.reminder_every_min) if more else None
        await alerts_db.schedule(cur, episode["id"], next_at=next_at, reminded=True)
        return sent

    async def _notify(self, cur: Cursor, episode: dict[str, Any], kind: str, now: datetime) -> int:
        """Store the notice for every recipient and queue its outside deliveries; how many."""
        title, body = _text(episode, kind, now)
        level = episode["severity"]
        count = 0
        for user in await notify_db.recipients(cur, episode["farm_id"], episode["room_id"]):
            note = await notify_db.add_notification(
                cur,
                user_id=user["user_id"],
                farm_id=episode["farm_id"],
                room_id=episode["room_id"],
                kind=kind,
                title=title,
                body=body,
                severity=level,
                episode_id=episode["id"],
            )
            if note is None:
                continue
            count += 1
            prefs = policy.with_defaults(user)
            for channel in policy.channels(prefs, level, email_possible=self.email_possible):
                await self._deliver(cur, note["id"], user["user_id"], channel, prefs, level, now)
        return count

    async def _deliver(
        self,
        cur: Cursor,
        notification_id: int,
        user_id: int,
        channel: str,
        prefs: dict[str, Any],
        level: str,
        now: datetime,
    ) -> None:
        status, reason = "pending", None
        not_before = policy.hold(prefs, level, now)
        if not_before is not None:
            reason = "quiet hours"
        if await notify_db.sent_since(cur, user_id, now - HOUR) >= prefs["max_per_hour"]:
            status, reason = "suppressed", f"rate cap ({prefs['max_per_hour']} an hour)"
        delivery = await notify_db.add_delivery(
            cur,
            notification_id=notification_id,
            user_id=user_id,
            channel=channel,
            status=status,
            reason=reason,
            not_before=not_before,
        )
        if status == "pending":
            job = await self.queue.defer(
                "send_notification", cur=cur, schedule_at=not_before, delivery_id=delivery
            )
            await notify_db.set_job(cur, delivery, job)

    async def _requeue(self, now: datetime) -> int:
        """Deliveries whose job vanished (deleted with old jobs, lost to a crash): queue again."""
        count = 0
        for row in await notify_db.orphans(self.db, before=now - timedelta(minutes=5)):
            async with self.db.transaction() as cur:
                job = await self.queue.defer(
                    "send_notification",
                    cur=cur,
                    schedule_at=row["not_before"],
                    delivery_id=row["id"],
                )
                await notify_db.set_job(cur, row["id"], job)
            count += 1
        return count


def _where(episode: dict[str, Any]) -> str:
    return str(episode["room_id"] or episode["device_id"] or episode["farm_id"])


def _text(episode: dict[str, Any], kind: str, now: datetime) -> tuple[str, str]:
    label = LABELS.get(episode["kind"], episode["kind"].replace("_", " ").capitalize())
    where = _where(episode)
    since = episode["started_at"]
    if kind == "alert":
        return f"{label}: {where}", episode["message"]
    if kind == "reminder":
        minutes = (now - since).total_seconds() / 60
        return (
            f"Still {label.lower()}: {where}",
            f"{episode['message']} (for {minutes:.0f} min, since {since:%Y-%m-%d %H:%M} UTC)",
        )
    ended = episode["resolved_at"] or now
    minutes = (ended - since).total_seconds() / 60
    return (
        f"Resolved: {label.lower()}, {where}",
        f"{episode['message']} — back to normal after {minutes:.0f} min",
    )
