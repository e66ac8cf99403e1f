"""Driving `node-ping diagnose` in tests: the command in-process, and a Prometheus stand-in
(pytest-httpserver) that answers with canned query results."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from http import HTTPStatus

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from node_ping import cli
from node_ping.diagnose.analysis import Thresholds, diagnose
from node_ping.diagnose.matrix import Matrix
from node_ping.diagnose.render import Report
from tests.support.promdata import vector

# Every query gets the same answer: 100 pings sent and received and 100 ms of RTT each way between
# two nodes (and no external targets: the labels are not theirs).
HEALTHY_PAIR = vector(({"source_node": "a", "destination_node": "b"}, 100.0),
                      ({"source_node": "b", "destination_node": "a"}, 100.0))
NO_DATA = vector()

SECRET = "s3cr@t-tok"  # noqa: S105 -- a made-up token; its @ also tests passwords escaped in URLs


def diagnose_cmd(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `node-ping diagnose ARGV`, usage errors included."""
    code = cli.main(["diagnose", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(err: str) -> str:
    """The message of a usage error (exit 2), checked to come with the command's usage."""
    assert err.startswith("Usage: node-ping diagnose [OPTIONS]\n"), err
    return err.rpartition("Error: ")[2]


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the test server answers to one GET."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


def serve(server: HTTPServer, answer: Callable[[Mapping[str, str]], Answer]) -> str:
    """Have `server` answer every GET, whatever its path, with `answer(its headers)` (names
    lower-cased, reason phrases as the RFC spells them); its base URL."""
    def handle(request: Request) -> Response:
        reply = answer({name.lower(): value for name, value in request.headers.items()})
        return Response(reply.body, status=f"{reply.status} {HTTPStatus(reply.status).phrase}",
                        headers={"Content-Type": reply.content_type, **reply.headers})

    server.expect_request(re.compile(".*")).respond_with_handler(handle)
    return server.url_for("/").rstrip("/")


def requests_to(server: HTTPServer) -> list[dict[str, str]]:
    """The headers of every request `server` got, in order, names lower-cased."""
    return [{name.lower(): value for name, value in request.headers.items()} for request, _ in server.log]


def report_of(matrix: Matrix) -> Report:
    """The report of `matrix` as diagnose makes it, at a fixed time and address."""
    return Report(matrix, diagnose(matrix), Thresholds(), "15m", 1_700_000_000.0, "http://prometheus:9090")


LOSS_TITLE = ("Packet loss % (rows: from, columns: to; ! = a bad pair: 5% or more and above the background, "
              "or in a lossy row or column; - = no data)")
"""The loss matrix's heading at the default --loss-threshold."""
