"""MQTT framing at the embedded broker's door: the first packet (CONNECT) read and vetted before
amqtt sees it, and every later packet handed to amqtt whole and bounded in size.

amqtt reads a packet's body in calls sized from the client's own length header, so a claim of
256 MB would be buffered whole; here a packet's length is known before its body is read.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from amqtt.adapters import ReaderAdapter

_CONNECT_TYPE = 1


class PacketTooLarge(Exception):
    """A client announced a packet bigger than the broker accepts; the connection is dropped."""


# What is kept of an oversize payload in its quarantine row (the rest is read and discarded).
_OVERSIZE_HEAD = 4 * 1024
_DISCARD_CHUNK = 64 * 1024
_PUBLISH_TYPE = 3
_PUBACK_BYTE = 0x40

# Oversize PUBLISH: (topic, head of its payload, original payload size); awaited before the
# PUBACK, as for any publish (edge.intake).
OversizeHook = Callable[[str, bytes, int], Awaitable[None]]


async def read_remaining_length(reader: asyncio.StreamReader, raw: bytearray) -> int:
    length, multiplier = 0, 1
    for _ in range(4):  # the remaining length takes at most 4 bytes
        byte = (await reader.readexactly(1))[0]
        raw.append(byte)
        length += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return length
        multiplier *= 128
    raise BadConnect("malformed remaining length")


class FramedReader(ReaderAdapter):  # type: ignore[misc]
    """amqtt's reader, one whole MQTT packet at a time, none larger than ``limit``.

    amqtt reads a PUBLISH payload in one call sized from the client's own length header, so a
    claim of 256 MB would be buffered whole; here a packet's length is known before its body
    is read. A PUBLISH over the limit never reaches amqtt: its payload is read in chunks and
    discarded but for its head, ``on_oversize`` quarantines it, and at QoS 1 it is acknowledged
    so the device does not send it again forever; the connection goes on. Any other oversize
    packet closes the connection. ``replay`` is served first: the CONNECT packet already read
    to vet the client.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int,
                 replay: bytes = b"", on_oversize: OversizeHook | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._limit = limit
        self._packet = memoryview(replay)
        self._on_oversize = on_oversize

    async def read(self, n: int = -1) -> bytes:
        if not self._packet:
            self._packet = memoryview(await self._next_packet())
        n = len(self._packet) if n < 0 else n
        head, self._packet = self._packet[:n], self._packet[n:]
        return bytes(head)  # amqtt reads within one packet: never fewer bytes than asked

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    async def _next_packet(self) -> bytes:
        while True:
            raw = bytearray(await self._reader.readexactly(1))
            length = await read_remaining_length(self._reader, raw)
            if length <= self._limit:
                raw += await self._reader.readexactly(length)
                return bytes(raw)
            if raw[0] >> 4 != _PUBLISH_TYPE or self._on_oversize is None:
                raise PacketTooLarge(f"packet of {length} bytes exceeds the {self._limit}-byte "
                                     "limit")
            await self._skip_publish(raw[0], length)

    async def _skip_publish(self, first: int, length: int) -> None:
        qos = (first >> 1) & 0x03
        topic_len = int.from_bytes(await self._reader.readexactly(2))
        topic = (await self._reader.readexactly(topic_len)).decode("utf-8", "replace")
        packet_id = await self._reader.readexactly(2) if qos else b""
        size = left = length - 2 - topic_len - len(packet_id)
        if left < 0:
            raise PacketTooLarge("malformed oversize PUBLISH")
        head = await self._reader.readexactly(min(left, _OVERSIZE_HEAD))
        left -= len(head)
        while left:
            left -= len(await self._reader.readexactly(min(left, _DISCARD_CHUNK)))
        assert self._on_oversize is not None
        await self._on_oversize(topic, head, size)
        if qos == 1:
            self._writer.write(bytes((_PUBACK_BYTE, 2)) + packet_id)
        elif qos > 1:
            raise PacketTooLarge(f"QoS {qos} PUBLISH of {length} bytes exceeds the limit")


class BytesReader(ReaderAdapter):  # type: ignore[misc]
    """amqtt's packet parser over bytes already in hand; reading past the end yields short."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    async def read(self, n: int = -1) -> bytes:
        n = len(self._data) if n < 0 else n
        head, self._data = bytes(self._data[:n]), self._data[n:]
        return head

    def feed_eof(self) -> None:
        pass


class BadConnect(Exception):
    """The first packet is not a well-formed CONNECT."""


async def read_connect(reader: asyncio.StreamReader, limit: int) -> bytes:
    """The raw first packet, which MQTT requires to be CONNECT (fixed header + body)."""
    raw = bytearray(await reader.readexactly(1))
    if raw[0] >> 4 != _CONNECT_TYPE:
        raise BadConnect("first packet is not CONNECT")
    length = await read_remaining_length(reader, raw)
    if length > limit:
        raise PacketTooLarge(f"CONNECT of {length} bytes exceeds the {limit}-byte limit")
    raw += await reader.readexactly(length)
    return bytes(raw)
