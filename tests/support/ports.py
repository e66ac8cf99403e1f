"""Local ports and plain HTTP GETs, for tests that start servers on loopback."""

from __future__ import annotations

import socket
import urllib.request


def free_port(dual_stack: bool = False) -> int:
    """A TCP port free right now on 127.0.0.1 (or, with `dual_stack`, on every IPv6 and IPv4 address)."""
    if dual_stack:
        with socket.socket(socket.AF_INET6) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
            return int(sock.getsockname()[1])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 5) -> str:
    """The body of a GET of `url`, as text."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())
