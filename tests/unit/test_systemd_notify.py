"""sd_notify over a real unix datagram socket, as systemd's $NOTIFY_SOCKET: path and abstract
addresses, the watchdog environment, and the ping loop that stops pinging when unhealthy."""
from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.systemd import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket (none blocks)."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5)


def test_states_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("broker up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=broker up"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket() -> None:
    name = f"smartfarm-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": f"@{name}"}).status("hello")
        assert sock.recv(4096) == b"STATUS=hello"


def test_outside_systemd_everything_is_a_no_op(tmp_path: Path) -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_s is None
    assert not notifier.ready()
    # A socket that vanished (or a relative path) never raises: the farm must keep running.
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready()
    assert not Notifier({"NOTIFY_SOCKET": "relative.sock"}).enabled


def test_watchdog_environment() -> None:
    mine = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_s == 30.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": mine}).watchdog_s == 30.0
    # Meant for another process (we are a child of the service's main process): no pings.
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_s is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_s is None


async def test_watchdog_pings_only_while_healthy(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})  # 20 ms
    verdicts = [True, True, False, False, True]
    seen: list[list[str]] = []  # datagrams present when each check starts
    done = asyncio.Event()

    async def healthy(within_s: float) -> bool:
        assert 0 < within_s < notifier.watchdog_s  # type: ignore[operator]
        seen.append(received(sock))
        if len(seen) > len(verdicts):
            done.set()
            await asyncio.Event().wait()  # park until cancelled
        return verdicts[len(seen) - 1]

    task = asyncio.create_task(notifier.watchdog_loop(healthy))
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # What each verdict caused shows up by the next check: a ping after each healthy one only.
    assert seen[1:] == [["WATCHDOG=1"], ["WATCHDOG=1"], [], [], ["WATCHDOG=1"]]


async def test_watchdog_loop_returns_when_not_asked(listener: tuple[socket.socket, str]) -> None:
    _, path = listener

    async def never(within_s: float) -> bool:
        raise AssertionError("no health checks without WATCHDOG_USEC")

    await asyncio.wait_for(Notifier({"NOTIFY_SOCKET": path}).watchdog_loop(never), 5)


async def test_a_failing_health_check_withholds_the_ping(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})
    calls = 0
    done = asyncio.Event()

    async def broken(within_s: float) -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            done.set()
            await asyncio.Event().wait()
        raise RuntimeError("store gone")

    task = asyncio.create_task(notifier.watchdog_loop(broken))
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert received(sock) == []
