"""Serve the metrics over HTTP (`--listen-address`), for clusters whose node-exporter has no
textfile directory.

`:PORT` means every interface, IPv6 as well as IPv4: one dual-stack socket, so a PodMonitor on an
IPv6 single-stack or IPv6-first cluster finds the exporter too. On a host without IPv6 it falls
back to IPv4 only.
"""

from __future__ import annotations

import errno
import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from node_ping.probe.config import EVERY_INTERFACE, ListenAddress

# Errors that mean "this host has no IPv6" (booted with ipv6.disable=1, or no address family).
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would flood the log: stay silent."""


class _IPv4Server(ThreadingWSGIServer):
    address_family = socket.AF_INET


class _IPv6Server(ThreadingWSGIServer):
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
