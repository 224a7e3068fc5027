"""A reconnect loop stops when it is cancelled, even when the MQTT client's goodbye fails.

aiomqtt's ``Client.__aexit__`` waits (up to the client's timeout) for the disconnect to finish
and raises ``MqttError("Operation timed out")`` when it does not, which replaces the
``CancelledError`` that was unwinding the session. A loop that retries on ``MqttError`` then
reconnected and ran forever: a CI run hung 120 s in tests/integration/test_sim_nodes.py waiting
for a cancelled node. Here the goodbye is made to fail on every cancellation, against the
machine's Mosquitto.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import TracebackType

import aiomqtt
import pytest

from firmware_sim.nodes import ActuatorNode, SensorNode
from firmware_sim.physics import ActuatorBank, Room

PORT = 1883


@pytest.fixture
def goodbye_times_out(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    original = aiomqtt.Client.__aexit__

    async def aexit(
        self: aiomqtt.Client,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await original(self, exc_type, exc, tb)
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            raise aiomqtt.MqttError("Operation timed out")  # what a slow DISCONNECT gives

    monkeypatch.setattr(aiomqtt.Client, "__aexit__", aexit)
    yield


async def _cancel_after_connect(run: asyncio.Task[None], connected: asyncio.Event) -> None:
    await asyncio.wait_for(connected.wait(), 10)
    run.cancel()
    done, _ = await asyncio.wait({run}, timeout=5)
    assert done, "the cancelled reconnect loop kept running"
    assert run.cancelled()


@pytest.mark.mosquitto
async def test_a_sensor_node_stops_when_cancelled(farm_id: str, goodbye_times_out: None) -> None:
    node = SensorNode(farm_id=farm_id, room_id="r1", device_id="s-1",
                      room=Room("oyster", "fruiting"), interval_s=0.1, port=PORT)
    await _cancel_after_connect(asyncio.create_task(node.run()), node.connected)
    assert node.connects == 1


@pytest.mark.mosquitto
async def test_an_actuator_node_stops_when_cancelled(farm_id: str,
                                                    goodbye_times_out: None) -> None:
    node = ActuatorNode(farm_id=farm_id, room_id="r1", device_id="hum-1", role="humidifier",
                        bank=ActuatorBank(), port=PORT)
    await _cancel_after_connect(asyncio.create_task(node.run()), node.connected)
    assert node.connects == 1
