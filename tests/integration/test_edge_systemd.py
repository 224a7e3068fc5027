"""A real edge under a stand-in for systemd: $NOTIFY_SOCKET is a unix datagram socket this test
reads. READY=1 once the broker and the local page are up, WATCHDOG=1 while the store's writer
commits (withheld while it is stuck), STOPPING=1 on shutdown."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from pathlib import Path

import pytest

from edge.app import EdgeApp
from edge.config import load_config
from edge.site_init import init_site
from tests.conftest import free_port


async def next_state(sock: socket.socket, timeout: float = 10) -> str:
    loop = asyncio.get_running_loop()
    return (await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)).decode()


def drain(sock: socket.socket) -> list[str]:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(4096).decode())
    return out


async def test_edge_notifies_systemd(
    tmp_path: Path, farm_id: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge")
    config, _ = init_site(tmp_path / "site", farm_id=farm_id, broker_port=free_port(),
                          api_port=free_port(), rooms=(("room-a", "A", "oyster", "fruiting"),))
    settings = load_config(config)
    settings.store.commit_interval_ms = 20
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WatchdogSec=0.4 s: a ping every 0.2 s
    app = EdgeApp(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    stuck = threading.Event()
    try:
        ready = await next_state(sock, 20)
        assert ready.startswith("READY=1\nSTATUS=")
        assert app.broker is not None and app.broker.running and app.api_port is not None
        assert await next_state(sock) == "WATCHDOG=1"
        assert await next_state(sock) == "WATCHDOG=1"

        # The writer thread wedged (a write that never returns): pings stop.
        app.db.write_nowait(lambda conn: stuck.wait(30))

        def unhealthy_checks() -> int:
            return sum("has not committed" in r.getMessage() for r in caplog.records)

        async with asyncio.timeout(10):
            while unhealthy_checks() < 1:
                await asyncio.sleep(0.02)
        drain(sock)  # a ping from before the wedge may still be queued
        async with asyncio.timeout(10):
            while unhealthy_checks() < 3:
                await asyncio.sleep(0.02)
        assert drain(sock) == []
        assert not await app.healthy(0.05)

        stuck.set()  # unwedged: the pings come back
        assert await next_state(sock) == "WATCHDOG=1"
        assert await app.healthy(5)

        stop.set()
        states = [await next_state(sock)]
        while not states[-1].startswith("STOPPING=1"):
            states.append(await next_state(sock))
        await asyncio.wait_for(task, 15)
    finally:
        stuck.set()
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)
        sock.close()
    assert not app.db.is_open
