"""One node-ping's fping at a time in a network namespace.

fping tells its own echo replies from everybody else's by the ICMP identifier, which it takes from
its pid. Two node-pings in one network namespace but different pid namespaces (two hostNetwork pods
on one node: two releases, a surge during a rolling update, `kubectl exec` of `node-ping once` into
another container) start fping under the same pid, and each counts the other's replies as its own:
both under-report loss. An abstract unix socket name exists once per network namespace, so holding
one is a lock exactly as wide as the problem, and the kernel releases it when its holder dies.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOCK_ADDRESS = "\0node-ping/fping"
"""Abstract (leading NUL): no file, scoped to the network namespace."""

POLL_S = 0.05


class Busy(Exception):
    """Another node-ping held the lock for the whole time allowed."""


class Stopped(Exception):
    """A stop was requested while waiting."""


@contextmanager
def exclusive_icmp(stop: threading.Event, timeout_s: float) -> Iterator[float]:
    """Hold the network namespace's fping lock; yield how many seconds it took to get it."""
    # Not inherited by fping (PEP 446): an fping orphaned by a killed node-ping cannot hold it.
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    started = time.monotonic()
    try:
        while True:
            try:
                lock.bind(LOCK_ADDRESS)
                break
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    raise
            if stop.wait(POLL_S):
                raise Stopped
            if time.monotonic() - started > timeout_s:
                raise Busy(f"another node-ping in this network namespace kept its fping running for "
                           f"{timeout_s:.0f} s")
        yield time.monotonic() - started
    finally:
        lock.close()
