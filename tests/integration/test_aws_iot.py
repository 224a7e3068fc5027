"""The AWS IoT Core uplink end to end, with a local Mosquitto standing in for AWS IoT Core.

Mosquitto listens with TLS on a free loopback port and requires a client certificate (CA, server
and client certificates are made here), and an ACL file gives each client what the provisioned
IoT policy gives a thing: its own batches and replies topics to publish, its acks and commands
topics to read. A ``TopicRule`` (an aiomqtt client with its own certificate) does what the IoT
topic rule and the cloud's IoT Data API publisher do in production: it posts each batch to the
real cloud's ``POST /api/edge/v1/batches`` with the headers the rule forwards from the message's
user properties, publishes the cloud's answer on the edge's acks topic, and forwards the edge's
replies to ``POST /api/edge/v1/pending``. It can lose batches, lose answers and deliver twice.
The real edge (``EdgeApp``) and the real cloud (``init_app`` on PostgreSQL) run in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import ipaddress
import itertools
import json
import os
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud.sync.service import EDGE_SYNC
from edge.config import AwsIotConfig, ConfigError, load_config
from edge.iot_uplink import IotUplink, OversizedRecord, Part, Problem, parse_answer, split
from edge.store.telemetry import store_telemetry
from firmware_sim.farm import build_farm
from shared.models import Telemetry
from shared.sync import Batch, BatchAck, GapError
from tests.chaos.conftest import (
    Cloud,
    Registration,
    cloud,
    drained,
    edge_app,
    fast_settings,
    make_site,
    register_edge,
    tally,
    until,
)
from tests.conftest import free_port

# The real cloud's fixtures (tests/chaos/conftest.py), found by pytest under these names.
FIXTURES = (cloud, edge_app)
MOSQUITTO = Path("/usr/sbin/mosquitto")
EDGE_ID = "edge-iot"
RULE_ID = "iot-rule"
IOT_LIMIT = 128 * 1024


# ---- certificates -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    folder: Path

    def cert(self, name: str) -> Path:
        return self.folder / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.cert("ca")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(pki: Pki, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    pki.key(name).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pki.key(name).chmod(0o600)
    pki.cert(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(folder: Path, clients: tuple[str, ...]) -> Pki:
    """A CA, a server certificate for localhost / 127.0.0.1, and a client certificate per name
    (its common name, which Mosquitto takes as the username)."""
    pki = Pki(folder)
    now = dt.datetime.now(dt.UTC)
    valid = (now - dt.timedelta(minutes=5), now + dt.timedelta(days=1))
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smartfarm test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
              key_encipherment=False, data_encipherment=False, key_agreement=False,
              encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write(pki, "ca", ca_key, ca)
    for name in ("server", *clients):
        key = _key()
        server = name == "server"
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.ExtendedKeyUsage([
                ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
            ]), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            ]), critical=False)
        _write(pki, name, key, builder.sign(ca_key, hashes.SHA256()))
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), (EDGE_ID, RULE_ID))


# ---- the broker ---------------------------------------------------------------------------------

class Broker:
    """``mosquitto -c`` with TLS and client certificates on a free loopback port."""

    def __init__(self, folder: Path, pki: Pki) -> None:
        self.port = free_port()
        self.folder = folder
        self.conf = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        acl = folder / "acl"
        # What the thing policy allows (deploy/aws/iot-policy.json), by certificate name.
        acl.write_text("\n".join([
            f"user {RULE_ID}",
            "topic readwrite smartfarm/#",
            "pattern write smartfarm/+/edge/%u/batches",
            "pattern write smartfarm/+/edge/%u/replies",
            "pattern read smartfarm/+/edge/%u/acks",
            "pattern read smartfarm/+/edge/%u/commands",
            "",
        ]))
        self.conf.write_text("\n".join([
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            f"cafile {pki.ca}",
            f"certfile {pki.cert('server')}",
            f"keyfile {pki.key('server')}",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            f"acl_file {acl}",
            "max_queued_messages 0",
            f"max_packet_size {IOT_LIMIT + 1024}",  # AWS IoT Core: 128 KiB payloads
            "persistence false",
            # Run as root, Mosquitto would drop to user `mosquitto` before reading the keys in
            # a 0700 pytest folder.
            *(["user root"] if os.geteuid() == 0 else []),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
        ]))
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:  # a file, not a pipe: a full pipe would stall it
            self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)],
                                         stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.5
            ):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not start: {self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@pytest.fixture
async def broker(tmp_path: Path, pki: Pki) -> AsyncIterator[Broker]:
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    found = Broker(folder, pki)
    await found.start()
    try:
        yield found
    finally:
        found.stop()


# ---- the topic rule -----------------------------------------------------------------------------

@dataclass
class TopicRule:
    """The IoT topic rule's HTTPS action plus the cloud's answer on the acks topic.

    ``fault(n)`` for the n-th batch message (from 1) may say "drop" (the HTTPS action failed),
    "lose_ack" (stored, but the answer never reaches the edge) or "twice" (delivered twice).
    With ``cloud_answers`` the rule adds the ``X-Smartfarm-Reply-Topic`` header as the real rule
    does and leaves the answer to the cloud's own publisher (``MosquittoIotData``)."""

    broker: Broker
    pki: Pki
    cloud_url: str
    fault: Callable[[int], str | None] = lambda n: None
    cloud_answers: bool = False
    offered: Counter[int] = field(default_factory=Counter)  # seq -> times posted to the cloud
    faults: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    max_size: int = 0
    encodings: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    replies: list[dict[str, Any]] = field(default_factory=list)
    client: aiomqtt.Client | None = None

    def tls(self) -> aiomqtt.TLSParameters:
        return aiomqtt.TLSParameters(ca_certs=str(self.pki.ca),
                                     certfile=str(self.pki.cert(RULE_ID)),
                                     keyfile=str(self.pki.key(RULE_ID)))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[TopicRule]:
        async with aiomqtt.Client(
            "127.0.0.1", self.broker.port, identifier=RULE_ID, tls_params=self.tls(),
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client, aiohttp.ClientSession() as session:
            self.client = client
            await client.subscribe("smartfarm/+/edge/+/batches", qos=1)
            await client.subscribe("smartfarm/+/edge/+/replies", qos=1)
            task = asyncio.create_task(self._serve(client, session), name="topic-rule")
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self.client = None

    async def publish_command(self, farm_id: str, message: dict[str, Any]) -> None:
        """What the cloud does through the IoT Data API: a message on the edge's command topic."""
        assert self.client is not None
        await self.client.publish(f"smartfarm/{farm_id}/edge/{EDGE_ID}/commands",
                                  json.dumps(message).encode(), qos=1)

    async def _serve(self, client: aiomqtt.Client, session: aiohttp.ClientSession) -> None:
        async for message in client.messages:
            _, farm_id, _, edge_id, kind = str(message.topic).split("/")
            props = dict(getattr(message.properties, "UserProperty", None) or [])
            payload = bytes(message.payload)  # type: ignore[arg-type]
            headers = {"Authorization": props.get("authorization", ""),
                       "Content-Type": "application/json"}
            if kind == "replies":
                self.replies.append(json.loads(payload))
                async with session.post(self.cloud_url + "/api/edge/v1/pending", data=payload,
                                        headers=headers) as resp:
                    assert resp.status == 204, await resp.text()
                continue
            self.messages += 1
            self.max_size = max(self.max_size, len(payload))
            encoding = props.get("content-encoding", "identity")
            self.encodings.add(encoding)
            batch = Batch.model_validate_json(
                gzip.decompress(payload) if encoding == "gzip" else payload)
            fault = self.fault(self.messages)
            if fault:
                self.faults[fault] += 1
            if fault == "drop":
                continue
            headers["Content-Encoding"] = encoding
            if self.cloud_answers:
                headers["X-Smartfarm-Reply-Topic"] = f"smartfarm/{farm_id}/edge/{edge_id}/acks"
            for _ in range(2 if fault == "twice" else 1):
                async with session.post(self.cloud_url + "/api/edge/v1/batches", data=payload,
                                        headers=headers) as resp:
                    answer = await resp.read()
                    self.statuses[resp.status] += 1
                if resp.status == 200:
                    self.offered.update(range(batch.first_seq, batch.last_seq + 1))
                if fault != "lose_ack" and not self.cloud_answers:
                    await client.publish(f"smartfarm/{farm_id}/edge/{edge_id}/acks", answer,
                                         qos=1)


class MosquittoIotData:
    """Test-only stand-in for the cloud's boto3 ``iot-data`` client: the same ``publish(topic=,
    qos=, payload=)``, delivered to the local Mosquitto over the rule's connection. The cloud calls
    it from a worker thread (``asyncio.to_thread``), as it calls boto3."""

    def __init__(self, rule: TopicRule, loop: asyncio.AbstractEventLoop) -> None:
        self.rule = rule
        self.loop = loop
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, *, topic: str, qos: int, payload: bytes) -> dict[str, Any]:
        assert self.rule.client is not None
        done = asyncio.run_coroutine_threadsafe(
            self.rule.client.publish(topic, payload, qos=qos), self.loop)
        done.result(10)
        self.sent.append((topic, payload))
        return {}


# ---- the site -----------------------------------------------------------------------------------

def iot_site(tmp_path: Path, the_cloud: Cloud, reg: Registration, broker: Broker, pki: Pki,
             config: Path, **iot: Any) -> None:
    """``smartfarm edge register`` with the cloud, then the [cloud.aws_iot] table."""
    register_edge(config, the_cloud.url, reg)
    keys = {
        "enabled": True, "endpoint": "localhost", "port": broker.port,
        "cert_file": str(pki.cert(EDGE_ID)), "key_file": str(pki.key(EDGE_ID)),
        "ca_file": str(pki.ca), "ack_timeout_s": 1.0, **iot,
    }
    with config.open("a") as fh:
        fh.write("\n[cloud.aws_iot]\n")
        for key, value in keys.items():
            fh.write(f"{key} = {json.dumps(value)}\n")


async def seed_backlog(app: Any, device: str, room: str, count: int) -> None:
    """``count`` readings of one sensor over the last hours, written as ingest would."""
    start = time.time() - count * 2

    def write(conn: Any) -> None:
        for i in range(count):
            ts = start + i * 2
            tel = Telemetry(device_id=device, timestamp=dt.datetime.fromtimestamp(ts, dt.UTC),
                            data={"temperature_c": 18 + (i % 50) / 10,
                                  "humidity_pct": 80 + (i % 97) / 10, "co2_ppm": 800 + i % 400})
            store_telemetry(conn, tel, room, ts, False)

    await app.db.write(write, urgent=True)


# ---- end to end ---------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.postgres
@pytest.mark.mosquitto
async def test_batches_over_iot_reach_postgres_exactly_once_through_losses(
    cloud: Any, broker: Broker, pki: Pki, tmp_path: Path, farm_id: str, edge_app: Any,
    compress: bool,
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), EDGE_ID)
    # A small message limit so that every batch of the backlog is cut into several messages.
    limit = 16 * 1024 if compress else 48 * 1024
    iot_site(tmp_path, the_cloud, reg, broker, pki, config, max_message_bytes=limit,
             compress=compress)
    faults = {3: "drop", 5: "lose_ack", 6: "twice"}
    rule = TopicRule(broker, pki, the_cloud.url, fault=lambda n: faults.get(n % 20))
    async with rule.running():
        settings = fast_settings(config)
        run = await edge_app(settings)
        edge = run.app
        assert isinstance(edge.uplink, IotUplink)
        await seed_backlog(edge, "room-a-sensor", "room-a", 3000)
        farm = build_farm(settings, speed=60, telemetry_interval_s=1, seed=7)
        stop = asyncio.Event()
        sim = asyncio.create_task(farm.run(stop))
        try:
            await until(lambda: edge.uplink.stats.records > 3000, 40, "the backlog uploaded")
            await asyncio.sleep(1.0)  # the simulated room keeps going meanwhile
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sim, 10)
        await drained(the_cloud, settings.db_path, EDGE_ID, 30)
        status = await edge.sync_status()
        await run.stop()
    counted = await tally(the_cloud, settings.db_path, EDGE_ID, reg.farm_id)
    print(counted.summary(), edge.uplink.stats, dict(rule.faults), sep="\n")
    counted.assert_exactly_once()
    # Every seq was posted to the cloud at least once; losses made the edge publish again.
    assert set(rule.offered) == set(range(1, counted.edge_seqs + 1))
    assert rule.faults["drop"] and rule.faults["lose_ack"] and rule.faults["twice"]
    assert max(rule.offered.values()) >= 2 and edge.uplink.stats.attempts_failed >= 2
    assert rule.statuses.keys() == {200}
    # Cut to fit: no message over the limit, and many more messages than outbox batches.
    assert 0 < rule.max_size <= limit and rule.messages > counted.edge_seqs // 1000
    assert rule.encodings == {"gzip" if compress else "identity"}
    assert status["transport"] == "aws-iot" and status["connected"] is True
    assert counted.readings > 3000, counted.summary()


@pytest.mark.postgres
@pytest.mark.mosquitto
async def test_broker_restart_mid_upload_loses_and_doubles_nothing(
    cloud: Any, broker: Broker, pki: Pki, tmp_path: Path, farm_id: str, edge_app: Any,
) -> None:
    the_cloud: Cloud = await cloud(command_ttl_s=60)
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), EDGE_ID)
    iot_site(tmp_path, the_cloud, reg, broker, pki, config, max_message_bytes=8 * 1024)
    # The rule's HTTPS action stops delivering after three messages: the edge keeps resending.
    rule = TopicRule(broker, pki, the_cloud.url, fault=lambda n: "drop" if n > 3 else None)
    settings = fast_settings(config)
    async with rule.running():
        run = await edge_app(settings)
        edge = run.app
        assert isinstance(edge.uplink, IotUplink)
        await seed_backlog(edge, "room-a-sensor", "room-a", 4000)
        await until(lambda: rule.faults["drop"] >= 2, 20, "uploads stuck half-way")
    # AWS IoT Core goes away mid-upload (no persistence: the edge's session is gone too).
    broker.stop()
    stored = await the_cloud.high_water(EDGE_ID)
    assert 0 < stored < 4000
    await asyncio.sleep(1.0)
    assert edge.uplink.connection is not None and not edge.uplink.connection.ready.is_set()
    await broker.start()
    rule = TopicRule(broker, pki, the_cloud.url)
    async with rule.running():
        await until(lambda: edge.uplink.connection.ready.is_set(), 20, "the edge to reconnect")
        await drained(the_cloud, settings.db_path, EDGE_ID, 40)
        await run.stop()
    counted = await tally(the_cloud, settings.db_path, EDGE_ID, reg.farm_id)
    print(counted.summary(), edge.uplink.stats, sep="\n")
    counted.assert_exactly_once()
    assert edge.uplink.connection.connects >= 2 and edge.uplink.stats.attempts_failed >= 2
    assert counted.readings >= 4000 and rule.offered and min(rule.offered) == stored + 1


@pytest.mark.postgres
@pytest.mark.mosquitto
async def test_the_clouds_commands_and_config_reach_the_actuator_over_the_command_topic(
    cloud: Any, broker: Broker, pki: Pki, tmp_path: Path, farm_id: str, edge_app: Any,
) -> None:
    # The cloud's IoT Data publisher is on (the endpoint is never reached: the client is
    # replaced by MosquittoIotData below); no catch-up sweep during the test.
    the_cloud: Cloud = await cloud(command_ttl_s=60, expiry_sweep_s=3600,
                                   iot_data_endpoint="https://example-ats.iot.us-east-1.amazonaws.com")
    config = make_site(tmp_path / "site", farm_id)
    reg = await the_cloud.provision(load_config(config), EDGE_ID)
    # AWS IoT only: no WebSocket, so whatever comes down comes over the command topic.
    iot_site(tmp_path, the_cloud, reg, broker, pki, config, downlink_stream=False)
    rule = TopicRule(broker, pki, the_cloud.url, cloud_answers=True)
    sync = the_cloud.runners[the_cloud.url].app[EDGE_SYNC]
    assert sync.iot_acks is not None and sync.iot_down is not None
    iot_data = MosquittoIotData(rule, asyncio.get_running_loop())
    sync.iot_acks.client = sync.iot_down.client = iot_data
    commands_topic = f"smartfarm/{farm_id}/edge/{EDGE_ID}/commands"
    settings = fast_settings(config)
    async with rule.running():
        run = await edge_app(settings)
        edge = run.app
        farm = build_farm(settings, speed=60, telemetry_interval_s=2, seed=3)
        stop = asyncio.Event()
        sim = asyncio.create_task(farm.run(stop))
        try:
            await until(lambda: farm.actuators and all(a.received for a in farm.actuators.values())
                        and not edge.commands.pending_count(), 20, "the actuators online")
            assert edge.downlink is not None and edge.downlink.stats.mode == "off"

            async def on_iot() -> bool:  # its batches came through the rule: the cloud knows
                found = await the_cloud.rows("SELECT iot_since FROM edges WHERE id = %s",
                                             (EDGE_ID,))
                return bool(found and found[0]["iot_since"] is not None)

            await until(on_iot, 15, "the cloud to see the edge on AWS IoT")
            assert any(topic.endswith("/acks") for topic, _ in iot_data.sent)
            heater = farm.actuators["room-a-heater"]
            before = len(heater.received)
            made = await the_cloud.api("POST", "/api/rooms/room-a/commands",
                                       {"device_id": "room-a-heater", "action": "on"})
            path = f"/api/rooms/room-a/commands/{made['id']}"

            async def acked() -> bool:
                return bool((await the_cloud.api("GET", path))["status"] == "acked")

            # Cloud ▶ IoT Data publish ▶ command topic ▶ edge ▶ actuator; device ack ▶ edge
            # outbox ▶ AWS IoT ▶ rule ▶ cloud: the command's state is "acked".
            await until(acked, 15, "the command acked in the cloud")
            assert len(heater.received) > before and heater.level > 0
            sent = [json.loads(p) for t, p in iot_data.sent if t == commands_topic]
            assert [m["command_id"] for m in sent if m["type"] == "command"] == [made["id"]]
            # Published again (AWS IoT delivers at least once): answered, not executed twice.
            received = len(heater.received)
            await rule.publish_command(farm_id, sent[0])
            await until(lambda: edge.downlink.stats.redelivered >= 1, 10, "the redelivery")
            await asyncio.sleep(0.5)
            assert len(heater.received) == received
            # A config edit in the cloud reaches the edge the same way and is applied.
            applied = edge.downlink.stats.configs_applied
            await the_cloud.api("PATCH", "/api/rooms/room-a", {"name": "Nursery"})
            version = (await the_cloud.rows(
                "SELECT version FROM farm_config WHERE farm_id = %s", (farm_id,)))[0]["version"]

            async def config_applied() -> bool:
                found = await the_cloud.rows("SELECT config_version FROM edges WHERE id = %s",
                                             (EDGE_ID,))
                return bool(found[0]["config_version"] >= version)

            await until(config_applied, 15, "the config applied on the edge")
            assert edge.downlink.stats.configs_applied > applied
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sim, 10)
        await drained(the_cloud, settings.db_path, EDGE_ID, 15)
        await run.stop()
    answers = [m for reply in rule.replies for m in reply["messages"]]
    accepted = [m for m in answers if m.get("command_id") == made["id"]]
    assert accepted and {m["state"] for m in accepted} == {"delivered"}, answers
    assert any(m.get("type") == "config_applied" for m in answers), answers
    kept = await the_cloud.rows(
        "SELECT source, state FROM edge_commands WHERE cloud_command_id = %s", (made["id"],))
    assert [(r["source"], r["state"]) for r in kept] == [("cloud", "acked")]
    assert isinstance(edge.uplink, IotUplink) and edge.uplink.commands >= 2
    assert sync.iot_down.failed == 0 and sync.iot_acks.failed == 0
    counted = await tally(the_cloud, settings.db_path, EDGE_ID, reg.farm_id)
    counted.assert_exactly_once()


# ---- the pieces, without a broker ---------------------------------------------------------------

def test_split_cuts_contiguous_parts_that_fit() -> None:
    records = [json.dumps({"seq": i, "pad": "x" * (i % 37)}) for i in range(1, 501)]

    def size_of(part: Part) -> int:
        return 20 + sum(len(r) + 1 for r in part.records)

    parts = split(1, records, size_of, 2_000)
    assert len(parts) > 1
    assert [r for p in parts for r in p.records] == records
    assert all(size_of(p) <= 2_000 for p in parts)
    assert parts[0].first_seq == 1 and parts[-1].last_seq == 500
    assert all(a.last_seq + 1 == b.first_seq for a, b in itertools.pairwise(parts))
    assert split(7, records[:3], size_of, 10**6) == [Part(7, records[:3])]
    with pytest.raises(OversizedRecord):
        split(1, ["x" * 5_000], size_of, 2_000)


def test_answers_on_the_acks_topic() -> None:
    ack = parse_answer(BatchAck(acked_seq=9, inserted=3).model_dump_json().encode())
    assert isinstance(ack, BatchAck) and ack.acked_seq == 9
    gap = parse_answer(json.dumps({"type": "about:blank", "status": 409, "detail": "gap",
                                   "expected_seq": 4}).encode())
    assert isinstance(gap, GapError) and gap.expected_seq == 4
    assert parse_answer(b'{"status": 403, "title": "Forbidden", "detail": "not yours"}') == \
        Problem(403, "not yours")
    rule_error = {"ruleName": "smartfarm_edge_batches", "topic": "smartfarm/f/edge/e/batches",
                  "failures": [{"failedAction": "HttpAction", "errorMessage": "HTTP 502"}]}
    assert parse_answer(json.dumps(rule_error).encode()) == Problem(None, "topic rule: HTTP 502")
    assert parse_answer(b"not json") is None
    assert parse_answer(b"[1, 2]") is None
    assert parse_answer(b'{"acked_seq": "many"}') is None


def test_iot_config_is_checked(tmp_path: Path) -> None:
    cfg = AwsIotConfig(enabled=True, endpoint="abc-ats.iot.us-east-1.amazonaws.com")
    assert cfg.topic("batches", "farm-1", "edge-1") == "smartfarm/farm-1/edge/edge-1/batches"
    assert cfg.port == 8883 and cfg.max_message_bytes == 128 * 1024
    config = make_site(tmp_path / "site", "farm-x")
    with config.open("a") as fh:
        fh.write('\n[cloud.aws_iot]\nenabled = true\nbatches_topic = "smartfarm/#"\n')
    with pytest.raises(ConfigError, match=r"cloud\.aws_iot"):
        load_config(config)
    for bad in ('enabled = true\n', 'enabled = false\nacks_topic = "a/{farm}/b"\n',
                'max_message_bytes = 200000\n'):
        config.write_text(config.read_text().split("\n[cloud.aws_iot]\n")[0]
                          + "\n[cloud.aws_iot]\n" + bad)
        with pytest.raises(ConfigError, match=r"cloud\.aws_iot"):
            load_config(config)
