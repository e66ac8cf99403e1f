"""The exposition text: metric names, labels and values exactly as dashboards expect them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from node_ping import contract
from node_ping.probe.export import Snapshot, TargetRow, last_success_in, render
from node_ping.probe.report import summarize
from tests.support.exposition import families

GOLDEN = Path(__file__).parent / "fixtures" / "exposition"
UPDATE = os.environ.get("NODE_PING_UPDATE_GOLDEN") == "1"  # set to rewrite the golden files


def sample_snapshot() -> Snapshot:
    return Snapshot(
        source_node="node-a",
        nodes=(TargetRow(("node-b", "10.0.0.2"), 6, 5, 2.5, summarize([0.5, 0.25, None, 0.75, 0.5, 0.5])),
               TargetRow(("node-c", "fd00::3"), 6, 0, 0.0, summarize([None] * 6))),
        external=(TargetRow(("dns", "8.8.8.8"), 3, 3, 30.0, summarize([10.0, 10.0, 10.0])),),
        errors={"config": 1, "dns": 0, "fping": 2, "write": 0, "internal": 0},
        exceptions=2, cycles=7, targets={"node": 2, "external": 1},
        cycle_duration_s=3.5, probe_duration_s=3.25, cycle_nominal_s=3.0, last_success_ts=1_700_000_000.0,
        fping_cpu_s=0.5, own_cpu_s=1.25,
        mtu=1500, mtu_rows=(TargetRow(("node-b", "10.0.0.2"), 3, 3, 0.0, None),
                            TargetRow(("node-c", "fd00::3"), 3, 0, 0.0, None)),
        node_info=("eu-west-1a", ""),
    )


class TestExposition:
    """What node-exporter serves from our file."""

    @pytest.mark.parametrize(("golden_name", "pod_path"), [("node-a.prom", False), ("node-a-pod.prom", True)])
    def test_matches_golden_file(self, golden_name: str, pod_path: bool) -> None:
        text = render(dataclasses.replace(sample_snapshot(), pod_path=pod_path))
        golden = GOLDEN / golden_name
        if UPDATE:
            golden.write_text(text)
        assert text == golden.read_text()

    def test_mtu_counters_and_node_info(self) -> None:
        series = families(render(sample_snapshot()))
        received = {labels["destination_node"]: (labels[contract.MTU], value)
                    for labels, value in series[contract.NODE.mtu_packets_received.name]}
        assert received == {"node-b": ("1500", 3.0), "node-c": ("1500", 0.0)}
        assert series[contract.NODE_INFO.name] == [({"source_node": "node-a", "zone": "eu-west-1a", "rack": ""}, 1.0)]
        off = render(dataclasses.replace(sample_snapshot(), mtu=0))
        assert contract.NODE.mtu_packets_sent.base not in off

    def test_pod_path(self) -> None:
        """The pod prober: the pod family with the pod's address label, self metrics marked, no
        external hosts and no node info (the host prober's)."""
        series = families(render(dataclasses.replace(sample_snapshot(), pod_path=True)))
        assert {labels[contract.POD.address] for labels, _ in series[contract.POD.packets_sent.name]} == \
            {"10.0.0.2", "fd00::3"}
        assert contract.POD.mtu_packets_sent.name in series
        assert not {contract.NODE.packets_sent.name, contract.EXTERNAL.packets_sent.name,
                    contract.NODE_INFO.name} & series.keys()
        assert series[contract.CYCLES.name] == [({"source_node": "node-a", "path": "pod"}, 7.0)]

    def test_dead_target_has_counters_but_no_rtt_gauges(self) -> None:
        series = families(render(sample_snapshot()))
        dead = {"source_node": "node-a", "destination_node": "node-c", "destination_node_ip_address": "fd00::3"}
        assert (dead, 6.0) in series[contract.NODE.packets_sent.name]
        assert (dead, 0.0) in series[contract.NODE.packets_received.name]
        for gauge in (contract.NODE.rtt_min.name, contract.NODE.rtt_max.name, contract.NODE.rtt_mdev.name):
            assert [labels["destination_node"] for labels, _ in series[gauge]] == ["node-b"]

    def test_no_created_or_process_series(self) -> None:
        names = families(render(sample_snapshot()))
        assert not [n for n in names if n.endswith("_created") or n.startswith(("process_", "python_"))]

    def test_awkward_label_values_round_trip(self) -> None:
        awkward = 'we"ird\\name\nwith ü and 🚀'
        snapshot = Snapshot(source_node="n", external=(TargetRow((awkward, "h"), 1, 1, 1.0, summarize([1.0])),))
        series = families(render(snapshot))
        ((labels, value),) = series[contract.EXTERNAL.packets_sent.name]
        assert labels["destination_name"] == awkward and value == 1.0

    def test_self_metrics(self) -> None:
        series = families(render(sample_snapshot()))
        assert series[contract.CYCLE_LATENESS.name] == [({"source_node": "node-a"}, 0.25)]
        errors = {labels["kind"]: value for labels, value in series[contract.ERRORS.name]}
        assert errors == {"config": 1.0, "dns": 0.0, "fping": 2.0, "write": 0.0, "internal": 0.0}
        assert series[contract.EXCEPTIONS.name] == [({"source_node": "node-a"}, 2.0)]

    def test_a_run_shorter_than_nominal_is_on_time_not_early(self) -> None:
        """fping's last round needs no full period: ending before count x period is on time."""
        snapshot = dataclasses.replace(sample_snapshot(), probe_duration_s=2.0)
        assert families(render(snapshot))[contract.CYCLE_LATENESS.name] == [({"source_node": "node-a"}, 0.0)]


class TestLastSuccessIn:
    """The previous file's last success, read at start-up so a restart does not reset it."""

    def test_reads_what_render_wrote(self) -> None:
        assert last_success_in(render(sample_snapshot()), "node-a") == 1_700_000_000.0
        assert last_success_in(render(sample_snapshot()), "node-b") is None  # another node's file

    def test_the_pod_probers_own(self) -> None:
        pod = render(dataclasses.replace(sample_snapshot(), pod_path=True))
        assert last_success_in(pod, "node-a", pod_path=True) == 1_700_000_000.0
        assert last_success_in(pod, "node-a") is None
        assert last_success_in(render(sample_snapshot()), "node-a", pod_path=True) is None

    @pytest.mark.parametrize("text", ["", "garbage\n",
                                      f'{contract.LAST_SUCCESS.name}{{source_node="a"}} NaN\n',
                                      f'{contract.LAST_SUCCESS.name}{{source_node="a"}} -1.0\n'])
    def test_nothing_usable(self, text: str) -> None:
        assert last_success_in(text, "a") is None
