"""node_ping.discover.pods and the pod list: the pod-network prober's pods become pods.json.

The pure part (which pods count, which one stands for a node, which of two addresses) is checked
on Pod objects written as the API server sends them; the controller's part against the stand-in
API server, tests/support/fake_kube_api.py (no real one can run here), reading pods.json back with
the exporter's own loader, as the pod prober (`node-ping run --path pod`) reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from node_ping.discover.config import POD_SELECTOR as POD_SELECTOR_SETTING
from node_ping.discover.pods import ProberPod, pick_pods, pod_targets, prober_pod
from tests.support.discovery import (
    NS,
    POD_SELECTOR,
    PODS_PATH,
    PROBER_LABELS,
    Controllers,
    Running,
    refusal,
    stored_text,
    target,
    wait_for,
    wait_pods,
    wait_targets,
)
from tests.support.fake_kube_api import FakeKubeAPI, make_node, make_pod

NODES = (target("a", "10.0.0.1", "z1", "r1"), target("b", "10.0.0.2", "z2"), target("v6", "fd00::6"))


def pod(name: str, node: str | None, ip: str | None, **kwargs: Any) -> dict[str, Any]:
    return make_pod(name, node, ip, labels=PROBER_LABELS, **kwargs)


def running(name: str, node: str, *addresses: str, ready: bool = True,
            created: str = "2024-01-01T00:00:00Z") -> ProberPod:
    return ProberPod(name=name, node=node, addresses=addresses, created=created, ready=ready)


class TestProberPod:
    """Only a running, scheduled pod with an IP, not being deleted, has a prober to ping."""

    def test_running_pod(self) -> None:
        assert prober_pod(pod("p-a", "a", "10.244.0.5")) == running("p-a", "a", "10.244.0.5")

    @pytest.mark.parametrize("obj", [
        pod("p", "a", "10.244.0.5", deleting=True),
        pod("p", None, None, phase="Pending"),
        pod("p", "a", None, phase="Pending"),
        pod("p", "a", "10.244.0.5", phase="Pending"),
        pod("p", "a", "10.244.0.5", phase="Failed"),
        pod("p", "a", "10.244.0.5", phase="Succeeded"),
        pod("p", "a", "not-an-ip"),
    ], ids=["terminating", "unscheduled", "no-ip", "pending", "failed", "succeeded", "bad-ip"])
    def test_left_out(self, obj: dict[str, Any]) -> None:
        assert prober_pod(obj) is None

    def test_dual_stack_addresses_keep_the_primary_first(self) -> None:
        obj = pod("p", "a", "10.244.0.5", ips=["10.244.0.5", "FD00:10:244::5"])
        assert prober_pod(obj) == running("p", "a", "10.244.0.5", "fd00:10:244::5")


class TestPodTargets:
    """pods.json: one entry per node of nodes.json, in the node's address family, with its zone and rack."""

    def test_entries_carry_the_nodes_place(self) -> None:
        pods = [running("p-a", "a", "10.244.0.5"), running("p-b", "b", "10.244.1.5")]
        assert pod_targets(pods, NODES) == (target("a", "10.244.0.5", "z1", "r1"), target("b", "10.244.1.5", "z2"))

    def test_the_nodes_address_family_is_taken(self) -> None:
        dual = ("10.244.0.5", "fd00:10:244::5")
        pods = [running("p-a", "a", *dual), running("p-v6", "v6", *dual)]
        assert pod_targets(pods, NODES) == (target("a", "10.244.0.5", "z1", "r1"), target("v6", "fd00:10:244::5"))
        # No address of the node's family: the pod's primary one, rather than no entry.
        assert pod_targets([running("p-v6", "v6", "10.244.9.9")], NODES) == (target("v6", "10.244.9.9"),)

    def test_a_pod_on_a_node_not_in_nodes_json_is_left_out(self) -> None:
        assert pod_targets([running("p-x", "x", "10.244.7.7")], NODES) == ()

    def test_two_pods_on_one_node(self) -> None:
        """A rolling update: the Ready pod wins, then the newest, then the name; in any order given."""
        old = running("p-old", "a", "10.244.0.5", created="2024-01-01T00:00:00Z")
        new = running("p-new", "a", "10.244.0.6", created="2024-01-02T00:00:00Z")
        new_unready = running("p-new", "a", "10.244.0.6", created="2024-01-02T00:00:00Z", ready=False)
        assert pick_pods([old, new])["a"] is new and pick_pods([new, old])["a"] is new
        assert pick_pods([old, new_unready])["a"] is old and pick_pods([new_unready, old])["a"] is old
        twin = running("p-twin", "a", "10.244.0.7", created="2024-01-02T00:00:00Z")
        assert pick_pods([new, twin])["a"] is twin and pick_pods([twin, new])["a"] is twin


@pytest.fixture
def start_with_pods(controllers: Controllers) -> Callable[..., Running]:
    """A controller with the pod list on, as the chart runs it with podNetwork.enabled."""
    return lambda **overrides: controllers.start(**{"pod_selector": POD_SELECTOR, **overrides})


class TestPodList:
    """The pods.json key follows the prober pods of discover's own namespace, as nodes.json the nodes."""

    def test_joins_leaves_and_restarts(self, kube: FakeKubeAPI, start_with_pods: Callable[..., Running]) -> None:
        for name, address in (("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")):
            kube.put_node(make_node(name, address))
        kube.put_pod(pod("p-a", "a", "10.244.0.5"))
        start_with_pods()
        wait_pods(kube, target("a", "10.244.0.5"))
        wait_targets(kube, target("a", "10.0.0.1"), target("b", "10.0.0.2"), target("c", "10.0.0.3"))
        # b's pod is scheduled, then gets its IP and runs: only then is it listed.
        kube.put_pod(pod("p-b", "b", None, phase="Pending"))
        kube.put_pod(pod("p-b", "b", "10.244.1.5"))
        wait_pods(kube, target("a", "10.244.0.5"), target("b", "10.244.1.5"))
        # a's pod is replaced: the old one terminates (left out at once), the new one has a new IP.
        kube.put_pod(pod("p-a", "a", "10.244.0.5", deleting=True))
        wait_pods(kube, target("b", "10.244.1.5"))
        kube.delete_pod(NS, "p-a")
        kube.put_pod(pod("p-a2", "a", "10.244.0.9"))
        wait_pods(kube, target("a", "10.244.0.9"), target("b", "10.244.1.5"))
        # The same pod restarted in a new sandbox, with a new IP: the entry follows it.
        kube.put_pod(pod("p-b", "b", "10.244.1.6"))
        wait_pods(kube, target("a", "10.244.0.9"), target("b", "10.244.1.6"))
        kube.delete_pod(NS, "p-b")
        wait_pods(kube, target("a", "10.244.0.9"))
        # A node that leaves takes its pod's entry with it, even while the pod object lingers.
        kube.delete_node("a")
        wait_pods(kube)
        assert stored_text(kube, "pods.json") == "[]\n"

    def test_other_namespaces_and_other_pods_are_ignored(self, kube: FakeKubeAPI,
                                                         start_with_pods: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        kube.put_node(make_node("b", "10.0.0.2"))
        kube.put_pod(pod("p-a", "a", "10.244.0.5"))
        kube.put_pod(make_pod("p-b", "b", "10.244.1.5", namespace="other", labels=PROBER_LABELS))
        kube.put_pod(make_pod("app-b", "b", "10.244.1.9", labels={"app": "web"}))
        running_controller = start_with_pods()
        wait_pods(kube, target("a", "10.244.0.5"))
        kube.put_pod(make_pod("p-b2", "b", "10.244.1.6", namespace="other", labels=PROBER_LABELS))
        wait_for(lambda: running_controller.caught_up(kube), "the controller to catch up")
        assert stored_text(kube, "pods.json") == '[\n{"ipAddress":"10.244.0.5","name":"a"}\n]\n'
        # Only the namespaced path, with the selector: what a namespaced Role allows.
        pod_requests = [r for r in kube.requests if r.path.endswith("/pods")]
        assert pod_requests and {r.path for r in pod_requests} == {PODS_PATH}
        assert all(r.query.get("labelSelector") == POD_SELECTOR for r in pod_requests)

    def test_two_pods_on_a_node_pick_the_newest_ready_one(self, kube: FakeKubeAPI,
                                                          start_with_pods: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        kube.put_pod(pod("p-old", "a", "10.244.0.5", created="2024-01-01T00:00:00Z"))
        start_with_pods()
        wait_pods(kube, target("a", "10.244.0.5"))
        kube.put_pod(pod("p-new", "a", "10.244.0.6", created="2024-01-02T00:00:00Z", ready=False))
        kube.put_pod(pod("p-new", "a", "10.244.0.6", created="2024-01-02T00:00:00Z"))
        wait_pods(kube, target("a", "10.244.0.6"))

    def test_rack_and_zone_come_from_the_node(self, kube: FakeKubeAPI,
                                              start_with_pods: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1", zone="z1", labels={"example.com/rack": "r7"}))
        kube.put_pod(pod("p-a", "a", "10.244.0.5"))
        start_with_pods(rack_label="example.com/rack")
        wait_targets(kube, target("a", "10.0.0.1", "z1", "r7"))
        wait_pods(kube, target("a", "10.244.0.5", "z1", "r7"))
        kube.put_node(make_node("a", "10.0.0.1", zone="z1", labels={"example.com/rack": "r8"}))
        wait_pods(kube, target("a", "10.244.0.5", "z1", "r8"))

    def test_survives_watch_trouble(self, kube: FakeKubeAPI, start_with_pods: Callable[..., Running]) -> None:
        """The pod watch resumes after a cut, lists again after 410 Gone, and waits out an outage."""
        kube.put_node(make_node("a", "10.0.0.1"))
        kube.put_node(make_node("b", "10.0.0.2"))
        kube.put_pod(pod("p-a", "a", "10.244.0.5"))
        start_with_pods()
        wait_pods(kube, target("a", "10.244.0.5"))
        kube.drop_watches()
        kube.put_pod(pod("p-b", "b", "10.244.1.5"))
        wait_pods(kube, target("a", "10.244.0.5"), target("b", "10.244.1.5"))
        lists = kube.count("GET", PODS_PATH, watch=False)
        kube.compact()
        kube.drop_watches()
        kube.put_pod(pod("p-b", "b", "10.244.1.6"))
        wait_pods(kube, target("a", "10.244.0.5"), target("b", "10.244.1.6"))
        assert kube.count("GET", PODS_PATH, watch=False) > lists  # listed again: the history was gone
        with kube.outage(503):
            kube.put_pod(pod("p-a", "a", "10.244.0.7"))
        wait_pods(kube, target("a", "10.244.0.7"), target("b", "10.244.1.6"))

    def test_without_a_pod_selector_no_pod_is_read(self, kube: FakeKubeAPI,
                                                   start: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        kube.put_pod(pod("p-a", "a", "10.244.0.5"))
        running_controller = start()
        wait_targets(kube, target("a", "10.0.0.1"))
        wait_for(lambda: running_controller.caught_up(kube), "the controller to catch up")
        assert stored_text(kube, "pods.json") is None
        assert not [r for r in kube.requests if "pods" in r.path]

    def test_a_refused_pod_selector_stops_the_controller(self, kube: FakeKubeAPI, controllers: Controllers) -> None:
        """Refused on the first list, the pod selector ends the controller, naming --pod-selector, as
        the node selector does; nothing is written meanwhile that the pods would not agree with."""
        kube.put_node(make_node("a", "10.0.0.1"))
        err = refusal(controllers, pod_selector="app in (node-ping)")
        assert err.setting is POD_SELECTOR_SETTING
        assert "HTTP 400" in err.reason and "app in (node-ping)" in str(err)
        assert kube.count("GET", PODS_PATH, watch=False) == 1
