"""The MTU probe and the pod network in diagnose, against a real, backfilled Prometheus: packets of the
MTU size lost while small pings pass is named as a path MTU fault; pods that cannot reach each other
while their hosts can is named as the pod network (CNI); a pair lossy on the host path too is left to
the host verdicts."""

from __future__ import annotations

import time
from collections.abc import Callable

from node_ping.diagnose.address import parse_address
from node_ping.diagnose.analysis import Thresholds, diagnose
from node_ping.diagnose.prometheus import Prometheus
from node_ping.diagnose.queries import fetch_matrix
from tests.support import promdata
from tests.support.promdata import Mesh, isolated

NODES = [f"node-{i}" for i in range(1, 9)]
THRESHOLDS = Thresholds(node_loss_ratio=0.01)


def verdicts(mesh: Mesh, prometheus_with: Callable[[str], str]) -> list[tuple[str, tuple[str, ...], str]]:
    end = int(time.time())
    url = prometheus_with(promdata.openmetrics(mesh, end))
    with Prometheus(parse_address(url), 30.0, {}) as prometheus:
        matrix = fetch_matrix(prometheus, "15m", end, THRESHOLDS)
    return sorted((v.kind, v.nodes, v.message) for v in diagnose(matrix, THRESHOLDS))


def test_mtu_black_hole_on_one_node(prometheus_with: Callable[[str], str]) -> None:
    mesh = Mesh(NODES, mtu_loss=isolated(NODES, "node-3"), pod_loss={}, mtu=1500)
    ((kind, nodes, message),) = verdicts(mesh, prometheus_with)
    assert (kind, nodes) == ("mtu-node", ("node-3",))
    assert message.startswith("packets of 1500 bytes to and from node node-3 are lost while small ones pass: "
                              "a path MTU below 1500 at node-3")


def test_mtu_black_hole_on_one_link_names_the_size(prometheus_with: Callable[[str], str]) -> None:
    mesh = Mesh(NODES, mtu_loss={("node-2", "node-6"): 1.0, ("node-6", "node-2"): 1.0}, mtu=9000)
    ((kind, nodes, message),) = verdicts(mesh, prometheus_with)
    assert (kind, nodes) == ("mtu-link", ("node-2", "node-6"))
    assert "packets of 9000 bytes are lost between node-2 and node-6 while small ones pass" in message


def test_pod_network_fault_is_the_cni_not_the_switch(prometheus_with: Callable[[str], str]) -> None:
    mesh = Mesh(NODES, pod_loss=isolated(NODES, "node-5"), mtu_loss={})
    ((kind, nodes, message),) = verdicts(mesh, prometheus_with)
    assert (kind, nodes) == ("pod-network-node", ("node-5",))
    assert "the pod network (CNI) on node-5, not the switch" in message


def test_a_node_down_on_every_path_is_one_host_verdict(prometheus_with: Callable[[str], str]) -> None:
    cut = isolated(NODES, "node-4")
    mesh = Mesh(NODES, loss=cut, pod_loss=cut, mtu_loss=cut)
    assert [(k, n) for k, n, _ in verdicts(mesh, prometheus_with)] == [("node-isolated", ("node-4",))]


def test_paths_healthy_or_not_probed_say_nothing_more(prometheus_with: Callable[[str], str]) -> None:
    assert [(k, n) for k, n, _ in verdicts(Mesh(NODES, pod_loss={}, mtu_loss={}), prometheus_with)] == [
        ("healthy", tuple(NODES))]
    assert [(k, n) for k, n, _ in verdicts(Mesh(NODES), prometheus_with)] == [("healthy", tuple(NODES))]
