"""node_ping.discover.cache: the Nodes are listed in pages, then watched, and the selector is the API server's to judge.

Run through the whole controller against the stand-in API server, tests/support/fake_kube_api.py
(see tests/support/discovery.py).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from node_ping.targets import parse_nodes
from tests.support.discovery import (
    CM,
    NODES_PATH,
    NS,
    Controllers,
    Running,
    refusal,
    target,
    wait_for,
    wait_targets,
)
from tests.support.fake_kube_api import FakeKubeAPI, make_node


class TestNodeSelector:
    """Only the nodes the exporter runs on are pinged: others would stay silent forever."""

    def test_only_selected_nodes_are_listed_and_followed(self, kube: FakeKubeAPI,
                                                         start: Callable[..., Running]) -> None:
        linux, windows = {"kubernetes.io/os": "linux"}, {"kubernetes.io/os": "windows"}
        kube.put_node(make_node("a", "10.0.0.1", labels=linux))
        kube.put_node(make_node("b", "10.0.0.2", labels=linux))
        kube.put_node(make_node("win-1", "10.0.0.11", labels=windows))
        running = start(node_selector="kubernetes.io/os=linux")
        wait_targets(kube, target("a", "10.0.0.1"), target("b", "10.0.0.2"))
        assert all(r.query.get("labelSelector") == "kubernetes.io/os=linux"
                   for r in kube.requests if r.path == NODES_PATH)
        kube.put_node(make_node("win-2", "10.0.0.12", labels=windows))  # joins, but runs no exporter
        kube.put_node(make_node("c", "10.0.0.3", labels=linux))
        wait_targets(kube, target("a", "10.0.0.1"), target("b", "10.0.0.2"), target("c", "10.0.0.3"))
        # Relabelled out of the selection: the watch reports it DELETED; relabelled in: ADDED.
        kube.put_node(make_node("b", "10.0.0.2", labels=windows))
        kube.put_node(make_node("win-1", "10.0.0.11", labels=linux))
        wait_targets(kube, target("a", "10.0.0.1"), target("c", "10.0.0.3"), target("win-1", "10.0.0.11"))
        wait_for(lambda: running.caught_up(kube), "the controller to see every change")
        assert kube.count("GET", NODES_PATH, status=200, watch=False) == 1  # listed once, the rest watched

    def test_without_a_selector_every_node_is_listed(self, kube: FakeKubeAPI,
                                                      start: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1", labels={"kubernetes.io/os": "linux"}))
        kube.put_node(make_node("win", "10.0.0.11", labels={"kubernetes.io/os": "windows"}))
        start()
        wait_targets(kube, target("a", "10.0.0.1"), target("win", "10.0.0.11"))
        assert not [r for r in kube.requests if "labelSelector" in r.query]


class TestRefusedSelector:
    """The API server judges the selector: refused before any list worked, the controller stops with
    the server's own reason instead of retrying what would be refused for ever."""

    def test_unparsable_selector_ends_the_controller_after_one_list(
            self, kube: FakeKubeAPI, controllers: Controllers) -> None:
        kube.put_node(make_node("a", "10.0.0.1", labels={"kubernetes.io/os": "linux"}))
        err = refusal(controllers, node_selector="os=linux os=windows")
        assert err.selector == "os=linux os=windows"
        assert err.reason.startswith("HTTP 400 Bad Request: unable to parse requirement: 'os=linux os=windows'")
        assert "'os=linux os=windows'" in str(err) and err.reason in str(err)
        assert kube.count("GET", NODES_PATH, watch=False) == 1
        assert kube.count("GET", NODES_PATH, watch=True) == 0
        assert kube.configmap(NS, CM) is None  # nothing written for a selection nobody could make

    def test_unprocessable_selector_ends_the_controller(self, kube: FakeKubeAPI, controllers: Controllers) -> None:
        invalid = 'unable to parse requirement: values[0][kubernetes.io/os]: Invalid value: "Linux!"'
        kube.fail_next("GET", NODES_PATH, 422, message=invalid)
        err = refusal(controllers, node_selector="kubernetes.io/os=linux")
        assert err.reason.startswith("HTTP 422 ") and err.reason.endswith(f": {invalid}")
        assert kube.count("GET", NODES_PATH, watch=False) == 1

    def test_a_400_once_the_selector_worked_is_retried(self, kube: FakeKubeAPI,
                                                        start: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1", labels={"kubernetes.io/os": "linux"}))
        running = start(node_selector="kubernetes.io/os=linux")
        wait_targets(kube, target("a", "10.0.0.1"))
        kube.fail_next("GET", NODES_PATH, 400, times=2)
        with kube.outage(503):
            kube.compact()  # the watch resumes too late: a fresh list, refused twice, then answered
        kube.put_node(make_node("b", "10.0.0.2", labels={"kubernetes.io/os": "linux"}))
        wait_targets(kube, target("a", "10.0.0.1"), target("b", "10.0.0.2"))
        assert kube.count("GET", NODES_PATH, status=400) == 2
        assert running.thread.is_alive()

    def test_a_400_without_a_selector_is_retried(self, kube: FakeKubeAPI, start: Callable[..., Running]) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        kube.fail_next("GET", NODES_PATH, 400, times=2)
        running = start()
        wait_targets(kube, target("a", "10.0.0.1"))
        assert kube.count("GET", NODES_PATH, status=400) == 2
        assert running.thread.is_alive()


class TestExpiredWatch:
    """History the API server no longer keeps (410 Gone) means a fresh list: only that is complete."""

    @pytest.mark.parametrize("expired_as_http", [False, True], ids=["error-event", "http-410"])
    def test_expired_watch_relists(self, kube: FakeKubeAPI, start: Callable[..., Running],
                                   expired_as_http: bool) -> None:
        kube.expired_as_http = expired_as_http
        kube.put_node(make_node("a", "10.0.0.1"))
        kube.put_node(make_node("b", "10.0.0.2"))
        running = start()
        wait_targets(kube, target("a", "10.0.0.1"), target("b", "10.0.0.2"))
        lists = kube.count("GET", NODES_PATH, status=200, watch=False)
        with kube.outage(503):
            # Changes the controller cannot see, then the history that would tell it about them is gone.
            kube.delete_node("a")
            kube.put_node(make_node("b", "10.0.0.20"))
            kube.put_node(make_node("c", "10.0.0.3"))
            kube.compact()
        wait_targets(kube, target("b", "10.0.0.20"), target("c", "10.0.0.3"))
        assert kube.expired_answers >= 1
        assert kube.count("GET", NODES_PATH, status=200, watch=False) > lists
        assert running.thread.is_alive()


def fat_nodes(count: int) -> list[dict[str, Any]]:
    """`count` Nodes as big as real ones: ~18 KB of JSON, ~66 KB of Python objects once parsed.

    Images, managedFields, annotations, conditions and nodeInfo are what make real Nodes heavy. The
    bulky parts are shared between the objects here, so the stand-in server holds little; every
    client still receives and parses each Node in full.
    """
    images = [{"names": [f"registry.example.com/team/image-{i}@sha256:{'0' * 64}",
                         f"registry.example.com/team/image-{i}:v1.{i}"], "sizeBytes": 123456789 + i}
              for i in range(50)]
    managed = [{"manager": f"manager-{i}", "operation": "Update", "apiVersion": "v1", "time": "2024-01-01T00:00:00Z",
                "fieldsType": "FieldsV1", "fieldsV1": {f"f:field-{j}": {} for j in range(40)}} for i in range(6)]
    annotations = {f"annotation.example.com/a-{i}": "x" * 60 for i in range(10)}
    conditions = [{"type": f"Condition{i}", "status": "False", "reason": "Fine", "message": "m" * 80,
                   "lastHeartbeatTime": "2024-01-01T00:00:00Z", "lastTransitionTime": "2024-01-01T00:00:00Z"}
                  for i in range(5)]
    node_info = {key: "v" * 40 for key in ("machineID", "systemUUID", "bootID", "kernelVersion", "osImage",
                                            "containerRuntimeVersion", "kubeletVersion", "kubeProxyVersion")}
    extra_labels = {f"node.example.com/label-{i}": f"value-{i}" for i in range(20)}
    nodes = []
    for i in range(count):
        node = make_node(f"node-{i:05d}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", zone=f"zone-{i % 3}")
        node["metadata"].update(annotations=annotations, managedFields=managed)
        node["metadata"]["labels"].update(extra_labels)
        node["status"].update(images=images, nodeInfo=node_info)
        node["status"]["conditions"] += conditions
        nodes.append(node)
    return nodes


def python_size(obj: Any) -> int:
    """Bytes of Python objects that parsing `obj`'s JSON allocates."""
    text = json.dumps(obj)
    tracemalloc.start()
    try:
        parsed = json.loads(text)
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del parsed
    return size


class TestLargeCluster:
    """Big clusters fit the discovery container: Nodes are read as plain JSON, one list page at a time."""

    def test_listing_holds_one_page_of_nodes_at_a_time(self, kube: FakeKubeAPI,
                                                       start: Callable[..., Running]) -> None:
        count, page = 2000, 100
        nodes = fat_nodes(count)
        node_size = python_size(nodes[0])
        all_at_once = count * node_size
        assert all_at_once > 100 * 2**20  # the ~130 MiB a controller holding every page at once needs
        # A first controller, on the empty cluster, gets the client's lazy imports done (its models build
        # their pydantic schemas on first use), which the measurement would otherwise count.
        warm_up = start()
        wait_for(lambda: warm_up.caught_up(kube), "the first controller to settle")
        warm_up.stop.set()
        warm_up.thread.join(timeout=10)
        kube.load_nodes(nodes)
        tracemalloc.start()
        try:
            running = start(page_size=page)
            wait_for(lambda: running.discovery.status().nodes_synced, "the first list to finish", timeout=60)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        status = running.discovery.status()
        assert status.desired is not None and len(parse_nodes(status.desired).targets) == count
        # About one page is alive at a time, counted at both ends of the connection (the server's page
        # text, the client's bytes and their parse): a few pages' worth, not the 20 pages of the list.
        assert peak < 4 * page * node_size, (f"peak {peak / 2**20:.0f} MiB, one page {page * node_size / 2**20:.0f} "
                                             f"MiB, all nodes {all_at_once / 2**20:.0f} MiB")

    def test_no_node_is_turned_into_a_model(self, kube: FakeKubeAPI, start: Callable[..., Running],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        """A V1Node model of every Node update costs CPU and memory for fields nobody reads."""
        def refuse(*_args: Any, **_kwargs: Any) -> None:
            raise AssertionError("a Node was deserialized into a V1Node model")

        # The client's one way from JSON to a model (ApiClient.__deserialize_model).
        monkeypatch.setattr(client.V1Node, "from_dict", classmethod(refuse))
        kube.put_node(make_node("a", "10.0.0.1"))
        start()
        wait_targets(kube, target("a", "10.0.0.1"))
        kube.put_node(make_node("b", "10.0.0.2"))  # a watch event
        wait_targets(kube, target("a", "10.0.0.1"), target("b", "10.0.0.2"))
        kube.delete_node("a")
        wait_targets(kube, target("b", "10.0.0.2"))
