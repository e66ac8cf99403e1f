"""HTTP clients that misbehave, run inside a test host: idle connections by the hundred, and one
plain scrape to see that the server still answers.

`python -m tests.support.clients idle HOST PORT COUNT` opens COUNT connections, a few at a time,
sends the first byte of a request on each, prints how many were established and holds them,
sending nothing more, until its stdin closes.
`python -m tests.support.clients scrape URL` prints the body of one GET (exit 1 if there is none).
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence

from tests.support.processes import PYTHON, REPO, stop

CONNECT_S = 40.0
"""How long the idle connections may take to be established, all together: a bound, generous for a
loaded machine, where a batch can take a while."""
BATCH = 4
"""Connections opened at a time: a burst larger than the server's listen backlog would be half-opened
(SYN cookies) and never reach the server."""


def _open(host: str, port: int, count: int, deadline: float) -> list[socket.socket]:
    """Up to `count` connections established by `deadline`, each having sent one byte of a request."""
    pending: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        if sock.connect_ex((host, port)) in (0, errno.EINPROGRESS):
            pending.append(sock)
        else:
            sock.close()
    established: list[socket.socket] = []
    with selectors.DefaultSelector() as selector:
        for sock in pending:
            selector.register(sock, selectors.EVENT_WRITE, sock)
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(deadline - time.monotonic()):
                selector.unregister(key.fileobj)
                sock = key.data
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    # The byte reaches the server even if the handshake's last ACK did not.
                    with contextlib.suppress(OSError):
                        sock.send(b"G")
                    established.append(sock)
    return established


def hold_idle(host: str, port: int, count: int) -> None:
    deadline = time.monotonic() + CONNECT_S
    held: list[socket.socket] = []
    while len(held) < count and time.monotonic() < deadline:
        held += _open(host, port, min(BATCH, count - len(held)), deadline)
    print(len(held), flush=True)
    sys.stdin.read()


def scrape(url: str) -> None:
    with urllib.request.urlopen(url, timeout=5) as response:
        print(response.read().decode())


@contextlib.contextmanager
def idle_connections(prefix: Sequence[str], host: str, port: int, count: int) -> Iterator[int]:
    """Hold `count` idle connections to host:port from a process started through `prefix` (e.g.
    `ip netns exec NS`); yields how many were established."""
    argv = [*prefix, PYTHON, "-m", "tests.support.clients", "idle", host, str(port), str(count)]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        stop(process)


def scraped(prefix: Sequence[str], url: str) -> str | None:
    """The body of one GET of `url` from a process started through `prefix`; None if it got none."""
    result = subprocess.run([*prefix, PYTHON, "-m", "tests.support.clients", "scrape", url], capture_output=True,
                            text=True, timeout=30, check=False, cwd=REPO)
    return result.stdout if result.returncode == 0 else None


if __name__ == "__main__":
    if sys.argv[1] == "idle":
        hold_idle(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        scrape(sys.argv[2])
