"""The MQTT broker the devices talk to: amqtt embedded in the edge process, or an external one.

The embedded broker owns its TCP listener (so port 0 works and oversized packets are cut off
before they are buffered) and hands each connection to amqtt through its public
``external_connected`` entry point. Login and topic ACL are the plugins in ``edge.broker_acl``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import BrokerConfig, ListenerConfig, ListenerType

from edge.broker_acl import DeviceAuthPlugin, DeviceTopicPlugin
from edge.config import ConfigError
from edge.credentials import device_acl_path
from shared.errors import SmartfarmError

if TYPE_CHECKING:
    from edge.config import EdgeSettings

log = logging.getLogger(__name__)

_LISTENER = "default"
_STOP_GRACE_S = 5.0
# A disconnected persistent session (clean_session=0) keeps its queued commands this long; stale
# actuator commands are worse than none, and the automation re-asserts state anyway.
_SESSION_EXPIRY_S = 3600


class BrokerError(SmartfarmError):
    """The embedded broker cannot start (missing credentials, port in use, …)."""


class PacketTooLarge(Exception):
    """A client announced a packet bigger than the broker accepts; the connection is dropped."""


@dataclass
class _EdgeBrokerConfig(BrokerConfig):
    # amqtt reads `max-qos` through BrokerConfig.get(); the stock dataclass has no such field.
    max_qos: int = 1


class _BoundedReader(StreamReaderAdapter):
    """Refuses any single read above the limit: amqtt reads a PUBLISH payload in one call sized
    from the client's own length header, so this stops a 256 MB claim before it is buffered."""

    def __init__(self, reader: asyncio.StreamReader, limit: int) -> None:
        super().__init__(reader)
        self._limit = limit

    async def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._limit:
            # Not an IncompleteReadError: amqtt would turn that into "no data" and keep reading
            # the same stream mid-packet; an unexpected exception makes it close the connection.
            raise PacketTooLarge(f"packet of {n} bytes exceeds the {self._limit}-byte limit")
        return await super().read(n)


def quiet_amqtt_logs(level: int = logging.WARNING) -> None:
    """amqtt and its state machine log every connection at INFO; keep them to ``level`` unless
    the application configured those loggers itself."""
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)


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
    ) -> None:
        self.host = host
        self.port = port  # replaced by the bound port once started (port 0 = any free port)
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
        broker = Broker(self._config())
        await broker.start()
        try:
            self._server = await asyncio.start_server(
                self._on_connection, self.host, self.port, reuse_address=True
            )
        except OSError as exc:
            await broker.shutdown()
            raise BrokerError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        self._broker = broker
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("embedded MQTT broker listening on %s:%d (farm %s)",
                 self.host, self.port, self.farm_id)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        broker = self._broker
        if broker is None or len(self._connections) >= self.max_connections:
            log.warning("MQTT connection from %s refused: %s", writer.get_extra_info("peername"),
                        "broker stopping" if broker is None else "too many connections")
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await broker.external_connected(
                _BoundedReader(reader, self.max_message_bytes),
                StreamWriterAdapter(writer),
                _LISTENER,
            )
        except PacketTooLarge as exc:
            log.warning("MQTT client %s dropped: %s", writer.get_extra_info("peername"), exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-handshake; nothing to clean beyond the socket
        except Exception:
            # amqtt must not take the edge down because of one client.
            log.exception("MQTT connection handler failed")
        finally:
            self._connections.discard(task)
            writer.close()

    async def stop(self) -> None:
        server, broker = self._server, self._broker
        self._server = self._broker = None
        if server is not None:
            server.close()
        if broker is not None:
            await broker.shutdown()
        if self._connections:
            _, pending = await asyncio.wait(self._connections, timeout=_STOP_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

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
    """An EmbeddedBroker configured from the edge settings (files from sync_broker_files)."""
    cfg = settings.broker
    return EmbeddedBroker(
        host=cfg.host,
        port=cfg.port,
        password_file=settings.password_file_path,
        acl_file=device_acl_path(settings),
        farm_id=settings.farm_id,
        edge_username=cfg.edge_username,
    )
