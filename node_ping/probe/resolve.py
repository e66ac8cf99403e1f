"""Resolve external host names, all at once and with one time limit.

fping -A reports addresses, not names, so names are resolved here and fping only ever sees
addresses. getaddrinfo() has no timeout of its own: every name gets its own daemon thread, so ten
names behind a dead resolver cost one time limit, not ten, and a shutdown is never held up.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from node_ping.targets import is_ip, normalise_ip


@dataclass
class Resolved:
    addresses: dict[str, str] = field(default_factory=dict)  # host -> address
    failures: dict[str, str] = field(default_factory=dict)  # host -> why, one sentence
    stopped: bool = False  # a stop request cut the wait short: the missing names are not failures


def _lookup(host: str, into: Resolved, lock: threading.Lock) -> None:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_RAW)
        address = normalise_ip(str(infos[0][4][0]).split("%")[0])
    except (OSError, IndexError, ValueError) as err:
        with lock:
            into.failures[host] = f"cannot resolve {host!r}: {err or type(err).__name__}"
    else:
        with lock:
            into.addresses[host] = address


def resolve_all(hosts: Sequence[str], timeout_s: float = 5.0, stop: threading.Event | None = None) -> Resolved:
    """The first address (IPv4 or IPv6) of every host; IP addresses are returned as they are."""
    result = Resolved()
    lock = threading.Lock()
    workers = []
    for host in dict.fromkeys(hosts):
        if is_ip(host):
            result.addresses[host] = normalise_ip(host)
            continue
        worker = threading.Thread(target=_lookup, args=(host, result, lock), name=f"resolve {host}", daemon=True)
        worker.start()
        workers.append((host, worker))
    deadline = time.monotonic() + timeout_s
    for _host, worker in workers:
        while worker.is_alive() and time.monotonic() < deadline and not (stop and stop.is_set()):
            worker.join(0.1)
    with lock:
        result.stopped = bool(stop and stop.is_set())
        for host, _worker in workers:
            if host not in result.addresses and host not in result.failures and not result.stopped:
                result.failures[host] = f"resolving {host!r} took longer than {timeout_s:.0f} s"
        return Resolved(dict(result.addresses), dict(result.failures), result.stopped)
