"""aiomqtt's client, made safe to cancel: every long-lived MQTT loop (edge, simulator) uses it.

A reconnect loop retries on ``MqttError`` and stops on ``CancelledError``. Two things turned a
cancellation into a retry, so a stopping edge or a test's teardown waited forever (a CI run hung
120 s on a cancelled simulated node):

- On Python 3.11, ``asyncio.wait_for`` returns the result instead of raising when a cancel
  arrives just as the awaited result does (fixed in 3.12). aiomqtt waits for every CONNACK,
  SUBACK and PUBACK that way, so the cancel was lost and the session went on.
- ``Client.__aexit__`` raises ``MqttError`` when its goodbye times out, and that replaced the
  ``CancelledError`` the session was unwinding with.

``MqttClient`` re-raises the cancellation in both cases. It reaches into aiomqtt's ``_wait_for``
(aiomqtt 2.x, pinned in pyproject.toml); tests/unit/test_mqtt_client.py fails if that changes.

It also moves bytes with fewer system calls and event-loop turns (the edge's ingest reads
thousands of QoS 1 messages a second from an external broker). paho reads a packet with a
``recv`` per header byte and one for the rest, and aiomqtt lets it read one packet per readable
event; here the socket is read in chunks of up to READ_CHUNK bytes and every whole packet in a
chunk is handled in the same callback. paho answers each PUBLISH with a PUBACK it queues at
once; aiomqtt has a writer registered for them from another thread (a self-pipe wake-up, then
an ``epoll_ctl`` each way). Here, on the loop's thread, the queue is flushed at the end of the
loop turn instead, adjacent PUBACKs in one ``send``. The PUBACKs go out exactly when paho queues
them, as before (nothing is acknowledged earlier or later than paho decided); only fewer
syscalls carry them. This reaches into paho's ``_sock_recv``, ``_out_packet`` and
``_registered_write`` (paho-mqtt 2.x); the unit tests fail if those change.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import aiomqtt
import paho.mqtt.client as paho

log = logging.getLogger(__name__)
T = TypeVar("T")

# Bytes taken from the socket per recv: a few hundred of the farm's messages.
READ_CHUNK: Final = 65536
# Packets handled per reader callback before the loop gets a turn (the rest on the next turn).
PACKETS_PER_TURN: Final = 256
_PUBACK: Final = 0x40


class BufferedReceive:
    """paho's ``_sock_recv`` with a buffer: reads up to READ_CHUNK bytes from the socket and
    hands them out as paho asks (one byte, the length bytes, the rest of a packet)."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv  # paho's own: its TLS want-read/write handling stays
        self._buffer = b""
        self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._pos

    def reset(self) -> None:
        """Forget what is buffered (a new or closed connection: its bytes are not the next's)."""
        self._buffer = b""
        self._pos = 0

    def __call__(self, bufsize: int) -> bytes:
        pos = self._pos
        if pos < len(self._buffer):
            end = pos + bufsize
            chunk = self._buffer[pos:end]
            if end >= len(self._buffer):
                self.reset()
            else:
                self._pos = end
            return chunk
        data = self._recv(READ_CHUNK)  # BlockingIOError and OSError reach paho as before
        if len(data) <= bufsize:
            return data  # b"" included: the connection closed
        self._buffer = data
        self._pos = bufsize
        return data[:bufsize]


def coalesce_pubacks(out: deque[Any]) -> None:
    """Join runs of adjacent, unsent PUBACKs in paho's outgoing queue into one entry each: the
    same bytes in the same order, one ``send`` for the run. paho does nothing after sending a
    PUBACK (only PUBLISH QoS 0 and DISCONNECT have after-effects), so one entry serves many."""
    if len(out) < 2:
        return
    merged: list[Any] = []
    run: list[Any] = []

    def close_run() -> None:
        if len(run) == 1:
            merged.append(run[0])
        elif run:
            packet = b"".join(bytes(p["packet"]) for p in run)
            merged.append({**run[-1], "packet": packet, "to_process": len(packet), "pos": 0})
        run.clear()

    for entry in out:
        if entry["command"] == _PUBACK and entry["pos"] == 0:
            run.append(entry)
            continue
        close_run()
        merged.append(entry)
    close_run()
    if len(merged) != len(out):
        out.clear()
        out.extend(merged)


def _cancel_requests() -> int:
    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()


class MqttClient(aiomqtt.Client):
    """``aiomqtt.Client`` whose waits and goodbye never swallow a cancellation."""

    _entering = False
    _flush_due = False

    def __init__(self, *args: Any, manual_ack: bool = False, **kwargs: Any) -> None:
        """aiomqtt's arguments, and ``manual_ack``: paho leaves each QoS 1 message it receives
        unacknowledged until ``ack(message)``, so a subscriber can acknowledge what it has
        committed and no sooner (set here, before the broker can send a stored message)."""
        super().__init__(*args, **kwargs)
        self._receive = BufferedReceive(self._client._sock_recv)
        self._client._sock_recv = self._receive  # type: ignore[method-assign]
        self.manual_ack = manual_ack
        self._client.manual_ack_set(manual_ack)

    def ack(self, message: aiomqtt.Message) -> None:
        """Acknowledge ``message`` (PUBACK, sent at the end of this loop turn) on a client made
        with ``manual_ack``; a QoS 0 message needs none. Acknowledge in the order received."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    async def _wait_for(
        self, fut: Awaitable[T], timeout: float | None  # noqa: ASYNC109 - aiomqtt's signature
    ) -> T:
        before = _cancel_requests()
        result = await super()._wait_for(fut, timeout)
        if _cancel_requests() > before and not self._entering:
            # Asked to stop while the broker answered; wait_for kept the answer, not the stop.
            raise asyncio.CancelledError
        return result

    async def __aenter__(self) -> Self:
        before = _cancel_requests()
        self._entering = True  # aiomqtt does not clean up after a cancel mid-connect
        try:
            client = await super().__aenter__()
        finally:
            self._entering = False
        if _cancel_requests() > before:  # the cancel raced the CONNACK: leave again
            with contextlib.suppress(aiomqtt.MqttError):
                await super().__aexit__(None, None, None)
            raise asyncio.CancelledError
        return client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)
        except aiomqtt.MqttError as goodbye:
            if exc_type is None or not issubclass(exc_type, asyncio.CancelledError):
                raise
            # The cancellation goes on; the failed goodbye is only worth a note.
            log.debug("MQTT goodbye after a cancel failed: %s", goodbye)

    # ---- fewer syscalls per message (see the module's docstring) ----
    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # aiomqtt's, reading every packet already received rather than one per readable event.
        self._receive.reset()
        receive = self._receive

        def callback() -> None:
            try:
                for _ in range(PACKETS_PER_TURN):
                    client.loop_read()
                    if receive.buffered:
                        continue
                    # Bytes TLS decoded but paho did not take (paho issue #131, as aiomqtt).
                    pending = getattr(client._sock, "pending", None)
                    if pending is not None and pending() > 0:
                        continue
                    return
                if receive.buffered:  # the socket may not be readable again: come back
                    self._loop.call_soon(callback)
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def create_misc_task() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        # Called from the executor thread that connects: hand over to the loop.
        self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), callback)
        self._loop.call_soon_threadsafe(create_misc_task)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._receive.reset()
        super()._on_socket_close(client, userdata, sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if _running_loop() is not self._loop:
            super()._on_socket_register_write(client, userdata, sock)  # connecting: a writer
            return
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush, client, userdata)

    def _flush(self, client: paho.Client, userdata: Any) -> None:
        """Send what paho queued during this loop turn (its PUBACKs above all)."""
        self._flush_due = False
        sock = client._sock
        if sock is None:
            return  # closed meanwhile: paho cleared its registration
        coalesce_pubacks(client._out_packet)
        try:
            client.loop_write()
        except Exception as exc:
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)
            return
        if client.want_write() and client._sock is not None:
            # The socket's buffer is full: wait until it is writable, as aiomqtt does.
            super()._on_socket_register_write(client, userdata, client._sock)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
