"""systemd's service notification protocol (sd_notify) without libsystemd: one datagram per
state change to $NOTIFY_SOCKET, and the watchdog pings a ``Type=notify`` unit with
``WatchdogSec=`` expects. Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger(__name__)


def _address(raw: str) -> str | bytes | None:
    """The socket address from $NOTIFY_SOCKET: a path, or '@name' for the abstract namespace."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # systemd also allows vsock:…, which the Pi never uses


class Notifier:
    """Sends states to the service manager; ``enabled`` is False outside systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = _address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket; not notifying systemd", raw)
        self.watchdog_s = _watchdog_s(env)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *states: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True if it was sent. Never raises: a
        notification that cannot be sent must not stop the farm."""
        if self.address is None or not states:
            return False
        payload = "\n".join(states).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(payload)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", states[0], exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def watchdog_loop(self, healthy: Callable[[float], Awaitable[bool]]) -> None:
        """Ping every half watchdog period while ``healthy(timeout)`` says yes; never returns
        (cancel it). Does nothing unless systemd asked this process for pings. An unhealthy
        check skips the ping, so systemd restarts the edge after WatchdogSec without one."""
        if self.watchdog_s is None or not self.enabled:
            return
        interval = self.watchdog_s / 2
        log.info("systemd watchdog: pinging every %.1f s while healthy", interval)
        loop = asyncio.get_running_loop()
        was_healthy = True
        while True:
            started = loop.time()
            try:
                # Half the interval for the check: two pings are never more than 3/4 of
                # WatchdogSec apart while the edge is healthy.
                ok = await healthy(interval / 2)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watchdog health check failed")
                ok = False
            if ok:
                self.watchdog()
            elif was_healthy:
                log.error("edge unhealthy: withholding the systemd watchdog ping")
            was_healthy = ok
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))


def _watchdog_s(env: Mapping[str, str]) -> float | None:
    """WatchdogSec in seconds if systemd expects pings from this very process (WATCHDOG_PID,
    when set, names the main PID: a child process must not ping on its parent's behalf)."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; watchdog off", usec)
        return None
    return value / 1_000_000 if value > 0 else None
