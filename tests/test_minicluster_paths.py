"""End to end on the other paths: five nodes (network namespaces on two bridges, the hosts' own and
the pod network's) each run the host prober and the pod prober side by side, a real node-exporter per
node serves both textfiles, and a real Prometheus scrapes them (tests/support/minicluster.py with
pod_network=True).

The cluster starts healthy, then two faults are injected at once: one node's pod network drops every
packet (its own address still answers), and another node's port on the hosts' bridge shrinks to an
MTU of 1400 (small pings pass, 1500-byte ones vanish there). `node-ping diagnose` names exactly the
pod network of the one and the MTU of the other, and no host fault: the hosts still reach each other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node_ping import contract
from tests.support import minicluster, netlab
from tests.support.minicluster import WINDOW, MiniCluster

pytestmark = [pytest.mark.netns, pytest.mark.slow]

POD_DOWN, SMALL_MTU = "pod-down", "small-mtu"
NODES = ("ok-1", POD_DOWN, "ok-2", SMALL_MTU, "ok-3")
PORT_MTU = 1400  # below the probe's default 1500: a true black hole on the bridge port

EXPECTED = {("pod-network-node", (POD_DOWN,)), ("mtu-node", (SMALL_MTU,))}
PHRASES = {"pod-network-node": ("the pod network (CNI)", "not the switch"),
           "mtu-node": ("packets of 1500 bytes", "while small ones pass")}

NODE, POD = contract.NODE, contract.POD
PATHS = {"host": (NODE.packets_sent, NODE.packets_received), "MTU": NODE.mtu_metrics,
         "pod": (POD.packets_sent, POD.packets_received)}


def pairs_with(metric: contract.Metric) -> str:
    """The pairs whose `metric` grew over the window."""
    return f"sum by (source_node, destination_node) (increase({metric.name}[{WINDOW}])) > 0"


@pytest.fixture
def lab(lab_factory: Callable[[list[str]], netlab.Lab]) -> netlab.Lab:
    reason = minicluster.available()
    if reason:
        pytest.skip(reason)
    built = lab_factory(list(NODES))  # namespaces removed by lab_factory, after the processes stop
    netlab.add_pod_network(built)
    return built


@pytest.fixture
def cluster(lab: netlab.Lab, tmp_path: Path) -> Iterator[MiniCluster]:
    with minicluster.start(lab, NODES, [], tmp_path, pod_network=True) as running:
        yield running


def wait_for_every_path(cluster: MiniCluster) -> None:
    """Until every pair has pings counted on every path (host, MTU-size, pod) over the window."""
    def measured() -> bool | None:
        missing = {path: cluster.pairs() - set(cluster.prometheus.pair_values(pairs_with(sent)))
                   for path, (sent, _) in PATHS.items()}
        return True if not any(missing.values()) else None

    cluster.wait_until(measured, 60, f"pings counted in the last {WINDOW} for all {len(cluster.pairs())} pairs "
                                     f"on every path ({', '.join(PATHS)})")


def diagnose_json(cluster: MiniCluster, exit_code: int) -> dict[str, Any]:
    result = cluster.diagnose("--output", "json")
    assert result.returncode == exit_code, \
        f"diagnose: exit {result.returncode}, not {exit_code}\n{result.stdout}{result.stderr}{cluster.dump()}"
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def inject_faults(lab: netlab.Lab, cluster: MiniCluster) -> None:
    cluster.nodes[POD_DOWN].drop_pod_network()
    lab.port_mtu(cluster.nodes[SMALL_MTU], PORT_MTU)


def wait_for_fault_only_windows(cluster: MiniCluster) -> None:
    """Until the windows hold only samples from after the faults: no pod reply to or from POD_DOWN and
    no MTU-size reply to or from SMALL_MTU, while those pairs were still probed and every host pair
    still answers."""
    def only_faults() -> bool | None:
        values = {(path, which): set(cluster.prometheus.pair_values(pairs_with(metric)))
                  for path, metrics in PATHS.items()
                  for which, metric in zip(("sent", "received"), metrics, strict=True)}
        everything = cluster.pairs()
        done = (values["pod", "sent"] == values["MTU", "sent"] == values["host", "sent"] == everything
                and values["host", "received"] == everything
                and values["pod", "received"] == {pair for pair in everything if POD_DOWN not in pair}
                and values["MTU", "received"] == {pair for pair in everything if SMALL_MTU not in pair})
        return True if done else None

    cluster.wait_until(only_faults, 60, f"a {WINDOW} window without pod replies to or from {POD_DOWN} and "
                                        f"without MTU-size replies to or from {SMALL_MTU}, all else answering")


class TestPathFaults:
    """A dead pod network on one node and an MTU black hole at another: diagnose names each, and nothing else."""

    def test_pod_network_and_mtu_faults_are_diagnosed(self, lab: netlab.Lab, cluster: MiniCluster) -> None:
        # Healthy first: whatever diagnose names later, the faults made it.
        wait_for_every_path(cluster)
        report = diagnose_json(cluster, 0)
        assert report["healthy"] is True, json.dumps(report["verdicts"], indent=2)

        inject_faults(lab, cluster)
        wait_for_fault_only_windows(cluster)

        report = diagnose_json(cluster, 1)
        verdicts = report["verdicts"]
        shown = json.dumps(verdicts, indent=2) + cluster.dump()
        assert {(v["kind"], tuple(v["nodes"])) for v in verdicts} == EXPECTED, shown
        assert len(verdicts) == len(EXPECTED), shown
        for verdict in verdicts:
            missing = [phrase for phrase in PHRASES[verdict["kind"]] if phrase not in verdict["message"]]
            assert not missing, f"{verdict['kind']} message without {missing}: {verdict['message']!r}"
            # The evidence is the node's whole row and column, every ping of the path lost.
            (node,) = verdict["nodes"]
            cells = {(e["source"], e["destination"]): e["loss_percent"] for e in verdict["evidence"]}
            assert cells == dict.fromkeys({pair for pair in cluster.pairs() if node in pair}, 100.0), shown
        assert report["healthy"] is False
