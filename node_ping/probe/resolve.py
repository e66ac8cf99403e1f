"""Resolve external host names, all at once and with one time limit.

fping -A reports addresses, not names, so names are resolved here and fping only ever sees
addresses. getaddrinfo() has no timeout of its own: every name gets its own daemon thread, so ten
names behind a dead resolver cost one time limit, not ten, and a shutdown is never held up.

A look-up that outlives its cycle's time limit is not abandoned: it stays in flight, and the next
cycle waits for that one instead of starting another, so a resolver that hangs holds at most one
thread per name however many cycles pass. Its answer, when it comes, serves one cycle.
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


class _Lookup:
    """One getaddrinfo() of one name in a daemon thread; `address` or `failure` once `done` is set."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.done = threading.Event()
        self.address: str | None = None
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"resolve {host}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            infos = socket.getaddrinfo(self.host, None, type=socket.SOCK_RAW)
            self.address = normalise_ip(str(infos[0][4][0]).split("%")[0])
        except (OSError, IndexError, ValueError) as err:
            self.failure = f"cannot resolve {self.host!r}: {err or type(err).__name__}"
        finally:
            self.done.set()


# The look-ups not yet handed to a cycle, by name: at most one per name, shared across cycles.
_in_flight: dict[str, _Lookup] = {}
_in_flight_lock = threading.Lock()


def _lookups(hosts: Sequence[str]) -> list[_Lookup]:
    """A look-up for each name: the one still in flight, or a new one. Finished look-ups of names
    no longer asked for are dropped, so names removed from the config do not accumulate."""
    asked = set(hosts)
    with _in_flight_lock:
        for host in [host for host, lookup in _in_flight.items() if lookup.done.is_set() and host not in asked]:
            del _in_flight[host]
        for host in hosts:
            if host not in _in_flight:
                _in_flight[host] = _Lookup(host)
        return [_in_flight[host] for host in hosts]


def _hand_over(lookup: _Lookup) -> None:
    """A finished look-up serves one cycle: the next one asks the resolver again."""
    with _in_flight_lock:
        if _in_flight.get(lookup.host) is lookup:
            del _in_flight[lookup.host]


def resolve_all(hosts: Sequence[str], timeout_s: float = 5.0, stop: threading.Event | None = None) -> Resolved:
    """The first address (IPv4 or IPv6) of every host; IP addresses are returned as they are."""
    result = Resolved()
    names = []
    for host in dict.fromkeys(hosts):
        if is_ip(host):
            result.addresses[host] = normalise_ip(host)
        else:
            names.append(host)
    lookups = _lookups(names)
    deadline = time.monotonic() + timeout_s
    for lookup in lookups:
        while not lookup.done.is_set() and not (stop and stop.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            lookup.done.wait(min(0.1, left))
    result.stopped = bool(stop and stop.is_set())
    for lookup in lookups:
        if lookup.done.is_set():
            _hand_over(lookup)
            if lookup.address is not None:
                result.addresses[lookup.host] = lookup.address
            else:
                result.failures[lookup.host] = lookup.failure or f"cannot resolve {lookup.host!r}"
        elif not result.stopped:
            result.failures[lookup.host] = f"resolving {lookup.host!r} took longer than {timeout_s:g} s"
    return result
