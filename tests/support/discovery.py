"""Running `node-ping discover`'s controller against the stand-in API server (fake_kube_api), and
reading back what it wrote with the exporter's own loader, `node_ping.targets.parse_nodes`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from node_ping.discover.cache import SelectorRefused
from node_ping.discover.config import DiscoverSettings
from node_ping.discover.controller import Discovery
from node_ping.targets import NodeTarget, parse_nodes
from tests.support.fake_kube_api import FakeKubeAPI

NS = "monitoring"
CM = "node-ping-nodes"
CM_PATH = f"/api/v1/namespaces/{NS}/configmaps/{CM}"
NODES_PATH = "/api/v1/nodes"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"
#: The labels of the pod-network prober's pods in these tests, and the selector that picks them.
PROBER_LABELS = {"app.kubernetes.io/name": "node-ping", "app.kubernetes.io/component": "pod-prober"}
POD_SELECTOR = ",".join(f"{key}={value}" for key, value in PROBER_LABELS.items())

# Quick retries and pages of two, so outages heal and paging happens within a test's patience.
FAST = DiscoverSettings(namespace=NS, configmap=CM, watch_timeout_seconds=30, request_timeout=(2.0, 2.0),
                        backoff_initial_seconds=0.05, backoff_max_seconds=0.4, settle_seconds=0.0, page_size=2)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll until `condition()` is truthy and return it; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}; last value: {value!r}")
        time.sleep(0.02)


def stored_text(kube: FakeKubeAPI, key: str = "nodes.json") -> str | None:
    configmap = kube.configmap(NS, CM)
    return None if configmap is None else (configmap.get("data") or {}).get(key)


def stored_targets(kube: FakeKubeAPI, key: str = "nodes.json") -> tuple[NodeTarget, ...] | None:
    """What the exporter would probe, read from the ConfigMap by its own loader (`key` pods.json:
    what the pod-network prober would probe)."""
    text = stored_text(kube, key)
    if text is None:
        return None
    parsed = parse_nodes(text, key)
    assert parsed.problems == ()
    return parsed.targets


def target(name: str, address: str, zone: str | None = None, rack: str | None = None) -> NodeTarget:
    return NodeTarget(name=name, address=address, zone=zone, rack=rack)


def wait_targets(kube: FakeKubeAPI, *expected: NodeTarget, timeout: float = 15.0) -> None:
    wait_for(lambda: stored_targets(kube) == tuple(expected), f"nodes.json to list {expected}", timeout)


def wait_pods(kube: FakeKubeAPI, *expected: NodeTarget, timeout: float = 15.0) -> None:
    wait_for(lambda: stored_targets(kube, "pods.json") == tuple(expected), f"pods.json to list {expected}", timeout)


@dataclass


@dataclass
class Running:
    discovery: Discovery
    stop: threading.Event
    thread: threading.Thread

    def caught_up(self, kube: FakeKubeAPI) -> bool:
        """The controller has seen every Node (and prober Pod) change and the ConfigMap holds what it calls for."""
        status = self.discovery.status()
        pods_caught_up = not status.pods_synced or (
            status.pods_resource_version is not None
            and int(status.pods_resource_version) >= kube.latest_pod_change(NS)
            and status.pods_stored is not None and status.pods_stored == status.pods_desired)
        return (status.nodes_resource_version is not None
                and int(status.nodes_resource_version) >= kube.latest_node_change()
                and status.stored is not None and status.stored == status.desired and pods_caught_up)


class Controllers:
    """Controllers run in threads against the stand-in API server; leaving the `with` block stops and
    joins every one."""

    def __init__(self, kube: FakeKubeAPI) -> None:
        self.kube = kube
        self.running: list[Running] = []
        self.api_clients: list[Any] = []

    def api(self) -> Any:
        """A CoreV1Api for the stand-in, closed by `close`."""
        configuration = client.Configuration(host=self.kube.url)
        configuration.proxy = None  # straight to 127.0.0.1, whatever the environment says
        api_client = client.ApiClient(configuration)
        self.api_clients.append(api_client)
        return client.CoreV1Api(api_client)

    def start(self, **overrides: Any) -> Running:
        stop = threading.Event()
        discovery = Discovery(self.api(), replace(FAST, **overrides), stop)
        thread = threading.Thread(target=discovery.run, name="discovery-under-test")
        thread.start()
        self.running.append(Running(discovery, stop, thread))
        return self.running[-1]

    def __enter__(self) -> Controllers:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        for each in self.running:
            each.stop.set()
        for each in self.running:
            each.thread.join(timeout=10)
        for api_client in self.api_clients:
            api_client.close()
        assert not [each for each in self.running if each.thread.is_alive()], "a controller did not stop"
        # Stopping may leave a watch thread a few seconds to return from its socket read (see
        # Discovery._join); it must end, but a busy machine may take a while.
        wait_for(lambda: not watch_threads(), "the controllers' watch threads to end", timeout=15)


def refusal(controllers: Controllers, **overrides: Any) -> SelectorRefused:
    """Run a controller with these settings (a selector the API server refuses) until it gives up;
    what it gave up with."""
    stop = threading.Event()
    discovery = Discovery(controllers.api(), replace(FAST, **overrides), stop)
    refused: list[SelectorRefused] = []

    def run() -> None:
        try:
            discovery.run()
        except SelectorRefused as err:
            refused.append(err)

    thread = threading.Thread(target=run, name="discovery-under-test")
    thread.start()
    thread.join(timeout=15)
    try:
        assert not thread.is_alive(), "the controller kept retrying a selector the API server refuses"
    finally:
        stop.set()
        thread.join(timeout=10)
    assert stop.is_set()
    assert len(refused) == 1, refused
    return refused[0]


def watch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("discover-")]


def write_kubeconfig(path: Path, server: str, namespace: str | None = None) -> Path:
    """A kubeconfig whose current context points at `server`, as `kubectl` reads it."""
    context: dict[str, str] = {"cluster": "fake", "user": "fake"}
    if namespace is not None:
        context["namespace"] = namespace
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "fake", "context": context}],
    }))
    return path
