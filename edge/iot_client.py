"""The MQTT 5 client the AWS IoT uplink talks through: awsiotsdk's mTLS client (awscrt), which
reconnects by itself on its own threads, bridged to asyncio (callbacks to the event loop,
futures to awaitables, one queue per subscribed topic)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final, TypeVar

from awscrt import mqtt5
from awscrt.exceptions import AwsCrtError
from awsiot import mqtt5_client_builder

from edge.config import AwsIotConfig

log = logging.getLogger(__name__)

STOP_TIMEOUT_S: Final = 5.0
PING_TIMEOUT_MS: Final = 20_000
_T = TypeVar("_T")


class PublishError(Exception):
    """A publish AWS IoT did not take (no PUBACK in time, a refusing PUBACK, a lost connection)."""


class IotConnection:
    """One awscrt MQTT 5 client. It reconnects by itself; its callbacks run on CRT threads and
    are handed to the event loop. ``ready`` is set while connected and subscribed."""

    def __init__(
        self,
        cfg: AwsIotConfig,
        *,
        client_id: str,
        resolve: Callable[[Path], Path],
        routes: dict[str, asyncio.Queue[bytes]],
        reconnect_s: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        self._cfg = cfg
        self._client_id = client_id
        self._resolve = resolve
        self._routes = routes  # topic -> queue of payloads received on it (also the subscriptions)
        self._reconnect_s = reconnect_s
        self.ready = asyncio.Event()
        self.connects = 0
        self.last_error: str | None = None
        self._stopped = asyncio.Event()
        self._client: mqtt5.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures = 0
        self._stopping = False

    def start(self) -> None:
        cfg = self._cfg
        self._loop = asyncio.get_running_loop()
        files = {"cert_file": cfg.cert_file, "key_file": cfg.key_file, "ca_file": cfg.ca_file}
        for key, path in files.items():
            if path is not None and not self._resolve(path).is_file():
                raise FileNotFoundError(f"cloud.aws_iot.{key}: {self._resolve(path)} not found"
                                        " (see `smartfarm cloud provision-device --aws`)")
        extra: dict[str, Any] = {}
        if cfg.ca_file is not None:
            extra["ca_filepath"] = str(self._resolve(cfg.ca_file))
        self._client = mqtt5_client_builder.mtls_from_path(
            endpoint=cfg.endpoint,
            port=cfg.port,
            cert_filepath=str(self._resolve(cfg.cert_file)),
            pri_key_filepath=str(self._resolve(cfg.key_file)),
            client_id=self._client_id,
            keep_alive_interval_sec=cfg.keepalive_s,
            ping_timeout_ms=PING_TIMEOUT_MS,
            ack_timeout_sec=math.ceil(cfg.ack_timeout_s),
            # Kept by the broker while the edge is away: subscriptions and queued commands.
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_POST_SUCCESS,
            session_expiry_interval_sec=cfg.session_expiry_s,
            # A publish cut off by a disconnect fails at once; the uplink resends it itself.
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
            min_reconnect_delay_ms=int(self._reconnect_s[0] * 1000),
            max_reconnect_delay_ms=int(self._reconnect_s[1] * 1000),
            # The SDK's metrics would replace the MQTT username; the certificate is the identity.
            enable_metrics_collection=False,
            on_publish_received=self._on_publish,
            on_lifecycle_connection_success=self._on_success,
            on_lifecycle_connection_failure=self._on_failure,
            on_lifecycle_disconnection=self._on_disconnect,
            on_lifecycle_stopped=self._on_stopped,
            **extra,
        )
        self._client.start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._client is None:
            return
        self._stopping = True
        self._client.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), STOP_TIMEOUT_S)
        self.ready.clear()
        self._client = None

    async def publish(
        self, topic: str, payload: bytes, *, user_properties: Sequence[mqtt5.UserProperty] = ()
    ) -> None:
        """Publish at QoS 1 and wait for a PUBACK that accepts it (PublishError otherwise)."""
        client = self._client
        if client is None:
            raise PublishError("not started")
        packet = mqtt5.PublishPacket(
            topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE,
            content_type="application/json", user_properties=list(user_properties) or None,
        )
        result = await self._wait(client.publish(packet), f"publish to {topic}")
        code = result.puback.reason_code if result.puback is not None else None
        if code not in (mqtt5.PubackReasonCode.SUCCESS,
                        mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS):
            reason = result.puback.reason_string if result.puback is not None else None
            raise PublishError(f"PUBACK {getattr(code, 'name', code)}"
                               + (f": {reason}" if reason else ""))

    async def _wait(self, future: Future[_T], what: str) -> _T:
        # Shielded: cancelling the wrapper would cancel the concurrent future, and the CRT thread
        # completing it later would then fail.
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), self._cfg.ack_timeout_s + 1
            )
        except TimeoutError:
            raise PublishError(f"{what}: no answer in {self._cfg.ack_timeout_s:g} s") from None
        except AwsCrtError as exc:
            raise PublishError(f"{what}: {exc.name}") from None

    # ---- callbacks, on CRT threads ----
    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
            loop.call_soon_threadsafe(fn, *args)

    def _on_publish(self, data: mqtt5.PublishReceivedData) -> None:
        packet = data.publish_packet
        self._call(self._route, packet.topic, bytes(packet.payload or b""))

    def _on_success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        self._call(self._connected)

    def _on_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        self._call(self._failed, _crt_error(data.exception))

    def _on_disconnect(self, data: mqtt5.LifecycleDisconnectData) -> None:
        self._call(self._disconnected, _crt_error(data.exception))

    def _on_stopped(self, data: mqtt5.LifecycleStoppedData) -> None:
        self._call(self._stopped.set)

    # ---- the same, on the event loop ----
    def _route(self, topic: str, payload: bytes) -> None:
        queue = self._routes.get(topic)
        if queue is None:
            log.debug("ignoring a message on %s", topic)
            return
        queue.put_nowait(payload)

    def _connected(self) -> None:
        self.connects += 1
        self._failures = 0
        log.info("AWS IoT: connected to %s:%d as %s", self._cfg.endpoint, self._cfg.port,
                 self._client_id)
        task = asyncio.get_running_loop().create_task(self._subscribe(), name="iot-subscribe")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _subscribe(self) -> None:
        """Subscribe on every connection (a session the broker dropped has none), retrying
        while the broker refuses; uploads wait meanwhile, since their answers could not come."""
        packet = mqtt5.SubscribePacket(subscriptions=[
            mqtt5.Subscription(topic_filter=topic, qos=mqtt5.QoS.AT_LEAST_ONCE)
            for topic in self._routes
        ])
        granted = {mqtt5.SubackReasonCode.GRANTED_QOS_0, mqtt5.SubackReasonCode.GRANTED_QOS_1}
        while self._client is not None:
            try:
                suback = await self._wait(self._client.subscribe(packet), "subscribe")
                refused = [
                    f"{topic}: {getattr(code, 'name', code)}"
                    for topic, code in zip(self._routes, suback.reason_codes, strict=False)
                    if code not in granted
                ]
                if not refused:
                    self.ready.set()
                    return
                self.last_error = "subscribe refused: " + "; ".join(refused)
            except PublishError as exc:
                self.last_error = str(exc)
            log.error("AWS IoT: %s; retrying in %.0f s (check the thing's policy)",
                      self.last_error, self._reconnect_s[1])
            await asyncio.sleep(self._reconnect_s[1])

    def _failed(self, error: str) -> None:
        self.last_error = f"connect: {error}"
        # Offline for days is normal: a line now and then, not one per attempt.
        level = logging.WARNING if self._failures % 20 == 0 else logging.DEBUG
        log.log(level, "AWS IoT: cannot connect to %s:%d: %s", self._cfg.endpoint, self._cfg.port,
                error)
        self._failures += 1

    def _disconnected(self, error: str) -> None:
        self.ready.clear()
        if self._stopping:
            log.info("AWS IoT: disconnected")
            return
        self.last_error = f"disconnected: {error}"
        log.warning("AWS IoT: connection lost (%s); reconnecting", error)


def _crt_error(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    return getattr(exc, "name", None) or f"{type(exc).__name__}: {exc}"

