"""Lightweight simulated edges for bench/edge_fleet.py, run in spawned processes (bench.load's
``Worker`` protocol): each edge holds its command stream (``/api/edge/v1/stream``) and uploads its
outbox in the real wire format (``edge.batch_body.BatchEncoder``: gzip JSON, contiguous seqs from
1, resent from the cloud's ``acked_seq`` as an edge's outbox is) at a paced rate.

A command for the edge's own actuator is answered ``CommandAccepted`` on the stream at once, and
the device's execution and ack go up in the next batch as ``command`` and ``ack`` records, as a
real edge reports them. No SQLite, no MQTT, no automation: only what the cloud sees.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import msgspec

from bench.load import wait_for_go, wait_for_stop
from edge.batch_body import BatchEncoder
from shared.sync import (
    BATCH_INTERVAL_HEADER,
    MAX_BATCH_RECORDS,
    PROTOCOL_VERSION,
    AckData,
    AckRecord,
    CommandData,
    CommandRecord,
    ReadingData,
    ReadingRecord,
    batch_interval,
)

METRICS = ("temperature_c", "humidity_pct", "co2_ppm", "co2_raw", "light_lux", "battery_v")
STREAM = "/api/edge/v1/stream"
BATCHES = "/api/edge/v1/batches"
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class EdgeSpec:
    edge_id: str
    farm_id: str
    token: str
    room_id: str
    sensors: tuple[str, ...]
    actuator: str


@dataclass
class FleetSpec:
    """What one process runs: its edges, where nginx is, how fast each edge uploads."""

    name: str
    base_url: str
    cafile: str
    edges: list[EdgeSpec]
    readings_per_edge_s: float
    period_s: float
    metrics: int = 3
    connect_concurrency: int = 16


@dataclass
class Tally:
    # (wall time of the ack, POST → ack in ms, readings acked by it, the seconds this edge had
    # let its readings gather for it: its period, or longer when the cloud asked)
    batches: list[tuple[float, float, int, float]] = field(default_factory=list)
    # (command id, wall time it arrived on the owning edge's stream)
    commands: list[tuple[str, float]] = field(default_factory=list)
    foreign_commands: int = 0  # commands for another edge's devices that reached this edge
    streams_open: int = 0
    stream_drops: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.samples) < 10:
            self.samples.append(f"{kind}: {detail[:300]}")


class SimEdge:
    """One edge: its outbox (encoded records from ``acked + 1``), its stream, its uploads."""

    def __init__(self, spec: EdgeSpec, fleet: FleetSpec, index: int, tally: Tally) -> None:
        self.spec = spec
        self.fleet = fleet
        self.index = index
        self.tally = tally
        self.headers = {"Authorization": f"Bearer {spec.token}"}
        self.encoder = BatchEncoder(spec.edge_id, spec.farm_id, lambda: datetime.now(UTC))
        self.outbox: list[bytes] = []  # records acked + 1 … seq
        self.acked = 0
        self.seq = 0
        self.stream_up = asyncio.Event()
        self.metrics = METRICS[: fleet.metrics]

    def _add(self, record: ReadingRecord | CommandRecord | AckRecord) -> None:
        self.outbox.append(_encode(record))

    def add_readings(self, n: int) -> None:
        now = time.time()
        sensors = self.spec.sensors
        for i in range(n):
            self.seq += 1
            values = {m: 20.0 + (self.seq + k) % 17 * 0.5 for k, m in enumerate(self.metrics)}
            data = ReadingData(device_id=sensors[self.seq % len(sensors)],
                               room_id=self.spec.room_id, ts=now - 0.01 * (n - i), values=values)
            self._add(ReadingRecord(seq=self.seq, at=now, data=data))

    def add_command(self, command_id: str, action: str, value: Any) -> None:
        """The device ran the cloud's command and acked it: what the edge's outbox then holds."""
        now = time.time()
        self.seq += 1
        self._add(CommandRecord(seq=self.seq, at=now, data=CommandData(
            command_id=command_id, device_id=self.spec.actuator, room_id=self.spec.room_id,
            action=action, value=value, source="cloud", reason=None, created_at=now,
            cloud_command_id=command_id)))
        self.seq += 1
        self._add(AckRecord(seq=self.seq, at=now, data=AckData(
            command_id=command_id, device_id=self.spec.actuator, status="ok", at=now)))

    async def hold_stream(self, session: aiohttp.ClientSession, gate: asyncio.Semaphore,
                          stop: asyncio.Event) -> None:
        url = self.fleet.base_url + STREAM
        delay = 0.5
        while not stop.is_set():
            try:
                async with gate:
                    ws = await session.ws_connect(url, headers=self.headers, heartbeat=None,
                                                  max_msg_size=0)
                    await ws.send_str(json.dumps({
                        "type": "hello", "protocol": PROTOCOL_VERSION,
                        "edge_id": self.spec.edge_id, "config_version": 0,
                        "acked_seq": self.acked}))
                async with ws:
                    self.tally.streams_open += 1
                    self.stream_up.set()
                    delay = 0.5
                    try:
                        await self._serve(ws)
                    finally:
                        self.tally.streams_open -= 1
                if not stop.is_set():
                    self.tally.stream_drops += 1
                    self.tally.error("stream closed", f"{self.spec.edge_id}: {ws.close_code}")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.tally.error("stream connect", f"{self.spec.edge_id}: {exc!r}")
            if stop.is_set():
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            arrived = time.time()
            doc = json.loads(msg.data)
            kind = doc.get("type")
            if kind == "config":
                await ws.send_str(json.dumps({"type": "config_applied",
                                              "version": doc["version"]}))
            elif kind in ("command", "release"):
                if doc["device_id"] != self.spec.actuator:
                    self.tally.foreign_commands += 1
                    continue
                self.tally.commands.append((doc["command_id"], arrived))
                await ws.send_str(json.dumps({"type": "command_accepted",
                                              "command_id": doc["command_id"]}))
                self.add_command(doc["command_id"], doc.get("action", "auto"), doc.get("value"))

    async def upload(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """A batch every period (staggered over the fleet) with this period's readings and
        whatever earlier uploads left unacked, as the edge's uplink sends them; while the cloud's
        answers ask for a longer interval (``BATCH_INTERVAL_HEADER``), every that long instead,
        as the edge's uplink does."""
        period = self.fleet.period_s
        interval = period
        carry = 0.0
        url = self.fleet.base_url + BATCHES
        headers = {**self.headers, "Content-Type": "application/json",
                   "Content-Encoding": "gzip"}
        next_at = time.monotonic() + period * ((self.index * 0.618034) % 1.0)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            if stop.is_set():  # an upload in flight is always finished: its ack is counted
                return
            gathered = interval  # since the last batch (the first one: a stagger, not counted)
            next_at += interval
            carry += self.fleet.readings_per_edge_s * gathered
            n = int(carry)
            carry -= n
            self.add_readings(n)
            records = self.outbox[:MAX_BATCH_RECORDS]
            if not records:
                continue
            body = self.encoder.body(self.acked + 1, records)
            posted = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    answer = await resp.read()
                    status = resp.status
                    asked = batch_interval(resp.headers.get(BATCH_INTERVAL_HEADER))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.tally.error("upload", repr(exc))
                continue
            if status == 200 and max(period, asked) != interval:  # from the next batch on
                next_at += max(period, asked) - interval
                interval = max(period, asked)
            took_ms = (time.perf_counter() - posted) * 1000
            if status == 409:  # a gap: resend from what the cloud has
                self._rewind(int(json.loads(answer)["expected_seq"]) - 1)
                self.tally.error("upload 409", answer.decode(errors="replace"))
                continue
            if status != 200:
                self.tally.error(f"upload {status}", answer.decode(errors="replace"))
                continue
            acked = int(json.loads(answer)["acked_seq"])
            newly = records[: acked - self.acked]
            readings = sum(1 for r in newly if r.startswith(b'{"kind":"reading"'))
            self.tally.batches.append((time.time(), took_ms, readings, gathered))
            self._rewind(acked)

    def _rewind(self, acked: int) -> None:
        if acked > self.acked:
            del self.outbox[: acked - self.acked]
            self.acked = acked


async def _fleet_main(conn: Connection, fleet: FleetSpec) -> None:
    tally = Tally()
    tls = ssl.create_default_context(cafile=fleet.cafile)
    stop = asyncio.Event()
    gate = asyncio.Semaphore(fleet.connect_concurrency)
    edges = [SimEdge(spec, fleet, i, tally) for i, spec in enumerate(fleet.edges)]
    async with contextlib.AsyncExitStack() as stack:
        # One connection pool per edge: an edge is one site with its own TCP (TLS) connections.
        sessions = [await stack.enter_async_context(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls, limit=2),
            timeout=aiohttp.ClientTimeout(total=60))) for _ in edges]
        streams = [asyncio.create_task(e.hold_stream(s, gate, stop))
                   for e, s in zip(edges, sessions, strict=True)]
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(e.stream_up.wait() for e in edges)), 300)
        conn.send({"ready": fleet.name, "streams": tally.streams_open,
                   "connect_s": round(time.monotonic() - started, 2)})
        await wait_for_go(conn)
        uploads = [asyncio.create_task(e.upload(s, stop))
                   for e, s in zip(edges, sessions, strict=True)]
        await wait_for_stop(conn, None)
        open_at_end = tally.streams_open
        stop.set()
        await asyncio.wait(uploads, timeout=90)
        for task in [*uploads, *streams]:
            task.cancel()
        await asyncio.gather(*uploads, *streams, return_exceptions=True)
    conn.send({"name": fleet.name, "batches": tally.batches, "commands": tally.commands,
               "foreign_commands": tally.foreign_commands, "streams_open_at_end": open_at_end,
               "stream_drops": tally.stream_drops, "errors": tally.errors,
               "samples": tally.samples, "unacked": sum(len(e.outbox) for e in edges),
               "acked_seqs": sum(e.acked for e in edges)})


def run_fleet(conn: Connection, fleet: FleetSpec) -> None:
    """Process entry point (``bench.load.Worker``)."""
    try:
        asyncio.run(_fleet_main(conn, fleet))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
