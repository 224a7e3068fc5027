"""Every place the edge reaches into amqtt's internals, in one module, for the amqtt version it
was written for (AMQTT_VERSION). tests/unit/test_amqtt_patches.py fails loudly on any other
version, and checks that each internal used here still exists with the shape relied on; the
broker logs an error at start if another version is installed.

What is patched, and why:
- ``EdgeBrokerConfig``: amqtt reads ``max-qos`` through BrokerConfig.get(); the stock dataclass
  has no such field.
- ``SnapshotDict``: amqtt iterates its subscription map across awaits; a client subscribing
  meanwhile raised "dictionary changed size during iteration" and lost the message in flight.
- ``GatedHandler``: every incoming PUBLISH goes through the edge's intake *before* amqtt
  acknowledges it (amqtt sends PUBACK once a message is queued for broadcast, and checks the ACL
  only later, dropping a denied message it already acknowledged).
- ``PatchedBroker``: installs that handler; skips the broadcast of a stored message no one
  subscribes to; delivers what a client published just before it disconnected (amqtt dropped
  messages already acknowledged but still queued); exposes the backlog for a clean shutdown.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final

from amqtt.broker import Broker
from amqtt.contexts import Action, BrokerConfig
from amqtt.mqtt.constants import QOS_0, QOS_1
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import INCOMING

from edge.broker_acl import DeviceTopicPlugin
from edge.store import StoreError

if TYPE_CHECKING:
    from edge.intake import Intake

log = logging.getLogger(__name__)

AMQTT_VERSION: Final = "0.12.1"


def amqtt_version() -> str | None:
    try:
        return version("amqtt")
    except PackageNotFoundError:
        return None


def check_amqtt_version() -> bool:
    """False (and an error logged) when the installed amqtt is not the one these patches were
    written for: they reach into its internals, which change between releases."""
    found = amqtt_version()
    if found == AMQTT_VERSION:
        return True
    log.error("amqtt %s is installed; the edge's broker patches (edge/amqtt_patches.py) were "
              "written for %s: pin amqtt==%s or re-check every patch", found, AMQTT_VERSION,
              AMQTT_VERSION)
    return False


def pending_deliveries(broker: Broker) -> int:
    """Messages accepted from a publisher but not yet handed to every subscriber (queued for
    broadcast, or a delivery still in flight); amqtt has no public accessor."""
    queued: int = broker._broadcast_queue.qsize()
    return queued + sum(1 for task in broker._tasks_queue if not task.done())


class ShutdownCancelFilter(logging.Filter):
    """amqtt logs its broadcast loop's cancellation as an error with a traceback ("Broadcast
    loop stopped by exception"): its shutdown cancels the loop when it has not ended within 5 s,
    as on a loaded Pi stopping. An expected stop is not an error: say it at INFO, no traceback,
    so the edge's log keeps tracebacks for what went wrong."""

    MESSAGE: Final = "Broadcast loop stopped by exception"

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.msg == self.MESSAGE and isinstance(exc, asyncio.CancelledError):
            record.msg, record.args = "broadcast loop cancelled at shutdown", ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


_SHUTDOWN_CANCEL_FILTER: Final = ShutdownCancelFilter()
logging.getLogger("amqtt.broker").addFilter(_SHUTDOWN_CANCEL_FILTER)


@dataclass
class EdgeBrokerConfig(BrokerConfig):  # type: ignore[misc]  # amqtt is untyped
    # amqtt reads `max-qos` through BrokerConfig.get(); the stock dataclass has no such field.
    max_qos: int = 1


class SnapshotDict(dict[str, Any]):
    """amqtt 0.12 iterates its subscription map across awaits (broadcast, retained replay): a
    client subscribing meanwhile raised "dictionary changed size during iteration" and the
    message being broadcast was lost. Iterating a snapshot keeps every delivery."""

    version = 0  # bumped on every change of the map (see PatchedBroker.unheard)

    def __iter__(self) -> Any:
        return iter(list(super().keys()))

    def items(self) -> Any:
        return list(super().items())

    def __setitem__(self, key: str, value: Any) -> None:
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.version += 1
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self.version += 1
        return super().pop(key, *default)


class GatedHandler(BrokerProtocolHandler):  # type: ignore[misc]
    """amqtt's per-client protocol handler, with every incoming PUBLISH passed through the
    broker's gate *before* the acknowledgement (amqtt itself sends PUBACK as soon as the message
    is queued for broadcast, and checks the ACL only later, dropping a denied message after it
    was acknowledged)."""

    gate: Callable[[Any, Any], Awaitable[bool]]
    unheard: Callable[[str], bool]

    async def _handle_message_flow(self, app_message: Any) -> None:
        if app_message.direction != INCOMING or self.session is None:
            await super()._handle_message_flow(app_message)
            return
        try:
            deliver = await self.gate(self.session, app_message)
        except StoreError:
            # Not on disk: no acknowledgement. Dropping the connection makes the device send it
            # again (unacknowledged QoS 1 messages are resent on reconnect).
            if self.writer is not None:
                await self.writer.close()
            return
        if deliver and (app_message.publish_packet is None
                        or app_message.publish_packet.retain_flag
                        or not self.unheard(app_message.topic)):
            await super()._handle_message_flow(app_message)
        elif app_message.qos == QOS_1:  # refused (quarantined), or stored and nobody else
            # subscribes to it: acknowledged, not queued for a broadcast to no one
            puback = PubackPacket.build(app_message.packet_id)
            await self._send_packet(puback)
            app_message.puback_packet = puback
        elif app_message.qos != QOS_0:
            await super()._handle_message_flow(app_message)  # amqtt's own ACL drops it


class PatchedBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt 0.12 with the edge's intake in front of every acknowledgement (``intake``; see
    GatedHandler and edge.intake) and one fix: it dropped what a client published just before
    it disconnected (messages already acknowledged but still queued for broadcast died with the
    client's message loop). A device that saw its PUBACK must not lose the reading, so they go
    out first, through the same checks (topic, ACL) as any other publish."""

    def __init__(self, config: BrokerConfig, *, intake: Intake | None = None) -> None:
        super().__init__(config)
        self._subscriptions: SnapshotDict = SnapshotDict(self._subscriptions)
        self.intake = intake
        self._unheard: dict[str, bool] = {}
        self._unheard_version = -1
        self._acl_plugin: DeviceTopicPlugin | None = None

    async def _initialize_client_session(self, *args: Any) -> Any:
        handler, session = await super()._initialize_client_session(*args)
        if self.intake is not None:
            handler.__class__ = GatedHandler  # same state, one method more
            handler.gate = self._gate
            handler.unheard = self.unheard
        return handler, session

    def _acl(self) -> DeviceTopicPlugin:
        if self._acl_plugin is None:
            self._acl_plugin = next(
                p for p in self.plugins_manager.plugins if isinstance(p, DeviceTopicPlugin))
        return self._acl_plugin

    def unheard(self, topic: str) -> bool:
        """No subscription matches ``topic`` (so a broadcast would reach no one). The answer per
        topic is kept until the subscription map changes: amqtt's broadcast costs a task, a
        wait and a match against every filter per message, for readings nobody but the
        intake (which already has them) takes."""
        subscriptions = self._subscriptions
        version = getattr(subscriptions, "version", None)
        if version is None:
            return False
        if version != self._unheard_version:
            self._unheard.clear()
            self._unheard_version = version
        found = self._unheard.get(topic)
        if found is None:
            if len(self._unheard) >= 4096:
                self._unheard.clear()
            found = self._unheard[topic] = not any(
                self._matches(topic, a_filter) for a_filter in subscriptions)
        return found

    async def _gate(self, session: Any, message: Any) -> bool:
        """Hand one incoming PUBLISH to the intake and wait until what it wrote is committed;
        whether to deliver it (False: refused by the ACL, quarantined)."""
        assert self.intake is not None
        topic = message.topic or ""
        # Synchronous, so that a client's messages reach the intake in the order they came.
        permitted = self._acl().allowed(session.username, topic, Action.PUBLISH)
        packet = message.publish_packet
        done = self.intake.admit(
            topic, bytes(message.data or b""), permitted=permitted,
            redelivery=bool(packet is not None and packet.dup_flag), wait=message.qos != QOS_0,
            username=session.username,
        )
        if done is not None:
            await done
        return permitted

    async def _handle_disconnect(self, client_session: Any, handler: Any,
                                 disconnect_waiter: asyncio.Future[Any]) -> None:
        queue = client_session.delivered_message_queue
        while not queue.empty():
            delivered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            delivered.set_result(queue.get_nowait())
            await self._handle_message_delivery(client_session, handler, delivered)
        self._will_to_intake(client_session, disconnect_waiter)
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)

    def _will_to_intake(self, client_session: Any, disconnect_waiter: asyncio.Future[Any]) -> None:
        """A client gone without a DISCONNECT: its last-will goes to the intake too. amqtt
        broadcasts a will straight to the subscribers, past the handler's gate, so with the
        intake (nobody else subscribes to device topics) a device's "offline" will never reached
        the edge. Same ACL check as any publish of that client."""
        if self.intake is None or not client_session.will_flag or not client_session.will_topic:
            return
        try:
            result = disconnect_waiter.result()
        except (asyncio.CancelledError, Exception):  # any other end is abnormal
            result = None
        if isinstance(result, DisconnectPacket):
            return
        topic = str(client_session.will_topic)
        self.intake.admit(
            topic, bytes(client_session.will_message or b""),
            permitted=self._acl().allowed(client_session.username, topic, Action.PUBLISH),
            redelivery=False, wait=False, username=client_session.username,
        )
