"""Resolve external host names with a time limit.

fping -A reports addresses, not names, so names are resolved here and fping only ever sees
addresses. getaddrinfo() has no timeout of its own; a stuck resolver must not stall the cycle.
"""

from __future__ import annotations

import socket
import threading
import time

from node_ping.targets import is_ip, normalise_ip


class ResolveError(Exception):
    pass


def resolve(host: str, timeout_s: float = 5.0, stop: threading.Event | None = None) -> str:
    """The first address of `host` (IPv4 or IPv6); an IP address is returned as it is.

    Waits at most `timeout_s`, and returns early (as a failure) once `stop` is set, so a shutdown
    is never held up by a slow resolver."""
    if is_ip(host):
        return normalise_ip(host)
    result: list[str] = []
    failure: list[str] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_RAW)
            result.append(normalise_ip(str(infos[0][4][0]).split("%")[0]))
        except (OSError, IndexError, ValueError) as err:
            failure.append(str(err) or type(err).__name__)

    # A daemon thread: if the resolver hangs past the deadline, the process can still exit.
    worker = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout_s
    while worker.is_alive() and time.monotonic() < deadline and not (stop and stop.is_set()):
        worker.join(0.1)
    if result:
        return result[0]
    if failure:
        raise ResolveError(f"cannot resolve {host!r}: {failure[0]}")
    raise ResolveError(f"resolving {host!r} took longer than {timeout_s:.0f} s")
