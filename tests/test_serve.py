"""--listen-address: where the metrics are served. `:PORT` is every interface, IPv6 and IPv4 alike,
so a PodMonitor on an IPv6 single-stack or IPv6-first cluster finds the exporter too. HTTP clients
cannot take what the probing loop needs: connections are few, short and small."""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import ThreadingWSGIServer

from node_ping import contract
from node_ping.probe import serve
from node_ping.probe.config import ListenAddress, parse_listen_address
from tests.support import netlab
from tests.support.clients import idle_connections, scraped
from tests.support.exposition import Series, families
from tests.support.ports import free_port
from tests.support.processes import NODE_PING, REPO, stop

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


def connect(server: ThreadingWSGIServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed the connection (within the socket's timeout) without answering."""
    with contextlib.suppress(ConnectionResetError):
        return sock.recv(1) == b""
    return True


GET = b"GET /metrics HTTP/1.0\r\n\r\n"


class TestHostileClients:
    """Connections that would hold a thread and a descriptor forever are refused or cut off."""

    def test_connections_past_the_limit_are_closed_at_once(self, serving: Serve,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(serve, "REQUEST_TIMEOUT_S", 60.0)  # so an early close is the refusal
        server, _ = serving("127.0.0.1:{port}")
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(connect(server)) for _ in range(serve.MAX_CONNECTIONS)]
            excess = [stack.enter_context(connect(server)) for _ in range(3)]
            assert all(closed_by_server(sock) for sock in excess)
            for sock in held:  # still served, and the slots they free serve the next scrape
                sock.sendall(GET)
                assert b"probe_marker 42.0" in sock.makefile("rb").read()
            assert "probe_marker 42.0" in scrape(url("127.0.0.1", server))

    @pytest.mark.parametrize("sends", ["nothing", "a byte at a time"])
    def test_a_slow_client_is_cut_off(self, serving: Serve, monkeypatch: pytest.MonkeyPatch, sends: str) -> None:
        monkeypatch.setattr(serve, "REQUEST_TIMEOUT_S", 1.0)
        server, _ = serving("127.0.0.1:{port}")
        with connect(server) as sock:
            sock.settimeout(0.2)
            for byte in GET[:-1] * 50:  # 10 s at most
                if sends != "nothing":
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        sock.send(bytes([byte]))
                with contextlib.suppress(TimeoutError):
                    if closed_by_server(sock):
                        break
            else:
                pytest.fail("the slow client was never cut off")

    def test_an_oversized_request_gets_no_answer(self, serving: Serve) -> None:
        server, _ = serving("127.0.0.1:{port}")
        header = b"X-Padding: " + b"x" * 1000 + b"\r\n"
        with connect(server) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(GET[:-2] + header * (serve.MAX_REQUEST_BYTES // len(header) + 1) + b"\r\n")
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                answer = sock.makefile("rb").read()
        assert b"probe_marker" not in answer
        assert "probe_marker 42.0" in scrape(url("127.0.0.1", server))


def textfile_series(path: Path) -> Series:
    try:
        return families(path.read_text())
    except FileNotFoundError:
        return {}


def counted(series: Series, metric: contract.Metric, **labels: str) -> float:
    return sum(value for found, value in series.get(metric.name, []) if labels.items() <= found.items())


@pytest.mark.netns
class TestProberUnderAFlood:
    """A real node-ping with few descriptors, serving HTTP and writing its textfile, while a client
    holds more idle connections than it has descriptors: its cycles go on."""

    FLOOD = 150  # connections, against a limit of 64 descriptors
    NOFILE = 64

    def test_cycles_go_on_and_a_scrape_is_answered(self, lab_factory: Callable[[list[str]], netlab.Lab],
                                                   tmp_path: Path) -> None:
        (a,) = lab_factory(["a"]).hosts
        textfile = tmp_path / "textfile"
        textfile.mkdir()
        (tmp_path / "nodes.json").write_text(json.dumps([{"name": "lo2", "ipAddress": "127.0.0.2"}]))
        port = 9797
        with (tmp_path / "log").open("w") as log_file:
            node_ping = subprocess.Popen(
                a.cmd("prlimit", f"--nofile={self.NOFILE}:{self.NOFILE}", *NODE_PING, "run", "--node-name", "a",
                      "--config", str(tmp_path / "nodes.json"), "--external-config", str(tmp_path / "none.json"),
                      "--count", "2", "--period-ms", "50", "--textfile-dir", str(textfile),
                      "--listen-address", f"127.0.0.1:{port}"),
                stdout=subprocess.DEVNULL, stderr=log_file, cwd=REPO)
        prom = textfile / "node-ping_a.prom"
        try:
            assert self.wait_for_cycles(prom, 1), "node-ping wrote no successful cycle before the flood"
            with idle_connections(a.cmd(), "127.0.0.1", port, self.FLOOD) as established:
                assert established > self.NOFILE
                before = counted(textfile_series(prom), contract.CYCLES)
                assert self.wait_for_cycles(prom, before + 5), "cycles stopped while the connections were held"
                series = textfile_series(prom)
                assert counted(series, contract.ERRORS, kind=contract.FPING_ERROR) == 0
                assert counted(series, contract.EXCEPTIONS) == 0
                # Once the idle connections are cut off, a scrape is answered (tried for a bounded time).
                for _ in range(30):
                    body = scraped(a.cmd(), f"http://127.0.0.1:{port}/metrics")
                    if body is not None:
                        break
                    time.sleep(1)
                assert body is not None and contract.CYCLES.name in body
        finally:
            stop(node_ping)
        log = (tmp_path / "log").read_text()
        assert "Traceback" not in log, log

    @staticmethod
    def wait_for_cycles(prom: Path, at_least: float, bound_s: float = 60) -> bool:
        """Whether the textfile counts `at_least` cycles, all successful, within `bound_s`."""
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            series = textfile_series(prom)
            if counted(series, contract.CYCLES) >= at_least and counted(series, contract.EXCEPTIONS) == 0:
                return True
            time.sleep(0.2)
        return False
