"""An ICMP echo responder that answers after a known delay, for measuring node-ping's accuracy.

This kernel has no netem, so the delay is applied here instead: run inside a test namespace whose
kernel echo replies are off (net.ipv4.icmp_echo_ignore_all=1, net.ipv6.icmp.echo_ignore_all=1), it
reads echo requests from raw sockets and sends each reply, with the same identifier, sequence
number and payload, once its delay has passed. Delays are fixed or uniform in [low, high], from a
seeded generator.

It logs every reply it sent, one line each, with the delay it actually applied: from the kernel's
receive timestamp of the request to the kernel's transmit timestamp of the reply (or, where the
kernel gives none, the time just before sendto()). That is the truth a prober's RTT is compared
with; clocks read in Python after the fact are late by however long the thread was descheduled.

    python tests/support/responder.py --log FILE --delay-ms 20 [--jitter-ms 10] [--seed 1]

It prints "ready" on stdout once both sockets are open, and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import heapq
import random
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

SO_TIMESTAMPNS = 35
"""Kernel receive timestamps as a struct timespec (asm-generic; Python does not export it)."""
SO_TIMESTAMPING = 37
TX_TIMESTAMPS = (1 << 1) | (1 << 4) | (1 << 11)
"""SOF_TIMESTAMPING_TX_SOFTWARE | SOFTWARE | OPT_TSONLY: a software transmit timestamp of every
packet sent, queued on the socket's error queue without a copy of the packet."""

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
SPIN_S = 0.002
"""Sleep until this close to the send time, then spin: a sleep alone overshoots by up to ~1 ms."""


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of an ICMP message with its checksum field zeroed."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_reply_v4(request: bytes) -> bytes | None:
    """The ICMP echo reply to an IPv4 packet (IP header included), or None if it is no echo request."""
    header_len = (request[0] & 0x0F) * 4
    icmp = request[header_len:]
    if len(icmp) < 8 or icmp[0] != ICMP_ECHO_REQUEST or icmp[1] != 0:
        return None
    reply = bytearray(icmp)
    reply[0] = ICMP_ECHO_REPLY
    reply[2:4] = b"\0\0"
    reply[2:4] = struct.pack("!H", checksum(bytes(reply)))
    return bytes(reply)


def echo_reply_v6(request: bytes) -> bytes | None:
    """The ICMPv6 echo reply to an echo request (raw ICMPv6 sockets see no IP header).

    The checksum covers a pseudo-header with both addresses; the kernel fills it in for raw
    ICMPv6 sockets, so it is left zero here.
    """
    if len(request) < 8 or request[0] != ICMP6_ECHO_REQUEST or request[1] != 0:
        return None
    return bytes([ICMP6_ECHO_REPLY, 0, 0, 0]) + request[4:]


@dataclass(order=True)
class _Pending:
    due: float
    family: str = field(compare=False)
    peer: tuple[str, ...] = field(compare=False)
    received: float = field(compare=False)
    intended_ms: float = field(compare=False)
    reply: bytes = field(compare=False)


class Responder:
    def __init__(self, delay_ms: float, jitter_ms: float, seed: int, log: TextIO) -> None:
        self._delay_ms = delay_ms
        self._jitter_ms = jitter_ms
        self._random = random.Random(seed)  # noqa: S311 - a repeatable delay sequence, not a secret
        self._log = log
        self._queue: list[_Pending] = []
        self._ready = threading.Condition()
        self._sockets = {"v4": socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                         "v6": socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)}
        for sock in self._sockets.values():
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TX_TIMESTAMPS)

    def _delay_s(self) -> float:
        low = self._delay_ms - self._jitter_ms
        return self._random.uniform(low, self._delay_ms + self._jitter_ms) / 1000

    def receive(self, family: str) -> None:
        sock = self._sockets[family]
        make_reply = echo_reply_v4 if family == "v4" else echo_reply_v6
        while True:
            data, ancillary, _flags, peer = sock.recvmsg(65535, socket.CMSG_SPACE(16))
            received = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("@qq", value[:16])
                    received = seconds + nanoseconds / 1e9
            reply = make_reply(data)
            if reply is None:
                continue
            with self._ready:
                delay = self._delay_s()  # drawn in arrival order, so a seed gives a repeatable run
                heapq.heappush(self._queue, _Pending(received + delay, family, peer, received, delay * 1000, reply))
                self._ready.notify()

    def send(self) -> None:
        while True:
            with self._ready:
                while not self._queue or self._queue[0].due - time.time() > SPIN_S:
                    self._ready.wait(None if not self._queue else self._queue[0].due - time.time() - SPIN_S)
                pending = heapq.heappop(self._queue)
            while time.time() < pending.due:
                pass
            peer = pending.peer
            address = (peer[0], 0) if pending.family == "v4" else (peer[0], 0, 0, peer[3])  # keep the scope
            sock = self._sockets[pending.family]
            before = time.time()
            sock.sendto(pending.reply, address)
            sent, clock = transmit_time(sock), "kernel"
            if sent is None:
                sent, clock = before, "user"
            applied_ms = (sent - pending.received) * 1000
            ident, sequence = struct.unpack("!HH", pending.reply[4:8])
            self._log.write(f"{pending.family} {pending.peer[0]} {ident} {sequence} "
                            f"{pending.intended_ms:.6f} {applied_ms:.6f} {clock}\n")
            self._log.flush()


def transmit_time(sock: socket.socket, attempts: int = 20) -> float | None:
    """The kernel's transmit timestamp of the packet just sent (the newest on the error queue)."""
    latest: float | None = None
    for _ in range(attempts):
        while True:
            try:
                _data, ancillary, _flags, _peer = sock.recvmsg(1, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                    seconds, nanoseconds = struct.unpack("@qq", value[:16])
                    latest = seconds + nanoseconds / 1e9
        if latest is not None:
            return latest
        time.sleep(0.0005)  # on veth the timestamp is queued during sendto(); elsewhere it may lag
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True, help="file to append one line per reply to")
    parser.add_argument("--delay-ms", type=float, required=True, help="delay, or centre of the jitter range")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="half-width of the uniform range")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.jitter_ms > args.delay_ms:
        parser.error("--jitter-ms must not exceed --delay-ms")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(args.log, "a", encoding="utf-8") as log:
        responder = Responder(args.delay_ms, args.jitter_ms, args.seed, log)
        for target, name in ((responder.receive, "v4"), (responder.receive, "v6"), (responder.send, None)):
            threading.Thread(target=target, args=(name,) if name else (), daemon=True).start()
        print("ready", flush=True)
        signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
