"""edge/amqtt_patches.py reaches into amqtt's internals: these fail loudly on an amqtt other than
the one it was written for, and name each internal that moved, before a farm finds out."""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque

import pytest
from amqtt.broker import Broker
from amqtt.contexts import ListenerConfig, ListenerType
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import ProtocolHandler
from amqtt.mqtt.publish import PublishPacket

from edge import amqtt_patches
from edge.amqtt_patches import AMQTT_VERSION, EdgeBrokerConfig, PatchedBroker, SnapshotDict
from tests.conftest import free_port


def test_amqtt_is_the_version_the_patches_were_written_for() -> None:
    assert amqtt_patches.amqtt_version() == AMQTT_VERSION, (
        f"amqtt {amqtt_patches.amqtt_version()} is installed but edge/amqtt_patches.py was "
        f"written for {AMQTT_VERSION}: re-check every patch there, then update AMQTT_VERSION")


def test_another_version_is_logged_as_an_error(monkeypatch, caplog) -> None:
    monkeypatch.setattr(amqtt_patches, "amqtt_version", lambda: "9.9.9")
    with caplog.at_level(logging.ERROR, logger="edge.amqtt_patches"):
        assert amqtt_patches.check_amqtt_version() is False
    assert "amqtt 9.9.9 is installed" in caplog.text


def _params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


@pytest.mark.parametrize(("owner", "name", "params"), [
    (Broker, "_initialize_client_session",
     ["self", "reader", "writer", "remote_address", "remote_port"]),
    (Broker, "_handle_disconnect", ["self", "client_session", "handler", "disconnect_waiter"]),
    (Broker, "_handle_message_delivery", ["self", "client_session", "handler", "wait_deliver"]),
    (Broker, "_matches", ["self", "topic", "a_filter"]),
    (ProtocolHandler, "_handle_message_flow", ["self", "app_message"]),
    (ProtocolHandler, "_send_packet", ["self", "packet"]),
])
def test_the_methods_patched_or_called_keep_their_signature(owner, name, params) -> None:
    assert _params(getattr(owner, name)) == params, f"{owner.__name__}.{name} changed"


def test_the_flows_the_patches_rely_on_are_unchanged() -> None:
    # GatedHandler acts before amqtt's QoS 1 flow, which queues the message, then acknowledges.
    qos1 = inspect.getsource(ProtocolHandler._handle_qos1_message_flow)
    assert qos1.index("delivered_message_queue.put") < qos1.index("PubackPacket.build")
    # Each PUBLISH is handled in a task of its own (the gate may wait for a commit).
    assert "create_task(self.handle_publish(packet))" in inspect.getsource(
        ProtocolHandler._reader_loop)
    # SnapshotDict is iterated through items() across awaits by the broadcast.
    assert "self._subscriptions.items()" in inspect.getsource(Broker._run_broadcast)
    # The broker makes its protocol handlers in _initialize_client_session (where the patch
    # swaps their class).
    assert "BrokerProtocolHandler.init_from_connect" in inspect.getsource(
        Broker._initialize_client_session)
    assert issubclass(BrokerProtocolHandler, ProtocolHandler)
    assert {"dup_flag", "retain_flag"} <= {n for n, _ in inspect.getmembers(PublishPacket)}


async def test_the_broker_state_the_patches_read_is_there() -> None:
    broker = PatchedBroker(EdgeBrokerConfig(listeners={"default": ListenerConfig(
        type=ListenerType.EXTERNAL, bind="127.0.0.1:0")}, plugins={}))
    assert isinstance(broker._subscriptions, SnapshotDict)
    assert isinstance(broker._broadcast_queue, asyncio.Queue)
    assert isinstance(broker._tasks_queue, deque)
    assert isinstance(broker.sessions, dict)
    assert amqtt_patches.pending_deliveries(broker) == 0
    assert broker.unheard("farm/f/room/r/telemetry/d") is True
    broker._subscriptions["farm/f/room/+/telemetry/+"] = []
    assert broker.unheard("farm/f/room/r/telemetry/d") is False  # the map changed


async def test_a_broadcast_loop_cancelled_at_shutdown_is_no_traceback(monkeypatch, caplog) -> None:
    """amqtt cancels its broadcast loop when it has not stopped within its shutdown timeout and
    logs that as an error with a traceback; the edge's chaos test failed on such a traceback
    after a SIGTERM under load. A zero timeout makes amqtt cancel it every time."""
    import amqtt.broker

    monkeypatch.setattr(amqtt.broker, "_BROADCAST_SHUTDOWN_TIMEOUT", 0)
    broker = PatchedBroker(EdgeBrokerConfig(listeners={"default": ListenerConfig(
        type=ListenerType.TCP, bind=f"127.0.0.1:{free_port()}")}, plugins={}))
    await broker.start()
    with caplog.at_level(logging.DEBUG, logger="amqtt.broker"):
        await broker.shutdown()
    records = [r for r in caplog.records if r.name == "amqtt.broker" and (
        "loop stopped" in r.getMessage() or "loop cancelled" in r.getMessage())]
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in records] == [
        ("INFO", "broadcast loop cancelled at shutdown", None)]
    assert "Traceback" not in caplog.text


def test_other_broker_errors_keep_their_traceback(caplog) -> None:
    logger = logging.getLogger("amqtt.broker")
    with caplog.at_level(logging.INFO, logger="amqtt.broker"):
        try:
            raise RuntimeError("a real failure")
        except RuntimeError:
            logger.exception("Broadcast loop stopped by exception")
    (record,) = caplog.records
    assert record.levelname == "ERROR" and record.exc_info is not None
