"""diagnose's recording rules (monitoring/node-ping.recording.yaml), evaluated by a real Prometheus
over backfilled history: a summed diagnosis that reads them names exactly what one that asks
Prometheus directly names, reads no pair series beyond the lines it fetches whole, says where its
sums came from, and asks directly when the rules do not fit its --range, thresholds or time."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node_ping import contract
from node_ping.diagnose.address import parse_address
from node_ping.diagnose.analysis import Thresholds, diagnose
from node_ping.diagnose.matrix import Matrix
from node_ping.diagnose.prometheus import Prometheus
from node_ping.diagnose.queries import fetch_matrix
from node_ping.diagnose.recorded import INFO, MAX_AGE_S, find, max_age_s
from node_ping.diagnose.render import Report, render_json, render_text
from tests.support import promdata
from tests.support.promdata import Mesh, isolated, receive_loss
from tests.support.promtools import RECORDING_FILE
from tests.support.summed_cases import CASES, NODES, PLACES, THRESHOLDS

RANGE = "15m"  # the window the rules file records
EVALUATION_S = 1  # the rules' interval here (1m in the file): a first evaluation within a second
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Served:
    url: str
    query_log: Path

    def queries_since(self, offset: int) -> list[str]:
        """The queries asked over the HTTP API since the log had `offset` lines (not the rules'
        own evaluations, which the log holds too)."""
        lines = self.query_log.read_text(encoding="utf-8").splitlines()[offset:]
        entries = [json.loads(line) for line in lines if line.strip()]
        return [entry["params"]["query"] for entry in entries if "httpRequest" in entry]

    def log_size(self) -> int:
        return len(self.query_log.read_text(encoding="utf-8").splitlines()) if self.query_log.exists() else 0


def _evaluated(url: str, window: str) -> float | None:
    with Prometheus(parse_address(url), 10.0, {}) as prometheus:
        samples = prometheus.query(f'timestamp({INFO}{{range="{window}"}})', time.time())
    return samples[0][1] if samples else None


@pytest.fixture
def recording_prometheus() -> Iterator[Callable[..., Served]]:
    """`recording_prometheus(openmetrics_text, limit=0)`: the text backfilled, and a real Prometheus
    over it that evaluates the shipped recording rules every second (with the group's `limit` on the
    series a rule may write, if given); returns once it has evaluated them."""
    reason = promdata.available()
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="node-ping-recorded-")))

        def start(text: str, limit: int = 0) -> Served:
            data = root / f"tsdb{len(list(root.iterdir()))}"
            promdata.backfill(text, data)
            rules = data.parent / f"{data.name}.rules.yaml"
            shipped = RECORDING_FILE.read_text(encoding="utf-8")
            group = f"    interval: {EVALUATION_S}s" + (f"\n    limit: {limit}" if limit else "")
            rules.write_text(re.sub(r"(?m)^    interval: .*$", group, shipped), encoding="utf-8")
            query_log = data.parent / f"{data.name}.queries.log"
            config = (f"global:\n  evaluation_interval: {EVALUATION_S}s\n"
                      f"  query_log_file: {json.dumps(str(query_log))}\n"
                      f"rule_files:\n  - {json.dumps(str(rules))}\n")
            url = stack.enter_context(promdata.running_prometheus(data, config))
            deadline = time.monotonic() + READY_TIMEOUT_S
            while _evaluated(url, RANGE) is None:
                assert time.monotonic() < deadline, "Prometheus never evaluated the recording rules"
                time.sleep(0.2)
            return Served(url, query_log)

        yield start


def _pair_reads(queries: list[str]) -> list[str]:
    """The queries that read the node family's pair counters without a matcher on a node's name:
    each a pass over every pair series."""
    counters = [m.name for m in (contract.NODE.packets_sent, contract.NODE.packets_received, contract.NODE.rtt_sum)]
    return [q for q in queries if any(re.search(rf"{name}(?!\{{)", q) for name in counters)]


def _both(served: Served, at: float, thresholds: Thresholds = THRESHOLDS,
          window: str = RANGE) -> tuple[Matrix, Matrix, list[str]]:
    """The summed matrix from the rules and the one asked directly, and the queries of the first."""
    with Prometheus(parse_address(served.url), 30.0, {}) as prometheus:
        offset = served.log_size()
        recorded = fetch_matrix(prometheus, window, at, thresholds, full_fetch_pairs=0)
        queries = served.queries_since(offset)
        direct = fetch_matrix(prometheus, window, at, thresholds, full_fetch_pairs=0, use_rules=False)
    return recorded, direct, queries


@pytest.mark.parametrize("case", list(CASES))
def test_rules_name_what_asking_directly_names(case: str, recording_prometheus: Callable[..., Served]) -> None:
    loss, expected = CASES[case]
    served = recording_prometheus(promdata.openmetrics(Mesh(NODES, loss=loss, places=PLACES), int(time.time())))
    at = time.time()
    with Prometheus(parse_address(served.url), 30.0, {}) as prometheus:
        offset = served.log_size()
        recorded = fetch_matrix(prometheus, RANGE, at, THRESHOLDS, full_fetch_pairs=0)
        queries = served.queries_since(offset)
    assert recorded.summary is not None and recorded.summary.recorded_at is not None
    assert 0 <= at - recorded.summary.recorded_at <= 5
    assert sorted((v.kind, v.nodes) for v in diagnose(recorded, THRESHOLDS)) == sorted(expected)
    # The bad cells (and the lines fetched whole), and no pass over every pair series.
    bad = {pair for pair, ratio in loss.items() if ratio >= THRESHOLDS.loss_ratio}
    assert bad <= set(recorded.nodes)
    assert len(recorded.nodes) <= len(bad) + len(recorded.summary.whole_lines) * (len(NODES) - 1)
    assert _pair_reads(queries) == [], _pair_reads(queries)
    assert recorded.summary.lines[("send", "node-1")].pairs == len(NODES) - 1


def test_lines_fetched_whole_and_the_other_paths_come_from_the_rules(
        recording_prometheus: Callable[..., Served]) -> None:
    """A node losing 3 % of what it receives (below the cell threshold, pooled a finding) is fetched
    whole by its name; a pod-network fault and an MTU black hole come from the paths' rules."""
    loss = receive_loss(NODES, "node-9", 0.03)
    mesh = Mesh(NODES, loss=loss, places=PLACES)
    text = promdata.dashboard_openmetrics(mesh, int(time.time()), pod_loss=isolated(NODES, "node-4"),
                                          mtu_loss=isolated(NODES, "node-6"))
    served = recording_prometheus(text)
    recorded, direct, queries = _both(served, time.time())
    kinds = sorted((v.kind, v.nodes) for v in diagnose(recorded, THRESHOLDS))
    assert kinds == sorted((v.kind, v.nodes) for v in diagnose(direct, THRESHOLDS))
    assert ("node-cannot-receive", ("node-9",)) in kinds
    assert ("pod-network-node", ("node-4",)) in kinds
    assert ("mtu-node", ("node-6",)) in kinds
    assert recorded.summary is not None and ("receive", "node-9") in recorded.summary.whole_lines
    # Only the line fetched whole reads pair series, through a matcher on its node's name.
    assert _pair_reads(queries) == [], _pair_reads(queries)
    assert any('destination_node=~"node\\\\-9"' in q for q in queries), queries
    assert recorded.paths["pod"].cells.keys() == direct.paths["pod"].cells.keys()
    assert recorded.paths["mtu"].sizes == direct.paths["mtu"].sizes


def test_report_says_the_sums_came_from_the_rules(recording_prometheus: Callable[..., Served]) -> None:
    served = recording_prometheus(promdata.openmetrics(Mesh(NODES, loss=isolated(NODES, "node-5"), places=PLACES),
                                                       int(time.time())))
    at = time.time()
    recorded, direct, _ = _both(served, at)
    reports = [Report(matrix, diagnose(matrix, THRESHOLDS), THRESHOLDS, RANGE, at, served.url)
               for matrix in (recorded, direct)]
    documents = [json.loads(render_json(report)) for report in reports]
    assert documents[0]["sums"]["from"] == "recording rules"
    assert documents[1]["sums"] == {"from": "queries"}
    assert documents[0]["verdicts"] == documents[1]["verdicts"]
    assert "Summed by node-ping's recording rules (evaluated at " in render_text(reports[0])


@pytest.mark.parametrize(("why", "window", "thresholds", "later_s"), [
    ("another --range", "10m", THRESHOLDS, 0.0),
    ("a loss threshold below the rules'", RANGE, Thresholds(loss_ratio=0.02, node_loss_ratio=0.01), 0.0),
    ("a latency threshold below the rules'", RANGE, Thresholds(latency_ms=20.0, node_loss_ratio=0.01), 0.0),
    ("sums older than 150 s at --time", RANGE, THRESHOLDS, 200.0),
])
def test_asks_directly_when_the_rules_do_not_fit(why: str, window: str, thresholds: Thresholds, later_s: float,
                                                 recording_prometheus: Callable[..., Served]) -> None:
    served = recording_prometheus(promdata.openmetrics(Mesh(NODES, loss=isolated(NODES, "node-5"), places=PLACES),
                                                       int(time.time())))
    evaluated = _evaluated(served.url, RANGE)
    assert evaluated is not None
    # Past the newest evaluation by `later_s`: the rules keep being evaluated meanwhile, so --time
    # is set from the evaluation seen, which the lookback still returns at that time.
    at = evaluated + later_s if later_s else time.time()
    recorded, _, queries = _both(served, at, thresholds, window)
    assert recorded.summary is not None and recorded.summary.recorded_at is None, why
    assert _pair_reads(queries), why
    if window == RANGE and later_s == 0.0:
        assert ("node-isolated", ("node-5",)) in [(v.kind, v.nodes) for v in diagnose(recorded, thresholds)]


@pytest.mark.parametrize(("interval", "seconds"), [
    ("1m", 150.0), ("30s", 90.0), ("5m", 630.0), ("1h30m", 10830.0), ("2m30s", 330.0),
    (None, MAX_AGE_S), ("", MAX_AGE_S), ("soon", MAX_AGE_S), ("500ms", MAX_AGE_S),
])
def test_sums_may_be_two_intervals_old(interval: str | None, seconds: float) -> None:
    """A group evaluated every 5 minutes is read up to 10.5 minutes after an evaluation; an interval
    diagnose cannot read (or none, from rules before the label) allows MAX_AGE_S."""
    assert max_age_s(interval) == seconds


def test_a_rule_that_failed_is_not_read_as_a_healthy_cluster(recording_prometheus: Callable[..., Served]) -> None:
    """The group's `limit` (5 series a rule) fails every rule with a row per node, and only those:
    the info series is fresh and no pair is lossy in the rules' eyes, yet diagnose asks directly and
    names the node that was cut off."""
    served = recording_prometheus(promdata.openmetrics(Mesh(NODES, loss=isolated(NODES, "node-5"), places=PLACES),
                                                       int(time.time())), limit=5)
    at = time.time()
    with Prometheus(parse_address(served.url), 30.0, {}) as prometheus:
        assert prometheus.query(f'{INFO}{{range="{RANGE}"}}', at)  # the info series was written
        assert find(prometheus, RANGE, THRESHOLDS, at) is None
        matrix = fetch_matrix(prometheus, RANGE, at, THRESHOLDS, full_fetch_pairs=0)
    assert matrix.summary is not None and matrix.summary.recorded_at is None
    assert ("node-isolated", ("node-5",)) in [(v.kind, v.nodes) for v in diagnose(matrix, THRESHOLDS)]
