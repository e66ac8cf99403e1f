"""node_ping.discover.controller: the ConfigMap follows the cluster's nodes, whatever the API server does.

The controller is tested against tests/support/fake_kube_api.py, which stands in for a Kubernetes
API server, since none can run on this machine: the real `kubernetes` client talks to it over real
HTTP on 127.0.0.1, with real watches, 410 Gone, conflicts, outages and other writers. What the
controller writes is read back with the exporter's own loader, `node_ping.targets.parse_nodes`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from node_ping.discover.controller import LABELS
from node_ping.discover.nodes import render_nodes_json
from tests.support.discovery import (
    CM,
    CM_PATH,
    NODES_PATH,
    NS,
    Running,
    stored_targets,
    stored_text,
    target,
    wait_for,
    wait_targets,
    watch_threads,
)
from tests.support.fake_kube_api import FakeKubeAPI, make_node


def messages(caplog: pytest.LogCaptureFixture, fragment: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if fragment in r.getMessage()]


class TestSync:
    """The ConfigMap follows the cluster's nodes: created at start, updated on every real change."""

    def test_initial_list_creates_the_configmap(self, kube: FakeKubeAPI, start: Callable[..., Running]) -> None:
        kube.put_node(make_node("c", "10.0.0.3"))
        kube.put_node(make_node("a", "10.0.0.1", zone="z1"))
        kube.put_node(make_node("b", "10.0.0.2", zone="z2", ready=False))  # NotReady: still probed
        start()
        wait_targets(kube, target("a", "10.0.0.1", "z1"), target("b", "10.0.0.2", "z2"), target("c", "10.0.0.3"))
        configmap = kube.configmap(NS, CM)
        assert configmap is not None
        assert configmap["metadata"]["labels"] == LABELS
        assert stored_text(kube) == render_nodes_json(stored_targets(kube) or ())
        assert kube.count("POST", f"/api/v1/namespaces/{NS}/configmaps") == 1
        # Three nodes in pages of two: the list was followed to its end.
        assert kube.count("GET", NODES_PATH, status=200, watch=False) == 2

    def test_nodes_join_leave_and_move(self, kube: FakeKubeAPI, start: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        start()
        wait_targets(kube, target("a", "10.0.0.1"))
        kube.put_node(make_node("b", "10.0.0.2", zone="z1"))
        wait_targets(kube, target("a", "10.0.0.1"), target("b", "10.0.0.2", "z1"))
        kube.delete_node("a")
        wait_targets(kube, target("b", "10.0.0.2", "z1"))
        kube.put_node(make_node("b", "10.0.0.20", zone="z1"))
        wait_targets(kube, target("b", "10.0.0.20", "z1"))
        kube.put_node(make_node("b", "10.0.0.20", zone="z2"))
        wait_targets(kube, target("b", "10.0.0.20", "z2"))

    def test_empty_cluster_writes_an_empty_list(self, kube: FakeKubeAPI, start: Callable[..., Running]) -> None:
        start()
        wait_targets(kube)
        assert stored_text(kube) == "[]\n"

    def test_node_without_address_is_left_out_until_it_has_one(
            self, kube: FakeKubeAPI, start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="node_ping")
        kube.put_node(make_node("a", "10.0.0.1"))
        kube.put_node(make_node("new"))  # registered, no IP reported yet
        running = start()
        wait_targets(kube, target("a", "10.0.0.1"))
        for _ in range(3):  # status updates that still carry no IP
            kube.put_node(make_node("new", ready=False))
        wait_for(lambda: running.caught_up(kube), "the controller to see every change")
        assert len(messages(caplog, "Node new has no address")) == 1
        kube.put_node(make_node("new", "10.0.0.9"))
        wait_targets(kube, target("a", "10.0.0.1"), target("new", "10.0.0.9"))

    def test_address_preference_end_to_end(self, kube: FakeKubeAPI, start: Callable[..., Running]) -> None:
        kube.put_node(make_node("both", "10.0.0.1", "203.0.113.1"))
        kube.put_node(make_node("external-only", None, "203.0.113.2"))
        first = start()
        wait_targets(kube, target("both", "10.0.0.1"), target("external-only", "203.0.113.2"))
        first.stop.set()
        first.thread.join(timeout=10)
        start(address_types=("ExternalIP",))
        wait_targets(kube, target("both", "203.0.113.1"), target("external-only", "203.0.113.2"))


class TestNoChurn:
    """The ConfigMap is written only when the target list changes, so exporter pods' volumes stay still."""

    def test_node_status_updates_do_not_write(self, kube: FakeKubeAPI, start: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1", zone="z1"))
        kube.put_node(make_node("b", "10.0.0.2"))
        running = start()
        wait_targets(kube, target("a", "10.0.0.1", "z1"), target("b", "10.0.0.2"))
        wait_for(lambda: running.caught_up(kube), "the controller to settle")
        writes = kube.count("PUT", CM_PATH) + kube.count("POST", f"/api/v1/namespaces/{NS}/configmaps")
        for ready in (False, True, False):  # heartbeats and NotReady flips: same names, addresses, zones
            kube.put_node(make_node("a", "10.0.0.1", zone="z1", ready=ready))
        kube.put_node(make_node("b", "10.0.0.2", external_ip="203.0.113.2"))  # a less preferred address appears
        wait_for(lambda: running.caught_up(kube), "the controller to see the status updates")
        assert kube.count("PUT", CM_PATH) + kube.count("POST", f"/api/v1/namespaces/{NS}/configmaps") == writes
        # A real change is still written, exactly once.
        kube.put_node(make_node("c", "10.0.0.3"))
        wait_targets(kube, target("a", "10.0.0.1", "z1"), target("b", "10.0.0.2"), target("c", "10.0.0.3"))
        wait_for(lambda: running.caught_up(kube), "the controller to settle")
        assert kube.count("PUT", CM_PATH) == 1
        assert running.discovery.status().writes == 2  # the create and this update

    def test_restart_with_an_up_to_date_configmap_writes_nothing(
            self, kube: FakeKubeAPI, start: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        first = start()
        wait_targets(kube, target("a", "10.0.0.1"))
        wait_for(lambda: first.caught_up(kube), "the first controller to settle")
        first.stop.set()
        first.thread.join(timeout=10)
        resource_version = (kube.configmap(NS, CM) or {})["metadata"]["resourceVersion"]
        second = start()
        wait_for(lambda: second.caught_up(kube), "the second controller to compare the ConfigMap")
        assert (kube.configmap(NS, CM) or {})["metadata"]["resourceVersion"] == resource_version
        assert kube.count("PUT", CM_PATH) == 0
        assert second.discovery.status().writes == 0


class TestOwnership:
    """The controller owns nodes.json: other writers' edits and deletions are undone, their other keys kept."""

    def test_deleted_configmap_is_recreated(self, kube: FakeKubeAPI, start: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        start()
        wait_targets(kube, target("a", "10.0.0.1"))
        kube.delete_configmap(NS, CM)
        wait_for(lambda: kube.count("POST", f"/api/v1/namespaces/{NS}/configmaps", status=201) == 2,
                 "the ConfigMap to be created again")
        wait_targets(kube, target("a", "10.0.0.1"))
        assert (kube.configmap(NS, CM) or {})["metadata"]["labels"] == LABELS

    def test_edited_nodes_json_is_restored_and_other_keys_kept(
            self, kube: FakeKubeAPI, start: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        running = start()
        wait_targets(kube, target("a", "10.0.0.1"))
        edited = kube.configmap(NS, CM)
        assert edited is not None
        edited["data"]["nodes.json"] = '[{"name": "intruder", "ipAddress": "192.0.2.66"}]'
        edited["data"]["note.txt"] = "kept"
        kube.put_configmap(edited)
        wait_targets(kube, target("a", "10.0.0.1"))
        wait_for(lambda: running.caught_up(kube), "the controller to settle")
        assert (kube.configmap(NS, CM) or {})["data"]["note.txt"] == "kept"
        puts = kube.count("PUT", CM_PATH, status=200)
        # An edit of another key only is none of its business: the next write keeps it, and no extra write.
        edited = kube.configmap(NS, CM) or {}
        edited["data"]["note.txt"] = "changed"
        kube.put_configmap(edited)
        kube.put_node(make_node("b", "10.0.0.2"))  # a later change proves it kept watching
        wait_targets(kube, target("a", "10.0.0.1"), target("b", "10.0.0.2"))
        wait_for(lambda: running.caught_up(kube), "the controller to settle")
        assert (kube.configmap(NS, CM) or {})["data"]["note.txt"] == "changed"
        assert kube.count("PUT", CM_PATH, status=200) == puts + 1

    def test_edit_is_restored_even_if_the_first_read_fails(
            self, kube: FakeKubeAPI, start: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        start()
        wait_targets(kube, target("a", "10.0.0.1"))
        kube.fail_next("GET", CM_PATH, 500, times=2)
        edited = kube.configmap(NS, CM) or {}
        edited["data"]["nodes.json"] = "[]"
        kube.put_configmap(edited)
        wait_targets(kube, target("a", "10.0.0.1"))
        assert kube.count("GET", CM_PATH, status=500) == 2

    def test_update_conflict_is_retried(self, kube: FakeKubeAPI, start: Callable[..., Running],
                                        caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="node_ping")
        kube.put_node(make_node("a", "10.0.0.1"))
        start()
        wait_targets(kube, target("a", "10.0.0.1"))

        def other_writer(api: FakeKubeAPI) -> None:
            configmap = api.configmap(NS, CM) or {}
            configmap.setdefault("metadata", {}).setdefault("annotations", {})["someone/else"] = "was here"
            api.put_configmap(configmap)

        kube.edit_before_next_put(other_writer)
        kube.put_node(make_node("b", "10.0.0.2"))
        wait_targets(kube, target("a", "10.0.0.1"), target("b", "10.0.0.2"))
        assert kube.count("PUT", CM_PATH, status=409) == 1
        assert kube.count("PUT", CM_PATH, status=200) == 1
        assert (kube.configmap(NS, CM) or {})["metadata"]["annotations"] == {"someone/else": "was here"}
        # A lost race is routine: read again and write at once, no failure and no backoff.
        assert messages(caplog, "changed while being written (HTTP 409)")
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class TestConflictStreak:
    """Losing the write race again and again is busy co-writers, not a bug: back off, log once, converge."""

    def test_many_conflicts_in_a_row_back_off_without_a_traceback(
            self, kube: FakeKubeAPI, start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="node_ping")
        kube.put_node(make_node("a", "10.0.0.1"))
        start()
        wait_targets(kube, target("a", "10.0.0.1"))
        conflict = ('Operation cannot be fulfilled on configmaps "node-ping-nodes": the object has been modified; '
                    "please apply your changes to the latest version and try again")
        kube.fail_next("PUT", CM_PATH, 409, times=12, message=conflict)  # more than two rounds of five
        kube.put_node(make_node("b", "10.0.0.2"))
        wait_targets(kube, target("a", "10.0.0.1"), target("b", "10.0.0.2"))
        assert kube.count("PUT", CM_PATH, status=409) == 12
        where = f"updating ConfigMap {NS}/{CM}"
        failures = messages(caplog, f"{where} failed:")
        assert len(failures) == 1, failures
        assert "changed under every one of 5 writes in a row" in failures[0]
        assert not [r for r in caplog.records if r.exc_info], "logged with a traceback, as if it were a bug"
        wait_for(lambda: messages(caplog, f"{where} works again"), "the recovery to be logged")


class TestApiTrouble:
    """Outages, refusals, dropped and hanging connections: it converges and never dies."""

    @pytest.mark.parametrize("kind", [500, "drop", "hang"])
    def test_outage_converges_and_logs_once(self, kube: FakeKubeAPI, start: Callable[..., Running],
                                            caplog: pytest.LogCaptureFixture, kind: str | int) -> None:
        caplog.set_level(logging.INFO, logger="node_ping")
        kube.put_node(make_node("a", "10.0.0.1"))
        # A short resync and read timeout, so the ConfigMap is re-read (and times out) during a hang.
        running = start(resync_seconds=0.3, request_timeout=(1.0, 1.0))
        wait_targets(kube, target("a", "10.0.0.1"))

        def failed_requests() -> int:
            return sum(1 for r in list(kube.requests) if r.status in (0, 500))

        with kube.outage(kind):
            kube.delete_node("a")
            kube.put_node(make_node("b", "10.0.0.2"))
            wait_for(lambda: failed_requests() >= 5, "the controller to keep retrying", timeout=30)
            assert running.thread.is_alive()
        wait_targets(kube, target("b", "10.0.0.2"))
        wait_for(lambda: messages(caplog, "works again"), "the recovery to be logged")
        for loop in ("watching Nodes", f"updating ConfigMap {NS}/{CM}", f"watching ConfigMap {NS}/{CM}"):
            assert len(messages(caplog, f"{loop} failed:")) <= 1, f"{loop}: logged every retry"
        assert failed_requests() >= 5
        assert running.thread.is_alive()

    def test_missing_permission_is_logged_with_the_servers_words(
            self, kube: FakeKubeAPI, start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
        forbidden = ('nodes is forbidden: User "system:serviceaccount:monitoring:node-ping" cannot list resource '
                     '"nodes" in API group "" at the cluster scope')
        kube.fail_next("GET", NODES_PATH, 403, times=3, message=forbidden)
        kube.put_node(make_node("a", "10.0.0.1"))
        start()
        wait_targets(kube, target("a", "10.0.0.1"))  # once the permission is there
        assert messages(caplog, f"watching Nodes failed: HTTP 403 Forbidden: {forbidden}")
        assert len(messages(caplog, "watching Nodes failed:")) == 1

    def test_watches_that_end_at_once_are_retried_with_backoff(
            self, kube: FakeKubeAPI, start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        kube.watches_end_at_once = True
        start()
        wait_targets(kube, target("a", "10.0.0.1"))
        wait_for(lambda: kube.count("GET", NODES_PATH, watch=True) >= 4, "the controller to watch again")
        assert len(messages(caplog, "watching Nodes failed: ShortWatch")) == 1
        kube.watches_end_at_once = False
        kube.put_node(make_node("b", "10.0.0.2"))
        wait_targets(kube, target("a", "10.0.0.1"), target("b", "10.0.0.2"))

    def test_stops_promptly_with_watches_open(self, kube: FakeKubeAPI, start: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        running = start(watch_timeout_seconds=300)
        wait_targets(kube, target("a", "10.0.0.1"))
        wait_for(lambda: kube.count("GET", NODES_PATH, watch=True) >= 1, "the Node watch to open")
        running.stop.set()
        running.thread.join(timeout=5)
        assert not running.thread.is_alive()
        wait_for(lambda: not watch_threads(), "the watch threads to end", timeout=5)


class TestConfigMapLimit:
    """A node list the API server would refuse (over 1 MiB in the ConfigMap) is not written: the error
    says so and what to do, and the exporters keep the list last written."""

    @staticmethod
    def configmap(data: dict[str, str]) -> dict[str, object]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": NS, "name": CM, "labels": LABELS},
                "data": data}

    def test_too_many_nodes(self, kube: FakeKubeAPI, start: Callable[..., Running],
                            caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="node_ping")
        written = render_nodes_json([target("a", "10.0.0.1")])
        kube.put_configmap(self.configmap({"nodes.json": written}))
        # 8,200 nodes with 63-character names and IPv6 addresses: one entry is 130 bytes.
        kube.load_nodes([make_node(f"node-{i:06d}-".ljust(63, "x"),
                                   f"fd00:1234:5678:9abc:def0:1000:{0x1000 + i:x}:abcd") for i in range(8_200)])
        start(page_size=2_000)
        [message] = wait_for(lambda: messages(caplog, "more than the 1,048,576 bytes"), "the error")
        assert message.startswith(f"ConfigMap {NS}/{CM}: nodes.json for 8,200 nodes is 1,06")
        assert message.endswith("not writing it, so the exporters keep the node list last written. Probe fewer nodes "
                                "(--node-selector).")
        assert [r.levelname for r in caplog.records if r.getMessage() == message] == ["ERROR"]
        assert stored_text(kube) == written
        assert kube.count("PUT", CM_PATH) == 0

    def test_other_keys_count_too(self, kube: FakeKubeAPI, start: Callable[..., Running],
                                  caplog: pytest.LogCaptureFixture) -> None:
        kube.put_configmap(self.configmap({"nodes.json": "[]\n", "notes": "x" * (1024 * 1024 - 10)}))
        kube.put_node(make_node("a", "10.0.0.1"))
        start()
        [message] = wait_for(lambda: messages(caplog, "with the ConfigMap's other keys"), "the error")
        assert message.endswith("or move the other keys out of this ConfigMap.")
        assert stored_text(kube) == "[]\n"
        assert kube.count("PUT", CM_PATH) == 0
