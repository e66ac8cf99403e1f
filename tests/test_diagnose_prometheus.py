"""The HTTP client against a real local HTTP server (pytest-httpserver): what it sends, and what the
user reads when the server is down, slow, refusing, redirecting or not Prometheus at all.
Credentials reach only the server and never any output."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from node_ping import __version__
from node_ping.diagnose.address import Address, BadAddress, parse_address, redact
from node_ping.diagnose.prometheus import MAX_ANSWER_BYTES, Prometheus, PrometheusError
from tests.support.diagnosis import HEALTHY_PAIR, SECRET, Answer, diagnose_cmd, requests_to, serve
from tests.support.measured import run_measured
from tests.support.ports import free_port
from tests.support.processes import NODE_PING
from tests.support.promdata import vector
from tests.support.rawhttp import dripping, loopback_server, streaming


def serve_requiring(server: HTTPServer, **expected: str) -> str:
    """A Prometheus that answers only requests with these headers (names lower-cased, _ for -), like
    Mimir without X-Scope-OrgID: 401 and a plain-text reason. Its base URL."""
    wanted = {name.replace("_", "-"): value for name, value in expected.items()}

    def answer(headers: Mapping[str, str]) -> Answer:
        if all(headers.get(name) == value for name, value in wanted.items()):
            return Answer(200, HEALTHY_PAIR)
        return Answer(401, b"no org id\n", "text/plain")

    return serve(server, answer)


def query(url: str, **headers: str) -> list[tuple[dict[str, str], float]]:
    with Prometheus(parse_address(url), 5.0, headers) as prometheus:
        return prometheus.query("up", 1_700_000_000.0)


def refusal(url: str, **headers: str) -> str:
    with pytest.raises(PrometheusError) as error:
        query(url, **headers)
    return str(error.value)


@contextlib.contextmanager
def raw_server(greeting: bytes) -> Iterator[str]:
    """A loopback TCP server that reads what comes and answers `greeting`, then closes. Yields its URL."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(0.05)
        stop = threading.Event()

        def greet() -> None:
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                with connection:
                    connection.recv(65536)  # the request, so that closing does not reset the connection
                    connection.sendall(greeting)

        thread = threading.Thread(target=greet, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            stop.set()
            thread.join()


class TestAddress:
    """The --prometheus URL: credentials split off and never shown."""

    def test_basic_auth_is_taken_out_of_the_url(self) -> None:
        address = parse_address(f"https://alice:{SECRET.replace('@', '%40')}@prometheus.example/prom/")
        assert address == Address("https://prometheus.example/prom", ("alice", SECRET))
        assert "s3cr" not in repr(address)

    def test_scheme_defaults_to_http(self) -> None:
        assert parse_address("prometheus:9090") == Address("http://prometheus:9090")

    @pytest.mark.parametrize("url", [f"alice:{SECRET}@[::1", f"ftp://alice:{SECRET}@p:9090",
                                     f"http://alice:{SECRET}@p:port", f"http://alice:{SECRET}@/x"])
    def test_refused_without_the_credentials(self, url: str) -> None:
        with pytest.raises(BadAddress) as error:
            parse_address(url)
        assert "s3cr" not in str(error.value)
        assert "alice" not in str(error.value)

    def test_redact_cuts_at_the_last_at_sign(self) -> None:
        assert redact("http://a:b@c@host:9090/x?y=@z") == "http://host:9090/x?y=@z"
        assert redact("http://host:9090") == "http://host:9090"


class TestRequests:
    """What reaches the server: the query, its time, and the headers."""

    def test_query_time_and_headers(self, httpserver_ipv4: HTTPServer) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, HEALTHY_PAIR))
        assert query(url + "/prefix", **{"X-Scope-OrgID": "tenant-1"}) == [
            ({"source_node": "a", "destination_node": "b"}, 100.0),
            ({"source_node": "b", "destination_node": "a"}, 100.0)]
        [(request, _)] = httpserver_ipv4.log
        assert request.path == "/prefix/api/v1/query"
        assert dict(request.args) == {"query": "up", "time": "1700000000.000"}
        [headers] = requests_to(httpserver_ipv4)
        assert (headers["x-scope-orgid"], headers["accept"], headers["user-agent"]) == (
            "tenant-1", "application/json", f"node-ping/{__version__}")
        assert "authorization" not in headers
        # Uncompressed answers only: a small gzip body can expand past the size cap in one chunk.
        assert headers["accept-encoding"] == "identity"

    def test_basic_auth_header(self, httpserver_ipv4: HTTPServer) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, HEALTHY_PAIR))
        query(url.replace("://", f"://alice:{SECRET.replace('@', '%40')}@"))
        [headers] = requests_to(httpserver_ipv4)
        assert headers["authorization"] == "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()

    def test_values_that_are_no_numbers_are_left_out(self, httpserver_ipv4: HTTPServer) -> None:
        body = vector(({"a": "1"}, 1.5), ({"a": "2"}, float("nan")), ({"a": "3"}, float("inf")))
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, body))
        assert query(url) == [({"a": "1"}, 1.5)]

    def test_a_large_answer_is_read_whole(self, httpserver_ipv4: HTTPServer) -> None:
        """Read as a stream, samples and numbers cut at chunk boundaries still come out whole, and
        warnings after the data are kept."""
        samples = [({"source_node": f"node-{i % 150:03d}", "destination_node": f"node-{i // 150:03d}-\u00e9"},
                    i * 1.25 + 0.001) for i in range(30_000)]
        body = json.loads(vector(*samples))
        body["warnings"] = ["partial response"]
        text = json.dumps(body, indent=1, ensure_ascii=False).encode()
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, text))
        with Prometheus(parse_address(url), 5.0) as prometheus:
            assert prometheus.query("up", 1_700_000_000.0) == samples
        assert prometheus.warnings == ["partial response"]

    def test_warnings_are_kept_once_each(self, httpserver_ipv4: HTTPServer) -> None:
        body = json.loads(HEALTHY_PAIR)
        body["warnings"] = ["partial response", "partial response", "x" * 600]
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, json.dumps(body).encode()))
        with Prometheus(parse_address(url), 5.0) as prometheus:
            prometheus.query("up", 1_700_000_000.0)
            prometheus.query("up", 1_700_000_000.0)
        assert prometheus.warnings == ["partial response", "x" * 500]


class TestPrometheusUnreachable:
    """Exit code 2 and a message that says what to check, whatever is wrong at the other end."""

    def test_nothing_listening(self, capsys: pytest.CaptureFixture[str]) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        code, out, err = diagnose_cmd(capsys, "--prometheus", url)
        assert (code, out) == (2, "")
        assert err == (f"node-ping diagnose: cannot reach Prometheus at {url}: connection refused "
                       "(is Prometheus running there, and is the port right?)\n")

    def test_no_answer(self, capsys: pytest.CaptureFixture[str]) -> None:
        with socket.socket() as listener:  # accepts connections (the kernel does) but never answers
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            url = f"http://127.0.0.1:{listener.getsockname()[1]}"
            code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--timeout", "0.3")
        assert code == 2
        assert f"cannot reach Prometheus at {url}: no answer within 0.3 s" in err

    def test_slow_answer(self, capsys: pytest.CaptureFixture[str], httpserver_ipv4: HTTPServer) -> None:
        def slow(_request: Request) -> Response:
            time.sleep(1.0)
            return Response(HEALTHY_PAIR, content_type="application/json")

        httpserver_ipv4.expect_request("/api/v1/query").respond_with_handler(slow)
        url = httpserver_ipv4.url_for("/").rstrip("/")
        started = time.monotonic()
        code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--timeout", "0.3")
        assert time.monotonic() - started < 0.9
        assert (code, err) == (2, f"node-ping diagnose: cannot reach Prometheus at {url}: no answer within 0.3 s "
                                  "(raise --timeout, or check the address)\n")

    def test_not_an_http_server(self) -> None:
        with raw_server(b"SSH-2.0-OpenSSH_9.2\r\n") as url:
            assert refusal(url) == (f"the server at {url} does not answer like an HTTP server (RemoteProtocolError); "
                                    "is --prometheus the right address?")

    def test_not_found(self, capsys: pytest.CaptureFixture[str], httpserver_ipv4: HTTPServer) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(404, b"404 page not found", "text/plain"))
        code, _, err = diagnose_cmd(capsys, "--prometheus", url + "/wrong/")
        assert code == 2
        assert f"the server at {url}/wrong answered HTTP 404 Not Found to /api/v1/query" in err

    def test_server_error(self, httpserver_ipv4: HTTPServer) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(503, b"upstream connect error", "text/plain"))
        assert refusal(url) == (f"the server at {url} answered HTTP 503 Service Unavailable to /api/v1/query: is "
                                "--prometheus Prometheus's base URL (e.g. http://prometheus.monitoring:9090)?")

    @pytest.mark.parametrize("answer", [Answer(200, b"<html><body>Grafana</body></html>", "text/html"),
                                        Answer(200, b"[1, 2]"), Answer(200, b'{"status": "success", "data": 1}'),
                                        Answer(200, json.dumps({"status": "success", "data": {
                                            "resultType": "matrix", "result": []}}).encode()),
                                        Answer(200, json.dumps({"status": "success", "data": {
                                            "resultType": "vector", "result": [{"metric": {}}]}}).encode())],
                             ids=["html", "a list", "no data", "not a vector", "no value"])
    def test_not_prometheus(self, capsys: pytest.CaptureFixture[str], httpserver_ipv4: HTTPServer,
                            answer: Answer) -> None:
        url = serve(httpserver_ipv4, lambda _headers: answer)
        code, _, err = diagnose_cmd(capsys, "--prometheus", url)
        assert code == 2
        assert f"the server at {url} answered /api/v1/query, but not like Prometheus" in err

    def test_prometheus_rejects_the_query(self, capsys: pytest.CaptureFixture[str],
                                          httpserver_ipv4: HTTPServer) -> None:
        body = json.dumps({"status": "error", "errorType": "bad_data", "error": "invalid parameter"}).encode()
        url = serve(httpserver_ipv4, lambda _headers: Answer(400, body))
        code, _, err = diagnose_cmd(capsys, "--prometheus", url)
        assert code == 2
        assert f"Prometheus at {url} rejected the query (HTTP 400): invalid parameter" in err


class TestPrometheusAnswers:
    """What Prometheus says besides the data reaches the user: its error, and its warnings."""

    def test_error_without_data_is_shown(self, capsys: pytest.CaptureFixture[str],
                                         httpserver_ipv4: HTTPServer) -> None:
        body = json.dumps({"status": "error", "errorType": "internal", "error": "boom"}).encode()
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, body))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url)
        assert (code, out) == (2, "")
        assert err == f"node-ping diagnose: Prometheus at {url} answered the query with an error: boom\n"

    def test_warnings_go_to_stderr_and_json(self, capsys: pytest.CaptureFixture[str],
                                            httpserver_ipv4: HTTPServer) -> None:
        """A partial response (Thanos with a store down) must not pass for the whole matrix."""
        warning = "partial response: store 10.0.0.9:10901 unavailable"
        body = json.loads(HEALTHY_PAIR)
        body["warnings"] = [warning]
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, json.dumps(body).encode()))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url)
        assert (code, err) == (0, "node-ping diagnose: warning from Prometheus, the data may be incomplete: "
                                  f"{warning}\n")
        assert "* [healthy]" in out
        code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--output", "json")
        assert (code, err.count(warning)) == (0, 1)
        assert json.loads(out)["warnings"] == [warning]

    def test_no_warnings_in_json_is_an_empty_list(self, capsys: pytest.CaptureFixture[str],
                                                  httpserver_ipv4: HTTPServer) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, HEALTHY_PAIR))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--output", "json")
        assert (code, err, json.loads(out)["warnings"]) == (0, "", [])


class TestAuthentication:
    """Headers and tokens for a Prometheus behind authentication or a multi-tenant Mimir; credentials
    reach only the server and never any output."""

    def test_env_flags_and_token_file_are_sent(self, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, token_file: Path,
                                               httpserver_ipv4: HTTPServer) -> None:
        monkeypatch.setenv("NODE_PING_PROMETHEUS_HEADERS", "X-Scope-OrgID: wrong\n\nX-Extra: from env\n")
        url = serve_requiring(httpserver_ipv4, authorization=f"Bearer {SECRET}", x_scope_orgid="tenant-1",
                              x_extra="from env")
        code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--header", "x-scope-orgid: tenant-1",
                                      "--bearer-token-file", str(token_file))
        assert (code, err) == (0, "")
        assert "* [healthy] healthy: 2 nodes (2 pairs)" in out
        # the pair count, six for the matrix, where the nodes sit, one each for the MTU and pod paths
        # (no loss there: nothing more), six for the nodes' own metrics
        assert len(requests_to(httpserver_ipv4)) == 16
        assert SECRET not in out

    def test_user_and_password_in_the_url_are_basic_auth_and_never_shown(
            self, capsys: pytest.CaptureFixture[str], httpserver_ipv4: HTTPServer) -> None:
        basic = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
        url = serve_requiring(httpserver_ipv4, authorization=basic)
        with_password = url.replace("://", f"://alice:{SECRET.replace('@', '%40')}@")
        text = diagnose_cmd(capsys, "--prometheus", with_password)
        document = diagnose_cmd(capsys, "--prometheus", with_password, "--output", "json")
        assert (text[0], document[0]) == (0, 0)
        assert text[1].splitlines()[0].endswith(f"from {url}")
        assert json.loads(document[1])["prometheus"] == url
        for output in (*text[1:], *document[1:]):
            assert "s3cr" not in output
            assert "alice" not in output

    @pytest.mark.parametrize(("answer", "message"), [
        (Answer(401, b"no org id\n", "text/plain"), "refused the request (HTTP 401 Unauthorized: no org id); "
                                                    "it wants credentials: set --header"),
        (Answer(403, json.dumps({"status": "error", "error": "forbidden"}).encode()),
         "refused the request (HTTP 403 Forbidden: forbidden); it wants credentials: set --header"),
        (Answer(401, b"<html>log in</html>", "text/html"), "refused the request (HTTP 401 Unauthorized); "
                                                           "it wants credentials: set --header"),
    ], ids=["401", "403", "401 with a page"])
    def test_refused_without_credentials(self, capsys: pytest.CaptureFixture[str], httpserver_ipv4: HTTPServer,
                                         answer: Answer, message: str) -> None:
        url = serve(httpserver_ipv4, lambda _headers: answer)
        code, out, err = diagnose_cmd(capsys, "--prometheus", url)
        assert (code, out) == (2, "")
        assert err.startswith(f"node-ping diagnose: Prometheus at {url} {message}")
        assert "--bearer-token-file" in err

    def test_refused_credentials_are_named_not_shown(self, capsys: pytest.CaptureFixture[str], token_file: Path,
                                                     httpserver_ipv4: HTTPServer) -> None:
        url = serve_requiring(httpserver_ipv4, authorization="Bearer another")
        code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--bearer-token-file", str(token_file),
                                    "--header", "X-Scope-OrgID: tenant-1")
        assert code == 2
        assert (f"Prometheus at {url} refused the request (HTTP 401 Unauthorized: no org id); check the "
                "credentials sent (headers Authorization, X-Scope-OrgID)") in err
        assert SECRET not in err

    def test_refused_basic_auth_is_named_not_shown(self, httpserver_ipv4: HTTPServer) -> None:
        url = serve_requiring(httpserver_ipv4, authorization="Bearer another")
        message = refusal(url.replace("://", "://alice:hunter2@"))
        assert "check the credentials sent (headers Authorization)" in message
        assert "hunter2" not in message
        assert "alice" not in message

    @pytest.mark.parametrize("prometheus", [
        f"http://alice:{SECRET}@127.0.0.1:{free_port()}",  # nothing listening
        f"ftp://alice:{SECRET}@prometheus:9090",
        f"http://alice:{SECRET}@prometheus:port",
        f"alice:{SECRET}@[::1",
    ], ids=["refused", "not http", "bad port", "broken"])
    def test_no_error_message_shows_the_password(self, capsys: pytest.CaptureFixture[str], prometheus: str) -> None:
        code, out, err = diagnose_cmd(capsys, "--prometheus", prometheus)
        assert (code, out) == (2, "")
        # Unreachable is a runtime error, the rest are usage errors naming the flag.
        assert err.startswith("node-ping diagnose: cannot reach Prometheus at http://127.0.0.1:") or (
            err.startswith("Usage: ") and "Error: Invalid value for '--prometheus'" in err)
        assert "s3cr" not in err
        assert "alice" not in err

    def test_redirects_are_reported_not_followed(self, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, httpserver_ipv4: HTTPServer,
                                                 httpserver: HTTPServer) -> None:
        """Following would hand the token to wherever the redirect points."""
        monkeypatch.setenv("NODE_PING_PROMETHEUS_HEADERS", f"Authorization: Bearer {SECRET}")
        elsewhere = serve(httpserver, lambda _headers: Answer(200, HEALTHY_PAIR))
        url = serve(httpserver_ipv4, lambda _headers: Answer(
            302, b"", "text/plain", {"Location": f"{elsewhere.replace('://', '://bob:pw@')}/api/v1/query?query=up"}))
        code, _, err = diagnose_cmd(capsys, "--prometheus", url)
        assert (code, len(requests_to(httpserver_ipv4)), requests_to(httpserver)) == (2, 1, [])
        assert (f"the server at {url} redirects /api/v1/query to {elsewhere}/api/v1/query (HTTP 302); node-ping "
                "does not follow redirects") in err
        assert "bob" not in err


def oversized_answer() -> tuple[Iterator[bytes], int]:
    """A well-formed vector answer of a little more than MAX_ANSWER_BYTES, generated as it is sent
    (its parts, and its length): one MiB block of samples with long node names, over and over."""
    item = json.dumps({"metric": {"source_node": "s" * 30_000, "destination_node": "d" * 30_000},
                       "value": [1_700_000_000, "1"]}).encode()
    block = b",".join([item] * 17)
    head, tail = b'{"status":"success","data":{"resultType":"vector","result":[', b"]}}"
    blocks = MAX_ANSWER_BYTES // len(block) + 2

    def parts() -> Iterator[bytes]:
        yield head + block
        for _ in range(blocks - 1):
            yield b"," + block
        yield tail

    return parts(), len(head) + blocks * len(block) + (blocks - 1) + len(tail)


class TestLimits:
    """--timeout bounds each request as a whole, and an answer's size is bounded: a server that
    drips or floods costs diagnose neither minutes nor memory. diagnose runs as its own process
    here, so that a hang is cut off and its peak memory is its own."""

    @pytest.mark.parametrize(("head", "drip"), [
        (b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{", b" "),
    ], ids=["headers", "body"])
    def test_a_dripping_server_is_cut_off_at_the_timeout(self, head: bytes, drip: bytes) -> None:
        with loopback_server(dripping(head, drip)) as url:
            finished = run_measured([*NODE_PING, "diagnose", "--prometheus", url, "--timeout", "1"], within_s=20)
        assert (finished.code, finished.stdout) == (2, ""), finished.stderr
        assert finished.stderr == (f"node-ping diagnose: cannot reach Prometheus at {url}: no answer within 1 s "
                                   "(raise --timeout, or check the address)\n")

    def test_an_answer_over_the_cap_is_refused_without_holding_it(self) -> None:
        parts, length = oversized_answer()
        with loopback_server(streaming(b"HTTP/1.1 200 OK", parts, length)) as url:
            finished = run_measured([*NODE_PING, "diagnose", "--prometheus", url, "--timeout", "120"], within_s=120)
        assert (finished.code, finished.stdout) == (2, ""), finished.stderr
        assert finished.stderr == (
            f"node-ping diagnose: Prometheus at {url} answered a query with more than 512 MiB, more than diagnose "
            "reads (5,000 nodes in zone topology need about 400 MiB). The answer holds one sample per probed pair "
            "of nodes whatever --range, so a shorter --range does not help: check that --prometheus points at "
            "Prometheus itself, or probe fewer pairs (chart value topology.mode: zone).\n")
        assert length > MAX_ANSWER_BYTES
        assert finished.peak_rss_bytes < MAX_ANSWER_BYTES // 4, finished.peak_rss_bytes
