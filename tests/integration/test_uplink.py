"""Edge ↔ cloud sync over real HTTP and WebSocket, against a stand-in cloud written here.

The stand-in implements shared/sync.py faithfully (bearer token, gzip bodies, a per-edge high-water
mark storing each seq once, 409 on a gap, the stream and the pending endpoint) and injects faults:
5xx, timeouts, connections cut after the cloud committed. Every test that moves records counts
every seq on both sides: 0 lost, 0 duplicated, and a seq always carries the same record.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import random
import stat
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp import web
from pydantic import SecretStr, TypeAdapter

from edge.app import EdgeApp
from edge.broker import embedded_broker
from edge.cli import edge_main, effective_config
from edge.config import CloudConfig, ConfigError, load_config
from edge.config_sync import ConfigSync
from edge.credentials import (
    DeviceSecrets,
    device_acl_path,
    edge_login,
    hash_password,
    read_password_file,
    sync_broker_files,
)
from edge.downlink import Downlink
from edge.registration import register_cloud
from edge.store import outbox as rows
from edge.store.telemetry import store_telemetry
from edge.uplink import Uplink
from shared.models import utcnow
from shared.sync import (
    BATCH_INTERVAL_HEADER,
    Batch,
    BatchAck,
    CloudCommand,
    CommandAccepted,
    ConfigApplied,
    ConfigPush,
    DeviceSpec,
    GapError,
    Hello,
    RoomSpec,
    UpMessage,
)
from tests.conftest import free_port
from tests.e2e.conftest import fast_settings, make_site
from tests.integration.test_outbox import (
    T0,
    Edge,
    build_edge,
    close_edge,
    make_settings,
    tel,
)

TOKEN = "sfe_test-token"
EDGE_ID = "edge-1"
_UP = TypeAdapter(UpMessage)


# ---- the stand-in cloud ----------------------------------------------------------------------

@dataclass
class StandInCloud:
    farm_id: str
    token: str = TOKEN
    edge_id: str = EDGE_ID
    mark: int = 0
    stored: dict[int, dict[str, Any]] = field(default_factory=dict)
    offered: Counter[int] = field(default_factory=Counter)  # how often each seq arrived
    conflicts: list[int] = field(default_factory=list)  # a seq that came back as another record
    refused: list[str] = field(default_factory=list)  # requests breaking the protocol
    requests: int = 0
    late_commits: int = 0
    faults: Callable[[], str | None] = lambda: None  # "5xx" | "timeout" | "cut" | None
    slow_s: float = 1.0  # how long a "timeout" fault stalls before committing anyway
    clock_skew_s: float = 0.0
    stream_enabled: bool = True
    down: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    pending: list[dict[str, Any]] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)
    hellos: list[Hello] = field(default_factory=list)
    arrived: dict[int, float] = field(default_factory=dict)  # seq -> monotonic time stored
    gaps_answered: list[int] = field(default_factory=list)  # first seqs answered with a 409
    in_flight: int = 0
    most_in_flight: int = 0
    # Awaited with each parsed batch before it is stored (a test holds one back with it).
    gate: Callable[[Batch], Awaitable[None]] | None = None
    # The batch interval its answers ask for (header X-Smartfarm-Batch-Interval), as a loaded
    # cloud's do; and (monotonic time, kinds) of every batch it stored.
    interval_header: str | None = None
    batch_log: list[tuple[float, set[str]]] = field(default_factory=list)
    url: str = ""

    def _authorized(self, request: web.Request) -> bool:
        ok = request.headers.get("Authorization") == f"Bearer {self.token}"
        if not ok:
            self.refused.append(f"{request.path}: bad token")
        return ok

    async def batches(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self._authorized(request):
            return web.json_response({"detail": "bad token"}, status=401)
        if request.headers.get("Content-Encoding") != "gzip":
            self.refused.append("body not gzip")
            return web.json_response({"detail": "gzip please"}, status=415)
        fault = self.faults()
        if fault == "5xx":
            return web.json_response({"detail": "injected"}, status=503)
        if fault == "timeout":
            await asyncio.sleep(self.slow_s)  # the edge gives up; this request still commits
            self.late_commits += 1
        batch = Batch.model_validate_json(gzip.decompress(await request.read()))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate(batch)
        finally:
            self.in_flight -= 1
        if (batch.edge_id, batch.farm_id) != (self.edge_id, self.farm_id):
            self.refused.append(f"batch for {batch.edge_id}/{batch.farm_id}")
            return web.json_response({"detail": "not yours"}, status=403)
        if batch.first_seq > self.mark + 1:
            self.gaps_answered.append(batch.first_seq)
            gap = GapError(detail="gap", expected_seq=self.mark + 1)
            return web.Response(body=gap.model_dump_json(), status=409,
                                content_type="application/json")
        inserted = duplicates = 0
        for record in batch.records:
            self.offered[record.seq] += 1
            doc = record.model_dump(mode="json")
            if record.seq <= self.mark:
                duplicates += 1
                if self.stored.get(record.seq, doc) != doc:
                    self.conflicts.append(record.seq)
                continue
            self.stored[record.seq] = doc
            self.arrived[record.seq] = time.monotonic()
            inserted += 1
        self.mark = max(self.mark, batch.last_seq)
        self.batch_log.append((time.monotonic(), {r.kind for r in batch.records}))
        if fault == "cut":  # committed, but the edge never hears it
            assert request.transport is not None
            request.transport.abort()
            raise ConnectionResetError("injected cut")
        offset = (datetime.now(UTC).timestamp() + self.clock_skew_s) - batch.sent_at.timestamp()
        ack = BatchAck(acked_seq=self.mark, inserted=inserted, duplicates=duplicates,
                       clock_offset_s=offset)
        headers = {} if self.interval_header is None else {
            BATCH_INTERVAL_HEADER: self.interval_header}
        return web.Response(body=ack.model_dump_json(), content_type="application/json",
                            headers=headers)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"detail": "bad token"}, status=401)
        if not self.stream_enabled:
            return web.json_response({"detail": "no stream"}, status=503)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.hellos.append(Hello.model_validate_json(await ws.receive_str(timeout=5)))

        async def pump() -> None:
            while True:
                await ws.send_str(await self.down.get())

        pumping = asyncio.create_task(pump())
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.answers.append(_UP.validate_json(msg.data))
        finally:
            pumping.cancel()
        return ws

    async def get_pending(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"detail": "bad token"}, status=401)
        self.hellos.append(Hello(edge_id=request.query["edge_id"],
                                 config_version=int(request.query["config_version"]),
                                 acked_seq=int(request.query["acked_seq"])))
        return web.json_response({"messages": self.pending})

    async def post_pending(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"detail": "bad token"}, status=401)
        for item in (await request.json())["messages"]:
            answer = _UP.validate_python(item)
            self.answers.append(answer)
            self.pending = [m for m in self.pending
                            if m.get("command_id") != getattr(answer, "command_id", None)]
        return web.json_response({"ok": True})

    def send(self, message: CloudCommand | ConfigPush) -> None:
        self.down.put_nowait(message.model_dump_json())

    def assert_exactly_once(self, total: int) -> None:
        assert self.refused == []
        assert self.conflicts == []
        assert self.mark == total
        assert sorted(self.stored) == list(range(1, total + 1))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r["data"] for _, r in sorted(self.stored.items()) if r["kind"] == kind]


@pytest.fixture
async def cloud(farm_id: str) -> AsyncIterator[StandInCloud]:
    stand_in = StandInCloud(farm_id=farm_id)
    app = web.Application()
    app.router.add_post("/api/edge/v1/batches", stand_in.batches)
    app.router.add_get("/api/edge/v1/stream", stand_in.stream)
    app.router.add_get("/api/edge/v1/pending", stand_in.get_pending)
    app.router.add_post("/api/edge/v1/pending", stand_in.post_pending)
    # The raw body, so the test sees the edge really gzipped it; a handler whose client gave up
    # runs on and commits (a "timeout" fault is a late commit, not a lost request).
    runner = web.AppRunner(app, auto_decompress=False, access_log=None,
                           handler_cancellation=False)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    stand_in.url = f"http://127.0.0.1:{port}"
    yield stand_in
    await runner.cleanup()


def cloud_settings(cloud: StandInCloud, tmp_path: Path, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "url": cloud.url, "edge_id": EDGE_ID, "token": SecretStr(TOKEN),
        "batch_max_records": 200, "batch_max_age_s": 0.2, "poll_interval_s": 0.02,
        "request_timeout_s": 0.5, "backoff_initial_s": 0.02, "backoff_max_s": 0.2,
        "ws_failures_before_poll": 2, "pending_poll_s": 0.1, **overrides,
    }
    return make_settings(cloud.farm_id, tmp_path, **options)


@contextlib.asynccontextmanager
async def running(coro: Any) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def feed(edge: Edge, n: int, start: int = 0, pause_every: int = 50) -> None:
    """n readings alternating between the two sensors, at a few thousand per second."""
    for i in range(start, start + n):
        device, room = ("sens-a", "room-a") if i % 2 else ("sens-b", "room-b")
        edge.db.write_nowait(store_telemetry, tel(device, T0 + i, co2_ppm=400 + i), room,
                             T0 + i, False)
        if i % pause_every == pause_every - 1:
            await asyncio.sleep(0.005)
    await edge.settle()


async def drained(edge: Edge, cloud: StandInCloud, timeout: float) -> int:
    """Wait until the cloud holds every record the edge has made, with nothing new for a moment
    (the automation keeps reacting to readings); returns how many records that is."""
    deadline = time.monotonic() + timeout
    stable_since: float | None = None
    while True:
        await edge.settle()
        probe = await edge.outbox.probe()
        total = (await edge.outbox.marks()).next_seq - 1 + probe.unassigned
        now = time.monotonic()
        if cloud.mark == total and probe.unassigned == 0:
            stable_since = now if stable_since is None else stable_since
            if now - stable_since >= 0.3:
                return total
        else:
            stable_since = None
        if now > deadline:
            raise AssertionError(f"the cloud has {cloud.mark} of {total} records")
        await asyncio.sleep(0.05)


async def edge_records(edge: Edge, total: int) -> dict[int, dict[str, Any]]:
    """Every record the edge gave a seq, as it would (re)send it: the reference for the cloud."""
    out: dict[int, dict[str, Any]] = {}
    series = rows.SeriesCache()
    seq = 1
    while seq <= total:
        segment = await edge.db.read(rows.segment_containing, seq)
        assert segment is not None, f"no segment holds seq {seq}"
        prepared = await edge.db.read(rows.prepare_segment, series, segment, segment.first_seq)
        for text in prepared.records:
            record = json.loads(text)
            out[record["seq"]] = record
        seq = segment.last_seq + 1
    return out


# ---- up ----------------------------------------------------------------------------------------

async def test_every_record_reaches_the_cloud_once(cloud: StandInCloud, tmp_path: Path) -> None:
    edge = await build_edge(cloud_settings(cloud, tmp_path), tmp_path / "edge.db")
    uplink = Uplink(edge.settings, edge.outbox, alerts=edge.alerts)
    try:
        async with running(uplink.run()):
            await feed(edge, 700)
            cid = await edge.automation.manual_command("hum-a", "on", by="tester")
            await edge.message("ack", "hum-a", {"command_id": cid, "status": "ok"})
            await until(lambda: any(s["command_id"] == cid and s["state"] == "acked"
                                    for s in cloud.of_kind("command_state")), 5, "the state")
            total = await drained(edge, cloud, 10)
            status = await uplink.status()
        cloud.assert_exactly_once(total)
        assert total >= 700 + 3  # readings, command, ack, state
        assert cloud.stored == await edge_records(edge, total)
        assert max(cloud.offered.values()) == 1  # no fault: nothing sent twice
        assert sum(1 for r in cloud.stored.values() if r["kind"] == "reading") == 700
        assert status["backlog_records"] == 0 and status["oldest_unsent_at"] is None
        assert status["last_success_at"] is not None and status["last_error"] is None
        assert status["acked_seq"] == total and status["clock_offset_s"] is not None
    finally:
        await close_edge(edge)


async def test_a_loaded_cloud_paces_readings_but_never_urgent_records(
    cloud: StandInCloud, tmp_path: Path
) -> None:
    """While the cloud's answers ask for a batch every 1.5 s, readings gather that long (not the
    edge's 0.2 s), a command still goes at once, and once the answers stop asking the edge is
    back to its own pace; nothing is lost either way."""
    edge = await build_edge(cloud_settings(cloud, tmp_path), tmp_path / "edge.db")
    uplink = Uplink(edge.settings, edge.outbox, alerts=edge.alerts)
    stop = asyncio.Event()

    async def steady() -> None:  # a reading every 50 ms, as a room of sensors makes them
        i = 0
        while not stop.is_set():
            edge.db.write_nowait(store_telemetry, tel("sens-a", T0 + i, co2_ppm=400 + i % 50),
                                 "room-a", T0 + i, False)
            i += 1
            await asyncio.sleep(0.05)

    def readings_only_gaps(since: float) -> list[float]:
        log = [(t, kinds) for t, kinds in cloud.batch_log if t >= since]
        return [t - before for (before, _), (t, kinds) in itertools.pairwise(log)
                if kinds == {"reading"}]

    try:
        cloud.interval_header = "1.5"
        async with running(uplink.run()), running(steady()):
            await until(lambda: uplink.stats.cloud_interval_s == 1.5, 5, "the paced answer")
            paced_from = time.monotonic()
            await asyncio.sleep(4.0)
            cid = await edge.automation.manual_command("hum-a", "on", by="tester")
            asked = time.monotonic()
            await until(lambda: any(c["command_id"] == cid for c in cloud.of_kind("command")),
                        1.0, "the command, not held for the pace")
            urgent_s = time.monotonic() - asked
            await asyncio.sleep(2.0)
            paced = readings_only_gaps(paced_from)
            status = await uplink.status()
            cloud.interval_header = None  # the load is gone: the next answer says nothing
            await until(lambda: uplink.stats.cloud_interval_s == 0, 5, "the unpaced answer")
            free_from = time.monotonic()
            await asyncio.sleep(2.0)
            free = readings_only_gaps(free_from)
            stop.set()
            total = await drained(edge, cloud, 10)
        assert len(paced) >= 2 and min(paced) >= 1.3, paced
        assert urgent_s < 1.0
        assert status["batch_interval_asked_s"] == 1.5
        assert len(free) >= 5 and sorted(free)[len(free) // 2] < 0.6, free
        cloud.assert_exactly_once(total)
    finally:
        stop.set()
        await close_edge(edge)


async def test_faults_lose_and_duplicate_nothing(cloud: StandInCloud, tmp_path: Path) -> None:
    rnd = random.Random(4)
    cloud.slow_s = 0.7  # past the edge's 0.5 s request timeout

    def thirty_percent() -> str | None:
        return rnd.choice(["5xx", "timeout", "cut"]) if rnd.random() < 0.3 else None

    cloud.faults = thirty_percent
    edge = await build_edge(cloud_settings(cloud, tmp_path), tmp_path / "edge.db")
    uplink = Uplink(edge.settings, edge.outbox, alerts=edge.alerts)
    try:
        async with running(uplink.run()):
            await feed(edge, 4_000)
            for _ in range(5):
                await edge.automation.manual_command("fan-a", "on", by="tester")
            total = await drained(edge, cloud, 60)
        cloud.assert_exactly_once(total)
        assert cloud.stored == await edge_records(edge, total)
        assert uplink.stats.attempts_failed > 0
        assert cloud.late_commits > 0
        assert uplink.stats.duplicates > 0  # cut after commit: resent, answered as duplicates
        assert any(n > 1 for n in cloud.offered.values())
    finally:
        await close_edge(edge)


async def test_a_refused_token_alerts_and_retries_until_fixed(
    cloud: StandInCloud, tmp_path: Path
) -> None:
    cloud.token = "sfe_rotated-in-the-cloud"
    edge = await build_edge(cloud_settings(cloud, tmp_path), tmp_path / "edge.db")
    uplink = Uplink(edge.settings, edge.outbox, alerts=edge.alerts)
    try:
        async with running(uplink.run()):
            await feed(edge, 10)
            await until(lambda: "sync:auth" in edge.alerts.active, 5, "the auth alert")
            status = await uplink.status()
            assert "HTTP 401" in status["last_error"] and status["backlog_records"] >= 10
            assert status["oldest_unsent_age_s"] is not None
            assert cloud.mark == 0
            cloud.refused.clear()
            cloud.token = TOKEN  # the operator fixed it (here: the cloud takes the old token)
            await until(lambda: cloud.mark >= 10, 5, "uploads after the fix")
            await until(lambda: "sync:auth" not in edge.alerts.active, 5, "the alert resolved")
            cloud.assert_exactly_once(await drained(edge, cloud, 5))
    finally:
        await close_edge(edge)


async def test_edge_restarts_mid_upload_resume_from_the_stored_cursor(
    cloud: StandInCloud, tmp_path: Path
) -> None:
    rnd = random.Random(9)
    cloud.faults = lambda: "cut" if rnd.random() < 0.2 else None
    settings = cloud_settings(cloud, tmp_path)
    path = tmp_path / "edge.db"
    fed = 0
    for _ in range(6):  # six lives of the edge, each killed while uploading
        edge = await build_edge(settings, path)
        uplink = Uplink(edge.settings, edge.outbox)
        try:
            async with running(uplink.run()):
                await feed(edge, 600, start=fed)
                fed += 600
                await asyncio.sleep(rnd.uniform(0.05, 0.3))
        finally:
            await close_edge(edge)  # the held ack may be lost: a resend, never a loss
    edge = await build_edge(settings, path)
    uplink = Uplink(edge.settings, edge.outbox)
    try:
        async with running(uplink.run()):
            total = await drained(edge, cloud, 30)
        assert total == fed  # stale readings (2023) never make the automation act
        cloud.assert_exactly_once(total)
        assert cloud.stored == await edge_records(edge, total)
    finally:
        await close_edge(edge)


async def test_a_backlog_goes_two_batches_at_a_time_in_seq_order(
    cloud: StandInCloud, tmp_path: Path
) -> None:
    """While a backlog drains, the next batch is sent before the answer to the one ahead of it.
    When it reaches the cloud first (a 409: the batch ahead is not stored yet) it is sent again
    once that one is, without rewinding the cursor: nothing lost, nothing stored twice."""
    first_held = asyncio.Event()

    async def hold_the_first(batch: Batch) -> None:
        if batch.first_seq == 1 and not first_held.is_set():
            first_held.set()
            # Until the batch behind it has come, been refused as a gap, and been answered.
            await until(lambda: cloud.gaps_answered, 5, "the second batch refused as a gap")

    cloud.gate = hold_the_first
    edge = await build_edge(cloud_settings(cloud, tmp_path), tmp_path / "edge.db")
    await feed(edge, 1_000)  # five full batches wait before the uplink starts
    uplink = Uplink(edge.settings, edge.outbox)
    try:
        async with running(uplink.run()):
            total = await drained(edge, cloud, 20)
        cloud.assert_exactly_once(total)
        assert cloud.stored == await edge_records(edge, total)
        assert cloud.most_in_flight == 2
        assert cloud.gaps_answered == [201]  # the second batch, refused once
        assert uplink.stats.gaps == 0  # and no rewind: the cursor never went back
        assert max(cloud.offered.values()) == 1  # stored once each, the 409 stored nothing
    finally:
        await close_edge(edge)


async def test_a_409_rewinds_to_the_clouds_mark(cloud: StandInCloud, tmp_path: Path) -> None:
    edge = await build_edge(cloud_settings(cloud, tmp_path), tmp_path / "edge.db")
    uplink = Uplink(edge.settings, edge.outbox)
    try:
        async with running(uplink.run()):
            await feed(edge, 500)
            await until(lambda: cloud.mark >= 500, 10, "the first 500")
            # The cloud is restored from a backup that ends at seq 321.
            for seq in range(322, cloud.mark + 1):
                del cloud.stored[seq]
            cloud.mark = 321
            await feed(edge, 100, start=500)
            await until(lambda: cloud.mark >= 600, 10, "the rewind and the rest")
        cloud.assert_exactly_once(600)
        assert uplink.stats.gaps >= 1
        assert cloud.stored == await edge_records(edge, 600)
    finally:
        await close_edge(edge)


async def test_a_command_state_reaches_the_cloud_within_a_second(
    cloud: StandInCloud, tmp_path: Path
) -> None:
    # Production batching (2 s age, 0.1 s probe) and group commit: commands must wait for
    # neither.
    settings = cloud_settings(cloud, tmp_path, batch_max_age_s=2.0, poll_interval_s=0.1)
    edge = await build_edge(settings, tmp_path / "edge.db",
                            commit_interval_ms=settings.store.commit_interval_ms)
    uplink = Uplink(edge.settings, edge.outbox)
    try:
        async with running(uplink.run()):
            await asyncio.sleep(0.3)
            cid = await edge.automation.manual_command("hum-a", "on", by="tester")
            await edge.message("ack", "hum-a", {"command_id": cid, "status": "ok"})
            acked_at = time.monotonic()

            def acked() -> bool:
                return any(s["command_id"] == cid and s["state"] == "acked"
                           for s in cloud.of_kind("command_state"))

            await until(acked, 3, "the acked state in the cloud")
            seq = next(s for s, r in cloud.stored.items() if r["kind"] == "command_state")
            assert cloud.arrived[seq] - acked_at < 1.0
    finally:
        await close_edge(edge)


# ---- down --------------------------------------------------------------------------------------

def command(device: str = "hum-a", room: str = "room-a", action: str = "on",
            age_s: float = 0, ttl_s: float = 60) -> CloudCommand:
    created = utcnow() - timedelta(seconds=age_s)
    return CloudCommand(command_id=f"cc-{uuid.uuid4().hex[:8]}", device_id=device, room_id=room,
                        action=action, created_at=created,  # type: ignore[arg-type]
                        expires_at=created + timedelta(seconds=ttl_s))


def answer_for(cloud: StandInCloud, command_id: str) -> list[CommandAccepted]:
    return [a for a in cloud.answers
            if isinstance(a, CommandAccepted) and a.command_id == command_id]


async def test_cloud_commands_over_the_stream(cloud: StandInCloud, tmp_path: Path) -> None:
    edge = await build_edge(cloud_settings(cloud, tmp_path), tmp_path / "edge.db")
    downlink = Downlink(edge.settings, edge.db, edge.automation, edge.commands)
    try:
        async with running(downlink.run()):
            await until(lambda: cloud.hellos, 5, "the edge's hello")
            assert cloud.hellos[0] == Hello(edge_id=EDGE_ID, config_version=0, acked_seq=0)
            fresh = command()
            cloud.send(fresh)
            await until(lambda: answer_for(cloud, fresh.command_id), 5, "the answer")
            accepted = answer_for(cloud, fresh.command_id)[0]
            assert accepted.state == "delivered" and accepted.edge_command_id
            topic, payload = edge.publisher.sent[-1]
            assert topic.endswith("/room/room-a/command/hum-a")
            assert payload["action"] == "on"
            assert payload["command_id"] == accepted.edge_command_id
            override = edge.automation.actuators["hum-a"].override
            assert override is not None and override.by == "cloud"

            cloud.send(fresh)  # redelivered (reconnect, poll): answered again, not executed
            await until(lambda: len(answer_for(cloud, fresh.command_id)) == 2, 5, "2nd answer")
            assert answer_for(cloud, fresh.command_id)[1] == accepted
            assert sum(1 for t, _ in edge.publisher.sent if t.endswith("/hum-a")) == 1

            stale = command(age_s=120, ttl_s=60)  # waited in the cloud past its expiry
            old = command(age_s=400, ttl_s=3_600)  # older than the edge's command_ttl_s (300)
            unknown = command(device="nope")
            sensor = command(device="sens-a", action="set")
            for message in (stale, old, unknown, sensor):
                cloud.send(message)
            for message, state in ((stale, "expired"), (old, "expired"),
                                   (unknown, "rejected"), (sensor, "rejected")):
                await until(lambda m=message: answer_for(cloud, m.command_id), 5, state)
                assert answer_for(cloud, message.command_id)[0].state == state
            assert len(edge.publisher.sent) == 1
        await edge.settle()
        row = edge.query("SELECT source FROM commands WHERE command_id = ?",
                         (accepted.edge_command_id,))
        assert row[0]["source"] == "cloud"
        records = await edge.records()
        linked = [r["data"] for r in records if r["kind"] == "command"]
        assert linked[0]["cloud_command_id"] == fresh.command_id
    finally:
        await close_edge(edge)


async def test_polling_when_the_stream_keeps_failing(cloud: StandInCloud, tmp_path: Path) -> None:
    cloud.stream_enabled = False
    edge = await build_edge(cloud_settings(cloud, tmp_path), tmp_path / "edge.db")
    downlink = Downlink(edge.settings, edge.db, edge.automation, edge.commands)
    message = command(device="fan-a")
    cloud.pending.append(message.model_dump(mode="json"))
    try:
        async with running(downlink.run()):
            await until(lambda: answer_for(cloud, message.command_id), 10, "a polled answer")
            assert downlink.status()["mode"] == "poll"
        assert answer_for(cloud, message.command_id)[0].state == "delivered"
        assert cloud.pending == []
        assert edge.publisher.sent[-1][0].endswith("/command/fan-a")
    finally:
        await close_edge(edge)


def config_push(version: int, *, hashed: str | None = None, room_c: str = "room-c",
                disabled: list[str] | None = None) -> ConfigPush:
    return ConfigPush(
        version=version,
        rooms=[
            RoomSpec(id="room-a", name="Oyster A", species="oyster", stage="pinning",
                     disabled_rules=disabled or []),
            RoomSpec(id="room-c", name="New room", species="shiitake", stage="spawn_run"),
        ],
        devices=[DeviceSpec(id="sens-c", room=room_c, kind="sensor", password_hash=hashed)],
    )


async def test_config_push_is_applied_and_acknowledged(
    cloud: StandInCloud, tmp_path: Path
) -> None:
    settings = cloud_settings(cloud, tmp_path)
    settings.config_path = tmp_path / "edge.toml"
    sync_broker_files(settings)
    edge = await build_edge(settings, tmp_path / "edge.db")
    downlink = Downlink(edge.settings, edge.db, edge.automation, edge.commands,
                        alerts=edge.alerts)
    rule = next(r.id for r in edge.automation.rules("room-a"))
    hashed = hash_password("cloud-made-password")
    try:
        async with running(downlink.run()):
            await until(lambda: cloud.hellos, 5, "hello")
            cloud.send(config_push(3, hashed=hashed, disabled=[rule]))
            await until(lambda: ConfigApplied(version=3) in cloud.answers, 5, "ConfigApplied")
            assert edge.automation.rooms["room-a"].stage == "pinning"
            assert "room-c" in edge.automation.rooms
            assert not next(r for r in edge.automation.rules("room-a") if r.id == rule).enabled
            assert edge.settings.device("sens-c") is not None
            assert edge.settings.device("hum-a") is not None  # the TOML's devices stay
            assert read_password_file(settings.password_file_path)["sens-c"] == hashed
            acl = json.loads(device_acl_path(settings).read_text())["devices"]
            assert acl["sens-c"] == "room-c"
            # An older version is not applied; a broken one is refused whole, with an alert.
            cloud.send(config_push(2))
            cloud.send(config_push(4, room_c="no-such-room"))
            await until(lambda: len(cloud.answers) >= 2, 5, "the stale push's answer")
            await asyncio.sleep(0.2)
            assert cloud.answers[1:] == [ConfigApplied(version=3)]
            assert downlink.config_version == 3
            assert "sync:config_rejected" in edge.alerts.active
        await edge.settle()
        # Applying is not a local change: nothing goes back up as config_change.
        assert [r for r in await edge.records() if r["kind"] == "config_change"] == []
        assert await edge.db.read(rows.get_state, "config_version") == 3
        # A local edit after it goes up with the version it was based on.
        await edge.automation.set_stage("room-c", "fruiting")
        await edge.settle()
        changes = [r["data"] for r in await edge.records() if r["kind"] == "config_change"]
        assert changes[0]["base_version"] == 3
        assert changes[0]["change"]["stage"] == "fruiting"
    finally:
        await close_edge(edge)

    # A restart: the TOML alone, then the stored overlay on top.
    fresh = cloud_settings(cloud, tmp_path)
    again = await build_edge(fresh, tmp_path / "edge.db")
    try:
        restored = ConfigSync(fresh, again.db, again.automation)
        await restored.restore()
        assert restored.version == 3
        assert fresh.device("sens-c") is not None and fresh.room("room-c") is not None
    finally:
        await close_edge(again)


async def test_a_device_registered_in_the_cloud_connects_within_seconds(
    cloud: StandInCloud, tmp_path: Path
) -> None:
    settings = cloud_settings(cloud, tmp_path)
    settings.config_path = tmp_path / "edge.toml"
    settings.broker.port = 0
    sync_broker_files(settings, DeviceSecrets.load_or_create(settings.device_secrets_path))
    edge = await build_edge(settings, tmp_path / "edge.db")
    downlink = Downlink(edge.settings, edge.db, edge.automation, edge.commands)
    password = "cloud-issued-password-1234"
    try:
        async with embedded_broker(settings) as broker:
            applied = await downlink.handle(config_push(1, hashed=hash_password(password)))
            assert applied == ConfigApplied(version=1)
            started = time.monotonic()
            user, edge_password = edge_login(settings)
            topic = f"farm/{settings.farm_id}/room/room-c/telemetry/sens-c"
            async with aiomqtt.Client("127.0.0.1", broker.port, username=user,
                                      password=edge_password, identifier="edge-t") as watcher:
                await watcher.subscribe(f"farm/{settings.farm_id}/#", qos=1)
                while True:
                    try:
                        async with aiomqtt.Client("127.0.0.1", broker.port, username="sens-c",
                                                  password=password, identifier="sens-c",
                                                  timeout=3) as device:
                            await device.publish(topic, b"{}", qos=1)
                        break
                    except aiomqtt.MqttError:
                        assert time.monotonic() - started < 5, "the broker never took it"
                        await asyncio.sleep(0.2)
                message = await asyncio.wait_for(anext(aiter(watcher.messages)), 5)
                assert message.topic.value == topic
            assert time.monotonic() - started < 5
    finally:
        await close_edge(edge)


# ---- wiring ------------------------------------------------------------------------------------

async def test_the_edge_app_syncs_when_a_cloud_is_registered(
    cloud: StandInCloud, tmp_path: Path
) -> None:
    config = make_site(tmp_path / "site", cloud.farm_id)
    # Unchecked: the stand-in cloud serves on this loop, which a synchronous check would block
    # (the check against a real cloud: tests/integration/test_setup_checks.py).
    token_file = register_cloud(config, cloud.url, TOKEN, EDGE_ID, check=False)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    register_cloud(config, cloud.url, TOKEN, EDGE_ID, check=False)  # again: the section is replaced
    assert config.read_text().count("[cloud]") == 1
    settings = fast_settings(config)
    assert settings.cloud.enabled and settings.cloud.token is not None
    assert settings.cloud.token.get_secret_value() == TOKEN
    settings.cloud.batch_max_age_s = 0.2
    app = EdgeApp(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        # Boot re-asserts every actuator: those commands reach the cloud with the source "boot".
        await until(lambda: any(c["source"] == "boot" for c in cloud.of_kind("command")), 20,
                    "boot commands in the cloud")
        await until(lambda: cloud.hellos, 10, "the stream's hello")
        status = await app.sync_status()
        assert status["enabled"] and status["edge_id"] == EDGE_ID
        assert status["downlink"]["mode"] == "stream"
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    assert cloud.refused == [] and cloud.conflicts == []
    assert load_config(config).cloud.url == cloud.url


def test_register_and_cloud_config_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not CloudConfig().enabled
    with pytest.raises(ValueError, match="http"):
        CloudConfig(url="ftp://x")
    config = make_site(tmp_path, "farm-x")
    argv = ["register", "--cloud", "https://cloud.example/", "--token", "sfe_secret-1",
            "--edge-id", "edge-x", "--offline", "--config", str(config)]
    assert edge_main(argv) == 0
    settings = load_config(config)
    assert (settings.cloud.url, settings.cloud.edge_id) == ("https://cloud.example", "edge-x")
    assert settings.cloud.enabled
    shown = effective_config(settings)
    assert "sfe_secret-1" not in shown and "sfe_secret-1" not in config.read_text()
    assert "edge-x" in capsys.readouterr().out
    assert edge_main([*argv[:3], "--token", "two words", *argv[5:]]) == 2  # refused, one line
    token_file = register_cloud(config, "https://cloud.example", "tok", check=False)
    assert load_config(config).cloud.edge_id == "farm-x"  # the default: the farm id
    token_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_config(config)
