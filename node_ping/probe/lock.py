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

Abstract names have no permissions: any process in the network namespace can bind them. A name
held by a socket of another uid than ours is not held by a node-ping, and waiting for it would
blind the prober, so such a name is passed over (and its holder named once in the log): a
squatted queue costs the turn order, a squatted lock is replaced by holding the queue through the
run, and only with both squatted do node-pings run side by side. The owner's uid comes from the
kernel's socket diagnostics (sock_diag); its pid from SO_PEERCRED when it listens.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

LOCK_ADDRESS = "\0node-ping/fping"
QUEUE_ADDRESS = "\0node-ping/fping-next"
"""Abstract (leading NUL): no file, scoped to the network namespace."""

POLL_S = 0.01
IDENTIFY_EVERY_S = 1.0
"""How often a waiter asks who holds a name: a sock_diag dump lists every bound unix socket of the
network namespace, which on a hostNetwork node can be thousands."""


class Busy(Exception):
    """Other node-pings held the lock for the whole time allowed."""


class Stopped(Exception):
    """A stop was requested while waiting."""


@dataclass(frozen=True)
class Holder:
    """Who holds a name: the socket's owner, and the process that listens on it if one does."""

    uid: int | None
    pid: int | None


# sock_diag (linux/sock_diag.h, linux/unix_diag.h)
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_NAME, _UDIAG_SHOW_UID = 0x1, 0x40
_UNIX_DIAG_NAME, _UNIX_DIAG_UID = 0, 7
_UNBOUND_OR_LISTENING = (1 << 7) | (1 << 10)  # TCP_CLOSE, TCP_LISTEN: not the many connected ones
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_REQUEST = struct.Struct("=BBHIIIII")  # unix_diag_req
_MESSAGE = struct.Struct("=BBBBIII")  # unix_diag_msg
_ATTRIBUTE = struct.Struct("=HH")  # rtattr


def _messages(dump: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink message in one read."""
    offset = 0
    while offset + _HEADER.size <= len(dump):
        length, kind = _HEADER.unpack_from(dump, offset)[:2]
        if length < _HEADER.size:
            return
        yield kind, dump[offset + _HEADER.size:offset + length]
        offset += (length + 3) & ~3


def _attributes(payload: bytes) -> Iterator[tuple[int, bytes]]:
    at = 0
    while at + _ATTRIBUTE.size <= len(payload):
        size, attribute = _ATTRIBUTE.unpack_from(payload, at)
        if size < _ATTRIBUTE.size:
            return
        yield attribute, payload[at + _ATTRIBUTE.size:at + size]
        at += (size + 3) & ~3


def owner_in_dump(dump: bytes, address: str) -> tuple[int | None, bool]:
    """The uid owning the socket bound to `address` in one read of a sock_diag answer (None if not
    in it), and whether the answer is complete."""
    done = False
    for kind, payload in _messages(dump):
        if kind in (_NLMSG_DONE, _NLMSG_ERROR):
            done = True
        elif kind == _SOCK_DIAG_BY_FAMILY:
            attributes = dict(_attributes(payload[_MESSAGE.size:]))
            uid = attributes.get(_UNIX_DIAG_UID, b"")
            if attributes.get(_UNIX_DIAG_NAME) == address.encode() and len(uid) == 4:
                return struct.unpack("=I", uid)[0], True
    return None, done or not dump


def _owner(address: str) -> int | None:
    """The uid of the socket bound to `address` in this network namespace; None if unknown."""
    request = _REQUEST.pack(socket.AF_UNIX, 0, 0, _UNBOUND_OR_LISTENING, 0,
                            _UDIAG_SHOW_NAME | _UDIAG_SHOW_UID, 0xFFFFFFFF, 0xFFFFFFFF)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as diag:
            diag.settimeout(1.0)
            diag.send(_HEADER.pack(_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY,
                                   _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + request)
            while True:
                uid, done = owner_in_dump(diag.recv(1 << 16), address)
                if done:
                    return uid
    except OSError:  # no sock_diag here (an old kernel, a seccomp filter): the uid stays unknown
        return None


def _listener(address: str) -> tuple[int, int] | None:
    """(pid, uid) of the process listening on `address`, from SO_PEERCRED; None if none listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a listener that never accepts must not hold us up
        try:
            probe.connect(address)
        except OSError:
            return None
        pid, uid, _ = struct.unpack("=3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return pid, uid


def holder(address: str) -> Holder | None:
    """Who holds `address`, if it is anybody but a process of our own uid; None for ours or unknown."""
    uid = _owner(address)
    if uid == os.geteuid():
        return None
    listening = _listener(address)
    if uid is None and listening is not None:
        uid = listening[1]
    if uid is None or uid == os.geteuid():
        return None
    return Holder(uid, listening[0] if listening else None)


_reported: set[tuple[str, int | None]] = set()
_reported_lock = threading.Lock()


def _report(address: str, squatter: Holder) -> None:
    """Say once per name and owner that it is not node-ping's."""
    with _reported_lock:
        if (address, squatter.uid) in _reported:
            return
        _reported.add((address, squatter.uid))
    pid = squatter.pid if squatter.pid is not None else "unknown (it does not listen)"
    log.warning("the name @%s of this network namespace is held by uid %s, pid %s, not by a node-ping (we run "
                "as uid %d): passing it over and probing anyway; while it is held, other node-pings here "
                "may take fewer turns with us", address[1:], squatter.uid, pid, os.geteuid())


def _take(address: str, stack: ExitStack, stop: threading.Event, deadline: float,
          started: float) -> socket.socket | None:
    """Bind `address` once free; None if a process that is not node-ping holds it."""
    # Not inherited by fping (PEP 446): an fping orphaned by a killed node-ping cannot hold it.
    name = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stack.callback(name.close)
    identified_at = -IDENTIFY_EVERY_S
    while True:
        try:
            name.bind(address)
            return name
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
        if time.monotonic() - identified_at >= IDENTIFY_EVERY_S:
            identified_at = time.monotonic()
            squatter = holder(address)
            if squatter is not None:
                _report(address, squatter)
                return None
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
        taken = _take(LOCK_ADDRESS, stack, stop, deadline, started)
        if queue is not None and taken is not None:
            queue.close()  # the next in line may queue now
        # With the lock squatted, the queue we hold keeps other node-pings' fping out instead.
        yield time.monotonic() - started
