"""node_ping.discover.command: `node-ping discover` as the Deployment runs it, and as a person runs it by hand.

Flags and env vars become validated settings; every bad setting ends the same way, exit 2 and one
line naming the flag and the env var. The selector is judged by the API server (here the stand-in,
tests/support/fake_kube_api.py): refused at start, the command ends with exit 2 and the server's words.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from node_ping.cli import main
from node_ping.discover.command import discover, settings_from
from node_ping.settings import SettingsError
from tests.support.discovery import (
    CM,
    NODES_PATH,
    NS,
    POD_SELECTOR,
    PODS_PATH,
    PROBER_LABELS,
    target,
    wait_for,
    wait_pods,
    wait_targets,
    write_kubeconfig,
)
from tests.support.fake_kube_api import FakeKubeAPI, make_node, make_pod
from tests.support.processes import NODE_PING, communicate

REPO = Path(__file__).resolve().parents[1]
ENV_VARS = ("POD_NAMESPACE", "NODE_PING_CONFIGMAP", "NODE_PING_ADDRESS_TYPES", "NODE_PING_NODE_SELECTOR",
            "NODE_PING_RACK_LABEL", "NODE_PING_POD_SELECTOR")


@pytest.fixture(autouse=True)
def no_discover_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: the machine's own environment must not choose the namespace."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def parse(argv: list[str]) -> dict[str, Any]:
    """The values `node-ping discover ARGV` hands its function, env vars included."""
    return dict(discover.make_context("discover", list(argv)).params)


def exit_code_and_stderr(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`node-ping discover ARGV` in this process, for what fails before the controller starts."""
    code = main(["discover", *argv])
    return code, capsys.readouterr().err


def discover_process(kube: FakeKubeAPI, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """`node-ping discover --kubeconfig ... ARGS` against the stand-in, run by hand: the namespace
    comes from the kubeconfig's context, as with kubectl."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url, namespace=NS)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ENV_VARS}
    env.update(NODE_PING_CONFIGMAP=CM, PYTHONPATH=str(REPO))
    return subprocess.Popen([*NODE_PING, "discover", "--kubeconfig", str(kubeconfig), *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 30) -> str:
    """Wait for the process; its stderr. Killed (and reaped) past `timeout`: nothing outlives a test."""
    return communicate(process, timeout)[1]


class TestSettings:
    """Flags and env vars become validated settings; mistakes are sentences that name the fix."""

    def test_env_vars_and_defaults(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("POD_NAMESPACE", "ns-from-env")
        monkeypatch.setenv("NODE_PING_CONFIGMAP", "cm-from-env")
        settings = settings_from(parse([]), tmp_path / "absent")
        assert (settings.namespace, settings.configmap) == ("ns-from-env", "cm-from-env")
        assert settings.address_types == ("InternalIP", "ExternalIP")
        assert settings.node_selector is None  # every Node
        monkeypatch.setenv("NODE_PING_NODE_SELECTOR", "kubernetes.io/os=linux")
        assert settings_from(parse([]), tmp_path / "absent").node_selector == "kubernetes.io/os=linux"

    def test_blank_selector_means_every_node(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        for blank in ("", "  "):
            monkeypatch.setenv("NODE_PING_NODE_SELECTOR", blank)
            assert settings_from(parse(["--namespace", NS, "--configmap", CM]), tmp_path).node_selector is None
            assert settings_from(parse(["--namespace", NS, "--configmap", CM, "--node-selector", blank]),
                                 tmp_path).node_selector is None

    def test_flags_win_over_env_vars(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("POD_NAMESPACE", "ns-from-env")
        monkeypatch.setenv("NODE_PING_CONFIGMAP", "cm-from-env")
        monkeypatch.setenv("NODE_PING_ADDRESS_TYPES", "InternalIP")
        monkeypatch.setenv("NODE_PING_NODE_SELECTOR", "kubernetes.io/os=linux")
        values = parse(["--namespace", "ns", "--configmap", "cm", "--address-types", "externalip, InternalIP",
                        "--node-selector", "pool in (a,b)"])
        settings = settings_from(values, tmp_path / "absent")
        assert (settings.namespace, settings.configmap) == ("ns", "cm")
        assert settings.address_types == ("ExternalIP", "InternalIP")
        assert settings.node_selector == "pool in (a,b)"  # as written: the API server judges it

    def test_namespace_falls_back_to_the_pods_own(self, tmp_path: Path) -> None:
        (tmp_path / "namespace").write_text("kube-system\n")
        settings = settings_from(parse(["--configmap", "cm"]), tmp_path / "namespace")
        assert settings.namespace == "kube-system"

    def test_namespace_of_the_kubeconfigs_current_context(self, tmp_path: Path) -> None:
        (tmp_path / "namespace").write_text("kube-system\n")
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:1", namespace="monitoring")
        values = parse(["--configmap", "cm", "--kubeconfig", str(kubeconfig)])
        assert settings_from(values, tmp_path / "namespace").namespace == "monitoring"
        values = parse(["--configmap", "cm", "--kubeconfig", str(kubeconfig), "--namespace", "ns"])
        assert settings_from(values, tmp_path / "namespace").namespace == "ns"
        # A context without a namespace, or a kubeconfig that is not one, falls through.
        for text in (write_kubeconfig(tmp_path / "plain", "https://127.0.0.1:1").read_text(), "not: [a kubeconfig"):
            kubeconfig.write_text(text)
            values = parse(["--configmap", "cm", "--kubeconfig", str(kubeconfig)])
            assert settings_from(values, tmp_path / "namespace").namespace == "kube-system"
            with pytest.raises(SettingsError, match="a namespace in the kubeconfig's current context"):
                settings_from(values, tmp_path / "absent")

    def test_missing_settings_say_what_to_set(self, tmp_path: Path) -> None:
        with pytest.raises(SettingsError, match="--configmap or NODE_PING_CONFIGMAP"):
            settings_from(parse([]), tmp_path / "absent")
        with pytest.raises(SettingsError, match="--namespace, POD_NAMESPACE"):
            settings_from(parse(["--configmap", "cm"]), tmp_path / "absent")

    def test_longest_valid_names_are_accepted(self, tmp_path: Path) -> None:
        namespace, configmap = "n" * 63, ".".join(["a" * 63] * 3 + ["b" * 61])
        assert len(configmap) == 253
        settings = settings_from(parse(["--namespace", namespace, "--configmap", configmap]), tmp_path / "absent")
        assert (settings.namespace, settings.configmap) == (namespace, configmap)


class TestBadSettingsExit2:
    """Every bad setting ends the same way: exit 2, a line naming the flag and the env var."""

    def test_missing_kubeconfig_is_named(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, stderr = exit_code_and_stderr(["--configmap", "cm", "--kubeconfig", str(tmp_path / "absent")], capsys)
        assert code == 2
        assert re.search(r"'--kubeconfig'.*absent' does not exist", stderr), stderr

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
                                                     capsys: pytest.CaptureFixture[str]) -> None:
        """The API server answers 422 to these on every write, so the controller would retry forever."""
        code, stderr = exit_code_and_stderr(argv, capsys)
        assert code == 2
        assert reason in stderr, stderr
        flag = "'--configmap' (env var: 'NODE_PING_CONFIGMAP')" if "ConfigMap" in reason else \
            "'--namespace' (env var: 'POD_NAMESPACE')"
        assert flag in stderr, stderr

    @pytest.mark.parametrize("argv", [["--rack-label", "rack label"], ["--rack-label", "Example.com/rack"]])
    def test_bad_rack_label_exits_2(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        code, stderr = exit_code_and_stderr(["--namespace", NS, "--configmap", CM, *argv], capsys)
        assert code == 2
        assert "'--rack-label' (env var: 'NODE_PING_RACK_LABEL')" in stderr and "is not a label key" in stderr, stderr

    def test_rack_label_and_pod_selector_from_env(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("NODE_PING_RACK_LABEL", "example.com/rack")
        monkeypatch.setenv("NODE_PING_POD_SELECTOR", POD_SELECTOR)
        settings = settings_from(parse(["--namespace", NS, "--configmap", CM]), tmp_path)
        assert (settings.rack_label, settings.pod_selector) == ("example.com/rack", POD_SELECTOR)
        for blank in ("", " "):  # as the chart renders an unset value: off
            monkeypatch.setenv("NODE_PING_RACK_LABEL", blank)
            monkeypatch.setenv("NODE_PING_POD_SELECTOR", blank)
            settings = settings_from(parse(["--namespace", NS, "--configmap", CM]), tmp_path)
            assert (settings.rack_label, settings.pod_selector) == (None, None)

    def test_run_exits_2_with_the_reason(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, stderr = exit_code_and_stderr(["--namespace", "ns"], capsys)
        assert code == 2
        assert "--configmap or NODE_PING_CONFIGMAP" in stderr, stderr

    def test_unusable_kubeconfig_exits_2(self, tmp_path: Path) -> None:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text("not: [a kubeconfig")
        env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        env.update(PYTHONPATH=str(REPO))
        done = subprocess.run([*NODE_PING, "discover", "--namespace", NS, "--configmap", CM, "--kubeconfig",
                               str(kubeconfig)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        assert f"cannot load the Kubernetes client configuration from {kubeconfig}" in done.stderr


class TestRefusedSelector:
    """The API server judges --node-selector: refused on the first list, discover ends with exit 2 and
    the server's own reason, instead of retrying a list that will never be answered."""

    def test_bad_node_selector_exits_2_with_the_servers_reason(self, kube: FakeKubeAPI, tmp_path: Path) -> None:
        kube.put_node(make_node("a", "10.0.0.1", labels={"kubernetes.io/os": "linux"}))
        process = discover_process(kube, tmp_path, "--node-selector", "os=linux os=windows")
        stderr = finish(process)
        assert process.returncode == 2, stderr
        assert "Invalid value for '--node-selector' (env var: 'NODE_PING_NODE_SELECTOR')" in stderr, stderr
        assert "'os=linux os=windows'" in stderr
        assert "HTTP 400 Bad Request: unable to parse requirement: 'os=linux os=windows'" in stderr  # the server's
        assert kube.count("GET", NODES_PATH, watch=False) == 1
        assert kube.configmap(NS, CM) is None


    def test_bad_pod_selector_exits_2_with_the_servers_reason(self, kube: FakeKubeAPI, tmp_path: Path) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        process = discover_process(kube, tmp_path, "--pod-selector", "app=a app=b")
        stderr = finish(process)
        assert process.returncode == 2, stderr
        assert "Invalid value for '--pod-selector' (env var: 'NODE_PING_POD_SELECTOR')" in stderr, stderr
        assert "HTTP 400 Bad Request: unable to parse requirement: 'app=a app=b'" in stderr
        assert "kubectl get pods -l" in stderr
        assert kube.count("GET", PODS_PATH, watch=False) == 1


class TestCommand:
    """`node-ping discover` as the Deployment runs it: a kubeconfig, and SIGTERM or SIGINT to stop."""

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
    def test_runs_and_stops_on_signal(self, kube: FakeKubeAPI, tmp_path: Path, signum: signal.Signals) -> None:
        kube.put_node(make_node("a", "10.0.0.1", zone="z1"))
        process = discover_process(kube, tmp_path)
        try:
            wait_targets(kube, target("a", "10.0.0.1", "z1"), timeout=30)
            process.send_signal(signum)
        finally:
            stderr = finish(process, timeout=10)
        assert process.returncode == 0, stderr
        assert "stopping" in stderr
        assert f"created ConfigMap {NS}/{CM}: nodes.json lists 1 nodes" in stderr


class TestLiveness:
    """--health-file: touched while every loop runs, so `node-ping health` is the Deployment's liveness probe."""

    def test_a_running_discover_is_healthy(self, kube: FakeKubeAPI, tmp_path: Path) -> None:
        kube.put_node(make_node("a", "10.0.0.1"))
        health = tmp_path / "discover.health"
        process = discover_process(kube, tmp_path, "--health-file", str(health))
        try:
            wait_targets(kube, target("a", "10.0.0.1"), timeout=30)
            wait_for(health.exists, "the health file", timeout=30)
            checked = subprocess.run([*NODE_PING, "health", "--health-file", str(health), "--max-age", "60"],
                                     capture_output=True, text=True, timeout=30, check=False)
            process.send_signal(signal.SIGTERM)
        finally:
            stderr = finish(process, timeout=10)
        assert process.returncode == 0, stderr
        assert checked.returncode == 0, checked.stderr

    def test_healthy_with_the_pod_watch_on(self, kube: FakeKubeAPI, tmp_path: Path) -> None:
        """With --pod-selector a fourth loop runs; the health file is touched while all four run."""
        kube.put_node(make_node("a", "10.0.0.1"))
        kube.put_pod(make_pod("p-a", "a", "10.244.0.5", namespace=NS, labels=PROBER_LABELS))
        health = tmp_path / "discover.health"
        process = discover_process(kube, tmp_path, "--health-file", str(health), "--pod-selector", POD_SELECTOR)
        try:
            wait_pods(kube, target("a", "10.244.0.5"), timeout=30)
            wait_for(health.exists, "the health file", timeout=30)
            kube.drop_watches()  # a cut watch is retried, not a reason to restart
            touched = health.stat().st_mtime
            wait_for(lambda: health.stat().st_mtime > touched, "the health file to be touched again", timeout=30)
            checked = subprocess.run([*NODE_PING, "health", "--health-file", str(health), "--max-age", "60"],
                                     capture_output=True, text=True, timeout=30, check=False)
            process.send_signal(signal.SIGTERM)
        finally:
            stderr = finish(process, timeout=10)
        assert process.returncode == 0, stderr
        assert checked.returncode == 0, checked.stderr
        assert "listed 1 Pods with labels" in stderr
