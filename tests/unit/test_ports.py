"""shared.ports: loopback ports for test servers come from outside the kernel's ephemeral range,
so a client reconnecting before its server listens can never connect to itself on that port."""
from __future__ import annotations

import socket

from shared import ports


def test_ports_are_outside_the_ephemeral_range_bindable_and_distinct() -> None:
    low, high = ports.ephemeral_range()
    given = [ports.free_port() for _ in range(200)]
    assert len(set(given)) == len(given)
    assert all(not low <= p <= high for p in given)
    for port in given[:20]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_listening_port_is_never_given(monkeypatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        taken = server.getsockname()[1]
        picks = iter([taken, taken, taken + 1 if taken < 65_535 else taken - 1])
        monkeypatch.setattr(ports, "ephemeral_range", lambda: (60_000, 60_999))
        monkeypatch.setattr(ports.random.Random, "randint", lambda self, a, b: next(picks))
        assert ports.free_port() != taken


def test_without_room_outside_the_range_the_kernel_chooses(monkeypatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1_024, 65_535))
    port = ports.free_port()
    assert 1_024 <= port <= 65_535
