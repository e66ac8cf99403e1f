"""`node-ping diagnose` as a user runs it: its flags and env vars, the values it refuses before asking
Prometheus anything (exit 2, one usage error naming the flag), and its exit codes.

The Prometheus it talks to here is pytest-httpserver answering with canned query results; the
answers of a real Prometheus are in test_diagnose_queries, the HTTP client's errors in
test_diagnose_prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from tests.support.diagnosis import HEALTHY_PAIR, NO_DATA, SECRET, Answer, diagnose_cmd, requests_to, serve, usage_error


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' own environment sets no diagnose setting."""
    monkeypatch.delenv("NODE_PING_PROMETHEUS_URL", raising=False)
    monkeypatch.delenv("NODE_PING_PROMETHEUS_HEADERS", raising=False)


class TestExitCodes:
    """0 healthy, 1 faults found, 2 for a bad setting and for a Prometheus that gives nothing to diagnose."""

    def test_healthy_and_faulty(self, capsys: pytest.CaptureFixture[str], httpserver_ipv4: HTTPServer) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, HEALTHY_PAIR))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--time", "1700000000")
        assert (code, err) == (0, "")
        assert out.startswith(f"node-ping diagnose: 2 nodes, 0 external targets, 15m up to 2023-11-14 22:13:20 UTC, "
                              f"from {url}\n\n* [healthy] healthy: 2 nodes (2 pairs)")
        # 100 ms over 100 replies is 1 ms; a threshold of 1 ms makes both pairs slow.
        code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--latency-threshold", "1", "--output", "json")
        assert (code, err) == (1, "")
        assert [verdict["kind"] for verdict in json.loads(out)["verdicts"]] == ["latency-link"]

    def test_no_data(self, capsys: pytest.CaptureFixture[str], httpserver_ipv4: HTTPServer) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, NO_DATA))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url)
        assert (code, out) == (2, "")
        assert err.startswith(f"node-ping diagnose: Prometheus at {url} has no node-ping data for the 15m before ")

    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = diagnose_cmd(capsys, "--help")
        assert code == 0
        for flag in ("--prometheus URL", "--range DURATION", "--time TIME", "--output [text|json]",
                     "--loss-threshold PERCENT", "--latency-threshold MS", "--header 'NAME: VALUE'",
                     "--bearer-token-file PATH", "--timeout SECONDS", "NODE_PING_PROMETHEUS_URL",
                     "NODE_PING_PROMETHEUS_HEADERS"):
            assert flag in out


class TestPrometheusFlag:
    """--prometheus or NODE_PING_PROMETHEUS_URL; a URL that cannot work is a usage error."""

    def test_from_the_env(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                          httpserver_ipv4: HTTPServer) -> None:
        monkeypatch.setenv("NODE_PING_PROMETHEUS_URL", serve(httpserver_ipv4, lambda _h: Answer(200, HEALTHY_PAIR)))
        code, out, _ = diagnose_cmd(capsys)
        assert code == 0
        assert "* [healthy]" in out

    @pytest.mark.parametrize("env", [None, ""], ids=["unset", "empty"])
    def test_missing(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                     env: str | None) -> None:
        if env is not None:
            monkeypatch.setenv("NODE_PING_PROMETHEUS_URL", env)
        code, out, err = diagnose_cmd(capsys)
        assert (code, out) == (2, "")
        assert usage_error(err) == "Missing option '--prometheus' (env var: 'NODE_PING_PROMETHEUS_URL').\n"

    def test_not_an_http_url(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = diagnose_cmd(capsys, "--prometheus", "ftp://prometheus:9090")
        assert code == 2
        assert usage_error(err) == ("Invalid value for '--prometheus' (env var: 'NODE_PING_PROMETHEUS_URL'): "
                                    "'ftp://prometheus:9090' is not an http(s) URL; give e.g. http://prometheus:9090\n")

    @pytest.mark.parametrize("suffix", ["/?x=1", "#frag", "/prometheus?token=t0k", "?"])
    def test_query_string_or_fragment_in_the_url(self, capsys: pytest.CaptureFixture[str],
                                                 httpserver_ipv4: HTTPServer, suffix: str) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, HEALTHY_PAIR))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url + suffix)
        assert (code, out, requests_to(httpserver_ipv4)) == (2, "", [])
        assert usage_error(err) == (
            "Invalid value for '--prometheus' (env var: 'NODE_PING_PROMETHEUS_URL'): it has a query string or "
            "fragment (? or #): give the base URL alone, e.g. http://prometheus:9090 (a path prefix such as "
            "/prometheus is fine); send tokens with --header or --bearer-token-file\n")
        assert "t0k" not in err


class TestTimeAndTimeoutFlags:
    """Values pasted by mistake are refused with the fix, exit 2, before Prometheus is asked anything."""

    @pytest.mark.parametrize(("flag", "value", "message"), [
        ("--time", "1700000000000", "Invalid value for '--time': '1700000000000' looks like milliseconds (as in a "
                                    "Grafana URL); --time takes unix seconds: divide by 1000, i.e. --time "
                                    "1700000000\n"),
        ("--time", "1700000000123", "divide by 1000, i.e. --time 1700000000.123\n"),
        ("--time", "nan", "Invalid value for '--time': 'nan' is not a time between 2000 and 2100: give unix seconds "
                          "or RFC 3339"),
        ("--time", "0001-01-01T00:00:00Z", "'0001-01-01T00:00:00Z' is not a time between 2000 and 2100"),
        ("--time", "yesterday", "'yesterday' is neither unix seconds nor an RFC 3339 time"),
        ("--timeout", "inf", "Invalid value for '--timeout': 'inf' is not a finite number"),
        ("--timeout", "1e10", "Invalid value for '--timeout': '1e10' must be at most 3600"),
        ("--timeout", "0", "Invalid value for '--timeout': '0' must be above 0"),
        ("--loss-threshold", "150", "Invalid value for '--loss-threshold': '150' must be at most 100\n"),
        ("--loss-threshold", "-1", "Invalid value for '--loss-threshold': '-1' must be above 0\n"),
        ("--latency-threshold", "fast", "Invalid value for '--latency-threshold': 'fast' is not a number\n"),
        ("--output", "xml", "Invalid value for '--output': 'xml' is not one of 'text', 'json'."),
    ], ids=["milliseconds", "milliseconds with a fraction", "nan", "year 1", "words", "infinite timeout",
            "huge timeout", "no timeout", "loss above 100%", "negative loss", "latency not a number", "output"])
    def test_refused(self, capsys: pytest.CaptureFixture[str], httpserver_ipv4: HTTPServer, flag: str, value: str,
                     message: str) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, NO_DATA))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url, flag, value)
        assert (code, out, requests_to(httpserver_ipv4)) == (2, "", [])
        assert message in usage_error(err)

    @pytest.mark.parametrize("value", ["1700000000.5", "2023-11-14T22:13:20.5Z", "2023-11-14T22:13:20.5"],
                             ids=["unix seconds", "RFC 3339", "no zone: UTC"])
    def test_a_sane_time_with_a_fraction_is_taken(self, capsys: pytest.CaptureFixture[str],
                                                  httpserver_ipv4: HTTPServer, value: str) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, HEALTHY_PAIR))
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", value, "--timeout", "3600")
        assert code == 0
        assert "15m up to 2023-11-14 22:13:20 UTC" in out
        assert {request.args["time"] for request, _ in httpserver_ipv4.log} == {"1700000000.500"}


class TestRangeFlag:
    """--range takes exactly what Prometheus takes in a range selector (checked against Prometheus
    itself in test_diagnose_queries); the rest is a flag error before any request."""

    @pytest.mark.parametrize(("value", "message"), [
        ("0s", "Invalid value for '--range': '0s' is no time at all: give a range above 0, e.g. 15m\n"),
        ("5m5m", "Invalid value for '--range': '5m5m' is not a Prometheus duration: a number and a unit for each of "
                 "y, w, d, h, m, s, ms, largest first and each at most once, e.g. 15m, 1h or 1h30m\n"),
        ("30m1h", "'30m1h' is not a Prometheus duration"),
        ("15 minutes", "'15 minutes' is not a Prometheus duration"),
        ("1000000000y", "Invalid value for '--range': '1000000000y' is longer than Prometheus accepts (about 292 "
                        "years)\n"),
    ])
    def test_refused_before_any_request(self, capsys: pytest.CaptureFixture[str], httpserver_ipv4: HTTPServer,
                                        value: str, message: str) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, HEALTHY_PAIR))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--range", value)
        assert (code, out, requests_to(httpserver_ipv4)) == (2, "", [])
        assert message in usage_error(err)

    def test_blanks_around_it_are_dropped(self, capsys: pytest.CaptureFixture[str],
                                          httpserver_ipv4: HTTPServer) -> None:
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, HEALTHY_PAIR))
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--range", "\t1h30m\n")
        assert code == 0
        assert "1h30m up to" in out
        assert "[1h30m]" in httpserver_ipv4.log[0][0].args["query"]


class TestHeaderSettings:
    """Headers and tokens that cannot be sent are usage errors, reported by position, never quoted."""

    @pytest.mark.parametrize("case", [
        (["--header", f"Bearer {SECRET}"], "", "--header number 1 is not 'Name: value'"),
        (["--header", "X-A: 1", "--header", f"Authorization: Bearer {SECRET}\x01"], "",
         "header Authorization (--header number 2) has an empty value or characters other than printable ASCII"),
        ([], f"X-Scope-OrgID: tenant-1\n{SECRET}", "line 2 of NODE_PING_PROMETHEUS_HEADERS is not 'Name: value'"),
        (["--header", "X-Scope-OrgID:"], "", "header X-Scope-OrgID (--header number 1) has an empty value"),
    ], ids=["no name", "control character", "env line without a name", "empty value"])
    def test_malformed_headers_are_refused_unquoted(self, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch, httpserver_ipv4: HTTPServer,
                                                    case: tuple[list[str], str, str]) -> None:
        argv, env, message = case
        monkeypatch.setenv("NODE_PING_PROMETHEUS_HEADERS", env)
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, HEALTHY_PAIR))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url, *argv)
        assert (code, out, requests_to(httpserver_ipv4)) == (2, "", [])
        assert message in usage_error(err)
        assert "s3cr" not in err

    def test_token_file_problems(self, capsys: pytest.CaptureFixture[str], token_file: Path) -> None:
        missing = token_file.parent / "missing"
        url = "http://127.0.0.1:1"
        code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--bearer-token-file", str(missing))
        assert (code, usage_error(err)) == (2, f"cannot read --bearer-token-file {missing}: No such file or "
                                               "directory\n")
        token_file.write_text("\n")
        code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--bearer-token-file", str(token_file))
        assert (code, usage_error(err)) == (2, f"--bearer-token-file {token_file} is empty\n")
        code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--bearer-token-file", str(token_file),
                                    "--header", "authorization: Bearer x")
        assert (code, usage_error(err)) == (2, "give --bearer-token-file or --header 'Authorization: ...', not both\n")
        token_file.write_bytes(b"\xff\xfe")
        code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--bearer-token-file", str(token_file))
        assert (code, usage_error(err)) == (2, f"cannot read --bearer-token-file {token_file}: it is not UTF-8 text\n")

    def test_basic_auth_and_an_authorization_header(self, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("NODE_PING_PROMETHEUS_HEADERS", f"authorization: Bearer {SECRET}")
        code, _, err = diagnose_cmd(capsys, "--prometheus", f"http://alice:{SECRET}@127.0.0.1:1")
        assert (code, usage_error(err)) == (2, "--prometheus has user:password@ and an Authorization header is set "
                                               "too; give only one of them\n")
        assert "s3cr" not in err
