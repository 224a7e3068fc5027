"""A reading a device saw acknowledged is never lost: through 20 edge restarts with devices
publishing from the moment the port opens, and through SIGKILLs under 200 msg/s (embedded
broker: PUBACK only once the reading is committed). With an external Mosquitto, which
acknowledges the devices itself, the edge acknowledges each message to Mosquitto only once it is
committed: SIGKILLs of the edge under 200 msg/s lose nothing Mosquitto took either."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from edge.config import EdgeSettings, load_config
from edge.credentials import DeviceSecrets, write_mosquitto_acl, write_mosquitto_password_file
from shared.models import Telemetry, dump
from shared.topics import build_topic
from tests.chaos.test_edge_restart import start_edge, stop_process
from tests.conftest import free_port
from tests.e2e.conftest import make_site
from tests.integration.test_mosquitto_acl import private_mosquitto

pytestmark = pytest.mark.timeout(420)


@dataclass
class Ledger:
    """What each device sent and saw acknowledged (device id, reading timestamp)."""

    acked: set[tuple[str, float]] = field(default_factory=set)
    sent: int = 0
    connect_failures: int = 0


async def publish_until(settings: EdgeSettings, secrets: DeviceSecrets, device_id: str,
                        ledger: Ledger, stop: asyncio.Event, rate: float, base: datetime,
                        counter: list[int], port: int) -> None:
    """Connect as soon as the port accepts, publish ``rate`` readings/s at QoS 1 (each with a
    timestamp of its own) until ``stop``; reconnect whenever the edge goes away."""
    topic = build_topic(settings.farm_id, "room-a", "telemetry", device_id)
    while not stop.is_set():
        try:
            async with aiomqtt.Client("127.0.0.1", port, username=device_id,
                                      password=secrets.devices[device_id], timeout=5,
                                      identifier=f"{device_id}-node") as client:
                inflight: set[asyncio.Task[None]] = set()
                broken = asyncio.Event()  # a publish failed: the edge went away
                while not stop.is_set() and not broken.is_set():
                    counter[0] += 1
                    ts = base + timedelta(milliseconds=counter[0])
                    tel = Telemetry(device_id=device_id, timestamp=ts,
                                    data={"humidity_pct": 80 + counter[0] % 15})
                    ledger.sent += 1
                    task = asyncio.create_task(_publish(client, topic, tel, ledger, broken))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                    await asyncio.sleep(1 / rate)
                await asyncio.gather(*inflight, return_exceptions=True)
        except aiomqtt.MqttError:
            ledger.connect_failures += 1
            await asyncio.sleep(0.02)  # the port is not open yet, or the edge just died


async def _publish(client: aiomqtt.Client, topic: str, tel: Telemetry, ledger: Ledger,
                   broken: asyncio.Event) -> None:
    try:
        await client.publish(topic, dump(tel), qos=1, timeout=10)
    except aiomqtt.MqttError:
        broken.set()
        return
    assert tel.timestamp is not None
    ledger.acked.add((tel.device_id, tel.timestamp.timestamp()))


def stored(db: Path) -> set[tuple[str, float]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return {(str(d), float(ts)) for d, ts in conn.execute(
            "SELECT s.device_id, r.ts FROM readings r JOIN series s ON s.key = r.series")}
    finally:
        conn.close()


async def run_cycles(tmp_path: Path, farm_id: str, *, cycles: int, up_s: float, rate: float,
                     how: list[signal.Signals], acked_per_cycle: int = 0, external: bool = False,
                     ) -> tuple[Ledger, set[tuple[str, float]], str]:
    """``cycles`` edge lives under publishing devices, each ended by the next of ``how``: a life
    lasts ``up_s`` and, on a slow machine, on until ``acked_per_cycle`` readings were
    acknowledged in it (at most 30 s more), so every kill lands on real traffic.

    ``external``: the devices publish to a private Mosquitto (the shipped configuration), which
    acknowledges them itself and outlives every edge; the edge subscribes to it. A last edge life
    then takes what Mosquitto kept for it while it was down, and ends with a SIGTERM."""
    config = make_site(tmp_path / "site", farm_id)
    settings = load_config(config)
    secrets = DeviceSecrets.load(settings.device_secrets_path)
    devices = [d.id for d in settings.devices]
    ledger = Ledger()
    log = tmp_path / "edge.log"
    base = datetime.now(UTC) - timedelta(hours=2)
    counter = [0]
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        port = settings.broker.port
        if external:
            port = await stack.enter_async_context(mosquitto(settings, tmp_path / "mosquitto"))
            config.write_text(config.read_text().replace(
                'mode = "embedded"', f'mode = "external"\nurl = "mqtt://127.0.0.1:{port}"'))
            await first_subscription(config, log)
        # Publishers run throughout, edges come and go under them.
        publishers = [asyncio.create_task(publish_until(settings, secrets, device, ledger, stop,
                                                        rate / len(devices), base, counter, port))
                      for device in devices]
        proc: subprocess.Popen[bytes] | None = None
        try:
            for cycle in range(cycles):
                proc = start_edge(config, log)
                before = len(ledger.acked)
                await asyncio.sleep(up_s)
                deadline = time.monotonic() + 30
                while len(ledger.acked) - before < acked_per_cycle and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                sig = how[cycle % len(how)]
                proc.send_signal(sig)
                await asyncio.to_thread(proc.wait, 30)
                if sig == signal.SIGTERM:
                    assert proc.returncode == 0, f"cycle {cycle}: edge exited {proc.returncode}"
        finally:
            stop.set()
            await asyncio.gather(*publishers, return_exceptions=True)
            if proc is not None:
                stop_process(proc)
        if external:
            # What Mosquitto kept for the edge's session while it was down comes now.
            proc = start_edge(config, log)
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and ledger.acked - stored(settings.db_path):
                    await asyncio.sleep(0.5)
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 30)
                stop_process(proc)
    return ledger, stored(settings.db_path), log.read_text()


async def first_subscription(config: Path, log: Path) -> None:
    """An edge's first life, until it has subscribed: from then on Mosquitto keeps the farm's
    messages for the edge's session while no edge runs (as on a farm, where the edge came
    first); readings published before the session existed would be delivered to nobody."""
    proc = start_edge(config, log)
    try:
        deadline = time.monotonic() + 30
        while "edge connected to MQTT broker" not in log.read_text():
            assert time.monotonic() < deadline, "the edge did not connect to Mosquitto"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # its subscriptions follow the connection
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        stop_process(proc)


@contextlib.asynccontextmanager
async def mosquitto(settings: EdgeSettings, directory: Path) -> AsyncIterator[int]:
    """A private Mosquitto on a free port with the shipped configuration and the accounts and
    ACL smartfarm writes for it (deploy/mosquitto/README.md); yields its port."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    secrets = DeviceSecrets.load(settings.device_secrets_path)
    passwd, acl = directory / "passwd", directory / "acl"
    write_mosquitto_password_file(passwd, secrets.plaintext_entries())
    write_mosquitto_acl(acl, settings.farm_id, secrets.edge_username)
    async with private_mosquitto(directory, port, passwd, acl):
        yield port


async def test_restarts_while_devices_publish_from_the_first_moment(tmp_path, farm_id):
    started = time.monotonic()
    ledger, on_disk, log = await run_cycles(
        tmp_path, farm_id, cycles=20, up_s=4.0, rate=100,
        how=[signal.SIGTERM, signal.SIGKILL], acked_per_cycle=21)
    lost = ledger.acked - on_disk
    assert not lost, f"{len(lost)} of {len(ledger.acked)} acknowledged readings lost"
    # Enough traffic for the test to mean something (the edge takes ~2 s to start here).
    assert len(ledger.acked) > 20 * 20, (len(ledger.acked), ledger.sent)
    assert "Traceback" not in log
    print(f"20 restarts in {time.monotonic() - started:.0f} s: {ledger.sent} sent, "
          f"{len(ledger.acked)} acked, 0 acked-but-lost, {len(on_disk)} stored")


async def test_sigkill_under_200_msgs_loses_no_acknowledged_reading(tmp_path, farm_id):
    ledger, on_disk, log = await run_cycles(
        tmp_path, farm_id, cycles=5, up_s=6.0, rate=200, how=[signal.SIGKILL],
        acked_per_cycle=301)
    lost = ledger.acked - on_disk
    assert not lost, f"{len(lost)} of {len(ledger.acked)} acknowledged readings lost"
    assert len(ledger.acked) > 5 * 300, (len(ledger.acked), ledger.sent)
    assert "Traceback" not in log


@pytest.mark.mosquitto
async def test_sigkills_of_an_edge_on_mosquitto_lose_nothing_mosquitto_took(tmp_path, farm_id):
    ledger, on_disk, log = await run_cycles(
        tmp_path, farm_id, cycles=5, up_s=6.0, rate=200, how=[signal.SIGKILL],
        acked_per_cycle=301, external=True)
    lost = ledger.acked - on_disk
    assert not lost, f"{len(lost)} of {len(ledger.acked)} readings Mosquitto took were lost"
    assert len(ledger.acked) > 5 * 300, (len(ledger.acked), ledger.sent)
    assert "Traceback" not in log
