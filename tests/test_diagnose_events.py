"""`node-ping diagnose --publish-events`: faults as Warning Events on the Nodes they blame, found the
way `kubectl describe node` finds the kubelet's, one Event per fault while it lasts.

The API server is the stand-in (tests/support/fake_kube_api.py) with a publisher's RBAC: create and
patch events, nothing else; Prometheus is a real one, backfilled with a fault.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from node_ping.diagnose import command
from node_ping.diagnose.address import parse_address
from node_ping.diagnose.analysis import Thresholds
from node_ping.diagnose.events import MAX_MESSAGE_BYTES, Fault, Publisher, faults, too_broad, truncate
from node_ping.diagnose.prometheus import Prometheus
from node_ping.diagnose.publish import STOP_GRACE_S, run
from node_ping.diagnose.render import Report
from node_ping.diagnose.verdicts import CLUSTER, EXTERNAL_TARGET, LINK, NODE_ISOLATED, Verdict
from node_ping.liveness import HealthFile
from tests.support import promdata
from tests.support.diagnosis import HEALTHY_PAIR, Answer, diagnose_cmd, serve, usage_error
from tests.support.discovery import Controllers, wait_for, write_kubeconfig
from tests.support.fake_kube_api import FakeKubeAPI
from tests.support.ports import free_port
from tests.support.processes import NODE_PING, REPO
from tests.support.promdata import Mesh, receive_loss

NAMES = [f"worker-{i}" for i in range(1, 6)]
EVENTS = "/api/v1/namespaces/default/events"
ENV_VARS = ("POD_NAMESPACE", "NODE_PING_PUBLISH_EVENTS", "NODE_PING_DIAGNOSE_INTERVAL", "NODE_PING_HEALTH_FILE",
            "NODE_PING_PROMETHEUS_URL", "NODE_PING_PROMETHEUS_HEADERS", "KUBERNETES_SERVICE_HOST")
T0 = 1_700_000_000.0


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: the machine's own environment must not choose a setting."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def publisher(controllers: Controllers) -> Publisher:
    """A publisher writing to the stand-in, as the loop's is, continuing Events seen within 2 minutes."""
    return Publisher(controllers.api(), 120.0, instance="node-ping-diagnose-0")


def isolated(node: str) -> Verdict:
    return Verdict(NODE_ISOLATED, (node,), f"node {node} is isolated: it cannot send to or receive from most peers")


def link(a: str, b: str) -> Verdict:
    return Verdict(LINK, (a, b), f"link {a}<->{b} only: pings from {a} lose 20.0%, from {b} 10.0%")


def when(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class TestNamesAndReasons:
    """What an Event is called and says, for any kind, however long the node's name."""

    @pytest.mark.parametrize(("kind", "reason"), [
        ("node-isolated", "NodePingNodeIsolated"), ("link", "NodePingLink"), ("pod-network", "NodePingPodNetwork"),
        ("zone-pair", "NodePingZonePair"), ("latency-link", "NodePingLatencyLink")])
    def test_reason_is_the_kind_in_camel_case(self, kind: str, reason: str) -> None:
        assert Fault(kind, "worker-1").reason == reason

    def test_names_are_valid_unique_and_stable(self) -> None:
        long = ".".join(["a" * 63] * 4)[:253].rstrip(".")
        names = [Fault(NODE_ISOLATED, "worker-1").event_name, Fault(LINK, "worker-1", ("worker-2",)).event_name,
                 Fault(LINK, "worker-1", ("worker-3",)).event_name, Fault(NODE_ISOLATED, long).event_name,
                 Fault(LINK, long, ("worker-2",)).event_name, Fault(NODE_ISOLATED, "Worker_1--").event_name]
        assert len(set(names)) == len(names)
        assert names[0].startswith("worker-1.node-ping-")
        assert Fault(NODE_ISOLATED, "worker-1").event_name == names[0]  # the same in every process
        for name in names:
            assert len(name) <= 253
            assert all(label and label[0].isalnum() and label[-1].isalnum() and label == label.lower()
                       for label in name.split(".")), name

    def test_a_pair_names_the_peer(self) -> None:
        assert faults(link("a", "b")) == [Fault(LINK, "a", ("b",)), Fault(LINK, "b", ("a",))]

    def test_message_fits_the_note_limit_in_bytes(self) -> None:
        message = "ä" * 1000
        cut = truncate(message)
        assert len(cut.encode()) <= MAX_MESSAGE_BYTES and cut.endswith("…") and cut.startswith("ää")
        assert truncate("short") == "short"

    def test_verdicts_about_the_cluster_are_too_broad(self) -> None:
        assert too_broad(Verdict(CLUSTER, tuple(NAMES), "cluster-wide: ..."), 5)
        assert too_broad(Verdict(EXTERNAL_TARGET, tuple(NAMES[:4]), "external target dns is lost ..."), 5)
        assert not too_broad(link("worker-1", "worker-2"), 2)
        assert not too_broad(link("worker-1", "worker-2"), 3)
        assert not too_broad(Verdict("zone-isolated", tuple(NAMES[:2]), "zone a is cut off"), 5)


class TestPublisher:
    """Against the stand-in API server: what `kubectl describe node` shows after each diagnosis."""

    def test_a_fault_is_one_event_as_the_kubelet_makes_them(self, kube: FakeKubeAPI, publisher: Publisher) -> None:
        assert publisher.publish([isolated("worker-3")], 5, T0) == 1
        [event] = kube.node_events("worker-3")
        assert kube.events() == [event]
        assert event["metadata"]["namespace"] == "default"
        assert event["involvedObject"] == {"kind": "Node", "name": "worker-3", "uid": "worker-3", "namespace": ""}
        assert (event["type"], event["reason"], event["count"]) == ("Warning", "NodePingNodeIsolated", 1)
        assert event["message"] == isolated("worker-3").message
        assert when(event["firstTimestamp"]) == when(event["lastTimestamp"]) == T0
        assert event["source"] == {"component": "node-ping"}
        assert (event["reportingComponent"], event["reportingInstance"]) == ("node-ping", "node-ping-diagnose-0")

    def test_while_it_lasts_the_same_event_counts_up(self, kube: FakeKubeAPI, publisher: Publisher) -> None:
        for loop in range(4):
            publisher.publish([isolated("worker-3")], 5, T0 + 60 * loop)
        [event] = kube.events()
        assert event["count"] == 4
        assert (when(event["firstTimestamp"]), when(event["lastTimestamp"])) == (T0, T0 + 180)
        assert [r.method for r in kube.requests] == ["POST", "PATCH", "PATCH", "PATCH"]

    def test_a_link_is_an_event_on_each_end_naming_the_peer(self, kube: FakeKubeAPI, publisher: Publisher) -> None:
        publisher.publish([link("worker-1", "worker-2"), link("worker-1", "worker-4")], 5, T0)
        assert len(kube.node_events("worker-1")) == 2
        assert [e["reason"] for e in kube.node_events("worker-2")] == ["NodePingLink"]
        assert len(kube.node_events("worker-4")) == 1

    def test_healthy_and_cluster_wide_publish_nothing(self, kube: FakeKubeAPI, publisher: Publisher,
                                                      caplog: pytest.LogCaptureFixture) -> None:
        cluster = Verdict(CLUSTER, tuple(NAMES), "cluster-wide: 20 of 20 pairs lose packets")
        with caplog.at_level(logging.WARNING):
            publisher.publish([Verdict("healthy", tuple(NAMES), "healthy: 5 nodes")], 5, T0)
            for loop in range(3):  # the numbers change, the fault goes on: said once
                publisher.publish([replace(cluster, message=f"{cluster.message} {loop}")], 5, T0 + loop)
        assert kube.events() == []
        assert kube.requests == []
        assert [r.getMessage() for r in caplog.records] == [
            "not published on Nodes (about the cluster, not 5 nodes): [cluster-wide] cluster-wide: 20 of 20 pairs "
            "lose packets 0"]

    def test_over_and_back_begins_anew(self, kube: FakeKubeAPI, publisher: Publisher) -> None:
        publisher.publish([isolated("worker-3")], 5, T0)
        publisher.publish([isolated("worker-3")], 5, T0 + 60)
        publisher.publish([], 5, T0 + 120)  # over
        publisher.publish([isolated("worker-3")], 5, T0 + 180)  # back
        [event] = kube.events()
        assert event["count"] == 1
        assert when(event["firstTimestamp"]) == when(event["lastTimestamp"]) == T0 + 180

    def test_a_restart_continues_a_recent_event(self, kube: FakeKubeAPI, controllers: Controllers,
                                                publisher: Publisher) -> None:
        publisher.publish([isolated("worker-3")], 5, T0)
        publisher.publish([isolated("worker-3")], 5, T0 + 60)
        restarted = Publisher(controllers.api(), 120.0)
        restarted.publish([isolated("worker-3")], 5, T0 + 90)
        restarted.publish([isolated("worker-3")], 5, T0 + 150)
        [event] = kube.events()
        assert event["count"] == 4
        assert (when(event["firstTimestamp"]), when(event["lastTimestamp"])) == (T0, T0 + 150)
        # Long after (the fault ended while node-ping was away): begun anew.
        later = Publisher(controllers.api(), 120.0)
        later.publish([isolated("worker-3")], 5, T0 + 3000)
        [event] = kube.events()
        assert event["count"] == 1 and when(event["firstTimestamp"]) == T0 + 3000

    def test_an_event_gone_from_the_server_is_made_again(self, kube: FakeKubeAPI, publisher: Publisher) -> None:
        publisher.publish([isolated("worker-3")], 5, T0)
        kube.delete_event("default", kube.events()[0]["metadata"]["name"])
        publisher.publish([isolated("worker-3")], 5, T0 + 60)
        [event] = kube.events()
        assert event["count"] == 2 and when(event["firstTimestamp"]) == T0

    def test_refusals_are_logged_and_retried(self, kube: FakeKubeAPI, publisher: Publisher,
                                             caplog: pytest.LogCaptureFixture) -> None:
        message = ('events is forbidden: User "system:serviceaccount:monitoring:node-ping" cannot create resource '
                   '"events" in API group "" in the namespace "default"')
        kube.fail_next("POST", EVENTS, 403, message=message)
        with caplog.at_level(logging.ERROR):
            assert publisher.publish([isolated("worker-3"), isolated("worker-4")], 5, T0) == 0
        assert [r.getMessage() for r in caplog.records] == [
            f"cannot write Events now, 2 of 2 left for the next loop: HTTP 403 Forbidden: {message}"]
        for outage in (503, "drop"):  # failing, or not answering at all
            with kube.outage(outage), caplog.at_level(logging.ERROR):
                assert publisher.publish([isolated("worker-3")], 5, T0 + 60) == 0
            assert caplog.records[-1].getMessage().startswith("cannot write Events now, 1 of 1 left for the next loop")
        assert publisher.publish([isolated("worker-3"), isolated("worker-4")], 5, T0 + 120) == 2
        assert [(e["involvedObject"]["name"], e["count"]) for e in kube.events()] == [("worker-3", 1), ("worker-4", 1)]

    def test_only_create_and_patch_are_asked_for(self, kube: FakeKubeAPI, publisher: Publisher) -> None:
        publisher.publish([isolated("worker-3")], 5, T0)
        publisher.publish([isolated("worker-3")], 5, T0 + 60)
        publisher.publish([], 5, T0 + 120)
        restarted = Publisher(publisher._api, 120.0)
        restarted.publish([isolated("worker-3")], 5, T0 + 180)
        assert {r.method for r in kube.requests} == {"POST", "PATCH"}
        assert all(r.status in (200, 201, 409) for r in kube.requests)


class TestStandIn:
    """The stand-in refuses what the real API server and a publisher's RBAC refuse."""

    def test_rbac_and_validation(self, kube: FakeKubeAPI, controllers: Controllers) -> None:
        from kubernetes import client  # noqa: PLC0415
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        api = controllers.api()
        calls: list[tuple[Callable[..., object], tuple[str, ...]]] = [
            (api.list_event_for_all_namespaces, ()), (api.read_namespaced_event, ("x", "default")),
            (api.delete_namespaced_event, ("x", "default")), (api.list_namespaced_event, ("default",))]
        for call, args in calls:
            with pytest.raises(ApiException) as refused:
                call(*args)
            assert refused.value.status == 403
        node = client.V1ObjectReference(kind="Node", name="worker-1", uid="worker-1")
        body = client.CoreV1Event(metadata=client.V1ObjectMeta(name="worker-1.x"), reason="R", message="m",
                                  involved_object=node)
        with pytest.raises(ApiException) as invalid:
            api.create_namespaced_event("monitoring", body)
        assert invalid.value.status == 422 and "does not match event.namespace" in (invalid.value.body or "")


@pytest.fixture(scope="module")
def prometheus_for() -> Iterator[Callable[[Mesh], str]]:
    """`prometheus_for(mesh)`: a real Prometheus holding the mesh's last half hour up to now (one per
    mesh in this module); stopped, and its data removed, after the module."""
    reason = promdata.available()
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="node-ping-events-")))
        started: dict[str, str] = {}

        def start(mesh: Mesh) -> str:
            key = repr(mesh)
            if key not in started:
                data = root / f"tsdb{len(started)}"
                promdata.backfill(promdata.openmetrics(mesh, int(time.time())), data)
                started[key] = stack.enter_context(promdata.running_prometheus(data))
            return started[key]

        yield start


LOSSY = Mesh(NAMES, loss=receive_loss(NAMES, "worker-3", 0.3))
HEALTHY = Mesh(NAMES)


def publishing(kube: FakeKubeAPI, tmp_path: Path, url: str, *args: str) -> subprocess.Popen[str]:
    """`node-ping diagnose --publish-events` as its own process, every second, against the stand-in."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ENV_VARS}
    env.update(PYTHONPATH=str(REPO), POD_NAMESPACE="default")
    return subprocess.Popen([*NODE_PING, "diagnose", "--publish-events", "--interval", "1", "--prometheus", url,
                             "--kubeconfig", str(kubeconfig), "--health-file", str(tmp_path / "health"), *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stopped(process: subprocess.Popen[str]) -> tuple[int, float, str]:
    """SIGTERM; the exit code, how long it took and stderr. Killed past 10 s: nothing outlives a test."""
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    took = time.monotonic() - began
    _, stderr = process.communicate()
    return code, took, stderr


def loops_done(health: Path, loops: int) -> Callable[[], bool]:
    """Whether the health file, touched after every loop, was touched `loops` times since this was made."""
    seen: list[int] = []

    def check() -> bool:
        with contextlib.suppress(FileNotFoundError):
            mtime = health.stat().st_mtime_ns
            if not seen or seen[-1] != mtime:
                seen.append(mtime)
        return len(seen) >= loops

    return check


class TestCommand:
    """The whole command: a real Prometheus with a fault in it, the stand-in API server, signals."""

    def test_a_lossy_node_is_one_event_counting_up(self, kube: FakeKubeAPI, tmp_path: Path,
                                                   prometheus_for: Callable[[Mesh], str]) -> None:
        process = publishing(kube, tmp_path, prometheus_for(LOSSY))
        try:
            wait_for(lambda: [e for e in kube.node_events("worker-3") if e["count"] >= 3], "a count of 3", 60)
        finally:
            code, _, stderr = stopped(process)
        assert code == 0, stderr
        [event] = kube.events()
        assert kube.node_events("worker-3") == [event]
        assert event["reason"] == "NodePingNodeCannotReceive"
        assert event["message"].startswith("node worker-3 cannot receive from most peers")
        assert kube.count("POST", EVENTS) == 1
        assert "published Warning NodePingNodeCannotReceive on node worker-3 (x1)" in stderr
        assert (tmp_path / "health").exists()

    def test_a_healthy_cluster_gets_none_and_sigterm_ends_the_wait_at_once(
            self, kube: FakeKubeAPI, tmp_path: Path, prometheus_for: Callable[[Mesh], str]) -> None:
        health = tmp_path / "health"
        process = publishing(kube, tmp_path, prometheus_for(HEALTHY), "--interval", "3600")
        try:
            wait_for(loops_done(health, 1), "a first loop", 60)
            time.sleep(0.3)  # now in its hour-long wait
        finally:
            code, took, stderr = stopped(process)
        assert (code, kube.events(), kube.requests) == (0, [], []), stderr
        assert took < 3.0, f"{took:.2f} s to stop"  # about 0.5 s; the rest is slack for a busy machine
        assert "diagnose --publish-events stopped" in stderr

    def test_sigterm_mid_request_ends_it_within_the_grace(self, kube: FakeKubeAPI, tmp_path: Path,
                                                          prometheus_for: Callable[[Mesh], str]) -> None:
        with kube.outage("hang"):
            process = publishing(kube, tmp_path, prometheus_for(LOSSY))
            try:
                wait_for(lambda: kube.requests, "a request to the API server", 60)
            finally:
                code, took, stderr = stopped(process)
        assert code == 0, stderr
        assert took < STOP_GRACE_S + 2.5, f"{took:.2f} s to stop"
        assert kube.events() == []

    def test_prometheus_down_for_a_loop_is_a_log_line(self, kube: FakeKubeAPI, controllers: Controllers,
                                                     prometheus_for: Callable[[Mesh], str], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
        thresholds = Thresholds()
        down = Prometheus(parse_address(f"http://127.0.0.1:{free_port()}"), 2.0)
        up = Prometheus(parse_address(prometheus_for(LOSSY)), 10.0)
        calls: list[float] = []
        stop = threading.Event()

        def diagnose(at: float) -> Report:
            calls.append(at)
            if len(calls) == 4:
                stop.set()  # this diagnosis is made, but a stopping publisher writes nothing more
            return command.diagnosis(down if len(calls) == 1 else up, "15m", thresholds, at)

        with down, up, caplog.at_level(logging.INFO):
            run(diagnose, Publisher(controllers.api(), 120.0), stop, 0.2, HealthFile(tmp_path / "health"))
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].startswith("diagnosis failed, no Events written and none ended "
                                                         "this time: ")
        assert "diagnosis works again" in caplog.messages
        [event] = kube.node_events("worker-3")
        assert event["count"] == 2


class TestSettings:
    """Mistakes end at once, exit 2, with a usage error naming the flag, the env var and the fix."""

    @pytest.mark.parametrize(("argv", "env", "message"), [
        (["--publish-events"], {}, "set the namespace to write the Events in: --events-namespace or POD_NAMESPACE, "
                                   "as default (the only one the API server takes Events about Nodes in)\n"),
        ([], {"NODE_PING_PUBLISH_EVENTS": "true"}, "set the namespace to write the Events in"),
        (["--publish-events"], {"POD_NAMESPACE": "monitoring"},
         "Invalid value for '--events-namespace' (env var: 'POD_NAMESPACE'): 'monitoring': the API server takes "
         "Events about Nodes only in the namespace default"),
        (["--publish-events", "--events-namespace", "default", "--interval", "0"], {},
         "Invalid value for '--interval' (env var: 'NODE_PING_DIAGNOSE_INTERVAL'): '0' is not a whole number of "
         "seconds from 1 to 3600, e.g. 60\n"),
        (["--publish-events", "--events-namespace", "default"], {"NODE_PING_DIAGNOSE_INTERVAL": "3601"},
         "Invalid value for '--interval' (env var: 'NODE_PING_DIAGNOSE_INTERVAL'): '3601' is not a whole number"),
        (["--publish-events", "--events-namespace", "default", "--interval", "1m"], {},
         "Invalid value for '--interval' (env var: 'NODE_PING_DIAGNOSE_INTERVAL'): '1m' is not a whole number"),
        (["--publish-events", "--events-namespace", "default", "--time", "1700000000"], {},
         "--time cannot be used with --publish-events: each diagnosis ends at the time it is made\n"),
        (["--publish-events", "--events-namespace", "default"], {},
         "cannot load the Kubernetes client configuration from the pod's service account (not running in a pod? "
         "use --kubeconfig)"),
    ], ids=["no namespace", "from the env", "not default", "interval 0", "interval too long", "interval not a number",
            "time", "outside a pod"])
    def test_refused(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str],
                     env: dict[str, str], message: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code, out, err = diagnose_cmd(capsys, "--prometheus", f"http://127.0.0.1:{free_port()}", *argv)
        assert (code, out) == (2, "")
        assert message in usage_error(err)

    def test_without_the_kubernetes_package(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture, httpserver_ipv4: HTTPServer) -> None:
        """As in the exporter image: the one-shot works, --publish-events says what it needs, exit 2."""
        monkeypatch.setitem(sys.modules, "kubernetes", None)  # `import kubernetes` raises ImportError
        url = serve(httpserver_ipv4, lambda _headers: Answer(200, HEALTHY_PAIR))
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url)
        assert code == 0 and "* [healthy]" in out
        with caplog.at_level(logging.ERROR):
            code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--publish-events", "--events-namespace",
                                        "default")
        assert (code, out) == (2, "")
        assert "node-ping diagnose --publish-events needs the kubernetes package" in caplog.text

    def test_help_names_them(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = diagnose_cmd(capsys, "--help")
        assert code == 0
        for text in ("--publish-events", "NODE_PING_PUBLISH_EVENTS", "--interval SECONDS",
                     "NODE_PING_DIAGNOSE_INTERVAL", "--events-namespace NAMESPACE", "POD_NAMESPACE", "--kubeconfig",
                     "--health-file", "NODE_PING_HEALTH_FILE"):
            assert text in out
