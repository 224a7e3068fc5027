"""The embedded broker's TLS listener: a real edge (EdgeApp) with a site made by
``init_site(tls_names=…)``, devices connecting with aiomqtt over TLS and trusting only the
site's CA, with the same per-device logins and ACL as on the plain listener."""
from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509

from edge.app import EdgeApp
from edge.broker import BrokerError, embedded_broker
from edge.certs import ensure_certificates
from edge.cli import edge_main
from edge.config import EdgeSettings, load_config
from edge.credentials import DeviceSecrets, write_mosquitto_acl, write_mosquitto_password_file
from edge.site_init import init_site
from edge.tls import TlsFiles
from shared.models import utcnow
from tests.conftest import free_port
from tests.integration.test_broker import assert_silent, next_message
from tests.integration.test_mosquitto_acl import (
    EXAMPLE_CONF,
    MOSQUITTO,
    _wait_listening,
    private_config,
)

ROOMS = (("room-a", "Room A", "oyster", "fruiting"), ("room-b", "Room B", "oyster", "pinning"))


@dataclass
class TlsSite:
    settings: EdgeSettings
    app: EdgeApp
    passwords: dict[str, str]
    ca_file: Path

    @property
    def port(self) -> int:
        assert self.app.broker is not None
        return self.app.broker.tls_port

    def context(self, cafile: Path | None = None) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(cafile or self.ca_file))

    def client(self, username: str, password: str | None = None,
               context: ssl.SSLContext | None = None) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1", self.port, username=username,
            password=self.passwords[username] if password is None else password,
            identifier=f"{username}-{uuid.uuid4().hex[:8]}", timeout=5,
            tls_context=context or self.context(),
        )

    def topic(self, room: str, device: str, kind: str = "telemetry") -> str:
        return f"farm/{self.settings.farm_id}/room/{room}/{kind}/{device}"

    def readings(self) -> list[tuple[str, str]]:
        conn = sqlite3.connect(f"file:{self.settings.db_path}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT s.device_id, r.vals FROM readings r"
                                " JOIN series s ON s.key = r.series ORDER BY r.id").fetchall()
        finally:
            conn.close()


def telemetry(device: str, temperature: float) -> bytes:
    return json.dumps({"device_id": device, "timestamp": utcnow().isoformat(),
                       "data": {"temperature_c": temperature}}).encode()


async def wait_for_reading(site: TlsSite, device: str, value: float) -> None:
    async with asyncio.timeout(15):
        while not any(dev == device and json.loads(vals) == [value]
                      for dev, vals in site.readings()):
            await asyncio.sleep(0.1)


@pytest.fixture
async def site(tmp_path: Path, farm_id: str) -> AsyncIterator[TlsSite]:
    config, _ = init_site(tmp_path / "site", farm_id=farm_id, broker_port=free_port(),
                          api_port=free_port(), rooms=ROOMS, tls_names=["localhost", "127.0.0.1"])
    settings = load_config(config)
    settings.broker.tls.port = 0  # any free port; the broker reports the one it bound
    settings.store.commit_interval_ms = 50
    assert settings.broker.tls.enabled and settings.broker.tls.host is None  # = broker.host
    app = EdgeApp(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    connected = asyncio.create_task(app.broker_connected.wait())
    await asyncio.wait({task, connected}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert connected.done(), "edge did not connect to its broker"
    secrets = DeviceSecrets.load(settings.device_secrets_path)
    try:
        yield TlsSite(settings, app, secrets.plaintext_entries(),
                      settings.resolve(settings.broker.tls.ca_file))
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


async def test_device_telemetry_over_tls_is_ingested(site: TlsSite) -> None:
    assert site.port not in (0, site.settings.broker.port)
    async with site.client("room-a-sensor") as device:
        await device.publish(site.topic("room-a", "room-a-sensor"),
                             telemetry("room-a-sensor", 21.5), qos=1)
    await wait_for_reading(site, "room-a-sensor", 21.5)


async def test_wrong_password_over_tls_is_refused(site: TlsSite) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with site.client("room-a-sensor", "not-the-password"):
            pass
    with pytest.raises(aiomqtt.MqttError):  # another device's password
        async with site.client("room-a-sensor", site.passwords["room-b-sensor"]):
            pass
    async with site.client("room-a-sensor"):  # so the refusals above mean something
        pass


async def test_publishing_as_another_device_over_tls_is_refused(site: TlsSite) -> None:
    async with site.client("room-a-sensor") as device:
        await device.publish(site.topic("room-b", "room-b-sensor"),
                             telemetry("room-b-sensor", 66.6), qos=1)
        await device.publish(site.topic("room-b", "room-a-sensor"),
                             telemetry("room-a-sensor", 66.6), qos=1)
        await device.publish(site.topic("room-a", "room-a-sensor"),
                             telemetry("room-a-sensor", 22.5), qos=1)
    # Delivery is in order: the legit reading arriving means the spoofs were dropped.
    await wait_for_reading(site, "room-a-sensor", 22.5)
    assert all(json.loads(vals) != [66.6] for _, vals in site.readings())


async def test_untrusted_or_plain_clients_cannot_use_the_tls_port(
    site: TlsSite, tmp_path: Path
) -> None:
    other = TlsFiles(tmp_path / "o/ca.crt", tmp_path / "o/ca.key", tmp_path / "o/s.crt",
                     tmp_path / "o/s.key")
    ensure_certificates(other, ["localhost"], farm_id="other")
    with pytest.raises(aiomqtt.MqttError):  # a CA the broker's certificate is not from
        async with site.client("room-a-sensor", context=site.context(other.ca_cert)):
            pass
    plain = aiomqtt.Client("127.0.0.1", site.port, username="room-a-sensor",
                           password=site.passwords["room-a-sensor"], timeout=3)
    with pytest.raises(aiomqtt.MqttError):  # MQTT without TLS on the TLS port
        async with plain:
            pass


def test_certificates_are_kept_unless_the_names_change(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "ca.crt", tmp_path / "ca.key", tmp_path / "server.crt",
                     tmp_path / "server.key")
    assert ensure_certificates(files, ["pi.local", "192.168.1.5"], farm_id="f")
    assert {oct(p.stat().st_mode & 0o777) for p in (files.ca_key, files.key)} == {"0o600"}
    ca, cert = files.ca_cert.read_bytes(), files.cert.read_bytes()
    assert not ensure_certificates(files, ["pi.local"], farm_id="f")  # covered: untouched
    assert files.cert.read_bytes() == cert
    assert ensure_certificates(files, ["farm-gw"], farm_id="f")
    assert files.ca_cert.read_bytes() == ca  # devices keep trusting the same CA
    assert files.cert.read_bytes() != cert
    sans = x509.load_pem_x509_certificate(files.cert.read_bytes()).extensions \
        .get_extension_for_class(x509.SubjectAlternativeName).value
    # Names devices already use stay in the new certificate.
    assert {str(n) for n in sans.get_values_for_type(x509.DNSName)} == {"pi.local", "farm-gw"}
    assert [str(n) for n in sans.get_values_for_type(x509.IPAddress)] == ["192.168.1.5"]


def test_missing_certificate_is_a_clear_error(tmp_path: Path, farm_id: str) -> None:
    config, _ = init_site(tmp_path, farm_id=farm_id, rooms=ROOMS[:1])
    settings = load_config(config)
    settings.broker.tls.enabled = True
    with pytest.raises(BrokerError, match=r"broker\.tls\.cert_file: .*server\.crt not found"):
        embedded_broker(settings)
    settings.broker.tls.cert_file = settings.broker.tls.key_file = config  # not PEM at all
    with pytest.raises(BrokerError, match=r"broker\.tls: cannot use"):
        embedded_broker(settings)


def test_init_cli_writes_a_tls_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "var"
    argv = ["init", str(tmp_path / "etc"), "--data-dir", str(data), "--tls",
            "--tls-name", "pi.local", "--tls-host", "0.0.0.0"]
    assert edge_main(argv) == 0
    settings = load_config(tmp_path / "etc" / "edge.toml")
    assert settings.broker.tls.enabled and settings.broker.tls.host == "0.0.0.0"
    assert settings.data_path == data and settings.password_file_path.parent == data / "broker"
    assert "pi.local" in capsys.readouterr().out
    assert edge_main(["init", str(tmp_path / "x"), "--data-dir", "relative"]) == 2
    assert "--data-dir relative: must be an absolute path" in capsys.readouterr().err
    config = str(tmp_path / "etc" / "edge.toml")
    assert edge_main(["tls-cert", "--name", "pi.local", "--config", config]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert edge_main(["tls-cert", "--name", "barn-gw", "--config", config]) == 0
    assert "restart the edge" in capsys.readouterr().out


# ---- the external-broker example: Mosquitto with the TLS block of deploy/mosquitto -------------

def mosquitto_tls_config(plain: int, tls: int, tmp: Path, files: TlsFiles) -> str:
    """The shipped example with its commented TLS block switched on, on this test's ports."""
    lines = private_config(plain, tmp / "passwd", tmp / "acl").splitlines()
    block = [line.lstrip("#") for line in EXAMPLE_CONF.read_text().splitlines()
             if line.startswith(("#listener 8883", "#certfile", "#keyfile", "#tls_version"))]
    assert len(block) == 4, "the TLS example block in deploy/mosquitto/mosquitto.conf changed"
    paths = {"server.crt": files.cert, "server.key": files.key}
    for i, line in enumerate(block):
        key, value = line.split(maxsplit=1)
        if key == "listener":
            block[i] = f"listener {tls} 127.0.0.1"
        elif key in ("certfile", "keyfile"):
            block[i] = f"{key} {paths[Path(value).name]}"
    return "\n".join([*lines, *block]) + "\n"


@pytest.mark.mosquitto
async def test_mosquitto_tls_example_has_the_same_logins_and_acl(
    tmp_path: Path, farm_id: str
) -> None:
    if not MOSQUITTO.exists():
        pytest.skip(f"{MOSQUITTO} is not installed (apt-get install mosquitto)")
    files = TlsFiles(tmp_path / "tls/ca.crt", tmp_path / "tls/ca.key", tmp_path / "tls/server.crt",
                     tmp_path / "tls/server.key")
    ensure_certificates(files, ["localhost", "127.0.0.1"], farm_id=farm_id)
    secrets = DeviceSecrets.load_or_create(tmp_path / "device-secrets.toml")
    passwords = {dev: secrets.add_device(dev) for dev in ("dev-a", "dev-b")}
    passwords[secrets.edge_username] = secrets.edge_password
    write_mosquitto_password_file(tmp_path / "passwd", secrets.plaintext_entries())
    write_mosquitto_acl(tmp_path / "acl", farm_id, secrets.edge_username)
    plain, tls = free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(mosquitto_tls_config(plain, tls, tmp_path, files))
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as log_fh:
        proc = await asyncio.create_subprocess_exec(str(MOSQUITTO), "-c", str(conf),
                                                    stdout=log_fh, stderr=log_fh)
    context = ssl.create_default_context(cafile=str(files.ca_cert))

    def client(user: str, password: str | None = None) -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", tls, username=user,
                              password=passwords[user] if password is None else password,
                              identifier=f"{user}-{uuid.uuid4().hex[:8]}", timeout=5,
                              tls_context=context)

    def topic(device: str) -> str:
        return f"farm/{farm_id}/room/room-1/telemetry/{device}"

    try:
        await _wait_listening(tls, proc, log)
        with pytest.raises(aiomqtt.MqttError):
            async with client("dev-a", "wrong"):
                pass
        async with client(secrets.edge_username) as edge:
            await edge.subscribe(f"farm/{farm_id}/#", qos=1)
            # Mosquitto 2.0 disconnects a v3.1.1 client on a denied publish (amqtt drops it).
            with contextlib.suppress(aiomqtt.MqttError):
                async with client("dev-a") as dev:
                    await dev.publish(topic("dev-b"), b"spoof", qos=0)
            async with client("dev-a") as dev:
                await dev.publish(topic("dev-a"), b"legit", qos=1)
            message = await next_message(edge)
            assert (message.topic.value, message.payload) == (topic("dev-a"), b"legit")
            await assert_silent(edge)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
