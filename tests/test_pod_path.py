"""The pod path: a second prober of the node probes the pod network, exports it under its own
families, and sits beside the host prober in one textfile directory without a collision."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from node_ping import contract
from tests.support import netlab
from tests.support.exporters import node_exporter
from tests.support.exposition import Series, by_destination, families
from tests.support.netlab import finish, start_node_ping
from tests.support.ports import get
from tests.support.processes import NODE_PING, REPO

SELF_NAMES = {metric.name for metric in contract.SELF_METRICS}


def self_series(series: Series) -> list[dict[str, str]]:
    return [labels for name, samples in series.items() if name in SELF_NAMES for labels, _ in samples]


@pytest.mark.netns
class TestPodNetworkFault:
    """Only the pod network breaks: the pod prober sees it, the host prober does not."""

    def test_two_probers_one_node(self, lab_factory: Callable[[list[str]], netlab.Lab], tmp_path: Path) -> None:
        lab = lab_factory(["a", "b", "c"])
        netlab.add_pod_network(lab)
        a, b, c = lab.hosts
        c.drop_pod_network()  # a dead overlay at c; c's own address still answers
        hosts = [{"name": h.name.rsplit("-", 1)[-1], "ipAddress": h.ipv4} for h in lab.hosts]
        pods = [{"name": "a", "ipAddress": a.pod_ipv4}, {"name": "b", "ipAddress": b.pod_ipv6},
                {"name": "c", "ipAddress": c.pod_ipv4}]
        external = [{"name": "b-host", "host": b.ipv4}]
        common = {"count": 10, "period_ms": 100, "cycles": 2, "external": external}
        # Side by side, as the two DaemonSets run: they take turns at fping, and write their own files.
        host_prober = start_node_ping(a, tmp_path, hosts, **common)  # type: ignore[arg-type]
        pod_prober = start_node_ping(a, tmp_path, pods, args=["--path", "pod"], config="pods.json",
                                     **common)  # type: ignore[arg-type]
        finish(host_prober)
        finish(pod_prober)
        textfile = tmp_path / "textfile"
        assert sorted(p.name for p in textfile.iterdir()) == ["node-ping-pod_a.prom", "node-ping_a.prom"]

        pod = families((textfile / "node-ping-pod_a.prom").read_text())
        assert by_destination(pod, contract.POD.packets_received.name) == {"b": 20, "c": 0}
        assert by_destination(pod, contract.POD.mtu_packets_received.name) == {"b": 2, "c": 0}
        ((labels, _), _) = pod[contract.POD.packets_sent.name]
        assert labels[contract.POD.address] == b.pod_ipv6
        # Nothing under the host network's names, no external hosts (the host prober's), no node info.
        assert not [name for name in pod if name.startswith((contract.NODE.prefix, contract.EXTERNAL.prefix))
                    and name not in SELF_NAMES]
        assert contract.NODE_INFO.name not in pod
        assert {labels.get(contract.PATH) for labels in self_series(pod)} == {contract.POD_PATH}
        assert set(by_destination(pod, contract.ERRORS.name).values()) == {0.0}

        host = families((textfile / "node-ping_a.prom").read_text())
        assert by_destination(host, contract.NODE.packets_received.name) == {"b": 20, "c": 20}
        assert by_destination(host, contract.EXTERNAL.packets_received.name) == {"b-host": 20}
        assert not [labels for labels in self_series(host) if contract.PATH in labels]  # as they always were
        assert not [name for name in host if name.startswith(contract.POD.prefix)]

        # A real node-exporter serves both files: no collision, the two probers told apart by path.
        with node_exporter(textfile) as url:
            served = families(get(url, timeout=10))
        assert [value for _, value in served["node_textfile_scrape_error"]] == [0.0]
        cycles = {labels.get(contract.PATH, ""): value for labels, value in served[contract.CYCLES.name]}
        assert cycles == {"": 2.0, contract.POD_PATH: 2.0}
        assert by_destination(served, contract.POD.packets_received.name) == {"b": 20, "c": 0}
        assert by_destination(served, contract.NODE.packets_received.name) == {"b": 20, "c": 20}


class TestSettings:
    """A bad --path or NODE_PING_PATH: exit 2 and a message naming the setting."""

    @pytest.mark.parametrize(("args", "env"), [(["--path", "hostnet"], {}), ([], {"NODE_PING_PATH": "Pod"})])
    def test_refused(self, args: list[str], env: dict[str, str], tmp_path: Path) -> None:
        result = subprocess.run([*NODE_PING, "once", "--node-name", "a", "--config", str(tmp_path / "none.json"),
                                 *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
                                env={"PATH": "/usr/bin:/bin", **env})
        assert result.returncode == 2, result.stderr
        assert "Invalid value for '--path' (env var: 'NODE_PING_PATH')" in result.stderr
        assert "'node', 'pod'" in result.stderr
