"""Free loopback ports for the servers that tests, benchmarks and checks start.

Not ``bind(0)``: that hands out a port from the kernel's ephemeral range, the range outgoing
connections take their source ports from. A client that keeps connecting to such a port before
its server listens (a device reconnecting every 20 ms while the edge restarts) is, sooner or
later, given that very port as its own source port and connects to itself (TCP simultaneous
open); it then holds the port and the server cannot bind it. A chaos test saw exactly that: 5,669
reconnects, paho's "Unrecognised command 16" (its own CONNECT read back), and no edge could
start. Ports here come from below (or above) the ephemeral range instead, are probed with a bind,
and are not handed out twice by one process.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # below it: well-known services (PostgreSQL, Redis, brokers, ...)
_given: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports (Linux's default elsewhere)."""
    try:
        low, high = (int(n) for n in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, outside the ephemeral range, not given out before by
    this process."""
    low, high = ephemeral_range()
    pools = [(_LOWEST, low - 1), (high + 1, 65_535)]
    pools = [(a, b) for a, b in pools if b - a >= 1_000]
    rng = random.Random()  # noqa: S311 - spreading ports, not secrets
    for _ in range(500 if pools else 0):
        a, b = rng.choice(pools)
        port = rng.randint(a, b)
        if port not in _given and _bindable(host, port):
            _given.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no room outside it
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
