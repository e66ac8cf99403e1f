"""The PromQL `node-ping diagnose` asks, and the matrix it builds from the answers.

Every query is an instant query at one evaluation time, so the answers agree: six over the range
for the matrix (sent, received and RTT sum, for node pairs and for external targets), and six about
each node's own metrics (five at the end of the range, its errors over the range). Metric and label
names come from node_ping.contract only.
"""

from __future__ import annotations

import math

from node_ping import contract
from node_ping.diagnose.judge import Thresholds
from node_ping.diagnose.matrix import Counts, Freshness, Matrix, Pair, grace_s, probers, stale_sources
from node_ping.diagnose.prometheus import Prometheus, PrometheusError
from node_ping.diagnose.promql import pair_counts, pair_queries
from node_ping.diagnose.pushdown import FULL_FETCH_PAIRS, fetch_path, fetch_summed, pair_count, places_of
from node_ping.diagnose.recorded import PATHS, Recorded
from node_ping.diagnose.recorded import find as find_recorded
from node_ping.diagnose.wording import iso

_SOURCE = contract.SOURCE
_KIND = contract.ERRORS.labels[-1]


class NoDataError(PrometheusError):
    """Prometheus answered, but holds nothing to diagnose over the range; the message says why."""


def _family(prometheus: Prometheus, family: contract.PingFamily, window: str, at: float) -> dict[Pair, Counts]:
    return pair_counts({name: prometheus.query(promql, at) for name, promql in pair_queries(family, window).items()},
                       family)


# Each source's own series at the end of the range (the instant value, within Prometheus's lookback),
# from which `stale_sources` tells a stopped prober; several copies of a series (scraped two ways)
# count as fresh if any is.
_SENT_SERIES = f"{contract.NODE.packets_sent.name} or {contract.EXTERNAL.packets_sent.name}"
# The host prober's own series: those without the label the pod-network prober's carry, whose own
# metrics say nothing about the host prober of the same node.
_HOST = f'{{{contract.PATH}=""}}'
FRESHNESS_QUERIES = {
    "series": f"count by ({_SOURCE}) ({contract.NODE.packets_sent.name}) "
              f"or count by ({_SOURCE}) ({contract.EXTERNAL.packets_sent.name})",
    "last_success": f"max by ({_SOURCE}) ({contract.LAST_SUCCESS.name}{_HOST})",
    "scraped_at": f"max by ({_SOURCE}) (timestamp({contract.LAST_SUCCESS.name}{_HOST}))",
    "nominal": f"max by ({_SOURCE}) ({contract.CYCLE_NOMINAL.name}{_HOST})",
}


def cycling_query(seconds: int) -> str:
    """Per source, 1 if its cycle counter moved in the last `seconds` or appeared within them (a
    prober that runs), 0 if it stood still (a textfile left behind by a stopped one)."""
    cycles = contract.CYCLES.name + _HOST
    now = f"max by ({_SOURCE}) ({cycles})"
    before = f"max by ({_SOURCE}) ({cycles} offset {seconds}s)"
    return f"({now} != bool {before}) or clamp_max(count by ({_SOURCE}) ({cycles}), 1)"


def errors_query(window: str) -> str:
    """Per source and kind, how much the error counter rose over the window, where it did."""
    return f"sum by ({_SOURCE}, {_KIND}) (increase({contract.ERRORS.name}{_HOST}[{window}])) > 0"


def _by_source(prometheus: Prometheus, promql: str, at: float) -> dict[str, float]:
    return {labels[_SOURCE]: value for labels, value in prometheus.query(promql, at) if labels.get(_SOURCE)}


def _freshness(prometheus: Prometheus, window: str, at: float, recorded: Recorded | None) -> dict[str, Freshness]:
    """What Prometheus holds at `at` about each source's own series (see matrix.stale_sources and
    matrix.probers), and which errors each reported over the window. With `recorded`, each row's
    pairs come from the rules: counting the series is a pass over every pair series."""
    queries = dict(FRESHNESS_QUERIES)
    if recorded:
        queries["series"] = (f"{recorded.names.line(_SOURCE, 'pairs')} "
                             f"or count by ({_SOURCE}) ({contract.EXTERNAL.packets_sent.name})")
    values = {name: _by_source(prometheus, promql, at) for name, promql in queries.items()}
    # One window for every node, the grace of the longest nominal cycle: the DaemonSet gives every
    # node the same, so it is each node's own grace.
    longest = math.ceil(grace_s(max(values["nominal"].values(), default=None)))
    values["cycling"] = _by_source(prometheus, cycling_query(longest), at)
    errors: dict[str, dict[str, float]] = {}
    for labels, value in prometheus.query(errors_query(window), at):
        if labels.get(_SOURCE) and labels.get(_KIND):
            errors.setdefault(labels[_SOURCE], {})[labels[_KIND]] = value
    nodes = {node for by_node in values.values() for node in by_node} | set(errors)
    return {node: Freshness(node in values["series"], values["last_success"].get(node),
                            values["scraped_at"].get(node), values["nominal"].get(node),
                            None if node not in values["cycling"] else values["cycling"][node] > 0,
                            errors.get(node, {}))
            for node in nodes}


def fetch_matrix(prometheus: Prometheus, window: str, at: float, thresholds: Thresholds | None = None,
                 full_fetch_pairs: int = FULL_FETCH_PAIRS, *, use_rules: bool = True) -> Matrix:
    """The matrix over the window up to `at`, with the sources whose data stopped before `at`, what
    each node's own metrics say about its prober, and where each node sits. Above `full_fetch_pairs`
    node pairs, only the cells that matter and Prometheus's sums of the rest (`pushdown`), from the
    recording rules when they fit (`recorded`; `use_rules` False asks Prometheus directly)."""
    external = _family(prometheus, contract.EXTERNAL, window, at)
    summary, recorded = None, None
    thresholds = thresholds or Thresholds()
    if pair_count(prometheus, at) > full_fetch_pairs:
        recorded = find_recorded(prometheus, window, thresholds, at) if use_rules else None
        nodes, summary, places = fetch_summed(prometheus, window, at, thresholds, recorded)
    else:
        nodes, places = _family(prometheus, contract.NODE, window, at), places_of(prometheus, at)
    other_paths = {path: fetch_path(prometheus, path, window, at, loss_ratio=thresholds.loss_ratio, recorded=recorded)
                   for path in PATHS}
    matrix = Matrix(nodes, external, summary=summary)
    freshness = _freshness(prometheus, window, at, recorded)
    return Matrix(matrix.nodes, matrix.external, stale_sources(matrix.sources(), freshness, at),
                  probers(freshness, at), places, summary, {k: v for k, v in other_paths.items() if v.sizes})


def check_data(matrix: Matrix, prometheus: Prometheus, window: str, at: float) -> None:
    """Raise NoDataError unless the matrix has at least one pair with pings in the window."""
    when = f"the {window} before {iso(at)}"
    if not matrix.nodes and not matrix.external:
        # increase() needs two samples in the window: a window shorter than two scrapes has none
        # to give even when the series are there, and the fix is then not the DaemonSet.
        if prometheus.query(f"count({_SENT_SERIES})", at):
            raise NoDataError(
                f"Prometheus at {prometheus.url} has node-ping series, but {when} holds fewer than two samples "
                "of each, and increase() needs two: widen --range to at least two scrape intervals "
                "(e.g. --range 1m for 15 s or 30 s scrapes).")
        raise NoDataError(
            f"Prometheus at {prometheus.url} has no node-ping data for {when}: no "
            f"{contract.NODE.packets_sent.name} or {contract.EXTERNAL.packets_sent.name} series. Check that the "
            "node-ping DaemonSet runs and that Prometheus scrapes node-exporter on every node, or widen --range.")
    if not matrix.sources():
        raise NoDataError(
            f"node-ping's counters in Prometheus at {prometheus.url} did not grow during {when}: the exporters "
            "have not completed a cycle in that time. Check the node-ping pods' logs, or widen --range.")
