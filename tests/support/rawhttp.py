"""HTTP servers on loopback written on plain sockets, for clients facing servers that misbehave in
time or in size: one that drips a byte now and then, one that answers more than a client should read.

Each serves every connection in its own thread until the `with` block ends; the block's end stops
them, closes their sockets and joins their threads.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable, Iterator

DRIP_S = 0.3
"""How long a dripping server waits between two bytes."""

Handler = Callable[[socket.socket, threading.Event], None]


@contextlib.contextmanager
def loopback_server(handle: Handler) -> Iterator[str]:
    """Run `handle(connection, stop)` for every connection to a fresh 127.0.0.1 port; yields its URL."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    connections: list[socket.socket] = []

    def serve(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)  # the request, so that closing does not reset the connection
            handle(connection, stop)

    def accept(listener: socket.socket) -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connections.append(connection)
            thread = threading.Thread(target=serve, args=(connection,), daemon=True)
            threads.append(thread)
            thread.start()

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.05)
        acceptor = threading.Thread(target=accept, args=(listener,), daemon=True)
        acceptor.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            stop.set()
            acceptor.join()
            for connection in connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)  # ends a send blocked on a full buffer
            for thread in threads:
                thread.join(10)


def dripping(head: bytes, drip: bytes) -> Handler:
    """Sends `head`, then `drip` one byte every DRIP_S seconds, for as long as the server runs."""
    def handle(connection: socket.socket, stop: threading.Event) -> None:
        connection.sendall(head)
        while not stop.wait(DRIP_S):
            connection.sendall(drip[:1])

    return handle


def streaming(status: bytes, parts: Iterable[bytes], length: int) -> Handler:
    """A 200 answer (`status` its status line) of `length` bytes, made of `parts` as they are generated."""
    def handle(connection: socket.socket, stop: threading.Event) -> None:
        connection.sendall(status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                           + str(length).encode() + b"\r\nConnection: close\r\n\r\n")
        for part in parts:
            if stop.is_set():
                return
            connection.sendall(part)

    return handle
