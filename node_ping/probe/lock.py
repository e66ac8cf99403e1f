"""One node-ping's fping at a time in a network namespace, taking turns.

fping tells its own echo replies from everybody else's by the ICMP identifier, which it takes from
its pid. Two node-pings in one network namespace but different pid namespaces (two hostNetwork pods
on one node: two releases, a surge during a rolling update, `kubectl exec` of `node-ping once` into
another container) start fping under the same pid, and each counts the other's replies as its own:
both under-report loss. An abstract unix socket name exists once per network namespace, so holding
one is a lock exactly as wide as the problem, and the kernel releases it when its holder dies.

A lock alone is not fair: its holder writes its file and comes back for it within milliseconds,
long before a waiter polling it notices it was free. So there are two names: the queue (held by
the one node-ping next in line) and the lock. A node-ping takes the queue, then the lock, then
lets the queue go; one that has just had its turn finds the queue taken by the waiter and lines up
behind it.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

LOCK_ADDRESS = "\0node-ping/fping"
QUEUE_ADDRESS = "\0node-ping/fping-next"
"""Abstract (leading NUL): no file, scoped to the network namespace."""

POLL_S = 0.01


class Busy(Exception):
    """Other node-pings held the lock for the whole time allowed."""


class Stopped(Exception):
    """A stop was requested while waiting."""


def _take(address: str, stack: ExitStack, stop: threading.Event, deadline: float, started: float) -> socket.socket:
    # Not inherited by fping (PEP 446): an fping orphaned by a killed node-ping cannot hold it.
    name = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stack.callback(name.close)
    while True:
        try:
            name.bind(address)
            return name
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
        if stop.wait(POLL_S):
            raise Stopped
        if time.monotonic() > deadline:
            raise Busy(f"waited {time.monotonic() - started:.0f} s for other node-pings in this network namespace "
                       "to finish their fping runs")


@contextmanager
def exclusive_icmp(stop: threading.Event, timeout_s: float) -> Iterator[float]:
    """Hold the network namespace's fping lock, in turn; yield how many seconds it took to get it."""
    started = time.monotonic()
    deadline = started + timeout_s
    with ExitStack() as stack:
        queue = _take(QUEUE_ADDRESS, stack, stop, deadline, started)
        _take(LOCK_ADDRESS, stack, stop, deadline, started)
        queue.close()  # the next in line may queue now
        yield time.monotonic() - started
