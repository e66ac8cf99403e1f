"""`node-ping discover`: Node objects in, the exporter's nodes.json out, whatever the API server does.

The pure parts (a Node -> its target entry, the target list -> the exact nodes.json text, "does it
need writing") are tested on their own. The controller is tested against tests/support/fake_kube_api.py,
which stands in for a Kubernetes API server, since none can run on this machine: the real
`kubernetes` client talks to it over real HTTP on 127.0.0.1, with real watches, 410 Gone,
conflicts, outages and other writers. What the controller writes is read back with the exporter's
own loader, `node_ping.targets.parse_nodes`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from node_ping.discover.command import DiscoverSettings, configure_parser, run, settings_from_args
from node_ping.discover.controller import LABELS, Discovery
from node_ping.discover.nodes import (
    needs_write,
    node_target,
    parse_address_types,
    parse_label_selector,
    render_nodes_json,
    summarize_change,
    validate_nodes_json,
)
from node_ping.settings import SettingsError
from node_ping.targets import NodeTarget, parse_nodes
from tests.support.fake_kube_api import FakeKubeAPI, make_node
from tests.support.processes import NODE_PING

NS = "monitoring"
CM = "node-ping-nodes"
CM_PATH = f"/api/v1/namespaces/{NS}/configmaps/{CM}"
NODES_PATH = "/api/v1/nodes"
REPO = Path(__file__).resolve().parents[1]

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


def stored_text(kube: FakeKubeAPI) -> str | None:
    configmap = kube.configmap(NS, CM)
    return None if configmap is None else (configmap.get("data") or {}).get("nodes.json")


def stored_targets(kube: FakeKubeAPI) -> tuple[NodeTarget, ...] | None:
    """What the exporter would probe, read from the ConfigMap by its own loader."""
    text = stored_text(kube)
    if text is None:
        return None
    parsed = parse_nodes(text)
    assert parsed.problems == ()
    return parsed.targets


def target(name: str, address: str, zone: str | None = None) -> NodeTarget:
    return NodeTarget(name=name, address=address, zone=zone)


def wait_targets(kube: FakeKubeAPI, *expected: NodeTarget, timeout: float = 15.0) -> None:
    wait_for(lambda: stored_targets(kube) == tuple(expected), f"nodes.json to list {expected}", timeout)


@dataclass
class Running:
    discovery: Discovery
    stop: threading.Event
    thread: threading.Thread

    def caught_up(self, kube: FakeKubeAPI) -> bool:
        """The controller has seen every Node change and the ConfigMap holds what it calls for."""
        status = self.discovery.status()
        return (status.nodes_resource_version is not None
                and int(status.nodes_resource_version) >= kube.latest_node_change()
                and status.stored is not None and status.stored == status.desired)


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def start(kube: FakeKubeAPI) -> Iterator[Callable[..., Running]]:
    """`start(**settings)` runs a controller in a thread; every one is stopped and joined at teardown."""
    running: list[Running] = []
    api_clients: list[Any] = []

    def start_(**overrides: Any) -> Running:
        configuration = client.Configuration(host=kube.url)
        configuration.proxy = None  # straight to 127.0.0.1, whatever the environment says
        api_client = client.ApiClient(configuration)
        api_clients.append(api_client)
        stop = threading.Event()
        discovery = Discovery(client.CoreV1Api(api_client), replace(FAST, **overrides), stop)
        thread = threading.Thread(target=discovery.run, name="discovery-under-test")
        thread.start()
        running.append(Running(discovery, stop, thread))
        return running[-1]

    try:
        yield start_
    finally:
        for each in running:
            each.stop.set()
        for each in running:
            each.thread.join(timeout=10)
        for api_client in api_clients:
            api_client.close()
        assert not [each for each in running if each.thread.is_alive()], "a controller did not stop"
        # Stopping may leave a watch thread a few seconds to return from its socket read (see
        # Discovery._join); it must end, but a busy machine may take a while.
        wait_for(lambda: not watch_threads(), "the controllers' watch threads to end", timeout=15)


def watch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("discover-")]


def messages(caplog: pytest.LogCaptureFixture, fragment: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if fragment in r.getMessage()]


# -- the pure parts -------------------------------------------------------------------------------


class TestNodeTarget:
    """A Node object becomes one nodes.json entry: the preferred address type, its zone, or nothing yet."""

    def test_internal_ip_is_preferred_over_external_ip(self) -> None:
        node = make_node("n1", "10.0.0.1", "203.0.113.1")
        assert node_target(node, ("InternalIP", "ExternalIP")) == target("n1", "10.0.0.1")

    def test_external_ip_when_there_is_no_internal_ip(self) -> None:
        node = make_node("n1", None, "203.0.113.1")
        assert node_target(node, ("InternalIP", "ExternalIP")) == target("n1", "203.0.113.1")

    def test_preference_is_configurable(self) -> None:
        node = make_node("n1", "10.0.0.1", "203.0.113.1")
        assert node_target(node, ("ExternalIP", "InternalIP")) == target("n1", "203.0.113.1")
        assert node_target(make_node("n2", None, "203.0.113.2"), ("InternalIP",)) is None

    def test_order_of_the_address_list_does_not_override_the_preference(self) -> None:
        node = make_node("n1", addresses=[("ExternalIP", "203.0.113.1"), ("InternalIP", "10.0.0.1")])
        assert node_target(node, ("InternalIP", "ExternalIP")) == target("n1", "10.0.0.1")

    def test_no_address_yet_gives_none(self) -> None:
        assert node_target(make_node("n1"), ("InternalIP", "ExternalIP")) is None  # only a Hostname
        bare = {"metadata": {"name": "n2"}, "status": {}}
        assert node_target(bare, ("InternalIP", "ExternalIP")) is None

    def test_dual_stack_takes_the_first_address_of_the_type(self) -> None:
        node = make_node("n1", addresses=[("InternalIP", "10.0.0.1"), ("InternalIP", "fd00::1")])
        assert node_target(node, ("InternalIP",)) == target("n1", "10.0.0.1")

    def test_malformed_address_falls_through_to_the_next_usable_one(self) -> None:
        node = make_node("n1", addresses=[("InternalIP", "not-an-ip"), ("InternalIP", "fd00:0::0:1")])
        assert node_target(node, ("InternalIP",)) == target("n1", "fd00::1")  # normalised as fping prints it

    def test_zone_from_the_topology_label_only_when_present(self) -> None:
        assert node_target(make_node("n1", "10.0.0.1", zone="eu-1a"), ("InternalIP",)) == target(
            "n1", "10.0.0.1", "eu-1a")
        assert node_target(make_node("n1", "10.0.0.1"), ("InternalIP",)) == target("n1", "10.0.0.1")
        assert node_target(make_node("n1", "10.0.0.1", zone=""), ("InternalIP",)) == target("n1", "10.0.0.1")

    def test_not_ready_node_keeps_its_entry(self) -> None:
        node = make_node("n1", "10.0.0.1", ready=False)
        assert node_target(node, ("InternalIP",)) == target("n1", "10.0.0.1")


class TestRenderNodesJson:
    """The nodes.json text is a pure function of the node set: same set, same bytes."""

    def test_exact_layout(self) -> None:
        text = render_nodes_json([target("b", "10.0.0.2"), target("a", "10.0.0.1", "z1")])
        assert text == ('[\n'
                        '  {\n    "ipAddress": "10.0.0.1",\n    "name": "a",\n    "zone": "z1"\n  },\n'
                        '  {\n    "ipAddress": "10.0.0.2",\n    "name": "b"\n  }\n'
                        ']\n')

    def test_order_of_discovery_does_not_matter(self) -> None:
        nodes = [target(f"node-{i}", f"10.0.0.{i}", "z" if i % 2 else None) for i in range(1, 20)]
        assert render_nodes_json(nodes) == render_nodes_json(reversed(nodes))

    def test_the_exporter_reads_back_what_was_rendered(self) -> None:
        nodes = (target("a", "10.0.0.1", "z1"), target("b", "fd00::2"), target("c", "192.168.1.3", "z2"))
        parsed = parse_nodes(render_nodes_json(nodes))
        assert parsed.targets == nodes
        assert parsed.problems == ()

    def test_empty_cluster_is_an_empty_list(self) -> None:
        assert render_nodes_json([]) == "[]\n"
        assert parse_nodes(render_nodes_json([])).targets == ()

    def test_two_nodes_with_one_address_are_reported(self) -> None:
        problems = validate_nodes_json(render_nodes_json([target("a", "10.0.0.1"), target("b", "10.0.0.1")]))
        assert len(problems) == 1
        assert "'10.0.0.1'" in problems[0] and "'b'" in problems[0]


class TestNeedsWrite:
    """Only a difference in the stored bytes causes a write."""

    def test_identical_text_needs_no_write(self) -> None:
        text = render_nodes_json([target("a", "10.0.0.1")])
        assert not needs_write(text, text)

    def test_missing_or_different_text_needs_a_write(self) -> None:
        text = render_nodes_json([target("a", "10.0.0.1")])
        assert needs_write(None, text)
        assert needs_write(render_nodes_json([target("a", "10.0.0.2")]), text)
        assert needs_write(json.dumps(json.loads(text)), text)  # same content, hand-formatted: put back

    def test_change_summary(self) -> None:
        old = render_nodes_json([target("a", "10.0.0.1"), target("b", "10.0.0.2")])
        new = render_nodes_json([target("a", "10.0.0.9"), target("c", "10.0.0.3")])
        assert summarize_change(old, new) == "1 added, 1 removed, 1 changed"
        assert summarize_change(None, new) == "new"
        assert summarize_change("{oops", new) == "replacing unreadable content"


class TestSettings:
    """Flags and env vars become validated settings; mistakes are sentences that name the fix."""

    @staticmethod
    def parse(argv: list[str]) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        configure_parser(parser)
        return parser.parse_args(argv)

    def test_env_vars_and_defaults(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("POD_NAMESPACE", "ns-from-env")
        monkeypatch.setenv("NODE_PING_CONFIGMAP", "cm-from-env")
        monkeypatch.delenv("NODE_PING_ADDRESS_TYPES", raising=False)
        monkeypatch.delenv("NODE_PING_NODE_SELECTOR", raising=False)
        settings = settings_from_args(self.parse([]), tmp_path / "absent")
        assert (settings.namespace, settings.configmap) == ("ns-from-env", "cm-from-env")
        assert settings.address_types == ("InternalIP", "ExternalIP")
        assert settings.node_selector is None  # every Node
        monkeypatch.setenv("NODE_PING_NODE_SELECTOR", "kubernetes.io/os=linux")
        assert settings_from_args(self.parse([]), tmp_path / "absent").node_selector == "kubernetes.io/os=linux"

    def test_flags_win_over_env_vars(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("POD_NAMESPACE", "ns-from-env")
        monkeypatch.setenv("NODE_PING_CONFIGMAP", "cm-from-env")
        monkeypatch.setenv("NODE_PING_ADDRESS_TYPES", "InternalIP")
        monkeypatch.setenv("NODE_PING_NODE_SELECTOR", "kubernetes.io/os=linux")
        args = self.parse(["--namespace", "ns", "--configmap", "cm", "--address-types", "externalip, InternalIP",
                           "--node-selector", "pool in (a,b)"])
        settings = settings_from_args(args, tmp_path / "absent")
        assert (settings.namespace, settings.configmap) == ("ns", "cm")
        assert settings.address_types == ("ExternalIP", "InternalIP")
        assert settings.node_selector == "pool in (a,b)"

    def test_namespace_falls_back_to_the_pods_own(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv("POD_NAMESPACE", raising=False)
        (tmp_path / "namespace").write_text("kube-system\n")
        settings = settings_from_args(self.parse(["--configmap", "cm"]), tmp_path / "namespace")
        assert settings.namespace == "kube-system"

    def test_namespace_of_the_kubeconfigs_current_context(self, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
        monkeypatch.delenv("POD_NAMESPACE", raising=False)
        (tmp_path / "namespace").write_text("kube-system\n")
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:1", namespace="monitoring")
        args = self.parse(["--configmap", "cm", "--kubeconfig", str(kubeconfig)])
        assert settings_from_args(args, tmp_path / "namespace").namespace == "monitoring"
        args = self.parse(["--configmap", "cm", "--kubeconfig", str(kubeconfig), "--namespace", "ns"])
        assert settings_from_args(args, tmp_path / "namespace").namespace == "ns"
        # A context without a namespace, or a kubeconfig that is not one, falls through.
        for text in (write_kubeconfig(tmp_path / "plain", "https://127.0.0.1:1").read_text(), "not: [a kubeconfig"):
            kubeconfig.write_text(text)
            args = self.parse(["--configmap", "cm", "--kubeconfig", str(kubeconfig)])
            assert settings_from_args(args, tmp_path / "namespace").namespace == "kube-system"
            with pytest.raises(SettingsError, match="a namespace in the kubeconfig's current context"):
                settings_from_args(args, tmp_path / "absent")

    def test_missing_kubeconfig_is_named(self, tmp_path: Path) -> None:
        args = self.parse(["--configmap", "cm", "--kubeconfig", str(tmp_path / "absent")])
        with pytest.raises(SettingsError, match=r"--kubeconfig .*absent does not exist"):
            settings_from_args(args, tmp_path / "namespace")

    def test_missing_settings_say_what_to_set(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv("POD_NAMESPACE", raising=False)
        monkeypatch.delenv("NODE_PING_CONFIGMAP", raising=False)
        with pytest.raises(SettingsError, match="--configmap or NODE_PING_CONFIGMAP"):
            settings_from_args(self.parse([]), tmp_path / "absent")
        with pytest.raises(SettingsError, match="--namespace, POD_NAMESPACE"):
            settings_from_args(self.parse(["--configmap", "cm"]), tmp_path / "absent")

    def test_address_types(self) -> None:
        assert parse_address_types("InternalIP,ExternalIP") == ("InternalIP", "ExternalIP")
        assert parse_address_types(" externalip ,externalIP,") == ("ExternalIP",)
        with pytest.raises(SettingsError, match=r"'Hostname' is not an address type .* InternalIP, ExternalIP"):
            parse_address_types("Hostname")
        with pytest.raises(SettingsError, match="empty"):
            parse_address_types(" , ")

    @pytest.mark.parametrize(("argv", "reason"), [
        (["--namespace", "monitoring", "--configmap", "Node_Ping_Nodes"], "'Node_Ping_Nodes' is not a valid ConfigMap"),
        (["--namespace", "monitoring", "--configmap", "nodes-"], "'nodes-' is not a valid ConfigMap"),
        (["--namespace", "monitoring", "--configmap", "a" * 254], "is not a valid ConfigMap name: use at most 253"),
        (["--namespace", "n" * 64, "--configmap", CM], "is not a valid namespace name: use at most 63"),
        (["--namespace", "kube.system", "--configmap", CM], "'kube.system' is not a valid namespace"),
        (["--namespace", "Monitoring", "--configmap", CM], "'Monitoring' is not a valid namespace"),
    ], ids=["capitals-underscore", "trailing-dash", "long-name", "long-namespace", "dotted-namespace",
            "capital-namespace"])
    def test_names_the_api_server_would_refuse_exit_2(self, argv: list[str], reason: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
        """The API server answers 422 to these on every write, so the controller would retry forever."""
        assert run(self.parse(argv)) == 2
        assert messages(caplog, reason), caplog.text

    def test_longest_valid_names_are_accepted(self, tmp_path: Path) -> None:
        namespace, configmap = "n" * 63, ".".join(["a" * 63] * 3 + ["b" * 61])
        assert len(configmap) == 253
        settings = settings_from_args(self.parse(["--namespace", namespace, "--configmap", configmap]),
                                      tmp_path / "absent")
        assert (settings.namespace, settings.configmap) == (namespace, configmap)

    def test_bad_node_selector_exits_2(self, caplog: pytest.LogCaptureFixture) -> None:
        """The API server would answer every list with 400 Bad Request."""
        assert run(self.parse(["--namespace", NS, "--configmap", CM, "--node-selector", "os=linux os=windows"])) == 2
        assert messages(caplog, "--node-selector / NODE_PING_NODE_SELECTOR 'os=linux os=windows': expected ','")

    def test_run_exits_2_with_the_reason(self, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
        monkeypatch.delenv("NODE_PING_CONFIGMAP", raising=False)
        assert run(self.parse(["--namespace", "ns"])) == 2
        assert messages(caplog, "--configmap or NODE_PING_CONFIGMAP")


class TestLabelSelector:
    """--node-selector is checked like the API server parses label selectors, so typos stop the start."""

    @pytest.mark.parametrize("text", [
        "kubernetes.io/os=linux", "kubernetes.io/os==linux", " a = b , c!=d ", "pool", "!example.com/no-ping",
        "pool in (a, b)", "pool notin (a)", "pool in (a,)", "role=", "rank>3", "rank < -2", "example.com/Ab_c.9=V-1",
    ])
    def test_accepted(self, text: str) -> None:
        assert parse_label_selector(text) == text.strip()

    def test_blank_means_every_node(self) -> None:
        assert parse_label_selector("") is None
        assert parse_label_selector("  ") is None

    @pytest.mark.parametrize(("text", "problem"), [
        ("os=linux os=windows", "expected ',' between requirements, found 'os'"),
        ("Kubernetes.io/os=linux", "'Kubernetes.io/os' is not a label key: its prefix must be a DNS subdomain"),
        ("a/b/c=d", "'a/b/c' is not a label key"),
        ("k" * 64, "is not a label key: the name must be at most 63"),
        ("os=_linux", "'_linux' is not a label value"),
        ("os=" + "v" * 64, "is not a label value: at most 63"),
        ("pool in ()", "'in' needs at least one value"),
        ("pool in a", "expected '(' after 'in'"),
        ("pool in (a b)", "expected ',' or ')' after 'a', found 'b'"),
        ("pool notin (a", "missing ')'"),
        ("rank>high", "'>' needs a whole number"),
        ("=linux", "expected a label key, found '='"),
        ("a,,b", "expected a label key, found ','"),
        ("a,", "expected a label key, found the end"),
        ("pool linux", "unexpected 'linux' after the key 'pool'"),
    ])
    def test_refused_with_the_problem(self, text: str, problem: str) -> None:
        with pytest.raises(SettingsError) as info:
            parse_label_selector(text)
        assert problem in str(info.value)
        assert "e.g. kubernetes.io/os=linux" in str(info.value)


# -- the controller against the stand-in API server ------------------------------------------------


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


class TestApiTrouble:
    """Expired watches, outages, dropped and hanging connections: it converges and never dies."""

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


def write_kubeconfig(path: Path, server: str, namespace: str | None = None) -> Path:
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


class TestCommand:
    """`node-ping discover` as the Deployment runs it: a kubeconfig, and SIGTERM or SIGINT to stop."""

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
    def test_runs_and_stops_on_signal(self, kube: FakeKubeAPI, tmp_path: Path, signum: signal.Signals) -> None:
        kube.put_node(make_node("a", "10.0.0.1", zone="z1"))
        # Run by hand: the namespace comes from the kubeconfig's context, as with kubectl.
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url, namespace=NS)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "POD_NAMESPACE"}
        env.update(NODE_PING_CONFIGMAP=CM, PYTHONPATH=str(REPO))
        process = subprocess.Popen([*NODE_PING, "discover", "--kubeconfig", str(kubeconfig)],
                                   cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_targets(kube, target("a", "10.0.0.1", "z1"), timeout=30)
            process.send_signal(signum)
            _, stderr = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, stderr
        assert "stopping" in stderr
        assert f"created ConfigMap {NS}/{CM}: nodes.json lists 1 nodes" in stderr
