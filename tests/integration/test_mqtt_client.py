"""shared.mqtt_client against the machine's Mosquitto: messages read in chunks (packets split
across chunk boundaries, many per chunk) arrive whole and in order, and the PUBACKs sent for
them in joined writes reach the broker as valid packets, each acknowledging its message: a
persistent session resumed afterwards gets nothing redelivered."""
from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from shared.mqtt_client import READ_CHUNK, MqttClient

pytestmark = pytest.mark.mosquitto

HOST, PORT = "127.0.0.1", 1883


def payloads() -> list[bytes]:
    sizes = [20, 200, 1_000] * 400 + [READ_CHUNK - 3, READ_CHUNK + 7, 3 * READ_CHUNK]
    sizes += [150] * 500
    return [f"{i:06d}".encode() + b"x" * size for i, size in enumerate(sizes)]


async def receive(client: aiomqtt.Client, count: int) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(30):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            got.append(message.payload)
            if len(got) == count:
                break
    return got


async def test_a_burst_arrives_whole_and_in_order_and_every_puback_counts(farm_id: str) -> None:
    topic = f"test/{farm_id}/burst"
    sent = payloads()
    subscriber = f"sub-{farm_id}"
    async with MqttClient(HOST, PORT, identifier=subscriber, clean_session=False) as sub:
        await sub.subscribe(topic, qos=1)
        reader = asyncio.create_task(receive(sub, len(sent)))
        async with aiomqtt.Client(HOST, PORT, identifier=f"pub-{farm_id}") as pub:
            for i in range(0, len(sent), 100):  # many in flight: many packets per chunk read
                await asyncio.gather(*(pub.publish(topic, p, qos=1) for p in sent[i:i + 100]))
        # Mosquitto keeps at most 20 unacknowledged messages in flight to a client: without
        # valid PUBACKs the burst would stop there and this would time out.
        assert await reader == sent
    # The same session again: a message whose PUBACK the broker did not take is sent again.
    async with MqttClient(HOST, PORT, identifier=subscriber, clean_session=False) as again:
        async with aiomqtt.Client(HOST, PORT, identifier=f"pub2-{farm_id}") as pub:
            await pub.publish(topic, b"marker", qos=1)
        assert await receive(again, 1) == [b"marker"]  # first, and nothing before it
        await again.unsubscribe(topic)
