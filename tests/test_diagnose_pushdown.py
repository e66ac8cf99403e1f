"""Large clusters summed in Prometheus (`pushdown`): against a real, backfilled Prometheus, the summed
path names the same culprits as the whole matrix, fetches only the cells that matter, and says what
it left out."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from node_ping.diagnose.address import parse_address
from node_ping.diagnose.analysis import diagnose
from node_ping.diagnose.prometheus import Prometheus
from node_ping.diagnose.queries import fetch_matrix
from node_ping.diagnose.render import Report, render_json, render_text
from tests.support import promdata
from tests.support.promdata import Mesh, isolated
from tests.support.summed_cases import CASES, EVERYONE, NODES, PLACES, RACK_OF, THRESHOLDS, ZONE_OF, between


@pytest.mark.parametrize("case", list(CASES))
def test_summed_path_names_what_the_whole_matrix_names(case: str, prometheus_with: Callable[[str], str]) -> None:
    loss, expected = CASES[case]
    end = int(time.time())
    url = prometheus_with(promdata.openmetrics(Mesh(NODES, loss=loss, places=PLACES), end))
    with Prometheus(parse_address(url), 30.0, {}) as prometheus:
        whole = fetch_matrix(prometheus, "15m", end, THRESHOLDS)
        summed = fetch_matrix(prometheus, "15m", end, THRESHOLDS, full_fetch_pairs=0)
    assert whole.summary is None and summed.summary is not None
    for matrix in (whole, summed):
        assert sorted((v.kind, v.nodes) for v in diagnose(matrix, THRESHOLDS)) == sorted(expected)
    # Only the cells that could be bad were fetched (and none on a healthy cluster), and the lines
    # whole whose pooled loss is a finding.
    pairs = len(NODES) * (len(NODES) - 1)
    bad = {p for p, ratio in loss.items() if ratio >= THRESHOLDS.loss_ratio}
    assert bad <= set(summed.nodes)
    assert len(summed.nodes) <= len(bad) + len(summed.summary.whole_lines) * (len(NODES) - 1)
    assert len(summed.nodes) < pairs
    assert summed.summary.lines[("send", "node-1")].pairs == len(NODES) - 1


def test_json_says_what_it_left_out_and_text_stays_short(prometheus_with: Callable[[str], str]) -> None:
    end = int(time.time())
    url = prometheus_with(promdata.openmetrics(Mesh(NODES, loss=isolated(NODES, "node-5"), places=PLACES), end))
    with Prometheus(parse_address(url), 30.0, {}) as prometheus:
        matrix = fetch_matrix(prometheus, "15m", end, THRESHOLDS, full_fetch_pairs=0)
    report = Report(matrix, diagnose(matrix, THRESHOLDS), THRESHOLDS, "15m", end, url)
    document = json.loads(render_json(report))
    assert document["matrix_complete"] is False
    assert document["pairs"] == len(NODES) * (len(NODES) - 1)
    assert len(document["matrix"]) == 2 * (len(NODES) - 1)
    assert "below the thresholds" in document["left_out"]
    assert document["places"]["node-5"] == {"zone": ZONE_OF["node-5"], "rack": RACK_OF["node-5"]}
    text = render_text(report)
    assert [line for line in text.splitlines() if line.startswith("* ")] == [
        f"* [node-isolated] {diagnose(matrix, THRESHOLDS)[0].message}"]
    assert "not fetched" in text


def test_even_split_of_unlabelled_nodes_is_one_partition_summed_too(prometheus_with: Callable[[str], str]) -> None:
    half = set(NODES[: len(NODES) // 2])
    end = int(time.time())
    url = prometheus_with(promdata.openmetrics(Mesh(NODES, loss=between(half, EVERYONE - half, 1.0)), end))
    with Prometheus(parse_address(url), 30.0, {}) as prometheus:
        for full_fetch_pairs in (10**6, 0):
            matrix = fetch_matrix(prometheus, "15m", end, THRESHOLDS, full_fetch_pairs=full_fetch_pairs)
            (verdict,) = diagnose(matrix, THRESHOLDS)
            assert (verdict.kind, verdict.nodes) == ("partition", ())
            assert sorted(len(members) for members in verdict.groups.values()) == [12, 12]
            assert "each healthy inside" in verdict.message
