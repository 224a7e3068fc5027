"""Fixtures every test layer shares: free loopback ports and unique MQTT namespaces."""
from __future__ import annotations

import socket
import uuid

import pytest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind to 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def farm_id() -> str:
    """A farm id unique to this test, so tests sharing the machine's Mosquitto never collide."""
    return f"t{uuid.uuid4().hex[:12]}"
