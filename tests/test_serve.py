"""--listen-address: where the metrics are served. `:PORT` is every interface, IPv6 and IPv4 alike,
so a PodMonitor on an IPv6 single-stack or IPv6-first cluster finds the exporter too."""

from __future__ import annotations

import errno
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import make_server

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import ThreadingWSGIServer

from node_ping.probe import serve
from node_ping.probe.config import ListenAddress, parse_listen_address
from tests.support.ports import free_port

Serve = Callable[[str], tuple[ThreadingWSGIServer, str]]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def serving() -> Iterator[Serve]:
    """Serve a registry with one gauge on a listen address like `:{port}`; shut down at teardown."""
    servers: list[ThreadingWSGIServer] = []
    registry = CollectorRegistry()
    Gauge("probe_marker", "marker", registry=registry).set(42)

    def start(template: str) -> tuple[ThreadingWSGIServer, str]:
        address = parse_listen_address(template.format(port=free_port(dual_stack=True)))
        server, where = serve.serve_metrics(address, registry)
        servers.append(server)
        return server, where

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def url(host: str, server: ThreadingWSGIServer) -> str:
    return f"http://{host}:{server.server_address[1]}/metrics"


class TestListenAddress:
    def test_port_alone_serves_ipv4_and_ipv6(self, serving: Serve) -> None:
        server, where = serving(":{port}")
        assert "probe_marker 42.0" in scrape(url("127.0.0.1", server))
        assert "probe_marker 42.0" in scrape(url("[::1]", server))
        assert "IPv4 and IPv6" in where

    def test_an_ipv4_address_serves_only_there(self, serving: Serve) -> None:
        server, where = serving("127.0.0.1:{port}")
        assert "probe_marker 42.0" in scrape(url("127.0.0.1", server))
        with pytest.raises(urllib.error.URLError):
            scrape(url("[::1]", server))
        assert where == url("127.0.0.1", server)

    def test_an_ipv6_address(self, serving: Serve) -> None:
        server, where = serving("[::1]:{port}")
        assert "probe_marker 42.0" in scrape(url("[::1]", server))
        with pytest.raises(urllib.error.URLError):
            scrape(url("127.0.0.1", server))
        assert where == url("[::1]", server)

    def test_without_ipv6_every_ipv4_interface(self, serving: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
        """A host booted with ipv6.disable=1 cannot be made here: the dual-stack socket is refused
        the way such a kernel refuses it."""
        real = make_server

        def no_ipv6(host: str, port: int, app: Any, server_class: type[ThreadingWSGIServer],
                    **kwargs: Any) -> ThreadingWSGIServer:
            if server_class.address_family == socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
            return real(host, port, app, server_class, **kwargs)

        monkeypatch.setattr("node_ping.probe.serve.make_server", no_ipv6)
        server, where = serving(":{port}")
        assert "probe_marker 42.0" in scrape(url("127.0.0.1", server))
        assert "no IPv6" in where

    def test_a_port_in_use_is_an_oserror(self, serving: Serve) -> None:
        server, _ = serving(":{port}")
        with pytest.raises(OSError, match="in use"):
            serve.serve_metrics(ListenAddress("", server.server_address[1]), CollectorRegistry())
