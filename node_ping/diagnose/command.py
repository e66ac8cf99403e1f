"""`node-ping diagnose`: read the loss and latency matrix from Prometheus and name what is broken.

The HTTP part is thin: instant queries at one evaluation time so they agree (six over the range
for the matrix, six about each node's own metrics: five at its end, its errors over the range),
with the headers the user gave (tokens, a Mimir tenant); credentials never appear in any output.
Warnings in Prometheus's answers (a partial response from Thanos, say) go to stderr and into the JSON.
The analysis is `node_ping.diagnose.analysis.diagnose`, a pure function of the matrix; this module turns its
verdicts into text for people (verdicts, then the matrices as evidence) or JSON for scripts.
Exit codes: 0 healthy, 1 faults found, 2 bad flags, Prometheus unreachable, refusing, not
Prometheus, or no data.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from node_ping import __version__
from node_ping.diagnose.analysis import (
    NODE_SILENT,
    NODE_STALE,
    Counts,
    Freshness,
    Matrix,
    Pair,
    Thresholds,
    Verdict,
    diagnose,
    grace_s,
    natural_key,
    natural_pair_key,
    probers,
    stale_sources,
)
from node_ping.settings import env

EXIT_HEALTHY, EXIT_FAULTS, EXIT_ERROR = 0, 1, 2

NODE_PREFIX, EXTERNAL_PREFIX = "kube_node_ping", "external_ping"
NODE_LABELS, EXTERNAL_LABELS = ("source_node", "destination_node"), ("source_node", "destination_name")

# Prometheus's own duration syntax (prometheus/common model.ParseDuration): each unit at most once,
# largest first. Its value must be above 0 and fit Go's time.Duration in whole milliseconds.
_DURATION = re.compile(r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?"
                       r"(?:([0-9]+)ms)?")
_DURATION_UNITS_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)
_MAX_DURATION_MS = (2**63 - 1) // 1_000_000
# Longer names are shortened in the matrices (with a legend), so a row of a 20-node cluster still
# fits a terminal; 12 characters hold "ip-10-0-1-23" and most cloud short names.
_LABEL_WIDTH = 12
# Above this many nodes a matrix shows only the rows and columns with marked cells, the most
# marked first: 20 columns of 8 characters still fit a wide terminal.
_FULL_MATRIX_NODES = 20
# --time must fall in these years (unix seconds): a millisecond value copied from a Grafana URL is
# a thousand times too large, and would otherwise reach Prometheus (or the date formatting) as a
# time tens of thousands of years away.
_YEARS = (2000, 2100)
_EARLIEST, _LATEST = (datetime(year, 1, 1, tzinfo=UTC).timestamp() for year in _YEARS)
# An hour is longer than any query of node-ping's should take; larger values overflow the socket's
# timeout (inf, 1e10) or make a hung server look like a hung node-ping.
_MAX_TIMEOUT_S = 3600.0


class DiagnoseError(Exception):
    """Why no diagnosis could be made; the message says what to check."""


# ---------------------------------------------------------------------------------------- Prometheus


def _split_userinfo(url: str) -> tuple[str | None, str]:
    """(the user:password part or None, the URL without it).

    Cut by hand rather than parsed: it must work on URLs too broken to parse, and it takes
    everything up to the last @ before the path's query or fragment, so a password with an
    unescaped @, : or / is removed whole rather than partly shown.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    address_end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, address_end)
    if at < 0:
        return None, url
    return rest[:at], f"{scheme}{sep}{rest[at + 1:]}"


def redact(url: str) -> str:
    """`url` without its user:password@, for every message and report that shows it."""
    return _split_userinfo(url)[1]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Report a redirect instead of following it: urllib would send the Authorization header to
    wherever the redirect points, another host included."""

    def redirect_request(  # noqa: PLR0917 -- urllib's signature
            self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
            headers: http.client.HTTPMessage, newurl: str) -> None:
        return None


class Prometheus:
    """Instant queries against Prometheus's HTTP API, or anything that serves it under the URL.

    `headers` (e.g. Authorization, X-Scope-OrgID) go with every request; user:password@ in the URL
    becomes HTTP basic authentication. Neither is ever shown: `url` is the address without them.
    """

    def __init__(self, url: str, timeout: float, headers: Mapping[str, str] | None = None) -> None:
        if "://" not in url:
            url = f"http://{url}"
        userinfo, address = _split_userinfo(url)
        if "?" in address or "#" in address:
            # /api/v1/query is appended to the URL, so a query string or fragment would end up in front
            # of it. The URL is not quoted: what follows ? or # may be a token, and a password with an
            # unescaped ? or # would be cut in the wrong place.
            raise DiagnoseError("--prometheus has a query string or fragment (? or #): give the base URL alone, "
                                "e.g. http://prometheus:9090 (a path prefix such as /prometheus is fine); "
                                "send tokens with --header or --bearer-token-file")
        self.url = address.rstrip("/")  # what is requested and shown: never the credentials
        self.timeout = timeout
        self.warnings: list[str] = []  # from every answer so far, each once, in order
        try:
            parsed = urllib.parse.urlsplit(self.url)
            valid = parsed.scheme in ("http", "https") and bool(parsed.hostname)
            parsed.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            valid = False
        if not valid:
            raise DiagnoseError(f"--prometheus {self.url!r} is not an http(s) URL; give e.g. http://prometheus:9090")
        sent = dict(headers or {})
        if userinfo:
            if any(name.lower() == "authorization" for name in sent):
                raise DiagnoseError("--prometheus has user:password@ and an Authorization header is set too; "
                                    "give only one of them")
            user, _, password = (urllib.parse.unquote(part) for part in userinfo.partition(":"))
            sent["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._credentials = sorted(sent)  # names only, for messages
        self._headers = {"Accept": "application/json", "User-Agent": f"node-ping/{__version__}", **sent}
        self._opener = urllib.request.build_opener(_NoRedirects())

    def query(self, promql: str, at: float) -> list[tuple[dict[str, str], float]]:
        """The instant vector of `promql` at unix time `at`, as (labels, value) pairs."""
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        request = urllib.request.Request(address, headers=self._headers)  # noqa: S310 -- http(s), checked above
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            raise DiagnoseError(self._http_error(err)) from None
        except urllib.error.URLError as err:
            raise DiagnoseError(f"cannot reach Prometheus at {self.url}: {self._reason(err.reason)}") from None
        except http.client.HTTPException as err:
            raise DiagnoseError(f"the server at {self.url} does not answer like an HTTP server "
                                f"({type(err).__name__}); is --prometheus the right address?") from None
        except OSError as err:  # timeouts and resets while reading the answer
            raise DiagnoseError(f"cannot reach Prometheus at {self.url}: {self._reason(err)}") from None
        return self._vector(body)

    def _reason(self, reason: object) -> str:
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused (is Prometheus running there, and is the port right?)"
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return f"no answer within {self.timeout:g} s (raise --timeout, or check the address)"
        return str(reason)

    def _http_error(self, err: urllib.error.HTTPError) -> str:
        try:
            body = err.read(4096)
        except OSError:
            body = b""
        try:
            detail = json.loads(body).get("error")
        except (ValueError, AttributeError):
            detail = None
        if err.code in (401, 403):
            return self._refused(err, detail or _first_line(body, err.headers.get_content_type()))
        if 300 <= err.code < 400:
            location = redact(urllib.parse.urljoin(err.geturl() or self.url, err.headers.get("Location", "")))
            return (f"the server at {self.url} redirects /api/v1/query to {location.partition('?')[0]} "
                    f"(HTTP {err.code}); node-ping does not follow redirects, so that headers and credentials "
                    "go only where --prometheus points: give the address it redirects to as --prometheus "
                    "(if that is a login page, see --header and --bearer-token-file)")
        if detail:  # Prometheus itself, refusing the query
            return f"Prometheus at {self.url} rejected the query (HTTP {err.code}): {detail}"
        return (f"the server at {self.url} answered HTTP {err.code} {err.reason} to /api/v1/query: "
                "is --prometheus Prometheus's base URL (e.g. http://prometheus.monitoring:9090)?")

    def _refused(self, err: urllib.error.HTTPError, detail: str | None) -> str:
        what = f"HTTP {err.code} {err.reason}" + (f": {detail}" if detail else "")
        if self._credentials:
            hint = (f"check the credentials sent (headers {', '.join(self._credentials)}) and set the right ones "
                    "with --header / --bearer-token-file")
        else:
            hint = ("it wants credentials: set --header (e.g. 'Authorization: Bearer <token>', or "
                    "'X-Scope-OrgID: <tenant>' for Mimir) / --bearer-token-file, or user:password@ in the URL")
        return f"Prometheus at {self.url} refused the request ({what}); {hint}"

    def _vector(self, body: bytes) -> list[tuple[dict[str, str], float]]:
        not_prometheus = (f"the server at {self.url} answered /api/v1/query, but not like Prometheus; "
                          "is --prometheus Prometheus's base URL (e.g. http://prometheus.monitoring:9090)?")
        try:
            reply = json.loads(body)
        except ValueError:
            raise DiagnoseError(not_prometheus) from None
        if not isinstance(reply, dict):
            raise DiagnoseError(not_prometheus)
        # An error answer has no data: its status and error come first, or it reads as "not Prometheus".
        if reply.get("status") == "error":
            detail = str(reply.get("error") or reply.get("errorType") or "no reason given")[:500]
            raise DiagnoseError(f"Prometheus at {self.url} answered the query with an error: {detail}")
        if reply.get("status") != "success" or not isinstance(reply.get("data"), dict):
            raise DiagnoseError(not_prometheus)
        self._note_warnings(reply.get("warnings"))
        data = reply["data"]
        if data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
            raise DiagnoseError(not_prometheus)
        samples = []
        for item in data["result"]:
            try:
                labels = {str(k): str(v) for k, v in item["metric"].items()}
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                raise DiagnoseError(not_prometheus) from None
            if math.isfinite(value):
                samples.append((labels, value))
        return samples

    def _note_warnings(self, warnings: object) -> None:
        """Keep the warnings of a successful answer (Thanos's partial response, say): the data may
        be incomplete, and the user must know."""
        if not isinstance(warnings, list):
            return
        for warning in warnings:
            text = str(warning)[:500]
            if text not in self.warnings:
                self.warnings.append(text)


def _first_line(body: bytes, content_type: str) -> str | None:
    """A short plain-text error body (Mimir's "no org id"), for the message; None for anything else."""
    if content_type != "text/plain":
        return None
    lines = body.decode("utf-8", "replace").strip().splitlines()
    return lines[0][:200] if lines else None


def queries(prefix: str, labels: tuple[str, str], window: str) -> dict[str, str]:
    """PromQL for sent, received and RTT sum of one family over the window, per pair."""
    by = ", ".join(labels)
    return {
        name: f"sum by ({by}) (increase({prefix}_{metric}_total[{window}]))"
        for name, metric in (("sent", "packets_sent"), ("received", "packets_received"),
                             ("rtt", "rtt_milliseconds"))
    }


def _family(prometheus: Prometheus, prefix: str, labels: tuple[str, str], window: str,
            at: float) -> dict[Pair, Counts]:
    values: dict[str, dict[Pair, float]] = {}
    for name, promql in queries(prefix, labels, window).items():
        values[name] = {}
        for sample_labels, value in prometheus.query(promql, at):
            pair = (sample_labels.get(labels[0]), sample_labels.get(labels[1]))
            if pair[0] and pair[1]:
                values[name][(pair[0], pair[1])] = value
    # The exporter always writes sent and received together; a pair with only one of them (a
    # scrape cut short) cannot give a loss figure, so it is left out rather than read as 100 % loss.
    return {
        pair: Counts(sent, values["received"][pair], values["rtt"].get(pair, 0.0))
        for pair, sent in values["sent"].items() if pair in values["received"]
    }


# Each source's own series at the end of the range (the instant value, within Prometheus's lookback),
# from which `stale_sources` tells a stopped prober; several copies of a series (scraped two ways)
# count as fresh if any is.
_SENT_SERIES = f"{NODE_PREFIX}_packets_sent_total or {EXTERNAL_PREFIX}_packets_sent_total"
FRESHNESS_QUERIES = {
    "series": f"count by (source_node) ({NODE_PREFIX}_packets_sent_total) "
              f"or count by (source_node) ({EXTERNAL_PREFIX}_packets_sent_total)",
    "last_success": "max by (source_node) (node_ping_last_success_timestamp_seconds)",
    "scraped_at": "max by (source_node) (timestamp(node_ping_last_success_timestamp_seconds))",
    "nominal": "max by (source_node) (node_ping_cycle_nominal_seconds)",
}


def cycling_query(seconds: int) -> str:
    """Per source, 1 if its cycle counter moved in the last `seconds` or appeared within them (a
    prober that runs), 0 if it stood still (a textfile left behind by a stopped one)."""
    now = "max by (source_node) (node_ping_cycles_total)"
    before = f"max by (source_node) (node_ping_cycles_total offset {seconds}s)"
    return f"({now} != bool {before}) or clamp_max(count by (source_node) (node_ping_cycles_total), 1)"


def errors_query(window: str) -> str:
    """Per source and kind, how much node_ping_errors_total rose over the window, where it did."""
    return f"sum by (source_node, kind) (increase(node_ping_errors_total[{window}])) > 0"


def _freshness(prometheus: Prometheus, window: str, at: float) -> dict[str, Freshness]:
    """What Prometheus holds at `at` about each source's own series (see verdict.stale_sources and
    verdict.probers), and which errors each reported over the window."""
    values: dict[str, dict[str, float]] = {}
    for name, promql in FRESHNESS_QUERIES.items():
        values[name] = {labels["source_node"]: value for labels, value in prometheus.query(promql, at)
                        if labels.get("source_node")}
    # One window for every node, the grace of the longest nominal cycle: the DaemonSet gives every
    # node the same, so it is each node's own grace.
    longest = math.ceil(grace_s(max(values["nominal"].values(), default=None)))
    values["cycling"] = {labels["source_node"]: value for labels, value in prometheus.query(cycling_query(longest), at)
                         if labels.get("source_node")}
    errors: dict[str, dict[str, float]] = {}
    for labels, value in prometheus.query(errors_query(window), at):
        if labels.get("source_node") and labels.get("kind"):
            errors.setdefault(labels["source_node"], {})[labels["kind"]] = value
    nodes = {node for by_node in values.values() for node in by_node} | set(errors)
    return {node: Freshness(node in values["series"], values["last_success"].get(node),
                            values["scraped_at"].get(node), values["nominal"].get(node),
                            None if node not in values["cycling"] else values["cycling"][node] > 0,
                            errors.get(node, {}))
            for node in nodes}


def fetch_matrix(prometheus: Prometheus, window: str, at: float) -> Matrix:
    """The matrix over the window up to `at`, with the sources whose data stopped before `at` and
    what each node's own metrics say about its prober."""
    matrix = Matrix(_family(prometheus, NODE_PREFIX, NODE_LABELS, window, at),
                    _family(prometheus, EXTERNAL_PREFIX, EXTERNAL_LABELS, window, at))
    freshness = _freshness(prometheus, window, at)
    return Matrix(matrix.nodes, matrix.external, stale_sources(matrix.sources(), freshness, at),
                  probers(freshness, at))


def check_data(matrix: Matrix, prometheus: Prometheus, window: str, at: float) -> None:
    """Raise unless the matrix has at least one pair with pings in the window."""
    when = f"the {window} before {_iso(at)}"
    if not matrix.nodes and not matrix.external:
        # increase() needs two samples in the window: a window shorter than two scrapes has none
        # to give even when the series are there, and the fix is then not the DaemonSet.
        if prometheus.query(f"count({_SENT_SERIES})", at):
            raise DiagnoseError(
                f"Prometheus at {prometheus.url} has node-ping series, but {when} holds fewer than two samples "
                "of each, and increase() needs two: widen --range to at least two scrape intervals "
                "(e.g. --range 1m for 15 s or 30 s scrapes).")
        raise DiagnoseError(
            f"Prometheus at {prometheus.url} has no node-ping data for {when}: no "
            f"{NODE_PREFIX}_packets_sent_total or {EXTERNAL_PREFIX}_packets_sent_total series. Check that the "
            "node-ping DaemonSet runs and that Prometheus scrapes node-exporter on every node, or widen --range.")
    if not matrix.sources():
        raise DiagnoseError(
            f"node-ping's counters in Prometheus at {prometheus.url} did not grow during {when}: the exporters "
            "have not completed a cycle in that time. Check the node-ping pods' logs, or widen --range.")


# ------------------------------------------------------------------------------------------ output


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _common_affixes(names: Sequence[str]) -> tuple[int, int]:
    """Lengths of the prefix and suffix all names share, cut at a separator so labels stay words."""
    def cut(common: str) -> int:
        return max((common.rfind(sep) + 1 for sep in "-._"), default=0)

    def shared(texts: Sequence[str]) -> str:
        length = 0
        for chars in zip(*texts, strict=False):
            if len(set(chars)) > 1:
                break
            length += 1
        return texts[0][:length]

    return cut(shared(names)), cut(shared([name[::-1] for name in names]))


def abbreviate(names: Sequence[str], letter: str = "n", width: int = _LABEL_WIDTH,
               reserved: Collection[str] = ()) -> dict[str, str]:
    """Short, unique labels for a matrix; the caller prints a legend for those that differ.

    Names of `width` characters or fewer are their own label. A longer name loses the prefix and
    suffix (cut at a separator) that all the long names share, when what is left fits and is
    unique; otherwise it gets letter + number. No label equals another name or label, nor anything
    in `reserved` (the labels of the other matrix axis), so a label always means one name.
    """
    labels = {name: name for name in names if len(name) <= width}
    long_names = [name for name in names if len(name) > width]
    taken = {*names, *reserved}
    if len(long_names) > 1:
        prefix, suffix = _common_affixes(long_names)
        short = {name: name[prefix:len(name) - suffix] for name in long_names}
        repeated = {label for label, count in Counter(short.values()).items() if count > 1}
        for name, label in short.items():
            if 0 < len(label) <= width and label not in repeated and label not in taken:
                labels[name] = label
        taken |= set(labels.values())
    numbers = (f"{letter}{index}" for index in itertools.count(1))
    for name in long_names:
        if name not in labels:
            labels[name] = next(label for label in numbers if label not in taken)
    return {name: labels[name] for name in names}


def _table(title: str, rows: Mapping[str, str], columns: Mapping[str, str],
           cell: Callable[[str, str], str]) -> list[str]:
    """A matrix with rows and columns given as {name: label}, right-aligned, with a marker column
    kept free in every cell so the numbers line up."""
    texts = {(r, c): cell(r, c) for r in rows for c in columns}
    row_width = max(len(label) for label in rows.values())
    widths = {c: max([len(columns[c])] + [len(texts[(r, c)]) for r in rows]) for c in columns}
    lines = [title, " " * row_width + "".join(f"  {columns[c]:>{widths[c]}}" for c in columns)]
    lines += [f"{rows[r]:<{row_width}}" + "".join(f"  {texts[(r, c)]:>{widths[c]}}" for c in columns)
              for r in rows]
    return lines


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


@dataclass(frozen=True)
class Report:
    """A diagnosis and what it was made from."""

    matrix: Matrix
    verdicts: Sequence[Verdict]
    thresholds: Thresholds
    window: str
    at: float
    url: str
    warnings: Sequence[str] = ()  # Prometheus's, e.g. a partial response: the matrix may be incomplete

    @property
    def healthy(self) -> bool:
        return not any(verdict.is_fault for verdict in self.verdicts)


def _pick(names: Sequence[str], marked: Sequence[str], limit: int) -> list[str]:
    """All names if few; else those with marked cells, the most marked first, `limit` at most."""
    if len(names) <= limit:
        return list(names)
    counts = Counter(marked)
    return sorted(sorted(counts, key=lambda name: (-counts[name], natural_key(name)))[:limit], key=natural_key)


def _matrix_section(title: str, cells: Mapping[Pair, Counts], *, rows: Mapping[str, str],
                    columns: Mapping[str, str], show: Callable[[Counts], float | None],
                    bad: Callable[[Counts], bool]) -> tuple[list[str], list[str], list[str]]:
    """One matrix (rows and columns as {name: label}), and the names of the rows and the columns it
    shows: on a large cluster only those with marked cells."""
    marked = [pair for pair, counts in cells.items() if show(counts) is not None and bad(counts)]
    row_names = _pick(list(rows), [s for s, _ in marked], _FULL_MATRIX_NODES)
    column_names = _pick(list(columns), [d for _, d in marked], _FULL_MATRIX_NODES)
    if not row_names or not column_names:
        return ["", f"{title}: no cell marked among {len(rows)} rows (--output json has every cell)"], [], []
    if len(row_names) < len(rows) or len(column_names) < len(columns):
        title += (f"; showing {len(row_names)} of {len(rows)} rows and {len(column_names)} of {len(columns)} "
                  "columns, those with the most marked cells (--output json has every cell)")

    def cell(source: str, destination: str) -> str:
        if source == destination:
            return ". "
        counts = cells.get((source, destination))
        number = None if counts is None else show(counts)
        if counts is None or number is None:
            return "- "
        return f"{number:.1f}" + ("!" if bad(counts) else " ")

    table = _table(title, {r: rows[r] for r in row_names}, {c: columns[c] for c in column_names}, cell)
    return ["", *table], row_names, column_names


def render_text(report: Report) -> str:
    """Verdicts first, then the matrices they were read from, then a legend of shortened names."""
    matrix, thresholds = report.matrix, report.thresholds
    nodes, targets = matrix.node_names(), matrix.external_names()
    lines = [f"node-ping diagnose: {_plural(len(nodes), 'node')}, {_plural(len(targets), 'external target')}, "
             f"{report.window} up to {_iso(report.at)}, from {report.url}", ""]
    lines += [f"* [{verdict.kind}] {verdict.message}" for verdict in report.verdicts]
    loss_pct = thresholds.loss_ratio * 100
    external = matrix.measured_external()
    # One set of labels for every node that heads a row, of the node matrices or the external one.
    labels = abbreviate(sorted({*nodes, *(source for source, _ in external)}, key=natural_key))
    node_labels = {node: labels[node] for node in nodes}
    # A stale node's row would show numbers from before its data stopped as if they were current.
    row_labels = {node: label for node, label in node_labels.items() if node not in matrix.stale}
    # Target labels never repeat a node's name or label, so the one legend below is unambiguous.
    target_labels = abbreviate(targets, letter="t", reserved={*labels, *labels.values()})
    shown_nodes: set[str] = set()
    shown_targets: set[str] = set()

    def loss(counts: Counts) -> float:
        return counts.loss_ratio * 100

    def lossy(counts: Counts) -> bool:
        return counts.loss_ratio >= thresholds.loss_ratio  # the analysis's own test

    def slow(counts: Counts) -> bool:
        return (counts.rtt_avg_ms or 0.0) >= thresholds.latency_ms

    sections: list[tuple[str, Mapping[Pair, Counts], Mapping[str, str], Mapping[str, str],
                         Callable[[Counts], float | None], Callable[[Counts], bool]]] = []
    if row_labels:
        cells = matrix.measured_nodes()
        sections += [
            (f"Packet loss % (rows: from, columns: to; ! = {loss_pct:g}% or more, - = no data)",
             cells, row_labels, node_labels, loss, lossy),
            (f"Average RTT ms (! = {thresholds.latency_ms:g} ms or more, - = no reply or no data)",
             cells, row_labels, node_labels, lambda counts: counts.rtt_avg_ms, slow),
        ]
    if targets:
        sources = {source: labels[source] for source in sorted({s for s, _ in external}, key=natural_key)}
        sections.append((f"External packet loss % (rows: node, columns: external target; ! = {loss_pct:g}% or more)",
                         external, sources, target_labels, loss, lossy))
    for title, section_cells, rows, columns, show, bad in sections:
        section, row_names, column_names = _matrix_section(title, section_cells, rows=rows, columns=columns,
                                                           show=show, bad=bad)
        lines += section
        shown_nodes.update(row_names)
        (shown_targets if columns is target_labels else shown_nodes).update(column_names)
    legend = [f"  {label} = {name}" for mapping, shown in ((labels, shown_nodes), (target_labels, shown_targets))
              for name, label in mapping.items() if label != name and name in shown]
    if legend:
        lines += ["", "Names:", *legend]
    return "".join(f"{line.rstrip()}\n" for line in lines)


def _cell_json(source: str, destination: str, counts: Counts, key: str) -> dict[str, Any]:
    avg = counts.rtt_avg_ms
    return {"source": source, key: destination, "sent": round(counts.sent, 3), "received": round(counts.received, 3),
            "loss_percent": round(counts.loss_ratio * 100, 3), "rtt_avg_ms": None if avg is None else round(avg, 3)}


def _naturally(cells: Mapping[Pair, Counts]) -> list[tuple[Pair, Counts]]:
    return sorted(cells.items(), key=lambda item: natural_pair_key(item[0]))


def _probers_json(report: Report) -> dict[str, dict[str, Any]]:
    """What the own metrics of each node named as stale or silent say about its prober."""
    named = {node for verdict in report.verdicts if verdict.kind in (NODE_STALE, NODE_SILENT)
             for node in verdict.nodes}
    document = {}
    for node in sorted(named, key=natural_key):
        prober = report.matrix.prober(node)
        since = prober.since_success_s
        document[node] = {"state": prober.state,
                          "last_success_seconds_before_end": None if since is None else round(since, 3),
                          "errors": {kind: round(count, 3) for kind, count in sorted(prober.errors.items())}}
    return document


def render_json(report: Report) -> str:
    """The verdicts with their evidence numbers, and the whole matrix, for scripts."""
    matrix, thresholds = report.matrix, report.thresholds
    document = {
        "healthy": report.healthy,
        "prometheus": report.url,
        "range": report.window,
        "time": report.at,
        "thresholds": {"loss_percent": round(thresholds.loss_ratio * 100, 6), "latency_ms": thresholds.latency_ms},
        "verdicts": [
            {"kind": v.kind, "nodes": list(v.nodes), "targets": list(v.targets), "message": v.message,
             "summary": dict(v.summary),
             "evidence": [{"source": e.source, "destination": e.destination, "loss_percent": e.loss_percent,
                           "rtt_avg_ms": e.rtt_avg_ms} for e in v.evidence]}
            for v in report.verdicts
        ],
        "nodes": matrix.node_names(),
        "external_targets": matrix.external_names(),
        # Left out of "matrix" and "external": their numbers are from before their data stopped.
        "stale_nodes": {node: None if ago is None else round(ago, 3)
                        for node, ago in sorted(matrix.stale.items(), key=lambda item: natural_key(item[0]))},
        "probers": _probers_json(report),
        "matrix": [_cell_json(s, d, c, "destination") for (s, d), c in _naturally(matrix.measured_nodes())],
        "external": [_cell_json(s, t, c, "target") for (s, t), c in _naturally(matrix.measured_external())],
        "warnings": list(report.warnings),
    }
    return json.dumps(document, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------- CLI


def _duration(text: str) -> str:
    """A duration Prometheus accepts in a range selector, checked here so that a typo is a clear
    flag error rather than a PromQL parse error from the server. Blanks around it are dropped, as
    PromQL's lexer drops them."""
    text = text.strip(" \t\r\n")
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Prometheus duration: a number and a unit for each of y, w, d, h, m, s, ms, "
            "largest first and each at most once, e.g. 15m, 1h or 1h30m")
    total_ms = sum(int(number) * unit for number, unit in zip(match.groups(), _DURATION_UNITS_MS, strict=True)
                   if number)
    if total_ms == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is no time at all: give a range above 0, e.g. 15m")
    if total_ms > _MAX_DURATION_MS:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than Prometheus accepts (about 292 years)")
    return text


def _timestamp(text: str) -> float:
    try:
        at = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither unix seconds nor an RFC 3339 time such as 2024-05-01T12:00:00Z") from None
        at = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if _EARLIEST <= at < _LATEST:
        return at
    if _EARLIEST <= at / 1000 < _LATEST:
        seconds = f"{at / 1000:.3f}".rstrip("0").rstrip(".")
        raise argparse.ArgumentTypeError(
            f"{text!r} looks like milliseconds (as in a Grafana URL); --time takes unix seconds: "
            f"divide by 1000, i.e. --time {seconds}")
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a time between {_YEARS[0]} and {_YEARS[1]}: give unix seconds or RFC 3339")


def _number(text: str, limit: float) -> float:
    """A finite number above 0 and at most `limit`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    if value > limit:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {limit:g}")
    return value


def _positive(text: str) -> float:
    return _number(text, math.inf)


def _percent(text: str) -> float:
    return _number(text, 100.0)


def _timeout(text: str) -> float:
    return _number(text, _MAX_TIMEOUT_S)


# RFC 9110's token: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Printable ASCII, space and tab: anything else (a newline above all) would be refused by http.client
# with a message that quotes the value, which may be a token.
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]+")
HEADERS_ENV = "NODE_PING_PROMETHEUS_HEADERS"


def _header(text: str, where: str) -> tuple[str, str]:
    """'Name: value' as (name, value). Messages name the header at most, never quote the text: it
    may be a token typed without its name."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _HEADER_NAME.fullmatch(name):
        raise DiagnoseError(f"{where} is not 'Name: value' (e.g. 'X-Scope-OrgID: tenant-1' or "
                            "'Authorization: Bearer <token>')")
    if not _HEADER_VALUE.fullmatch(value):
        raise DiagnoseError(f"header {name} ({where}) has an empty value or characters other than printable ASCII")
    return name, value


def request_headers(flags: Sequence[str], env: str, bearer_token_file: str | None) -> dict[str, str]:
    """The headers for every request: `env` (NODE_PING_PROMETHEUS_HEADERS, one per line), then the
    --header flags, which replace an env header of the same name, then the bearer token file."""
    from_env = [_header(line, f"line {number} of {HEADERS_ENV}")
                for number, line in enumerate(env.splitlines(), 1) if line.strip()]
    from_flags = [_header(text, f"--header number {number}") for number, text in enumerate(flags, 1)]
    if bearer_token_file is not None:
        if any(name.lower() == "authorization" for name, _ in from_flags):
            raise DiagnoseError("give --bearer-token-file or --header 'Authorization: ...', not both")
        try:
            token = Path(bearer_token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "it is not UTF-8 text"
            raise DiagnoseError(f"cannot read --bearer-token-file {bearer_token_file}: {reason}") from None
        if not token:
            raise DiagnoseError(f"--bearer-token-file {bearer_token_file} is empty")
        from_flags.append(_header(f"Authorization: Bearer {token}", f"--bearer-token-file {bearer_token_file}"))
    # Header names are case-insensitive: the last of the same name wins, under the spelling it was given.
    merged = {name.lower(): (name, value) for name, value in [*from_env, *from_flags]}
    return dict(merged.values())


def configure_parser(parser: argparse.ArgumentParser) -> None:
    url = env("NODE_PING_PROMETHEUS_URL")
    add = parser.add_argument
    add("--prometheus", default=url, required=url is None, metavar="URL",
        help="Prometheus base URL, e.g. http://prometheus.monitoring:9090; user:password@ in it is sent as "
             "basic authentication and never shown (env NODE_PING_PROMETHEUS_URL)")
    add("--range", dest="window", type=_duration, default="15m", metavar="DURATION",
        help="look at this much time up to --time (default %(default)s)")
    add("--time", type=_timestamp, default=None, metavar="TIME",
        help=f"end of the range: unix seconds (not milliseconds) or RFC 3339, between {_YEARS[0]} and {_YEARS[1]} "
             "(default: now)")
    add("--output", choices=("text", "json"), default="text", help="text for people, json for scripts")
    add("--loss-threshold", type=_percent, default=5.0, metavar="PERCENT",
        help="a pair losing this share of pings or more is bad: above 0, at most 100 (default %(default)g)")
    add("--latency-threshold", type=_positive, default=50.0, metavar="MS",
        help="a pair whose average RTT is this or more is slow (default %(default)g)")
    add("--header", action="append", default=[], metavar="'NAME: VALUE'",
        help="send this HTTP header with every request, e.g. 'X-Scope-OrgID: tenant-1' (repeatable; "
             f"env {HEADERS_ENV}, one header per line; a --header replaces the env's header of the same name)")
    add("--bearer-token-file", default=None, metavar="PATH",
        help="send 'Authorization: Bearer <the file's content>' with every request")
    add("--timeout", type=_timeout, default=10.0, metavar="SECONDS",
        help=f"for each HTTP request to Prometheus, at most {_MAX_TIMEOUT_S:g} (default %(default)g)")


def _warn(prometheus: Prometheus | None) -> None:
    for warning in prometheus.warnings if prometheus else ():
        sys.stderr.write(f"node-ping diagnose: warning from Prometheus, the data may be incomplete: {warning}\n")


def run(args: argparse.Namespace) -> int:
    at = args.time if args.time is not None else time.time()
    thresholds = Thresholds(loss_ratio=args.loss_threshold / 100, latency_ms=args.latency_threshold)
    prometheus = None
    try:
        headers = request_headers(args.header, env(HEADERS_ENV, "") or "", args.bearer_token_file)
        prometheus = Prometheus(args.prometheus, args.timeout, headers)
        matrix = fetch_matrix(prometheus, args.window, at)
        check_data(matrix, prometheus, args.window, at)
    except DiagnoseError as err:
        _warn(prometheus)
        sys.stderr.write(f"node-ping diagnose: {err}\n")
        return EXIT_ERROR
    _warn(prometheus)
    report = Report(matrix, diagnose(matrix, thresholds), thresholds, args.window, at, prometheus.url,
                    tuple(prometheus.warnings))
    sys.stdout.write(render_json(report) if args.output == "json" else render_text(report))
    return EXIT_HEALTHY if report.healthy else EXIT_FAULTS
