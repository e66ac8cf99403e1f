"""Serve the metrics over HTTP (`--listen-address`), for clusters whose node-exporter has no
textfile directory.

`:PORT` means every interface, IPv6 as well as IPv4: one dual-stack socket, so a PodMonitor on an
IPv6 single-stack or IPv6-first cluster finds the exporter too. On a host without IPv6 it falls
back to IPv4 only.

HTTP clients must not take from the probing loop what it needs: each connection costs a thread and
a descriptor, and a node-ping out of descriptors can start no fping and write no textfile. So at
most MAX_CONNECTIONS are served at once (the excess is closed at once), every client has
REQUEST_TIMEOUT_S to send a request head of at most MAX_REQUEST_BYTES, and RESPONSE_TIMEOUT_S per
write to take the answer.
"""

from __future__ import annotations

import errno
import io
import logging
import socket
import sys
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from node_ping.probe.config import EVERY_INTERFACE, ListenAddress

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8
"""Connections served at once: Prometheus (an HA pair of them) and a person with curl need a few."""
REQUEST_TIMEOUT_S = 5.0
"""A scraper sends its request at once; a client silent this long, or sending a byte at a time, is cut off."""
RESPONSE_TIMEOUT_S = 30.0
"""For each write of the answer, however slowly the client reads."""
MAX_REQUEST_BYTES = 16_384
"""Request line and headers; a scrape's take a few hundred bytes. There is no body to read."""

# Errors that mean "this host has no IPv6" (booted with ipv6.disable=1, or no address family).
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


class _Request(io.RawIOBase):
    """What the client sends, until a deadline and up to a size: the socket's own timeout restarts
    with every byte."""

    def __init__(self, connection: socket.socket) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = time.monotonic() + REQUEST_TIMEOUT_S
        self._left = MAX_REQUEST_BYTES

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete request within {REQUEST_TIMEOUT_S:.0f} s")
        if self._left <= 0:
            raise ConnectionAbortedError(f"request larger than {MAX_REQUEST_BYTES} bytes")
        self._connection.settimeout(remaining)
        with memoryview(buffer) as view:
            received = self._connection.recv_into(view.cast("B")[:self._left])
        self._left -= received
        return received


class _Quiet(WSGIRequestHandler):
    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_Request(self.connection))

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.connection.settimeout(RESPONSE_TIMEOUT_S)  # the request is in: from here on, the answer
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would flood the log: stay silent."""


class _BoundedServer(ThreadingWSGIServer):
    """A thread per connection, for at most MAX_CONNECTIONS connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # refused at once: no thread, no descriptor kept
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out, sent too much or went away: its problem, not ours to print."""
        log.debug("HTTP connection from %s ended: %s", client_address, sys.exc_info()[1])


class _IPv4Server(_BoundedServer):
    address_family = socket.AF_INET


class _IPv6Server(_BoundedServer):
    address_family = socket.AF_INET6


class _DualStackServer(_IPv6Server):
    def server_bind(self) -> None:
        # Accept IPv4 too (as ::ffff:a.b.c.d), whatever net.ipv6.bindv6only says.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve_metrics(listen: ListenAddress, registry: CollectorRegistry) -> tuple[ThreadingWSGIServer, str]:
    """Start serving /metrics in a daemon thread; return the server and where it listens, for the log.
    OSError if it cannot."""
    app = make_wsgi_app(registry)
    server: ThreadingWSGIServer
    if listen.host == EVERY_INTERFACE:
        try:
            server = make_server("::", listen.port, app, _DualStackServer, handler_class=_Quiet)
            where = f"every interface, IPv4 and IPv6, port {listen.port}"
        except OSError as err:
            if err.errno not in _NO_IPV6:
                raise
            server = make_server("0.0.0.0", listen.port, app, _IPv4Server, handler_class=_Quiet)  # noqa: S104
            where = f"every IPv4 interface (this host has no IPv6), port {listen.port}"
    else:
        family: type[ThreadingWSGIServer] = _IPv6Server if ":" in listen.host else _IPv4Server
        server = make_server(listen.host, listen.port, app, family, handler_class=_Quiet)
        host = f"[{listen.host}]" if ":" in listen.host else listen.host
        where = f"http://{host}:{listen.port}/metrics"
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server, where
