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


# ---- fewer syscalls: the buffered receive and joined PUBACKs ----
async def test_paho_still_has_what_the_syscall_savings_reach_into() -> None:
    import paho.mqtt.client as paho

    from shared.mqtt_client import MqttClient

    source = inspect.getsource(paho.Client._packet_read)
    assert "self._sock_recv(1)" in source and "self._sock_recv(self._in_packet['to_process'])" \
        in source
    write = inspect.getsource(paho.Client._packet_write)
    assert "self._out_packet.popleft()" in write and "packet['to_process']" in write
    assert "self._registered_write" in inspect.getsource(paho.Client._call_socket_register_write)
    client = MqttClient("127.0.0.1", 1)
    assert client._client._sock_recv is client._receive
    assert client._client.on_socket_open == client._on_socket_open
    assert client._client.on_socket_register_write == client._on_socket_register_write
    # aiomqtt's reader callback, which the override replaces, is the one described there.
    assert "client.loop_read()" in inspect.getsource(aiomqtt.Client._on_socket_open)


def test_buffered_receive_hands_out_a_chunk_as_asked_then_reads_again() -> None:
    from shared.mqtt_client import READ_CHUNK, BufferedReceive

    reads: list[int] = []
    chunks = [b"\x30\x05hello\x40\x02", b"\x00\x01"]

    def recv(size: int) -> bytes:
        reads.append(size)
        if not chunks:
            raise BlockingIOError
        return chunks.pop(0)

    receive = BufferedReceive(recv)
    assert receive(1) == b"\x30"
    assert receive.buffered == 8
    assert receive(1) == b"\x05"
    assert receive(5) == b"hello"
    assert receive(1) == b"\x40"
    assert receive(8) == b"\x02"  # short: what is buffered, never more
    assert receive.buffered == 0
    assert reads == [READ_CHUNK]  # one recv so far
    assert receive(2) == b"\x00\x01"
    with pytest.raises(BlockingIOError):
        receive(1)
    assert reads == [READ_CHUNK] * 3


def test_buffered_receive_passes_a_closed_connection_and_forgets_on_reset() -> None:
    from shared.mqtt_client import BufferedReceive

    chunks = [b"abcdef", b""]
    receive = BufferedReceive(lambda size: chunks.pop(0))
    assert receive(2) == b"ab"
    receive.reset()  # a new connection: the old one's bytes are not its own
    assert receive.buffered == 0
    assert receive(1) == b""  # the peer closed


def _entry(command: int, packet: bytes, pos: int = 0) -> dict[str, object]:
    return {"command": command, "mid": packet[-1], "qos": 0, "pos": pos,
            "to_process": len(packet) - pos, "packet": packet, "info": None}


def test_adjacent_pubacks_become_one_entry_and_nothing_else_moves() -> None:
    from collections import deque

    from shared.mqtt_client import coalesce_pubacks

    publish = _entry(0x32, b"\x32\x03abc")
    partly_sent = _entry(0x40, b"\x40\x02\x00\x09", pos=1)
    out = deque([partly_sent, _entry(0x40, b"\x40\x02\x00\x01"),
                 _entry(0x40, b"\x40\x02\x00\x02"), publish, _entry(0x40, b"\x40\x02\x00\x03"),
                 _entry(0x40, b"\x40\x02\x00\x04")])
    before = b"".join(bytes(e["packet"])[e["pos"]:] for e in out)  # type: ignore[index, misc]
    coalesce_pubacks(out)
    assert [e["command"] for e in out] == [0x40, 0x40, 0x32, 0x40]
    assert out[0] is partly_sent  # its send is under way: left as it is
    assert out[2] is publish
    assert out[1]["packet"] == b"\x40\x02\x00\x01\x40\x02\x00\x02"
    assert out[1]["to_process"] == 8 and out[1]["pos"] == 0
    after = b"".join(bytes(e["packet"])[e["pos"]:] for e in out)  # type: ignore[index, misc]
    assert after == before


def test_a_lone_puback_is_left_alone() -> None:
    from collections import deque

    from shared.mqtt_client import coalesce_pubacks

    only = _entry(0x40, b"\x40\x02\x00\x01")
    out = deque([only])
    coalesce_pubacks(out)
    assert list(out) == [only]
