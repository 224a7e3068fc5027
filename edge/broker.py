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
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from amqtt.adapters import StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import BrokerConfig, ListenerConfig, ListenerType
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connect import ConnectPacket

from edge.amqtt_patches import (
    EdgeBrokerConfig,
    PatchedBroker,
    check_amqtt_version,
    pending_deliveries,
)
from edge.broker_acl import DeviceAuthPlugin, DeviceTopicPlugin
from edge.config import ConfigError
from edge.credentials import device_acl_path
from edge.mqtt_framing import BadConnect, BytesReader, FramedReader, PacketTooLarge, read_connect
from edge.tls import TlsError, server_context
from shared.errors import SmartfarmError

if TYPE_CHECKING:
    from edge.config import EdgeSettings
    from edge.intake import Intake
    from edge.onboarding import Onboarding

log = logging.getLogger(__name__)

_LISTENER = "default"
_STOP_GRACE_S = 5.0
# A socket must send its CONNECT within this; and at most _MAX_PENDING sockets may be waiting to
# (the oldest of the busiest address is dropped for a newcomer), so idle sockets cannot use up
# the connections devices need.
_CONNECT_TIMEOUT_S = 5.0
_MAX_PENDING = 64
_SERVER_UNAVAILABLE = 0x03
_CONNACK_BYTE = 0x20
_MQTT_311 = 4
_IDENTIFIER_REJECTED = 0x02
_NOT_AUTHORIZED = 0x05
# A disconnected persistent session (clean_session=0) keeps its queued commands this long; stale
# actuator commands are worse than none, and the automation re-asserts state anyway.
_SESSION_EXPIRY_S = 3600


class BrokerError(SmartfarmError):
    """The embedded broker cannot start (missing credentials, port in use, …)."""


def quiet_amqtt_logs(level: int = logging.WARNING) -> None:
    """amqtt and its state machine log every connection at INFO; keep them to ``level`` unless
    the application configured those loggers itself."""
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)


class EventLog:
    """Connection events (a flood's refusals, drops, timeouts) logged as one WARNING summary
    per window, with counts by kind and the busiest addresses, not a line per socket."""

    def __init__(self, logger: logging.Logger, window_s: float = 10.0) -> None:
        self._log = logger
        self.window_s = window_s
        self._opened: float | None = None
        self._counts: dict[str, int] = {}
        self._hosts: dict[str, int] = {}
        self.total = 0

    def note(self, what: str, host: str) -> None:
        self.total += 1
        now = asyncio.get_running_loop().time()
        if self._opened is not None and now - self._opened >= self.window_s:
            self.flush()
        if self._opened is None:
            self._opened = now
            self._log.warning("MQTT listener: %s from %s (further events summarised every "
                              "%.0f s)", what, host, self.window_s)
            return
        self._counts[what] = self._counts.get(what, 0) + 1
        if host in self._hosts or len(self._hosts) < 64:
            self._hosts[host] = self._hosts.get(host, 0) + 1

    def flush(self) -> None:
        if self._counts:
            kinds = ", ".join(f"{n} {what}" for what, n in sorted(self._counts.items()))
            hosts = ", ".join(f"{h} ({n})" for h, n in
                              sorted(self._hosts.items(), key=lambda i: -i[1])[:5])
            self._log.warning("MQTT listener, last %.0f s: %s; from %s", self.window_s, kinds,
                              hosts)
        self._opened = None
        self._counts.clear()
        self._hosts.clear()


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
        max_pending: int = _MAX_PENDING,
        intake: Intake | None = None,
        acl_reload_interval_s: float = 1.0,
        quiet_logs: bool = True,
        tls: ssl.SSLContext | None = None,
        tls_host: str | None = None,
        tls_port: int = 8883,
        onboarding: Onboarding | None = None,
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
        self.max_connections = max_connections  # logged-in clients
        self.max_pending = max(1, max_pending)  # sockets yet to log in
        self.intake = intake
        self.onboarding = onboarding  # told of refused logins that carry the farm's claim code
        self._acl_reload_interval_s = acl_reload_interval_s
        self._quiet_logs = quiet_logs
        self._broker: Broker | None = None
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        # Sockets that have not logged in yet, oldest first: their writer and peer address.
        self._pending: dict[asyncio.Task[Any], tuple[asyncio.StreamWriter, str]] = {}
        self._events = EventLog(log)

    def _config(self) -> BrokerConfig:
        auth = f"{DeviceAuthPlugin.__module__}.{DeviceAuthPlugin.__qualname__}"
        topics = f"{DeviceTopicPlugin.__module__}.{DeviceTopicPlugin.__qualname__}"
        return EdgeBrokerConfig(
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

    @property
    def refused_connections(self) -> int:
        """Sockets refused or dropped before they logged in, since start."""
        return self._events.total

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
        return pending_deliveries(broker)

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
        check_amqtt_version()
        broker = PatchedBroker(self._config(), intake=self.intake)
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
        if broker is None:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._make_room()
        self._connections.add(task)
        self._pending[task] = (writer, str(peer[0]) if peer else "?")
        try:
            raw = await self._admit(broker, reader, writer)
            self._pending.pop(task, None)
            if raw is not None:
                await broker.external_connected(
                    FramedReader(reader, writer, self.max_message_bytes, replay=raw,
                                  on_oversize=self._oversize if self.intake else None),
                    StreamWriterAdapter(writer),
                    _LISTENER,
                )
        except PacketTooLarge as exc:
            log.warning("MQTT client %s dropped: %s", peer, exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away (or was dropped) mid-handshake
        except Exception:
            # amqtt must not take the edge down because of one client.
            log.exception("MQTT connection handler failed")
        finally:
            self._pending.pop(task, None)
            self._connections.discard(task)
            writer.close()

    def _make_room(self) -> None:
        """At most max_pending sockets wait for their login: drop the oldest socket of the
        address holding the most, so one flooding host cannot keep devices out."""
        if len(self._pending) < self.max_pending:
            return
        by_host: dict[str, int] = {}
        for _writer, host in self._pending.values():
            by_host[host] = by_host.get(host, 0) + 1
        busiest = max(by_host, key=by_host.__getitem__)
        for task, (writer, host) in self._pending.items():
            if host == busiest:
                del self._pending[task]
                writer.transport.abort()
                self._events.note("idle socket dropped for a newcomer (before CONNECT)", host)
                return

    async def _oversize(self, topic: str, head: bytes, size: int) -> None:
        assert self.intake is not None
        reason = f"payload of {size} bytes exceeds the broker's {self.max_message_bytes}-byte limit"
        done = self.intake.refuse(topic, head, "oversize", reason, size)  # sender: see admit
        if done is not None:
            await done

    async def _admit(
        self, broker: Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        """Read and vet CONNECT before amqtt sees it; the raw packet to replay, or None.

        amqtt 0.12.1 discards an existing session with the same client id *before* it
        authenticates, and keys sessions by client id alone: anyone who knows a device's
        client id could wipe its session with a bad password, or (with a login of their own)
        take it over or leave a persistent session under it that locks the device out. Here a
        client must log in first, and the session amqtt sees is named ``<username>/<client id>``:
        every account has its own client-id space, so no device can touch another's session.
        It also bounds how long a silent socket may sit before its CONNECT.
        """
        host = str((writer.get_extra_info("peername") or ("?",))[0])
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                raw = await read_connect(reader, self.max_message_bytes)
            connect = await ConnectPacket.from_stream(BytesReader(raw))
        except (TimeoutError, BadConnect, AMQTTError, MQTTError, NoDataError, ValueError) as exc:
            self._events.note(f"dropped before CONNECT ({type(exc).__name__})", host)
            return None
        if connect.proto_level != _MQTT_311:
            return raw  # amqtt answers "unacceptable protocol version" itself
        username = connect.username if connect.username_flag else None
        password = connect.password if connect.password_flag else None
        claimed = False
        if not await self._auth(broker).check(username, password):
            claimed = await self._claim_session(broker, connect, username, password)
            if not claimed:
                await self._knock(writer, connect, username, password, host)
                return None
            username = connect.payload.username  # its claim account (edge.broker_acl)
        if len(self._connections) - len(self._pending) >= self.max_connections:
            self._events.note("refused: too many clients connected", host)
            await self._refuse(writer, _SERVER_UNAVAILABLE)
            return None
        if connect.client_id_is_random:
            # amqtt names the session itself (clean session only)
            return bytes(connect.to_bytes()) if claimed else raw
        connect.payload.client_id = f"{username}/{connect.client_id}"
        return bytes(connect.to_bytes())

    async def _claim_session(self, broker: Broker, connect: ConnectPacket,
                             username: str | None, password: str | None) -> bool:
        """An adopted node still on the claim code (edge.onboarding): let in under its claim
        account, which may only read its claim topic. True when it was one."""
        if self.onboarding is None:
            return False
        try:
            if not await self.onboarding.claim_session(username, password):
                return False
        except Exception:
            log.exception("checking a claim session failed")
            return False
        assert username is not None
        connect.payload.username, connect.payload.password = (
            self._auth(broker).admit_claim(username))
        self.onboarding.session_started(username)
        return True

    async def _knock(self, writer: asyncio.StreamWriter, connect: ConnectPacket,
                     username: str | None, password: str | None, host: str) -> None:
        # A new device asking to join (unknown id + the farm's claim code) is refused all the
        # same — nothing is accepted from it before adoption — but listed as pending.
        if self.onboarding is not None:
            try:
                await self.onboarding.knock(username, password, host, connect.client_id)
            except Exception:
                log.exception("recording a claim login failed")
        await self._refuse(writer, _NOT_AUTHORIZED)

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
            try:
                # amqtt's shutdown has no deadline of its own: a stuck client handler must not
                # keep the edge from committing what it accepted and exiting.
                async with asyncio.timeout(_STOP_GRACE_S):
                    await broker.shutdown()
            except TimeoutError:
                log.error("MQTT broker shutdown took over %.0f s; going on without it",
                          _STOP_GRACE_S)
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


def embedded_broker(settings: EdgeSettings, intake: Intake | None = None, *,
                    onboarding: Onboarding | None = None) -> EmbeddedBroker:
    """An EmbeddedBroker configured from the edge settings (files from sync_broker_files),
    acknowledging devices' messages through ``intake`` when given; BrokerError naming the key
    if the TLS certificate or key cannot be loaded."""
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
        intake=intake,
        onboarding=onboarding,
    )
