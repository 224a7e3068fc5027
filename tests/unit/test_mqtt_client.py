"""shared.mqtt_client: a cancellation that races the broker's answer is not lost (Python 3.11's
``asyncio.wait_for`` keeps the answer and drops the cancel), and a failed goodbye does not
replace the cancellation. No broker is needed: these are aiomqtt's own waits."""
from __future__ import annotations

import asyncio
import inspect

import aiomqtt
import pytest

from shared.mqtt_client import MqttClient


def test_aiomqtt_still_waits_through_the_method_this_overrides() -> None:
    wait_for = aiomqtt.Client._wait_for
    assert list(inspect.signature(wait_for).parameters) == ["self", "fut", "timeout"]
    assert "_wait_for" in inspect.getsource(aiomqtt.Client.subscribe)
    assert "_wait_for" in inspect.getsource(aiomqtt.Client.__aexit__)


async def _cancelled_as_the_answer_arrives(client: aiomqtt.Client) -> asyncio.Task[str]:
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(client._wait_for(answer, timeout=5))
    await asyncio.sleep(0)  # the task now waits for the answer
    answer.set_result("suback")
    task.cancel()  # in the same loop iteration as the answer
    await asyncio.wait({task})
    return task


async def test_plain_aiomqtt_loses_the_cancel_on_this_python() -> None:
    """The bug itself, so the test below is known to test something (3.12 fixed it)."""
    task = await _cancelled_as_the_answer_arrives(aiomqtt.Client("127.0.0.1", 1))
    if not task.cancelled():
        assert task.result() == "suback"
    else:
        pytest.skip("this Python's asyncio.wait_for does not swallow the cancel")


async def test_the_cancel_that_races_an_answer_is_raised() -> None:
    task = await _cancelled_as_the_answer_arrives(MqttClient("127.0.0.1", 1))
    assert task.cancelled()


async def test_a_wait_that_is_not_cancelled_returns_the_answer() -> None:
    client = MqttClient("127.0.0.1", 1)
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    answer.set_result("puback")
    assert await client._wait_for(answer, timeout=5) == "puback"


async def test_a_timeout_is_still_an_mqtt_error() -> None:
    client = MqttClient("127.0.0.1", 1)
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with pytest.raises(aiomqtt.MqttError, match="timed out"):
        await client._wait_for(never, timeout=0.01)
