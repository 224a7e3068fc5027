"""Commands to actuators: publish (QoS 1, never retained), track to the ack, retry, time out.

A command is recorded `pending`, published to the device's command topic, and retried with
exponential backoff (tenacity) until an ack arrives or the attempts run out; then it is
`timed_out` and an alert is raised. A newer command for the same device supersedes older ones.
Command rows and their state changes reach the cloud through the outbox triggers (schema.sql);
acks, which have no table, are appended here in the same write as the state they settle.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from edge.store import commands as command_rows
from edge.store import outbox as outbox_rows
from edge.store import quarantine as quarantine_rows
from edge.store.db import Database
from shared.models import Ack, Command, FirmwareOffer, dump, utcnow
from shared.sync import AckData
from shared.topics import build_topic

log = logging.getLogger(__name__)


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...


class NotConnected(ConnectionError):
    """No MQTT connection to publish on right now."""


class AckTimeout(TimeoutError):
    """The device did not ack within the timeout."""


@dataclass(slots=True)
class CommandStats:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    timed_out: int = 0
    retries: int = 0
    wrong_device_acks: int = 0  # acks for a command sent to another device (quarantined)


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    command_id: str
    device_id: str
    state: str  # acked | failed | timed_out | superseded
    error: str | None = None
    ack: Ack | None = None


OutcomeHandler = Callable[[CommandOutcome], Awaitable[None]]


def _wrong_device_reason(ack: Ack, device_id: str, sent_to: str) -> str:
    return (f"ack for command {ack.command_id} from device {device_id}, which was sent to"
            f" {sent_to}")


def _ack_record(conn: Any, device_id: str, ack: Ack, at: float) -> None:
    data = AckData(command_id=ack.command_id, device_id=device_id, status=ack.status, at=at,
                   error=ack.error)
    outbox_rows.append(conn, data, at)


class CommandTracker:
    def __init__(
        self,
        db: Database,
        *,
        farm_id: str,
        ack_timeout_s: float = 10.0,
        retries: int = 3,
        on_outcome: OutcomeHandler | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._farm_id = farm_id
        self._ack_timeout_s = ack_timeout_s
        self._attempts = retries + 1
        self._on_outcome = on_outcome
        self._clock = clock
        self._publisher: Publisher | None = None
        self._waiters: dict[str, asyncio.Future[Ack]] = {}
        self._sent_to: dict[str, str] = {}  # command id -> device, while its ack is awaited
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._latest_by_device: dict[str, str] = {}
        self.latency_s: list[float] = []
        # Called with each publish → ack latency (the edge's /metrics histogram listens here).
        self.latency_observers: list[Callable[[float], None]] = []
        # Called with (device id, ack) for every ack a device sends, early or late (the firmware
        # updates listen for an `ota` command's error ack, which may follow its `ok`).
        self.ack_observers: list[Callable[[str, Ack], None]] = []
        self.stats = CommandStats()

    # ---- connection ----
    def attach(self, publisher: Publisher | None) -> None:
        self._publisher = publisher

    @property
    def connected(self) -> bool:
        return self._publisher is not None

    # ---- sending ----
    async def send(
        self,
        *,
        device_id: str,
        room_id: str,
        action: str,
        value: Any = None,
        source: str,
        reason: str = "",
        cloud_command_id: str | None = None,
        firmware: FirmwareOffer | None = None,
    ) -> str:
        """Record and publish a command; retries and the outcome run in the background.

        With ``cloud_command_id`` the command carries out that cloud command: it is recorded
        with source "cloud" and linked to the cloud's id (its outbox records then name it)."""
        now = self._clock()
        command = Command(
            command_id=uuid.uuid4().hex[:20],
            device_id=device_id,
            action=action,  # type: ignore[arg-type]
            value=value,
            timestamp=now,
            firmware=firmware,
        )
        cid = command.command_id
        ts = now.timestamp()
        previous = self._latest_by_device.get(device_id)
        self._latest_by_device[device_id] = cid
        cloud_id = cloud_command_id
        if cloud_id is not None:
            source = "cloud"

        def record(conn: Any) -> None:
            if cloud_id is not None:  # first, so the command record's trigger finds the link
                outbox_rows.link_cloud_command(conn, cloud_id, cid, "delivered", ts)
            command_rows.insert_command(
                conn, command_id=cid, device_id=device_id, room_id=room_id, action=action,
                value=value, source=source, reason=reason, created_at=ts,
            )
            command_rows.supersede_pending(conn, device_id, cid, ts)

        # Queued, not awaited: the command reaches the device without waiting for a group commit
        # (the writer is FIFO, so its later state changes still land after this insert).
        self._db.write_nowait(record)
        if previous and previous in self._tasks:
            self._tasks[previous].cancel()
        self._waiters[cid] = asyncio.get_running_loop().create_future()
        self._sent_to[cid] = device_id
        task = asyncio.create_task(
            self._deliver(command, room_id), name=f"command-{device_id}-{cid}"
        )
        self._tasks[cid] = task
        task.add_done_callback(functools.partial(self._done, cid))
        self.stats.sent += 1
        log.info("command %s → %s %s (%s: %s)", cid, device_id, action, source, reason)
        return cid

    async def _deliver(self, command: Command, room_id: str) -> None:
        cid = command.command_id
        topic = build_topic(self._farm_id, room_id, "command", command.device_id)
        payload = dump(command)
        started = asyncio.get_running_loop().time()
        waiter = self._waiters[cid]
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._attempts),
                wait=wait_exponential_jitter(initial=1, max=30, jitter=1),
                retry=retry_if_exception_type((AckTimeout, NotConnected)),
                reraise=False,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.stats.retries += 1
                    await self._publish_once(cid, topic, payload)
                    try:
                        ack = await asyncio.wait_for(
                            asyncio.shield(waiter), self._ack_timeout_s
                        )
                    except TimeoutError:
                        raise AckTimeout(cid) from None
        except RetryError:
            await self._finish(cid, command.device_id, "timed_out",
                               f"no ack after {self._attempts} attempt(s)")
            return
        except asyncio.CancelledError:
            # Superseded by a newer command for the same device (already marked in the DB).
            self._waiters.pop(cid, None)
            self._sent_to.pop(cid, None)
            raise
        latency = asyncio.get_running_loop().time() - started
        self.latency_s.append(latency)
        del self.latency_s[:-1000]
        for observe in self.latency_observers:
            observe(latency)
        if ack.status == "ok":
            await self._finish(cid, command.device_id, "acked", None, ack)
        else:
            await self._finish(cid, command.device_id, "failed", ack.error or "device error", ack)

    def _done(self, cid: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(cid, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivering command %s failed", cid, exc_info=task.exception())

    async def _publish_once(self, cid: str, topic: str, payload: bytes) -> None:
        publisher = self._publisher
        if publisher is None:
            raise NotConnected("no broker connection")
        self._db.write_nowait(command_rows.mark_attempt, cid, self._clock().timestamp())
        try:
            await publisher.publish(topic, payload, qos=1, retain=False)
        except Exception as exc:  # the broker went away mid-publish: retry like a timeout
            raise NotConnected(str(exc)) from exc

    async def _finish(
        self, cid: str, device_id: str, state: str, error: str | None, ack: Ack | None = None
    ) -> None:
        self._waiters.pop(cid, None)
        self._sent_to.pop(cid, None)
        at = self._clock().timestamp()

        def settle(conn: Any) -> bool:
            if ack is not None:
                _ack_record(conn, device_id, ack, at)
            return command_rows.set_state(conn, cid, state, at, error=error)

        # Urgent: a cloud user waits for this state (within a second), not for the group commit.
        changed = await self._db.write(settle, urgent=True)
        if not changed:
            return
        setattr(self.stats, state, getattr(self.stats, state) + 1)
        if state != "acked":
            log.warning("command %s to %s %s: %s", cid, device_id, state, error)
        if self._on_outcome is not None:
            try:
                await self._on_outcome(CommandOutcome(cid, device_id, state, error, ack))
            except Exception:
                log.exception("command outcome handler failed for %s", cid)

    # ---- acks from ingest ----
    async def on_ack(self, device_id: str, ack: Ack, *, topic: str = "") -> None:
        """An ack from ``device_id`` (the device of the topic it came on, which the broker lets
        only that device publish on). It settles a command only if that command was sent to
        this device; otherwise it is quarantined (``topic`` recorded with it) and counted, and
        the command keeps waiting for its own device."""
        for observe in self.ack_observers:
            try:
                observe(device_id, ack)
            except Exception:
                log.exception("ack observer failed for %s", ack.command_id)
        sent_to = self._sent_to.get(ack.command_id)
        if sent_to is not None and sent_to != device_id:
            self._wrong_device(device_id, sent_to, ack, topic)
            return
        waiter = self._waiters.get(ack.command_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(ack)
            return
        # A late ack (after a retry or a restart): record it if the command is still open and
        # was sent to this device (the stored command says which).
        state = "acked" if ack.status == "ok" else "failed"
        at = self._clock().timestamp()

        def settle(conn: Any) -> str | None:
            row = command_rows.get(conn, ack.command_id)
            if row is not None and row["device_id"] != device_id:
                quarantine_rows.insert(conn, topic, dump(ack),
                                       _wrong_device_reason(ack, device_id, row["device_id"]), at)
                return str(row["device_id"])
            _ack_record(conn, device_id, ack, at)
            command_rows.set_state(conn, ack.command_id, state, at, error=ack.error)
            return None

        def counted(ok: bool, sent_to: Any) -> None:
            if ok and sent_to is not None:
                self._count_wrong_device(device_id, sent_to, ack)

        self._db.write_nowait(settle, on_done=counted)

    def _wrong_device(self, device_id: str, sent_to: str, ack: Ack, topic: str) -> None:
        reason = _wrong_device_reason(ack, device_id, sent_to)
        self._db.write_nowait(
            quarantine_rows.insert, topic, dump(ack), reason, self._clock().timestamp()
        )
        self._count_wrong_device(device_id, sent_to, ack)

    def _count_wrong_device(self, device_id: str, sent_to: str, ack: Ack) -> None:
        self.stats.wrong_device_acks += 1
        log.warning("ack for command %s from device %s, which was sent to %s: quarantined",
                    ack.command_id, device_id, sent_to)

    def pending_count(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
