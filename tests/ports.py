"""Free TCP ports for the servers a test starts, picked below the kernel's ephemeral range.

A port from bind(("127.0.0.1", 0)) is in the ephemeral range
(/proc/sys/net/ipv4/ip_local_port_range). Once that socket is released, any outgoing
connection a parallel test opens (to the broker, to PostgreSQL) may take the port as
its local end before the server binds it: seen as "Address already in use" and a CI
failure. Below the range only an explicit bind takes a port, so a port checked free
there stays free until the server binds it (unless another test picks the same one).
"""

from __future__ import annotations

import random
import socket

_WINDOW = 12_000  # how far below the ephemeral range to pick from
_ATTEMPTS = 1_000


def free_port(count: int = 1) -> int:
    """The first of ``count`` adjacent ports, all free and all below the ephemeral range."""
    low = _ephemeral_low()
    start, stop = max(1024, low - _WINDOW), low - count + 1
    if count < 1 or start >= stop:
        raise ValueError(f"no {count} adjacent ports between 1024 and the ephemeral range at {low}")
    for _ in range(_ATTEMPTS):
        port = random.randrange(start, stop)
        if all(_can_bind(p) for p in range(port, port + count)):
            return port
    raise RuntimeError(f"no {count} adjacent free ports found in {start}..{low - 1}")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _can_bind(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers (uvicorn, PostgreSQL, ...) bind
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
