"""`node-ping diagnose`: the verdicts a person reads, the evidence, and the errors around Prometheus.

The analysis is tested as a pure function of made-up matrices; the whole command against a real
Prometheus whose history was backfilled with promtool (see tests/support/promdata.py), and against servers
that are down, slow or not Prometheus at all.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.server
import inspect
import json
import random
import re
import socket
import tempfile
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_ping import cli
from node_ping.diagnose import analysis as verdict_module
from node_ping.diagnose import command as diagnose_module
from node_ping.diagnose.analysis import (
    CLUSTER,
    EXTERNAL_CLUSTER,
    EXTERNAL_NODE,
    EXTERNAL_TARGET,
    HEALTHY,
    LATENCY_CLUSTER,
    LATENCY_LINK,
    LATENCY_NODE,
    LINK,
    NODE_ISOLATED,
    NODE_RECEIVE,
    NODE_SEND,
    NODE_SILENT,
    NODE_STALE,
    PROBER_FAILING,
    PROBER_GONE,
    PROBER_RUNNING,
    PROBER_STOPPED,
    Counts,
    Freshness,
    Matrix,
    Prober,
    Thresholds,
    Verdict,
    diagnose,
    natural_key,
    probers,
    stale_sources,
)
from node_ping.diagnose.command import Report, abbreviate, render_json, render_text
from tests.support import promdata
from tests.support.ports import free_port
from tests.support.promdata import Mesh, receive_loss, send_loss

NODES = ["n1", "n2", "n3", "n4", "n5"]
STEPS_IN_15M = 60  # what increase(...[15m]) sees of promdata's 15 s samples

Pair = tuple[str, str]


def matrix_of(mesh: Mesh, drop: Callable[[Pair], bool] = lambda _pair: False) -> Matrix:
    """The matrix Prometheus gives for promdata's mesh over 15 minutes, cells `drop` names left out."""
    def counts(loss: float, rtt: float) -> Counts:
        received = promdata.PINGS_PER_STEP - round(promdata.PINGS_PER_STEP * loss)
        return Counts(promdata.PINGS_PER_STEP * STEPS_IN_15M, received * STEPS_IN_15M,
                      received * STEPS_IN_15M * rtt)

    nodes = {pair: counts(mesh.loss.get(pair, 0.0), mesh.rtt_ms.get(pair, promdata.DEFAULT_RTT_MS))
             for pair in mesh.node_pairs() if not drop(pair)}
    external = {pair: counts(mesh.external_loss.get(pair, 0.0), 12.0) for pair in mesh.external_pairs()}
    return Matrix(nodes, external)


def isolated(nodes: list[str], node: str) -> dict[Pair, float]:
    return {**send_loss(nodes, node, 1.0), **receive_loss(nodes, node, 1.0)}


def kinds(verdicts: list[Verdict]) -> list[tuple[str, tuple[str, ...]]]:
    return [(v.kind, v.nodes) for v in verdicts]


def everywhere(nodes: list[str], ratio: float) -> dict[Pair, float]:
    return {(s, d): ratio for s in nodes for d in nodes if s != d}


# (name, mesh, expected (kind, nodes) in order). Names say the fault a person would have.
LOSS_CASES: list[tuple[str, Mesh, list[tuple[str, tuple[str, ...]]]]] = [
    ("healthy mesh", Mesh(NODES), [(HEALTHY, tuple(NODES))]),
    ("loss just below the threshold", Mesh(NODES, loss=everywhere(NODES, 0.04)), [(HEALTHY, tuple(NODES))]),
    ("one node drops 30% of what it receives", Mesh(NODES, loss=receive_loss(NODES, "n3", 0.3)),
     [(NODE_RECEIVE, ("n3",))]),
    ("one node loses 20% of what it sends", Mesh(NODES, loss=send_loss(NODES, "n2", 0.2)),
     [(NODE_SEND, ("n2",))]),
    ("one node cut off", Mesh(NODES, loss=isolated(NODES, "n4")), [(NODE_ISOLATED, ("n4",))]),
    ("one pair, both directions", Mesh(NODES, loss={("n1", "n2"): 0.4, ("n2", "n1"): 0.35}), [(LINK, ("n1", "n2"))]),
    ("one pair, one direction", Mesh(NODES, loss={("n5", "n2"): 0.1}), [(LINK, ("n2", "n5"))]),
    ("bad node plus a bad pair elsewhere",
     Mesh(NODES, loss={**receive_loss(NODES, "n3", 0.3), ("n1", "n5"): 0.4, ("n5", "n1"): 0.2}),
     [(NODE_RECEIVE, ("n3",)), (LINK, ("n1", "n5"))]),
    ("bad node plus a bad pair from it the other way",
     Mesh(NODES, loss={**receive_loss(NODES, "n3", 0.3), ("n3", "n1"): 0.5}),
     [(NODE_RECEIVE, ("n3",)), (LINK, ("n1", "n3"))]),
    ("half the peers is not most: two links, no node",
     Mesh(NODES, loss={("n1", "n3"): 0.3, ("n2", "n3"): 0.3}), [(LINK, ("n1", "n3")), (LINK, ("n2", "n3"))]),
    ("two of five nodes cut off: two nodes, not cluster-wide",
     Mesh(NODES, loss={**isolated(NODES, "n2"), **isolated(NODES, "n4")}),
     [(NODE_ISOLATED, ("n2",)), (NODE_ISOLATED, ("n4",))]),
    ("two bad pairs sharing no node", Mesh(NODES, loss={("n1", "n2"): 0.5, ("n3", "n4"): 0.5}),
     [(LINK, ("n1", "n2")), (LINK, ("n3", "n4"))]),
    ("every pair loses 20%", Mesh(NODES, loss=everywhere(NODES, 0.2)), [(CLUSTER, tuple(NODES))]),
    ("more scattered bad pairs than nodes", Mesh(NODES, loss=dict.fromkeys(
        [("n1", "n2"), ("n2", "n3"), ("n3", "n4"), ("n4", "n5"), ("n5", "n1"), ("n1", "n3")], 0.3)),
     [(CLUSTER, tuple(NODES))]),
    ("three nodes, all pairs lost", Mesh(NODES[:3], loss=everywhere(NODES[:3], 1.0)),
     [(CLUSTER, tuple(NODES[:3]))]),
    ("two nodes: a bad pair is a link, never a node", Mesh(NODES[:2], loss=everywhere(NODES[:2], 1.0)),
     [(LINK, ("n1", "n2"))]),
    ("three nodes, one cannot receive", Mesh(NODES[:3], loss=receive_loss(NODES[:3], "n1", 0.5)),
     [(NODE_RECEIVE, ("n1",))]),
]


class TestLossVerdicts:
    """Which node, link or cluster gets the blame for packet loss, and nothing more."""

    @pytest.mark.parametrize(("mesh", "expected"), [case[1:] for case in LOSS_CASES],
                             ids=[case[0] for case in LOSS_CASES])
    def test_verdicts(self, mesh: Mesh, expected: list[tuple[str, tuple[str, ...]]]) -> None:
        assert kinds(diagnose(matrix_of(mesh))) == expected

    def test_receive_message_and_evidence(self) -> None:
        [verdict] = diagnose(matrix_of(Mesh(NODES, loss=receive_loss(NODES, "n3", 0.3))))
        assert verdict.message == ("node n3 cannot receive from most peers: "
                                   "pings to it are lost from 4 of 4 peers (30.0%)")
        assert sorted((e.source, e.destination, e.loss_percent) for e in verdict.evidence) == [
            (peer, "n3", 30.0) for peer in ("n1", "n2", "n4", "n5")]
        assert verdict.summary == {"receive_bad_peers": 4, "receive_peers": 4, "worst_loss_percent": 30.0}

    def test_send_message(self) -> None:
        [verdict] = diagnose(matrix_of(Mesh(NODES, loss=send_loss(NODES, "n2", 0.2))))
        assert verdict.message == "node n2 cannot send: its pings to 4 of 4 peers are lost (20.0%)"

    def test_isolated_message_counts_all_its_peers(self) -> None:
        """Even when another cut-off node explains one of its cells, the counts are of all its peers."""
        verdicts = diagnose(matrix_of(Mesh(NODES, loss={**isolated(NODES, "n2"), **isolated(NODES, "n4")})))
        assert verdicts[0].message == ("node n2 is isolated: it cannot send to or receive from most peers "
                                       "(4 of 4 outgoing and 4 of 4 incoming pairs lose 100.0%)")

    def test_link_message_names_both_directions(self) -> None:
        [verdict] = diagnose(matrix_of(Mesh(NODES, loss={("n5", "n2"): 0.1})))
        assert verdict.message == "link n2<->n5 only: pings from n5 lose 10.0%, from n2 0.0%"
        assert [(e.source, e.destination, e.loss_percent) for e in verdict.evidence] == [
            ("n2", "n5", 0.0), ("n5", "n2", 10.0)]

    def test_bad_node_is_not_also_reported_as_pairs(self) -> None:
        verdicts = diagnose(matrix_of(Mesh(NODES, loss={**receive_loss(NODES, "n3", 0.3), ("n1", "n5"): 0.4})))
        assert [v.kind for v in verdicts].count(LINK) == 1
        assert verdicts[1].nodes == ("n1", "n5")

    def test_cluster_wide_message(self) -> None:
        [verdict] = diagnose(matrix_of(Mesh(NODES, loss=everywhere(NODES, 0.2))))
        assert verdict.message.startswith("cluster-wide: 20 of 20 pairs lose packets (median 20.0%")

    def test_threshold_is_a_setting(self) -> None:
        mesh = Mesh(NODES, loss=receive_loss(NODES, "n3", 0.1))
        assert kinds(diagnose(matrix_of(mesh), Thresholds(loss_ratio=0.15))) == [(HEALTHY, tuple(NODES))]
        assert kinds(diagnose(matrix_of(mesh), Thresholds(loss_ratio=0.05))) == [(NODE_RECEIVE, ("n3",))]

    def test_zone_topology_counts_only_measured_pairs(self) -> None:
        """With --topology zone not every pair is probed; 'most peers' means most of those that probe."""
        nodes = [f"z{i}" for i in range(1, 7)]
        probed = {("z1", "z2"), ("z2", "z1"), ("z3", "z1"), ("z4", "z1")}
        mesh = Mesh(nodes, loss=receive_loss(nodes, "z1", 0.5))
        verdicts = diagnose(matrix_of(mesh, drop=lambda pair: "z1" in pair and pair not in probed))
        assert kinds(verdicts) == [(NODE_RECEIVE, ("z1",))]
        assert "3 of 3 peers" in verdicts[0].message


class TestLatencyVerdicts:
    """Slow pairs and nodes: average RTT at or above the latency threshold."""

    def test_slow_node(self) -> None:
        slow = {pair: 120.0 for pair in {**send_loss(NODES, "n3", 0), **receive_loss(NODES, "n3", 0)}}
        [verdict] = diagnose(matrix_of(Mesh(NODES, rtt_ms=slow)))
        assert (verdict.kind, verdict.nodes) == (LATENCY_NODE, ("n3",))
        assert verdict.message == "high latency at node n3: 8 of 8 pairs with its peers average 120.0 ms"

    def test_slow_pair(self) -> None:
        [verdict] = diagnose(matrix_of(Mesh(NODES, rtt_ms={("n1", "n4"): 80.0, ("n4", "n1"): 79.0})))
        assert (verdict.kind, verdict.nodes) == (LATENCY_LINK, ("n1", "n4"))
        assert verdict.message == "high latency on link n1<->n4 only: pings from n1 average 80.0 ms, from n4 79.0 ms"

    def test_slow_everywhere(self) -> None:
        verdicts = diagnose(matrix_of(Mesh(NODES, rtt_ms=dict.fromkeys(everywhere(NODES, 0), 70.0))))
        assert kinds(verdicts) == [(LATENCY_CLUSTER, tuple(NODES))]

    def test_threshold_is_a_setting(self) -> None:
        mesh = Mesh(NODES, rtt_ms={("n1", "n4"): 30.0})
        assert kinds(diagnose(matrix_of(mesh))) == [(HEALTHY, tuple(NODES))]
        assert kinds(diagnose(matrix_of(mesh), Thresholds(latency_ms=20))) == [(LATENCY_LINK, ("n1", "n4"))]

    def test_lost_pair_is_not_a_fast_or_slow_one(self) -> None:
        """A pair with no replies has no RTT: it is a loss fault, never read as 0 ms or as slow."""
        verdicts = diagnose(matrix_of(Mesh(NODES, loss={("n1", "n2"): 1.0}, rtt_ms={("n1", "n2"): 500.0})))
        assert kinds(verdicts) == [(LINK, ("n1", "n2"))]


class TestExternalVerdicts:
    """External targets: one node's way out, one target, or the whole cluster's way out."""

    def test_one_node_loses_external(self) -> None:
        mesh = Mesh(NODES, external=["dns", "web"], external_loss={("n2", "dns"): 1.0, ("n2", "web"): 1.0})
        [verdict] = diagnose(matrix_of(mesh))
        assert (verdict.kind, verdict.nodes, verdict.targets) == (EXTERNAL_NODE, ("n2",), ("dns", "web"))
        assert verdict.message == "external connectivity lost on node n2: dns 100.0%, web 100.0% loss"

    def test_one_node_loses_one_of_several_targets(self) -> None:
        mesh = Mesh(NODES, external=["dns", "web", "ntp"], external_loss={("n2", "web"): 0.3})
        [verdict] = diagnose(matrix_of(mesh))
        assert verdict.message == "node n2 loses packets to some external targets: web 30.0% loss"

    def test_one_target_down(self) -> None:
        mesh = Mesh(NODES, external=["dns", "web"], external_loss={(n, "web"): 1.0 for n in NODES})
        assert [(v.kind, v.targets) for v in diagnose(matrix_of(mesh))] == [(EXTERNAL_TARGET, ("web",))]

    def test_all_targets_down(self) -> None:
        mesh = Mesh(NODES, external=["dns", "web"],
                    external_loss={(n, t): 1.0 for n in NODES for t in ("dns", "web")})
        assert [(v.kind, v.targets) for v in diagnose(matrix_of(mesh))] == [(EXTERNAL_CLUSTER, ("dns", "web"))]


class TestCombinedAndMissing:
    """Several independent faults at once, and nodes that report nothing."""

    def test_independent_faults_all_reported(self) -> None:
        mesh = Mesh(NODES, loss={**isolated(NODES, "n1"), ("n3", "n4"): 0.5},
                    rtt_ms={("n2", "n5"): 90.0}, external=["dns"], external_loss={("n5", "dns"): 0.5})
        assert kinds(diagnose(matrix_of(mesh))) == [
            (NODE_ISOLATED, ("n1",)), (LINK, ("n3", "n4")), (LATENCY_LINK, ("n2", "n5")), (EXTERNAL_NODE, ("n5",))]

    def test_node_without_its_own_data(self) -> None:
        matrix = matrix_of(Mesh(NODES), drop=lambda pair: pair[0] == "n4")
        verdicts = diagnose(matrix)
        assert kinds(verdicts) == [(NODE_SILENT, ("n4",))]
        assert verdicts[0].message == (
            "node n4 reports no node-ping data at all (other nodes ping it): check that its node-ping pod runs and "
            "that Prometheus scrapes its node-exporter")
        assert json.loads(render_json(report_of(matrix)))["probers"] == {
            "n4": {"state": "gone", "last_success_seconds_before_end": None, "errors": {}}}

    @pytest.mark.parametrize(("prober", "message", "summary"), [
        (Prober(PROBER_FAILING, 300.0, {"fping": 20.0}),
         "node n4's prober runs and is scraped but has produced no ping data (other nodes ping it): none of its "
         'cycles succeeded in the 5m before the end of the range; see node_ping_errors_total{source_node="n4"} '
         "(fping +20 in the range) and its log", {"stopped_seconds_before_end": 300.0}),
        (Prober(PROBER_RUNNING, 10.0),
         "node n4's prober runs and is scraped but has produced no ping data (other nodes ping it): it is "
         'starting, or has nothing to probe; see node_ping_errors_total{source_node="n4"} and its log', {}),
        (Prober(PROBER_STOPPED, 300.0),
         "node n4 reports no ping data of its own (other nodes ping it), and its node-ping metrics stopped "
         "changing 5m before the end of the range (its last successful cycle or its start-up): check its "
         "node-ping pod and its logs", {"stopped_seconds_before_end": 300.0}),
    ], ids=["failing", "running", "stopped"])
    def test_silent_node_whose_prober_is_scraped(self, prober: Prober, message: str,
                                                 summary: dict[str, float]) -> None:
        matrix = with_probers(matrix_of(Mesh(NODES), drop=lambda pair: pair[0] == "n4"), n4=prober)
        [verdict] = diagnose(matrix)
        assert (verdict.kind, verdict.nodes, verdict.message, verdict.summary) == (NODE_SILENT, ("n4",), message,
                                                                                   summary)
        assert json.loads(render_json(report_of(matrix)))["probers"]["n4"]["state"] == prober.state

    def test_counts_are_clamped(self) -> None:
        """increase() extrapolates, so received can come out a hair above sent: that is no loss."""
        assert Counts(sent=900.0, received=900.4).loss_ratio == 0.0
        assert Counts(sent=900.0, received=0.0, rtt_sum_ms=0.0).rtt_avg_ms is None


class TestUnmeasuredPairs:
    """A pair that sent nothing in the range (a node gone, a target dropped from the config) neither
    counts as a node or target nor dilutes the share of bad ones."""

    def test_node_seen_only_in_unmeasured_pairs_is_not_counted(self) -> None:
        matrix = matrix_of(Mesh(NODES))
        gone = {("n1", "n6"): Counts(0.0, 0.0), ("n6", "n1"): Counts(0.0, 0.0)}
        matrix = Matrix({**matrix.nodes, **gone}, matrix.external)
        assert matrix.node_names() == NODES
        [verdict] = diagnose(matrix)
        assert verdict.message.startswith("healthy: 5 nodes (20 pairs) below")
        assert render_text(report_of(matrix)).startswith("node-ping diagnose: 5 nodes, 0 external targets,")

    def test_unmeasured_targets_do_not_dilute_cluster_wide_external_loss(self) -> None:
        mesh = Mesh(NODES, external=["dns", "web"],
                    external_loss={(n, t): 1.0 for n in NODES for t in ("dns", "web")})
        matrix = matrix_of(mesh)
        dropped = {(n, t): Counts(0.0, 0.0) for n in NODES for t in ("old-a", "old-b")}
        matrix = Matrix(matrix.nodes, {**matrix.external, **dropped})
        assert matrix.external_names() == ["dns", "web"]
        [verdict] = diagnose(matrix)
        assert (verdict.kind, verdict.targets) == (EXTERNAL_CLUSTER, ("dns", "web"))
        assert "2 of 2 external targets are lost from most nodes" in verdict.message


class TestStaleSources:
    """When a prober stops, node-exporter keeps serving its last textfile: fresh samples, flat
    counters. Which sources count as stopped, from what Prometheus holds at the end of the range."""

    AT = 1_700_000_000.0

    def fresh(self, lag: float, nominal: float | None = 30.0, series: bool = True) -> Freshness:
        """A source last scraped 5 s before AT, holding a last success `lag` seconds older than that."""
        scraped = self.AT - 5
        return Freshness(series, scraped - lag, scraped, nominal)

    def test_served_but_frozen_is_stale_with_its_age(self) -> None:
        assert stale_sources(["a"], {"a": self.fresh(600)}, self.AT) == {"a": 605.0}

    def test_working_prober_is_not_stale_whatever_the_scrape_interval(self) -> None:
        """Only the success's age at its scrape counts, so a scrape 4 minutes ago is no sign."""
        scraped = self.AT - 240
        assert stale_sources(["a"], {"a": Freshness(True, scraped - 20, scraped, 30.0)}, self.AT) == {}

    def test_a_late_or_failed_cycle_or_two_is_no_alarm(self) -> None:
        assert stale_sources(["a", "b"], {"a": self.fresh(89), "b": self.fresh(91)}, self.AT) == {"b": 96.0}

    def test_short_cycles_get_a_minute(self) -> None:
        assert stale_sources(["a", "b"], {"a": self.fresh(59, 1.0), "b": self.fresh(61, 1.0)}, self.AT) == {
            "b": 66.0}

    def test_series_gone_at_the_end(self) -> None:
        """The node or its node-exporter is down: neither its pair series nor its own metrics are there."""
        freshness = {"a": Freshness(False, errors={"fping": 3.0})}
        assert stale_sources(["a", "b"], freshness, self.AT) == {"a": None, "b": None}

    def test_pair_series_gone_while_it_starts_or_has_nothing_to_probe(self) -> None:
        """Its own metrics are scraped with a recent start-up or success: a restarted exporter before
        its first cycle ends (in HTTP mode its pair series come with it), or one with no targets."""
        freshness = {"a": self.fresh(20, series=False), "b": self.fresh(0, series=False, nominal=None)}
        assert stale_sources(["a", "b"], freshness, self.AT) == {}

    def test_pair_series_gone_and_no_success_for_long(self) -> None:
        """Restarted, and failing since: the grace is the same as for a frozen last success."""
        freshness = {"a": self.fresh(89, series=False), "b": self.fresh(91, series=False)}
        assert stale_sources(["a", "b"], freshness, self.AT) == {"b": 96.0}

    def test_without_the_gauge_the_series_decide(self) -> None:
        assert stale_sources(["a"], {"a": Freshness(True)}, self.AT) == {}

    def test_before_its_first_cycle_a_prober_is_judged_by_the_others_cycle(self) -> None:
        """Until a first cycle ends there is no nominal gauge; the last success is the start-up time."""
        freshness = {"a": self.fresh(100, nominal=None), "b": self.fresh(10, nominal=60.0)}
        assert stale_sources(["a", "b"], freshness, self.AT) == {}
        freshness = {"a": self.fresh(200, nominal=None), "b": self.fresh(10, nominal=60.0)}
        assert stale_sources(["a", "b"], freshness, self.AT) == {"a": 205.0}


class TestProbers:
    """What a node's own metrics say about its prober: gone, stopped, failing or running."""

    AT = 1_700_000_000.0

    def state(self, seen: Freshness) -> Prober:
        return probers({"a": seen}, self.AT)["a"]

    def test_states(self) -> None:
        scraped = self.AT - 5
        assert self.state(Freshness(True)) == Prober(PROBER_GONE)
        assert self.state(Freshness(False, scraped - 20, scraped, 30.0, cycling=True)) == Prober(PROBER_RUNNING, 25.0)
        assert self.state(Freshness(True, scraped - 600, scraped, 30.0, cycling=False)) == Prober(PROBER_STOPPED, 605.0)
        assert self.state(Freshness(True, scraped - 600, scraped, 30.0, cycling=True, errors={"fping": 20.0})) == \
            Prober(PROBER_FAILING, 605.0, {"fping": 20.0})

    def test_without_a_cycle_counter_an_old_success_is_a_stopped_prober(self) -> None:
        """Exporters older than node_ping_cycles_total: nothing tells a failing prober from a stopped one."""
        scraped = self.AT - 5
        assert self.state(Freshness(True, scraped - 600, scraped, 30.0)).state == PROBER_STOPPED


def with_probers(matrix: Matrix, **states: Prober) -> Matrix:
    return dataclasses.replace(matrix, probers=states)


class TestStaleVerdicts:
    """A stale node is named, and its out-of-date numbers are not taken as the network now."""

    def test_all_stale_is_not_healthy(self) -> None:
        matrix = dataclasses.replace(matrix_of(Mesh(NODES)), stale=dict.fromkeys(NODES, 600.0))
        verdicts = diagnose(matrix)
        assert kinds(verdicts) == [(NODE_STALE, (node,)) for node in NODES]
        assert verdicts[0].message == (
            "node n1 stopped reporting 10m before the end of the range (its last successful node-ping cycle), "
            "while its old numbers are still scraped: check its node-ping pod and its logs; its row is left out")
        assert verdicts[0].summary == {"stopped_seconds_before_end": 600.0}

    def test_old_loss_of_a_stale_node_is_not_a_verdict(self) -> None:
        """n2's row lost 50% before it stopped: that says nothing about the links now."""
        matrix = matrix_of(Mesh(NODES, loss=send_loss(NODES, "n2", 0.5)))
        assert kinds(diagnose(matrix)) == [(NODE_SEND, ("n2",))]
        assert kinds(diagnose(dataclasses.replace(matrix, stale={"n2": 300.0}))) == [(NODE_STALE, ("n2",))]

    def test_node_down_while_peers_lose_everything_to_it(self) -> None:
        matrix = dataclasses.replace(matrix_of(Mesh(NODES, loss=receive_loss(NODES, "n3", 1.0))), stale={"n3": None})
        verdicts = diagnose(matrix)
        assert kinds(verdicts) == [(NODE_RECEIVE, ("n3",)), (NODE_STALE, ("n3",))]
        assert verdicts[1].message == (
            "node n3 stopped reporting before the end of the range: its node-ping series end early (the node, its "
            "node-ping pod or its node-exporter is down, or no longer scraped); its row is left out")
        assert verdicts[1].summary == {}

    def test_failing_prober_points_at_its_errors_not_at_its_pod(self) -> None:
        """It runs and is scraped, but every cycle fails (fping missing, say): pod and node-exporter are fine."""
        matrix = dataclasses.replace(matrix_of(Mesh(NODES)), stale={"n2": 600.0},
                                     probers={"n2": Prober(PROBER_FAILING, 600.0, {"fping": 39.6, "dns": 0.2})})
        [verdict] = diagnose(matrix)
        assert (verdict.kind, verdict.nodes) == (NODE_STALE, ("n2",))
        assert verdict.message == (
            "node n2's prober runs and is scraped, but none of its cycles succeeded in the 10m before the end of "
            'the range: see node_ping_errors_total{source_node="n2"} (fping +40 in the range) and its log; its row '
            "is left out")
        assert verdict.summary == {"stopped_seconds_before_end": 600.0}
        document = json.loads(render_json(report_of(matrix)))
        assert document["stale_nodes"] == {"n2": 600.0}
        assert document["probers"] == {
            "n2": {"state": "failing", "last_success_seconds_before_end": 600.0, "errors": {"dns": 0.2, "fping": 39.6}}}

    def test_stale_rows_are_left_out_of_the_matrices(self) -> None:
        matrix = dataclasses.replace(matrix_of(Mesh(NODES, loss=send_loss(NODES, "n2", 0.5))), stale={"n2": 300.0})
        assert matrix.node_names() == NODES
        assert all(source != "n2" for source, _ in matrix.measured_nodes())
        lines = render_text(report_of(matrix)).splitlines()
        assert lines[0].startswith("node-ping diagnose: 5 nodes,")
        start = lines.index("Packet loss % (rows: from, columns: to; ! = 5% or more, - = no data)")
        assert lines[start + 1].split() == NODES
        assert [line.split()[0] for line in lines[start + 2:start + 6]] == ["n1", "n3", "n4", "n5"]
        assert "50.0" not in "\n".join(lines)
        document = json.loads(render_json(report_of(matrix)))
        assert document["stale_nodes"] == {"n2": 300.0}
        assert document["nodes"] == NODES
        assert {cell["source"] for cell in document["matrix"]} == {"n1", "n3", "n4", "n5"}


class TestOrderAndHealthyLine:
    """Names sort as people count (node-2 before node-10), and a healthy line names no random pair."""

    def test_natural_order(self) -> None:
        names = ["node-10", "node-2", "node-1", "node-100", "a", "node-02", "b7c10", "b7c9"]
        assert sorted(names, key=natural_key) == ["a", "b7c9", "b7c10", "node-1", "node-02", "node-2", "node-10",
                                                  "node-100"]

    def test_matrix_rows_and_columns(self) -> None:
        nodes = [f"node-{i}" for i in range(1, 13)]
        matrix = matrix_of(Mesh(sorted(nodes), loss=receive_loss(nodes, "node-10", 0.3)))
        assert matrix.node_names() == nodes
        lines = render_text(report_of(matrix)).splitlines()
        start = lines.index("Packet loss % (rows: from, columns: to; ! = 5% or more, - = no data)")
        assert lines[start + 1].split() == nodes
        assert [line.split()[0] for line in lines[start + 2:start + 14]] == nodes
        document = json.loads(render_json(report_of(matrix)))
        assert [cell["source"] for cell in document["matrix"]][::11] == nodes

    def test_large_cluster_picks_in_natural_order(self) -> None:
        nodes = [f"node-{i}" for i in range(1, 31)]
        loss = {**receive_loss(nodes, "node-10", 0.3), **receive_loss(nodes, "node-9", 0.3)}
        lines = render_text(report_of(matrix_of(Mesh(nodes, loss=loss)))).splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("Packet loss %"))
        assert lines[start + 1].split() == ["node-9", "node-10"]
        assert [line.split()[0] for line in lines[start + 2:start + 5]] == ["node-1", "node-2", "node-3"]

    def test_verdicts_in_natural_order(self) -> None:
        nodes = [f"n{i}" for i in range(1, 12)]
        loss = {**receive_loss(nodes, "n10", 0.5), **receive_loss(nodes, "n9", 0.5), ("n2", "n11"): 0.5}
        assert kinds(diagnose(matrix_of(Mesh(nodes, loss=loss)))) == [
            (NODE_RECEIVE, ("n9",)), (NODE_RECEIVE, ("n10",)), (LINK, ("n2", "n11"))]

    def test_no_pair_named_when_nothing_was_lost(self) -> None:
        [verdict] = diagnose(matrix_of(Mesh(NODES)))
        assert verdict.message == ("healthy: 5 nodes (20 pairs) below 5.0% loss and 50 ms average RTT; "
                                   "worst loss 0.0%, highest average RTT 0.4 ms (n1->n2)")

    def test_the_worst_pair_is_named_when_something_was_lost(self) -> None:
        [verdict] = diagnose(matrix_of(Mesh(NODES, loss={("n4", "n2"): 0.04})))
        assert "; worst loss 3.3% (n4->n2)," in verdict.message  # 1 of 30 pings per scrape


class _CountingName(str):
    """A node name that counts how often it is compared for equality: the analysis's unit of work."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        _CountingName.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class TestScale:
    """The analysis's work grows with the matrix, not with the matrix times the number of bad nodes,
    so a large cluster with many bad nodes is diagnosed as fast as a healthy one."""

    def test_each_cell_is_looked_at_a_bounded_number_of_times(self) -> None:
        nodes = [_CountingName(f"node-{i:03}") for i in range(80)]
        matrix = matrix_of(Mesh(nodes, loss={pair: ratio for node in nodes[:30]
                                             for pair, ratio in receive_loss(nodes, node, 0.3).items()}))
        _CountingName.comparisons = 0
        verdicts = diagnose(matrix)
        assert [(v.kind, v.nodes) for v in verdicts] == [(NODE_RECEIVE, (node,)) for node in nodes[:30]]
        # Sorting the evidence costs a few comparisons per cell; re-scanning the matrix for every
        # bad node cost 60 per cell here, and more on a larger cluster.
        assert _CountingName.comparisons < 10 * len(matrix.nodes)


class TestPublicTypes:
    """Every public dataclass says what it holds: a dataclass without a docstring shows only its
    generated signature in help()."""

    @pytest.mark.parametrize("module", [verdict_module, diagnose_module, promdata], ids=lambda m: m.__name__)
    def test_dataclasses_have_docstrings(self, module: types.ModuleType) -> None:
        public = [value for name, value in vars(module).items()
                  if not name.startswith("_") and inspect.isclass(value) and dataclasses.is_dataclass(value)
                  and value.__module__ == module.__name__]
        assert public
        undocumented = [cls.__name__ for cls in public
                        if not cls.__doc__ or cls.__doc__.startswith(f"{cls.__name__}(")]
        assert undocumented == []


class TestAbbreviate:
    """Long node names are shortened in the matrix and spelled out in a legend."""

    def test_short_names_stay(self) -> None:
        assert abbreviate(["n1", "worker-2"]) == {"n1": "n1", "worker-2": "worker-2"}

    def test_shared_prefix_and_suffix_are_dropped(self) -> None:
        names = ["ip-10-0-1-23.eu-west-1.compute.internal", "ip-10-0-2-7.eu-west-1.compute.internal"]
        assert abbreviate(names) == {names[0]: "1-23", names[1]: "2-7"}

    def test_numbers_when_nothing_short_tells_them_apart(self) -> None:
        names = ["a-very-long-node-name-one", "another-long-node-name-two"]
        assert abbreviate(names) == {names[0]: "n1", names[1]: "n2"}

    def test_what_is_dropped_is_what_all_long_names_share(self) -> None:
        """Nodes in one subnet share the third octet too, so only the last one is left."""
        names = ["ip-10-0-1-21.eu-west-1.compute.internal", "ip-10-0-1-22.eu-west-1.compute.internal"]
        assert abbreviate(names) == {names[0]: "21", names[1]: "22"}

    def test_only_long_names_change_and_numbers_skip_real_names(self) -> None:
        assert abbreviate(["a-1", "b-2", "n1", "x-very-long-name-here"]) == {
            "a-1": "a-1", "b-2": "b-2", "n1": "n1", "x-very-long-name-here": "n2"}

    def test_a_shortened_name_never_reads_as_another_node(self) -> None:
        names = ["ip-10-0-1-21.eu-west-1.compute.internal", "ip-10-0-2-7.eu-west-1.compute.internal", "1-21"]
        assert abbreviate(names) == {names[0]: "n1", names[1]: "2-7", "1-21": "1-21"}

    def test_reserved_labels_are_skipped(self) -> None:
        assert abbreviate(["an-external-target-name"], letter="t", reserved={"t1"}) == {
            "an-external-target-name": "t2"}

    @given(st.lists(st.text(alphabet="n12-.x", min_size=1, max_size=16), unique=True, max_size=8),
           st.sets(st.text(alphabet="n12t", min_size=1, max_size=3), max_size=3))
    def test_labels_are_unique_short_and_never_another_name(self, names: list[str], reserved: set[str]) -> None:
        labels = abbreviate(names, width=6, reserved=reserved)
        assert list(labels) == names
        assert len(set(labels.values())) == len(names)
        for name, label in labels.items():
            if len(name) <= 6:
                assert label == name
            else:
                assert 0 < len(label) <= 6
                assert label not in names
                assert label not in reserved


def report_of(matrix: Matrix) -> Report:
    return Report(matrix, diagnose(matrix), Thresholds(), "15m", 1_700_000_000.0, "http://prometheus:9090")


class TestTextOutput:
    """What a person sees: verdicts first, then the matrix with bad cells marked, short names explained."""

    def test_long_names_shortened_with_legend(self) -> None:
        nodes = [f"ip-10-0-{i}-{20 + i}.eu-west-1.compute.internal" for i in range(1, 4)]
        text = render_text(report_of(matrix_of(Mesh(nodes, loss=receive_loss(nodes, nodes[1], 0.3)))))
        lines = text.splitlines()
        assert lines[0] == ("node-ping diagnose: 3 nodes, 0 external targets, 15m up to 2023-11-14 22:13:20 UTC, "
                            "from http://prometheus:9090")
        assert lines[2].startswith(f"* [node-cannot-receive] node {nodes[1]} cannot receive")
        start = lines.index("Packet loss % (rows: from, columns: to; ! = 5% or more, - = no data)")
        assert lines[start + 1:start + 5] == [
            "      1-21   2-22  3-23",
            "1-21    .   30.0!  0.0",
            "2-22  0.0      .   0.0",
            "3-23  0.0   30.0!    .",
        ]
        assert lines[-4:] == ["Names:"] + [f"  {i}-{20 + i} = {name}" for i, name in enumerate(nodes, 1)]

    def test_legend_names_only_the_shortened_node(self) -> None:
        nodes = ["a-1", "b-2", "n1", "x-very-long-name-here"]
        text = render_text(report_of(matrix_of(Mesh(nodes, loss=receive_loss(nodes, "n1", 0.3)))))
        lines = text.splitlines()
        start = lines.index("Packet loss % (rows: from, columns: to; ! = 5% or more, - = no data)")
        assert lines[start + 1].split() == ["a-1", "b-2", "n1", "n2"]
        assert [line.split()[0] for line in lines[start + 2:start + 6]] == ["a-1", "b-2", "n1", "n2"]
        assert [line.split()[3] for line in lines[start + 2:start + 6]] == ["30.0!", "30.0!", ".", "30.0!"]
        assert lines[-2:] == ["Names:", "  n2 = x-very-long-name-here"]

    def test_large_cluster_shows_the_marked_rows_and_columns(self) -> None:
        nodes = [f"w{i:02}" for i in range(30)]
        text = render_text(report_of(matrix_of(Mesh(nodes, loss=receive_loss(nodes, "w07", 0.3)))))
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("Packet loss %"))
        assert lines[start].endswith("showing 20 of 30 rows and 1 of 30 columns, those with the most marked cells "
                                     "(--output json has every cell)")
        assert lines[start + 1].split() == ["w07"]
        assert [line.split()[1] for line in lines[start + 2:start + 22]] == ["30.0!"] * 20
        assert "Average RTT ms (! = 50 ms or more, - = no reply or no data): no cell marked among 30 rows" in text

    def test_json_has_every_cell_and_the_verdict_numbers(self) -> None:
        document = json.loads(render_json(report_of(matrix_of(Mesh(NODES, loss={("n1", "n2"): 0.5})))))
        assert document["healthy"] is False
        assert document["thresholds"] == {"loss_percent": 5.0, "latency_ms": 50.0}
        [verdict] = document["verdicts"]
        assert (verdict["kind"], verdict["nodes"], verdict["summary"]) == (LINK, ["n1", "n2"],
                                                                          {"worst_loss_percent": 50.0})
        assert len(document["matrix"]) == 20
        assert document["matrix"][0] == {"source": "n1", "destination": "n2", "sent": 1800, "received": 900,
                                         "loss_percent": 50.0, "rtt_avg_ms": 0.4}


# ------------------------------------------------------------------------------------ the command


def diagnose_cmd(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `node-ping diagnose ARGV`, argparse's usage errors included."""
    try:
        code = cli.main(["diagnose", *argv])
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def prometheus_with() -> Iterator[Callable[[str], str]]:
    """`prometheus_with(openmetrics_text)` backfills the text into a fresh TSDB, starts a real
    Prometheus on it and returns its URL. Processes and directories go at teardown."""
    reason = promdata.available()
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="node-ping-diagnose-")))

        def start(text: str) -> str:
            data = root / f"tsdb{len(list(root.iterdir()))}"
            promdata.backfill(text, data)
            return stack.enter_context(promdata.running_prometheus(data))

        yield start


NAMES = [f"worker-{i}" for i in range(1, 6)]


class TestAgainstPrometheus:
    """The whole command against a real Prometheus holding half an hour of synthetic node-ping history."""

    def run(self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str], mesh: Mesh,
            *argv: str) -> tuple[int, str, str]:
        end = int(time.time())
        url = prometheus_with(promdata.openmetrics(mesh, end))
        return diagnose_cmd(capsys, "--prometheus", url, "--time", str(end), *argv)

    def test_healthy(self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        end = int(time.time())
        url = prometheus_with(promdata.openmetrics(Mesh(NAMES, external=["dns"]), end))
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url)  # no --time: now, as a person runs it
        assert code == 0
        assert "* [healthy] healthy: 5 nodes (20 pairs) and 1 external target below 5.0% loss" in out
        assert not re.search(r"\d!", out)  # no cell marked bad

    def test_node_dropping_incoming(self, capsys: pytest.CaptureFixture[str],
                                    prometheus_with: Callable[[str], str]) -> None:
        code, out, _ = self.run(capsys, prometheus_with, Mesh(NAMES, loss=receive_loss(NAMES, "worker-3", 0.3)))
        assert code == 1
        lines = out.splitlines()
        assert lines[2] == ("* [node-cannot-receive] node worker-3 cannot receive from most peers: "
                            "pings to it are lost from 4 of 4 peers (30.0%)")
        assert len([line for line in lines if line.startswith("* ")]) == 1
        # The evidence: worker-3's column is marked in every row but its own.
        header = lines.index("Packet loss % (rows: from, columns: to; ! = 5% or more, - = no data)")
        columns = lines[header + 1].split()
        assert columns == NAMES
        for row in lines[header + 2:header + 7]:
            name, *cells = row.split()
            assert cells[2] == ("." if name == "worker-3" else "30.0!")
            assert all("!" not in cell for i, cell in enumerate(cells) if i != 2)

    def test_node_cut_off(self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        code, out, _ = self.run(capsys, prometheus_with, Mesh(NAMES, loss=isolated(NAMES, "worker-5")))
        assert code == 1
        assert "* [node-isolated] node worker-5 is isolated: it cannot send to or receive from most peers" in out
        assert out.count("* [") == 1

    def test_bad_pair(self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        mesh = Mesh(NAMES, loss={("worker-1", "worker-4"): 0.2, ("worker-4", "worker-1"): 0.1})
        code, out, _ = self.run(capsys, prometheus_with, mesh)
        assert code == 1
        assert "* [link] link worker-1<->worker-4 only: pings from worker-1 lose 20.0%, from worker-4 10.0%\n" in out
        assert out.count("* [") == 1

    def test_external_loss_on_one_node(self, capsys: pytest.CaptureFixture[str],
                                       prometheus_with: Callable[[str], str]) -> None:
        mesh = Mesh(NAMES, external=["dns", "web"],
                    external_loss={("worker-2", "dns"): 1.0, ("worker-2", "web"): 1.0})
        code, out, _ = self.run(capsys, prometheus_with, mesh)
        assert code == 1
        assert "* [external-node] external connectivity lost on node worker-2: dns 100.0%, web 100.0% loss" in out

    def test_json_for_scripts(self, capsys: pytest.CaptureFixture[str],
                              prometheus_with: Callable[[str], str]) -> None:
        mesh = Mesh(NAMES, loss={**receive_loss(NAMES, "worker-3", 0.3), ("worker-1", "worker-5"): 0.5})
        code, out, _ = self.run(capsys, prometheus_with, mesh, "--output", "json")
        assert code == 1
        document = json.loads(out)
        assert document["healthy"] is False
        assert [(v["kind"], v["nodes"]) for v in document["verdicts"]] == [
            ("node-cannot-receive", ["worker-3"]), ("link", ["worker-1", "worker-5"])]
        evidence = document["verdicts"][0]["evidence"]
        assert {e["source"] for e in evidence} == {"worker-1", "worker-2", "worker-4", "worker-5"}
        assert {e["loss_percent"] for e in evidence} == {30.0}
        cells: Mapping[tuple[str, str], dict[str, object]] = {
            (c["source"], c["destination"]): c for c in document["matrix"]}
        assert len(cells) == 20
        assert cells[("worker-1", "worker-5")]["loss_percent"] == 50.0
        assert cells[("worker-1", "worker-5")]["sent"] == 1800  # 60 scrapes of 30 pings in 15 minutes
        assert cells[("worker-2", "worker-1")]["rtt_avg_ms"] == pytest.approx(promdata.DEFAULT_RTT_MS)

    def test_thresholds_from_flags(self, capsys: pytest.CaptureFixture[str],
                                   prometheus_with: Callable[[str], str]) -> None:
        mesh = Mesh(NAMES, loss={("worker-1", "worker-4"): 0.1}, rtt_ms={("worker-2", "worker-3"): 30.0})
        code, out, _ = self.run(capsys, prometheus_with, mesh, "--loss-threshold", "20", "--latency-threshold", "40")
        assert (code, out.count("* [healthy]")) == (0, 1)

    def test_no_node_ping_data(self, capsys: pytest.CaptureFixture[str],
                               prometheus_with: Callable[[str], str]) -> None:
        url = prometheus_with(promdata.unrelated_openmetrics(int(time.time())))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url)
        assert (code, out) == (2, "")
        assert f"Prometheus at {url} has no node-ping data for the 15m before" in err
        assert "kube_node_ping_packets_sent_total" in err

    def test_counters_not_growing(self, capsys: pytest.CaptureFixture[str],
                                  prometheus_with: Callable[[str], str]) -> None:
        code, out, err = self.run(capsys, prometheus_with, Mesh(NAMES, pings_per_step=0))
        assert (code, out) == (2, "")
        assert "node-ping's counters in Prometheus at" in err
        assert "the exporters have not completed a cycle in that time" in err

    def test_data_outside_the_range(self, capsys: pytest.CaptureFixture[str],
                                    prometheus_with: Callable[[str], str]) -> None:
        end = int(time.time())
        url = prometheus_with(promdata.openmetrics(Mesh(NAMES), end))
        code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end - 3 * 3600))
        assert code == 2
        assert "has no node-ping data for the 15m before" in err

    def test_exporters_stopped_before_the_end_are_stale_not_healthy(
            self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        """Every prober stopped 10 minutes ago; node-exporter still serves their last textfiles, so
        the samples are fresh but the counters flat."""
        code, out, _ = self.run(capsys, prometheus_with, Mesh(NAMES, stopped=dict.fromkeys(NAMES, 600)))
        assert code == 1
        assert [line for line in out.splitlines() if line.startswith("* [")] == [
            f"* [node-stale] node {node} stopped reporting 10m before the end of the range (its last successful "
            "node-ping cycle), while its old numbers are still scraped: check its node-ping pod and its logs; its "
            "row is left out" for node in NAMES]
        assert "Packet loss %" not in out

    def test_old_numbers_of_a_stopped_exporter_are_not_shown_as_current(
            self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        """worker-2 lost half its pings until its prober stopped 10 minutes ago: that is history."""
        end = int(time.time())
        mesh = Mesh(NAMES, loss=send_loss(NAMES, "worker-2", 0.5), stopped={"worker-2": 600})
        url = prometheus_with(promdata.openmetrics(mesh, end))
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end))
        assert code == 1
        assert [line.split("]")[0] for line in out.splitlines() if line.startswith("* [")] == ["* [node-stale"]
        assert "* [node-stale] node worker-2 stopped reporting 10m before the end of the range" in out
        lines = out.splitlines()
        header = lines.index("Packet loss % (rows: from, columns: to; ! = 5% or more, - = no data)")
        assert lines[header + 1].split() == NAMES
        assert [line.split()[0] for line in lines[header + 2:header + 6]] == ["worker-1", "worker-3", "worker-4",
                                                                             "worker-5"]
        assert "50.0" not in out
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end), "--output", "json")
        document = json.loads(out)
        assert (code, document["healthy"], document["stale_nodes"]) == (1, False, {"worker-2": 600.0})
        assert "worker-2" not in {cell["source"] for cell in document["matrix"]}

    def test_node_gone_mid_range_while_peers_lose_everything_to_it(
            self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        """worker-3's own series end 10 minutes before the end (the node is down); its older samples
        are still in the range, so it is not 'silent' in the old sense, but it must be named."""
        mesh = Mesh(NAMES, loss=receive_loss(NAMES, "worker-3", 1.0), gone={"worker-3": 600})
        code, out, _ = self.run(capsys, prometheus_with, mesh)
        assert code == 1
        assert [line.split(":")[0] for line in out.splitlines() if line.startswith("* [")] == [
            "* [node-cannot-receive] node worker-3 cannot receive from most peers",
            "* [node-stale] node worker-3 stopped reporting before the end of the range"]

    def test_restarted_exporter_without_its_pair_series_is_not_stale(
            self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        """worker-2's exporter restarted 7 minutes ago and has exported no pair series since (HTTP mode
        until a first cycle, or nothing to probe), but its own metrics are scraped and succeed: no fault."""
        code, out, _ = self.run(capsys, prometheus_with, Mesh(NAMES, restarted={"worker-2": 420}))
        assert code == 0, out
        assert "* [healthy] healthy: 5 nodes (20 pairs) below" in out

    @pytest.mark.parametrize("restarted", [False, True], ids=["pair series still served", "restarted since"])
    def test_failing_prober_is_named_with_its_errors(self, capsys: pytest.CaptureFixture[str],
                                                     prometheus_with: Callable[[str], str], restarted: bool) -> None:
        """worker-2's prober runs and is scraped, but every cycle for 10 minutes failed (fping missing):
        the advice is its errors and its log, not its pod or its node-exporter."""
        end = int(time.time())
        mesh = Mesh(NAMES, failing={"worker-2": 600}, restarted={"worker-2": 600} if restarted else {})
        url = prometheus_with(promdata.openmetrics(mesh, end))
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end))
        assert code == 1
        assert [line for line in out.splitlines() if line.startswith("* [")] == [
            "* [node-stale] node worker-2's prober runs and is scraped, but none of its cycles succeeded in the 10m "
            'before the end of the range: see node_ping_errors_total{source_node="worker-2"} (fping +40 in the '
            "range) and its log; its row is left out"]
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end), "--output", "json")
        document = json.loads(out)
        assert (code, document["stale_nodes"]) == (1, {"worker-2": 600.0})
        assert document["probers"]["worker-2"]["state"] == "failing"
        assert document["probers"]["worker-2"]["errors"]["fping"] == pytest.approx(40, abs=1)
        # Over a range with no success at all, it is silent rather than stale: the same advice.
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end), "--range", "5m")
        assert code == 1
        assert [line for line in out.splitlines() if line.startswith("* [")] == [
            "* [node-silent] node worker-2's prober runs and is scraped but has produced no ping data (other nodes "
            "ping it): none of its cycles succeeded in the 10m before the end of the range; see "
            'node_ping_errors_total{source_node="worker-2"} (fping +20 in the range) and its log']

    def test_node_gone_for_the_whole_range_has_no_data_at_all(
            self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        mesh = Mesh(NAMES, gone={"worker-4": 1200})
        code, out, _ = self.run(capsys, prometheus_with, mesh)
        assert code == 1
        assert [line for line in out.splitlines() if line.startswith("* [")] == [
            "* [node-silent] node worker-4 reports no node-ping data at all (other nodes ping it): check that its "
            "node-ping pod runs and that Prometheus scrapes its node-exporter"]

    @pytest.mark.parametrize("after_last_scrape", [0, 12], ids=["one sample in the range", "none in the range"])
    def test_range_shorter_than_two_scrapes(self, capsys: pytest.CaptureFixture[str],
                                            prometheus_with: Callable[[str], str], after_last_scrape: int) -> None:
        end = int(time.time())
        url = prometheus_with(promdata.openmetrics(Mesh(NAMES), end))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end + after_last_scrape),
                                      "--range", "10s")
        assert (code, out) == (2, "")
        assert err == (f"node-ping diagnose: Prometheus at {url} has node-ping series, but the 10s before "
                       f"{diagnose_module._iso(end + after_last_scrape)} holds fewer than two samples of each, "
                       "and increase() needs two: widen --range to at least two scrape intervals "
                       "(e.g. --range 1m for 15 s or 30 s scrapes).\n")
        code, _, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end + after_last_scrape),
                                  "--range", "30s")
        assert code == 0


# Durations to try on Prometheus itself: the edges of its syntax and range, then random strings of
# numbers and units in any order.
DURATION_EDGES = ["15m", "1h30m", "500ms", "1y2w3d4h5m6s7ms", "05m", "1m0s", "0s", "0ms", "0m0s", "0", "",
                  "5m5m", "30m1h", "1h1h", "ms5", "1.5h", "1H", " 15m", "\t15m\n", "1h 30m", "-5m", "1000000000y",
                  "292y", "293y", "106751d23h47m16s854ms", "106751d23h47m16s855ms", "9223372036854ms",
                  "9223372036855ms", "99999999999999999999s"]


def random_durations(count: int) -> list[str]:
    rng = random.Random(20240501)  # noqa: S311 -- test cases, not secrets; fixed seed: the same every run
    numbers = ["0", "1", "7", "15", "90", "292", "293", "106752", "2562048"]
    units = ["y", "w", "d", "h", "m", "s", "ms"]
    return ["".join(f"{rng.choice(numbers)}{rng.choice(units)}" for _ in range(rng.randint(1, 3)))
            for _ in range(count)]


class TestRangeFlag:
    """--range takes exactly what Prometheus takes in a range selector; the rest is a flag error
    before any request, not a PromQL parse error from the server."""

    def test_agrees_with_prometheus(self, capsys: pytest.CaptureFixture[str],
                                    prometheus_with: Callable[[str], str]) -> None:
        at = int(time.time())
        url = prometheus_with(promdata.unrelated_openmetrics(at))
        disagreements = []
        for text in dict.fromkeys([*DURATION_EDGES, *random_durations(60)]):
            query = urllib.parse.urlencode({"query": f"increase(x[{text}])", "time": str(at)})
            try:
                with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10):
                    prometheus_takes = True
            except urllib.error.HTTPError as err:
                assert err.code == 400
                prometheus_takes = False
            code, _, err_text = diagnose_cmd(capsys, "--prometheus", url, "--time", str(at), "--range", text)
            we_take = "argument --range" not in err_text
            assert code == 2  # no node-ping data, or the flag refused
            if we_take != prometheus_takes:
                disagreements.append((text, prometheus_takes, err_text))
        assert disagreements == []

    @pytest.mark.parametrize(("value", "message"), [
        ("0s", "argument --range: '0s' is no time at all: give a range above 0, e.g. 15m\n"),
        ("5m5m", "argument --range: '5m5m' is not a Prometheus duration: a number and a unit for each of y, w, d, h, "
                 "m, s, ms, largest first and each at most once, e.g. 15m, 1h or 1h30m\n"),
        ("30m1h", "'30m1h' is not a Prometheus duration"),
        ("1000000000y", "argument --range: '1000000000y' is longer than Prometheus accepts (about 292 years)\n"),
    ])
    def test_refused_before_any_request(self, capsys: pytest.CaptureFixture[str], value: str, message: str) -> None:
        with serving(lambda _headers: Answer(200, HEALTHY_PAIR)) as (url, seen):
            code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--range", value)
        assert (code, out, seen) == (2, "", [])
        assert message in err


# ---------------------------------------------------------------------- servers that are not Prometheus


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the test server answers to one GET."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


@contextlib.contextmanager
def serving(answer: Callable[[Mapping[str, str]], Answer]) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback HTTP server answering each GET with `answer(its headers)`, header names lower-cased.
    Yields its URL and the headers of every request it got, in order."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            seen.append(headers)
            reply = answer(headers)
            self.send_response(reply.status)
            for name, value in {"Content-Type": reply.content_type, **reply.headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll so shutdown() at the end of each test returns at once rather than in half a second.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def http_server(status: int, body: bytes, content_type: str) -> Iterator[str]:
    """A loopback HTTP server answering every GET the same way."""
    with serving(lambda _headers: Answer(status, body, content_type)) as (url, _seen):
        yield url


def vector(*samples: tuple[Mapping[str, str], float]) -> bytes:
    """Prometheus's answer to an instant query."""
    result = [{"metric": dict(labels), "value": [0, str(value)]} for labels, value in samples]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


# Every query gets the same answer: 100 pings sent and received and 100 ms of RTT each way between
# two nodes (and no external targets: the labels are not theirs).
HEALTHY_PAIR = vector(({"source_node": "a", "destination_node": "b"}, 100.0),
                      ({"source_node": "b", "destination_node": "a"}, 100.0))
NO_DATA = vector()


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

    def test_not_found(self, capsys: pytest.CaptureFixture[str]) -> None:
        with http_server(404, b"404 page not found", "text/plain") as url:
            code, _, err = diagnose_cmd(capsys, "--prometheus", url + "/wrong/")
        assert code == 2
        assert f"the server at {url}/wrong answered HTTP 404 Not Found to /api/v1/query" in err

    def test_not_prometheus(self, capsys: pytest.CaptureFixture[str]) -> None:
        with http_server(200, b"<html><body>Grafana</body></html>", "text/html") as url:
            code, _, err = diagnose_cmd(capsys, "--prometheus", url)
        assert code == 2
        assert f"the server at {url} answered /api/v1/query, but not like Prometheus" in err

    def test_prometheus_rejects_the_query(self, capsys: pytest.CaptureFixture[str]) -> None:
        body = json.dumps({"status": "error", "errorType": "bad_data", "error": "invalid parameter"}).encode()
        with http_server(400, body, "application/json") as url:
            code, _, err = diagnose_cmd(capsys, "--prometheus", url)
        assert code == 2
        assert f"Prometheus at {url} rejected the query (HTTP 400): invalid parameter" in err

    def test_not_an_http_url(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = diagnose_cmd(capsys, "--prometheus", "ftp://prometheus:9090")
        assert code == 2
        assert "--prometheus 'ftp://prometheus:9090' is not an http(s) URL" in err

    @pytest.mark.parametrize("argv", [["--range", "15 minutes"], ["--time", "yesterday"],
                                      ["--loss-threshold", "-1"]])
    def test_bad_flags(self, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["diagnose", "--prometheus", "http://127.0.0.1:1", *argv])
        assert exit_info.value.code == 2
        assert argv[1] in capsys.readouterr().err


class TestPrometheusAnswers:
    """What Prometheus says besides the data reaches the user: its error, and its warnings."""

    def test_error_without_data_is_shown(self, capsys: pytest.CaptureFixture[str]) -> None:
        body = json.dumps({"status": "error", "errorType": "internal", "error": "boom"}).encode()
        with http_server(200, body, "application/json") as url:
            code, out, err = diagnose_cmd(capsys, "--prometheus", url)
        assert (code, out) == (2, "")
        assert err == f"node-ping diagnose: Prometheus at {url} answered the query with an error: boom\n"

    def test_warnings_go_to_stderr_and_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A partial response (Thanos with a store down) must not pass for the whole matrix."""
        warning = "partial response: store 10.0.0.9:10901 unavailable"
        body = json.loads(HEALTHY_PAIR)
        body["warnings"] = [warning]
        with http_server(200, json.dumps(body).encode(), "application/json") as url:
            code, out, err = diagnose_cmd(capsys, "--prometheus", url)
            assert (code, err) == (0, "node-ping diagnose: warning from Prometheus, the data may be incomplete: "
                                      f"{warning}\n")
            assert "* [healthy]" in out
            code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--output", "json")
        assert (code, err.count(warning)) == (0, 1)
        assert json.loads(out)["warnings"] == [warning]

    def test_no_warnings_in_json_is_an_empty_list(self, capsys: pytest.CaptureFixture[str]) -> None:
        with http_server(200, HEALTHY_PAIR, "application/json") as url:
            code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--output", "json")
        assert (code, err, json.loads(out)["warnings"]) == (0, "", [])

    @pytest.mark.parametrize("suffix", ["/?x=1", "#frag", "/prometheus?token=t0k", "?"])
    def test_query_string_or_fragment_in_the_url(self, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
        with serving(lambda _headers: Answer(200, HEALTHY_PAIR)) as (url, seen):
            code, out, err = diagnose_cmd(capsys, "--prometheus", url + suffix)
        assert (code, out, seen) == (2, "", [])
        assert err == ("node-ping diagnose: --prometheus has a query string or fragment (? or #): give the base URL "
                       "alone, e.g. http://prometheus:9090 (a path prefix such as /prometheus is fine); send tokens "
                       "with --header or --bearer-token-file\n")


class TestTimeAndTimeoutFlags:
    """Values pasted by mistake are refused with the fix, exit 2, before Prometheus is asked anything."""

    @pytest.mark.parametrize(("flag", "value", "message"), [
        ("--time", "1700000000000", "argument --time: '1700000000000' looks like milliseconds (as in a Grafana "
                                    "URL); --time takes unix seconds: divide by 1000, i.e. --time 1700000000\n"),
        ("--time", "1700000000123", "divide by 1000, i.e. --time 1700000000.123\n"),
        ("--time", "nan", "argument --time: 'nan' is not a time between 2000 and 2100: give unix seconds or RFC 3339"),
        ("--time", "0001-01-01T00:00:00Z", "'0001-01-01T00:00:00Z' is not a time between 2000 and 2100"),
        ("--timeout", "inf", "argument --timeout: 'inf' is not a finite number"),
        ("--timeout", "1e10", "argument --timeout: '1e10' must be at most 3600"),
        ("--loss-threshold", "150", "argument --loss-threshold: '150' must be at most 100\n"),
    ], ids=["milliseconds", "milliseconds with a fraction", "nan", "year 1", "infinite timeout", "huge timeout",
            "loss above 100%"])
    def test_refused(self, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str) -> None:
        with serving(lambda _headers: Answer(200, NO_DATA)) as (url, seen):
            code, out, err = diagnose_cmd(capsys, "--prometheus", url, flag, value)
        assert (code, out, seen) == (2, "", [])
        assert message in err

    def test_a_sane_time_with_a_fraction_is_taken(self, capsys: pytest.CaptureFixture[str]) -> None:
        with serving(lambda _headers: Answer(200, HEALTHY_PAIR)) as (url, _seen):
            code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", "1700000000.5", "--timeout", "3600")
        assert code == 0
        assert "15m up to 2023-11-14 22:13:20 UTC" in out


SECRET = "s3cr@t-tok"  # noqa: S105 -- a made-up token; its @ also tests passwords escaped in URLs


@pytest.fixture
def token_file() -> Iterator[Path]:
    """A bearer token file holding SECRET and a newline, as kubectl or a Secret volume writes it."""
    with tempfile.TemporaryDirectory(prefix="node-ping-diagnose-") as directory:
        path = Path(directory) / "token"
        path.write_text(f"{SECRET}\n")
        yield path


def requiring(**expected: str) -> Callable[[Mapping[str, str]], Answer]:
    """A Prometheus that answers only requests with these headers (names lower-cased, _ for -), like
    Mimir without X-Scope-OrgID: 401 and a plain-text reason."""
    wanted = {name.replace("_", "-"): value for name, value in expected.items()}

    def answer(headers: Mapping[str, str]) -> Answer:
        if all(headers.get(name) == value for name, value in wanted.items()):
            return Answer(200, HEALTHY_PAIR)
        return Answer(401, b"no org id\n", "text/plain")
    return answer


class TestAuthentication:
    """Headers and tokens for a Prometheus behind authentication or a multi-tenant Mimir; credentials
    reach only the server and never any output."""

    def test_env_flags_and_token_file_are_sent(self, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
        monkeypatch.setenv("NODE_PING_PROMETHEUS_HEADERS", "X-Scope-OrgID: wrong\n\nX-Extra: from env\n")
        with serving(requiring(authorization=f"Bearer {SECRET}", x_scope_orgid="tenant-1",
                               x_extra="from env")) as (url, seen):
            code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--header", "x-scope-orgid: tenant-1",
                                          "--bearer-token-file", str(token_file))
        assert (code, err) == (0, "")
        assert "* [healthy] healthy: 2 nodes (2 pairs)" in out
        assert len(seen) == 12  # six queries for the matrix, six for the nodes' own metrics
        assert SECRET not in out

    def test_user_and_password_in_the_url_are_basic_auth_and_never_shown(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        basic = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
        with serving(requiring(authorization=basic)) as (url, _seen):
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
    ], ids=["401", "403"])
    def test_refused_without_credentials(self, capsys: pytest.CaptureFixture[str], answer: Answer,
                                         message: str) -> None:
        with serving(lambda _headers: answer) as (url, _seen):
            code, out, err = diagnose_cmd(capsys, "--prometheus", url)
        assert (code, out) == (2, "")
        assert err.startswith(f"node-ping diagnose: Prometheus at {url} {message}")
        assert "--bearer-token-file" in err

    def test_refused_credentials_are_named_not_shown(self, capsys: pytest.CaptureFixture[str],
                                                     token_file: Path) -> None:
        with serving(requiring(authorization="Bearer another")) as (url, _seen):
            code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--bearer-token-file", str(token_file),
                                        "--header", "X-Scope-OrgID: tenant-1")
        assert code == 2
        assert (f"Prometheus at {url} refused the request (HTTP 401 Unauthorized: no org id); check the "
                "credentials sent (headers Authorization, X-Scope-OrgID)") in err
        assert SECRET not in err

    @pytest.mark.parametrize("prometheus", [
        f"http://alice:{SECRET}@127.0.0.1:{free_port()}",  # nothing listening
        f"ftp://alice:{SECRET}@prometheus:9090",
        f"http://alice:{SECRET}@prometheus:port",
        f"alice:{SECRET}@[::1",
    ], ids=["refused", "not http", "bad port", "broken"])
    def test_no_error_message_shows_the_password(self, capsys: pytest.CaptureFixture[str], prometheus: str) -> None:
        code, _, err = diagnose_cmd(capsys, "--prometheus", prometheus)
        assert code == 2
        assert err.startswith("node-ping diagnose: ")
        assert "s3cr" not in err
        assert "alice" not in err

    @pytest.mark.parametrize(("argv", "env", "message"), [
        (["--header", f"Bearer {SECRET}"], "", "--header number 1 is not 'Name: value'"),
        (["--header", "X-A: 1", "--header", f"Authorization: Bearer {SECRET}\x01"], "",
         "header Authorization (--header number 2) has an empty value or characters other than printable ASCII"),
        ([], f"X-Scope-OrgID: tenant-1\n{SECRET}", "line 2 of NODE_PING_PROMETHEUS_HEADERS is not 'Name: value'"),
        (["--header", "X-Scope-OrgID:"], "", "header X-Scope-OrgID (--header number 1) has an empty value"),
    ], ids=["no name", "control character", "env line without a name", "empty value"])
    def test_malformed_headers_are_refused_unquoted(self, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: str,
                                                    message: str) -> None:
        monkeypatch.setenv("NODE_PING_PROMETHEUS_HEADERS", env)
        with serving(lambda _headers: Answer(200, HEALTHY_PAIR)) as (url, seen):
            code, out, err = diagnose_cmd(capsys, "--prometheus", url, *argv)
        assert (code, out, seen) == (2, "", [])
        assert message in err
        assert "s3cr" not in err

    def test_token_file_problems(self, capsys: pytest.CaptureFixture[str], token_file: Path) -> None:
        missing = token_file.parent / "missing"
        url = "http://127.0.0.1:1"
        code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--bearer-token-file", str(missing))
        assert (code, err) == (2, f"node-ping diagnose: cannot read --bearer-token-file {missing}: "
                                  "No such file or directory\n")
        token_file.write_text("\n")
        code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--bearer-token-file", str(token_file))
        assert (code, err) == (2, f"node-ping diagnose: --bearer-token-file {token_file} is empty\n")
        code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--bearer-token-file", str(token_file),
                                    "--header", "authorization: Bearer x")
        assert (code, err) == (2, "node-ping diagnose: give --bearer-token-file or --header 'Authorization: ...', "
                                  "not both\n")

    def test_redirects_are_reported_not_followed(self, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """Following would hand the token to wherever the redirect points."""
        monkeypatch.setenv("NODE_PING_PROMETHEUS_HEADERS", f"Authorization: Bearer {SECRET}")
        with serving(lambda _headers: Answer(200, HEALTHY_PAIR)) as (elsewhere, elsewhere_seen):
            def redirect(_headers: Mapping[str, str]) -> Answer:
                return Answer(302, b"", "text/plain", {"Location": f"{elsewhere}/api/v1/query?query=up"})

            with serving(redirect) as (url, seen):
                code, _, err = diagnose_cmd(capsys, "--prometheus", url)
        assert (code, len(seen), elsewhere_seen) == (2, 1, [])
        assert (f"the server at {url} redirects /api/v1/query to {elsewhere}/api/v1/query (HTTP 302); node-ping "
                "does not follow redirects") in err
