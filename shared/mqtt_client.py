"""aiomqtt's client, made safe to cancel: every long-lived MQTT loop (edge, simulator) uses it.

A reconnect loop retries on ``MqttError`` and stops on ``CancelledError``. Two things turned a
cancellation into a retry, so a stopping edge or a test's teardown waited forever (a CI run hung
120 s on a cancelled simulated node):

- On Python 3.11, ``asyncio.wait_for`` returns the result instead of raising when a cancel
  arrives just as the awaited result does (fixed in 3.12). aiomqtt waits for every CONNACK,
  SUBACK and PUBACK that way, so the cancel was lost and the session went on.
- ``Client.__aexit__`` raises ``MqttError`` when its goodbye times out, and that replaced the
  ``CancelledError`` the session was unwinding with.

``MqttClient`` re-raises the cancellation in both cases. It reaches into aiomqtt's ``_wait_for``
(aiomqtt 2.x, pinned in pyproject.toml); tests/unit/test_mqtt_client.py fails if that changes.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from types import TracebackType
from typing import Self, TypeVar

import aiomqtt

log = logging.getLogger(__name__)
T = TypeVar("T")


def _cancel_requests() -> int:
    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()


class MqttClient(aiomqtt.Client):
    """``aiomqtt.Client`` whose waits and goodbye never swallow a cancellation."""

    _entering = False

    async def _wait_for(
        self, fut: Awaitable[T], timeout: float | None  # noqa: ASYNC109 - aiomqtt's signature
    ) -> T:
        before = _cancel_requests()
        result = await super()._wait_for(fut, timeout)
        if _cancel_requests() > before and not self._entering:
            # Asked to stop while the broker answered; wait_for kept the answer, not the stop.
            raise asyncio.CancelledError
        return result

    async def __aenter__(self) -> Self:
        before = _cancel_requests()
        self._entering = True  # aiomqtt does not clean up after a cancel mid-connect
        try:
            client = await super().__aenter__()
        finally:
            self._entering = False
        if _cancel_requests() > before:  # the cancel raced the CONNACK: leave again
            with contextlib.suppress(aiomqtt.MqttError):
                await super().__aexit__(None, None, None)
            raise asyncio.CancelledError
        return client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)
        except aiomqtt.MqttError as goodbye:
            if exc_type is None or not issubclass(exc_type, asyncio.CancelledError):
                raise
            # The cancellation goes on; the failed goodbye is only worth a note.
            log.debug("MQTT goodbye after a cancel failed: %s", goodbye)
