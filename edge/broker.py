"""The MQTT broker the devices talk to: amqtt embedded in the edge process, or an external one.

The embedded broker owns its TCP listeners (plain, and TLS when configured): it binds (port 0
works), vets each CONNECT (login, client-id ownership) before amqtt sees it, caps packet size, and
then hands the connection to amqtt's public ``external_connected``. Both listeners share one
amqtt broker, so logins and the topic ACL (the plugins in edge.broker_acl) are the same on both.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import BrokerConfig, ListenerConfig, ListenerType
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connect import ConnectPacket

from edge.broker_acl import DeviceAuthPlugin, DeviceTopicPlugin
from edge.config import ConfigError
from edge.credentials import device_acl_path
from edge.tls import TlsError, server_context
from shared.errors import SmartfarmError

if TYPE_CHECKING:
    from edge.config import EdgeSettings

log = logging.getLogger(__name__)

_LISTENER = "default"
_STOP_GRACE_S = 5.0
_CONNECT_TIMEOUT_S = 10.0
_CONNECT_TYPE = 1
_CONNACK_BYTE = 0x20
_MQTT_311 = 4
_IDENTIFIER_REJECTED = 0x02
_NOT_AUTHORIZED = 0x05
# A disconnected persistent session (clean_session=0) keeps its queued commands this long; stale
# actuator commands are worse than none, and the automation re-asserts state anyway.
_SESSION_EXPIRY_S = 3600


class BrokerError(SmartfarmError):
    """The embedded broker cannot start (missing credentials, port in use, …)."""


class PacketTooLarge(Exception):
    """A client announced a packet bigger than the broker accepts; the connection is dropped."""


@dataclass
class _EdgeBrokerConfig(BrokerConfig):  # type: ignore[misc]  # amqtt is untyped
    # amqtt reads `max-qos` through BrokerConfig.get(); the stock dataclass has no such field.
    max_qos: int = 1


class _BoundedReader(StreamReaderAdapter):  # type: ignore[misc]
    """Refuses any single read above the limit: amqtt reads a PUBLISH payload in one call sized
    from the client's own length header, so this stops a 256 MB claim before it is buffered.
    ``replay`` is served first: the CONNECT packet we already read to vet the client."""

    def __init__(self, reader: asyncio.StreamReader, limit: int, replay: bytes = b"") -> None:
        super().__init__(reader)
        self._limit = limit
        self._replay = bytearray(replay)

    async def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._limit:
            # Not an IncompleteReadError: amqtt would turn that into "no data" and keep reading
            # the same stream mid-packet; an unexpected exception makes it close the connection.
            raise PacketTooLarge(f"packet of {n} bytes exceeds the {self._limit}-byte limit")
        if self._replay:
            head = bytes(self._replay[:n])
            del self._replay[:n]
            return head + (await super().read(n - len(head)) if len(head) < n else b"")
        data: bytes = await super().read(n)
        return data


class _BytesReader(ReaderAdapter):  # type: ignore[misc]
    """amqtt's packet parser over bytes already in hand; reading past the end yields short."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    async def read(self, n: int = -1) -> bytes:
        n = len(self._data) if n < 0 else n
        head, self._data = bytes(self._data[:n]), self._data[n:]
        return head

    def feed_eof(self) -> None:
        pass


class _BadConnect(Exception):
    """The first packet is not a well-formed CONNECT."""


async def _read_connect(reader: asyncio.StreamReader, limit: int) -> bytes:
    """The raw first packet, which MQTT requires to be CONNECT (fixed header + body)."""
    raw = bytearray(await reader.readexactly(1))
    if raw[0] >> 4 != _CONNECT_TYPE:
        raise _BadConnect("first packet is not CONNECT")
    length, multiplier = 0, 1
    for _ in range(4):  # the remaining length takes at most 4 bytes
        byte = (await reader.readexactly(1))[0]
        raw.append(byte)
        length += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            break
        multiplier *= 128
    else:
        raise _BadConnect("malformed remaining length")
    if length > limit:
        raise PacketTooLarge(f"CONNECT of {length} bytes exceeds the {limit}-byte limit")
    raw += await reader.readexactly(length)
    return bytes(raw)


def quiet_amqtt_logs(level: int = logging.WARNING) -> None:
    """amqtt and its state machine log every connection at INFO; keep them to ``level`` unless
    the application configured those loggers itself."""
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)


class _SnapshotDict(dict[str, Any]):
    """amqtt 0.12 iterates its subscription map across awaits (broadcast, retained replay): a
    client subscribing meanwhile raised "dictionary changed size during iteration" and the
    message being broadcast was lost. Iterating a snapshot keeps every delivery."""

    def __iter__(self) -> Any:
        return iter(list(super().keys()))

    def items(self) -> Any:
        return list(super().items())


class _DeliveringBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt 0.12 drops what a client published just before it disconnected: messages already
    acknowledged (PUBACK) but still queued for broadcast died with the client's message loop. A
    device that saw its PUBACK must not lose the reading, so they go out first, through the same
    checks (topic, ACL) as any other publish."""

    async def _handle_disconnect(self, client_session: Any, handler: Any,
                                 disconnect_waiter: asyncio.Future[Any]) -> None:
        queue = client_session.delivered_message_queue
        while not queue.empty():
            delivered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            delivered.set_result(queue.get_nowait())
            await self._handle_message_delivery(client_session, handler, delivered)
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)


class EmbeddedBroker:
    """amqtt with per-device credentials and ACL, minimal plugins (no $SYS, no packet logger)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        password_file: Path,
        acl_file: Path,
        farm_id: str,
        edge_username: str,
        max_message_bytes: int = 64 * 1024,
        max_connections: int = 1024,
        acl_reload_interval_s: float = 1.0,
        quiet_logs: bool = True,
        tls: ssl.SSLContext | None = None,
        tls_host: str | None = None,
        tls_port: int = 8883,
    ) -> None:
        self.host = host
        self.port = port  # replaced by the bound port once started (port 0 = any free port)
        self.tls = tls
        self.tls_host = tls_host or host
        self.tls_port = tls_port  # likewise
        self.password_file = Path(password_file)
        self.acl_file = Path(acl_file)
        self.farm_id = farm_id
        self.edge_username = edge_username
        self.max_message_bytes = max_message_bytes
        self.max_connections = max_connections
        self._acl_reload_interval_s = acl_reload_interval_s
        self._quiet_logs = quiet_logs
        self._broker: Broker | None = None
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    def _config(self) -> BrokerConfig:
        auth = f"{DeviceAuthPlugin.__module__}.{DeviceAuthPlugin.__qualname__}"
        topics = f"{DeviceTopicPlugin.__module__}.{DeviceTopicPlugin.__qualname__}"
        return _EdgeBrokerConfig(
            # EXTERNAL: we accept connections ourselves; `bind` is informative only.
            listeners={_LISTENER: ListenerConfig(type=ListenerType.EXTERNAL,
                                                 bind=f"{self.host}:{self.port}")},
            session_expiry_interval=_SESSION_EXPIRY_S,
            plugins={
                auth: {"password_file": str(self.password_file)},
                topics: {
                    "farm_id": self.farm_id,
                    "edge_username": self.edge_username,
                    "acl_file": str(self.acl_file),
                    "reload_interval_s": self._acl_reload_interval_s,
                },
            },
        )

    @property
    def running(self) -> bool:
        return self._server is not None

    def connected_clients(self) -> int | None:
        """Device sessions connected now (the edge's own excluded); None while stopped."""
        broker = self._broker
        if broker is None:
            return None
        try:
            sessions = list(broker.sessions.values())
        except RuntimeError:  # mutated mid-read by a connect or disconnect
            return None
        return sum(
            1 for session, _handler in sessions
            if session.transitions.state == "connected" and session.username != self.edge_username
        )

    def pending_deliveries(self) -> int:
        """Messages accepted from a publisher but not yet handed to every subscriber (queued for
        broadcast, or a delivery still in flight): what a clean shutdown must wait for."""
        broker = self._broker
        if broker is None:
            return 0
        queued = broker._broadcast_queue.qsize()  # amqtt 0.12 internals: no public accessor
        return queued + sum(1 for task in broker._tasks_queue if not task.done())

    async def start(self) -> None:
        if self._broker is not None:
            raise BrokerError("embedded broker already started")
        if not self.password_file.is_file():
            raise BrokerError(
                f"broker password file {self.password_file} not found "
                "(create credentials with `smartfarm edge init`)"
            )
        if self._quiet_logs:
            quiet_amqtt_logs()
        broker = _DeliveringBroker(self._config())
        broker._subscriptions = _SnapshotDict(broker._subscriptions)
        await broker.start()
        host, port = self.host, self.port
        try:
            self._server = await asyncio.start_server(
                self._on_connection, host, port, reuse_address=True
            )
            if self.tls is not None:
                host, port = self.tls_host, self.tls_port
                self._tls_server = await asyncio.start_server(
                    self._on_connection, host, port, reuse_address=True, ssl=self.tls,
                    ssl_handshake_timeout=_CONNECT_TIMEOUT_S,
                )
        except OSError as exc:
            if self._server is not None:
                self._server.close()
                self._server = None
            await broker.shutdown()
            raise BrokerError(f"cannot listen on {host}:{port}: {exc}") from exc
        self._broker = broker
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("embedded MQTT broker listening on %s:%d (farm %s)",
                 self.host, self.port, self.farm_id)
        if self._tls_server is not None:
            self.tls_port = int(self._tls_server.sockets[0].getsockname()[1])
            log.info("embedded MQTT broker listening for TLS on %s:%d", self.tls_host,
                     self.tls_port)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        broker = self._broker
        peer = writer.get_extra_info("peername")
        if broker is None or len(self._connections) >= self.max_connections:
            log.warning("MQTT connection from %s refused: %s", peer,
                        "broker stopping" if broker is None else "too many connections")
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            raw = await self._admit(broker, reader, writer)
            if raw is not None:
                await broker.external_connected(
                    _BoundedReader(reader, self.max_message_bytes, replay=raw),
                    StreamWriterAdapter(writer),
                    _LISTENER,
                )
        except PacketTooLarge as exc:
            log.warning("MQTT client %s dropped: %s", peer, exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-handshake; nothing to clean beyond the socket
        except Exception:
            # amqtt must not take the edge down because of one client.
            log.exception("MQTT connection handler failed")
        finally:
            self._connections.discard(task)
            writer.close()

    async def _admit(
        self, broker: Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        """Read and vet CONNECT before amqtt sees it; the raw packet to replay, or None.

        amqtt 0.12.1 discards an existing session with the same client id *before* it
        authenticates, so without this anyone who knows a device's client id could wipe its
        command subscription with a bad password, and any account could take over another's
        session. Here a client must log in first and may not reuse another account's client id.
        It also bounds how long a silent socket may sit before its CONNECT.
        """
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                raw = await _read_connect(reader, self.max_message_bytes)
            connect = await ConnectPacket.from_stream(_BytesReader(raw))
        except (TimeoutError, _BadConnect, AMQTTError, MQTTError, NoDataError, ValueError) as exc:
            log.info("MQTT client %s dropped before CONNECT: %s", writer.get_extra_info("peername"),
                     exc or type(exc).__name__)
            return None
        if connect.proto_level != _MQTT_311:
            return raw  # amqtt answers "unacceptable protocol version" itself
        username = connect.username if connect.username_flag else None
        password = connect.password if connect.password_flag else None
        if not await self._auth(broker).check(username, password):
            await self._refuse(writer, _NOT_AUTHORIZED)
            return None
        holder = broker.sessions.get(connect.client_id) if not connect.client_id_is_random else None
        if holder is not None and holder[0].username != username:
            log.warning("MQTT client id %r of user %r refused: it belongs to another account",
                        connect.client_id[:80], username)
            await self._refuse(writer, _IDENTIFIER_REJECTED)
            return None
        return raw

    @staticmethod
    async def _refuse(writer: asyncio.StreamWriter, code: int) -> None:
        writer.write(bytes((_CONNACK_BYTE, 2, 0, code)))
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    @staticmethod
    def _auth(broker: Broker) -> DeviceAuthPlugin:
        return next(p for p in broker.plugins_manager.plugins if isinstance(p, DeviceAuthPlugin))

    async def stop(self) -> None:
        server, tls_server, broker = self._server, self._tls_server, self._broker
        self._server = self._tls_server = self._broker = None
        for listener in (server, tls_server):
            if listener is not None:
                listener.close()
        if broker is not None:
            await broker.shutdown()
        if self._connections:
            _, pending = await asyncio.wait(self._connections, timeout=_STOP_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for listener in (server, tls_server):
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.wait_closed()

    def reload(self) -> None:
        """Re-read the password file and ACL map now (they are also polled on use)."""
        if self._broker is None:
            return
        for plugin in self._broker.plugins_manager.plugins:
            if isinstance(plugin, DeviceAuthPlugin | DeviceTopicPlugin):
                plugin.reload()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def broker_address(settings: EdgeSettings) -> tuple[str, int]:
    """(host, port) the edge's own MQTT clients connect to, in either broker mode.

    Embedded: ``broker.host``/``broker.port`` (for port 0 use ``EmbeddedBroker.port`` after
    start). External: parsed from ``broker.url`` (``mqtt://host:port``, default port 1883).
    """
    cfg = settings.broker
    if cfg.mode == "embedded":
        return cfg.host, cfg.port
    if not cfg.url:
        raise ConfigError("broker.url: required when broker.mode is 'external'")
    parts = urlsplit(cfg.url if "://" in cfg.url else f"mqtt://{cfg.url}")
    if parts.scheme not in ("mqtt", "tcp"):
        raise ConfigError(f"broker.url: unsupported scheme {parts.scheme!r} (use mqtt://)")
    try:
        port = parts.port or 1883
    except ValueError:
        raise ConfigError(f"broker.url: bad port in {cfg.url!r}") from None
    if not parts.hostname:
        raise ConfigError(f"broker.url: no host in {cfg.url!r}")
    return parts.hostname, port


def embedded_broker(settings: EdgeSettings) -> EmbeddedBroker:
    """An EmbeddedBroker configured from the edge settings (files from sync_broker_files);
    BrokerError naming the key if the TLS certificate or key cannot be loaded."""
    cfg = settings.broker
    tls = None
    if cfg.tls.enabled:
        try:
            tls = server_context(settings.resolve(cfg.tls.cert_file),
                                 settings.resolve(cfg.tls.key_file), cfg.tls.min_version)
        except TlsError as exc:
            raise BrokerError(str(exc)) from None
    return EmbeddedBroker(
        host=cfg.host,
        port=cfg.port,
        password_file=settings.password_file_path,
        acl_file=device_acl_path(settings),
        farm_id=settings.farm_id,
        edge_username=cfg.edge_username,
        tls=tls,
        tls_host=cfg.tls.host,
        tls_port=cfg.tls.port,
    )
