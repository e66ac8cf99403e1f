"""End to end on real hosts: node-ping in one network namespace probes others on a bridge, faults
are injected with nftables and link-down, and a real node-exporter serves the file over HTTP."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node_ping import contract
from tests.support import netlab
from tests.support.exporters import node_exporter
from tests.support.exposition import by_destination, families
from tests.support.netlab import run_node_ping
from tests.support.ports import get
from tests.support.processes import NODE_PING


def binomial_bounds(n: int, p: float, z: float = 5.0) -> tuple[float, float]:
    """Range of the lost count that a correct prober falls outside with probability < 1e-6."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd - 1, n * p + z * sd + 1


def add_addresses(host: netlab.Host, count: int) -> tuple[list[str], list[str]]:
    """`count` more IPv4 and IPv6 addresses on `host` (beyond any host index): more targets behind
    one nft rule, so one short fping run sends enough packets for a tight binomial bound."""
    v4 = [f"{netlab.V4_NET}.{100 + i}" for i in range(count)]
    v6 = [f"{netlab.V6_NET}{100 + i:x}" for i in range(count)]
    for address in v4:
        host.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
    for address in v6:
        host.run("ip", "-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad")
    return v4, v6


@pytest.mark.netns
class TestFaults:
    """Loss, a down host and IPv6, measured by node-ping across a real bridge.

    Periods are 100 ms: fping's reply timeout is the period, and it handles due timeouts before it
    reads replies, so at a few ms a descheduled fping would count answered pings as lost and the
    zero-loss checks would measure the machine's load, not node-ping.
    """

    def test_loss_down_host_and_ipv6(self, lab_factory: Callable[[list[str]], netlab.Lab], tmp_path: Path) -> None:
        lab = lab_factory(["a", "b", "c", "d"])
        a, b, c, d = lab.hosts
        b.drop_incoming_icmp(30)
        c.link(up=False)
        nodes = [{"name": "a", "ipAddress": a.ipv4}, {"name": "b", "ipAddress": b.ipv4},
                 {"name": "c", "ipAddress": c.ipv4}, {"name": "d6", "ipAddress": d.ipv6}]
        count = 100  # 30 % loss: 30 +- 24 lost, never 0 nor all
        series = run_node_ping(a, tmp_path, nodes, count=count, period_ms=100)
        sent = by_destination(series, contract.NODE.packets_sent.name)
        received = by_destination(series, contract.NODE.packets_received.name)
        assert sent == {"b": count, "c": count, "d6": count}

        low, high = binomial_bounds(count, 0.30)
        assert low <= count - received["b"] <= high, f"lost {count - received['b']} of {count} at 30% drop"
        assert received["c"] == 0 and received["d6"] == count

        # The down host has no RTT gauges (never a false 0 ms); the others have real ones.
        for gauge in (contract.NODE.rtt_min.name, contract.NODE.rtt_max.name, contract.NODE.rtt_mdev.name):
            assert set(by_destination(series, gauge)) == {"b", "d6"}
        rtt_min, rtt_max = by_destination(series, contract.NODE.rtt_min.name), by_destination(
            series, contract.NODE.rtt_max.name)
        assert 0 < rtt_min["d6"] <= rtt_max["d6"]
        avg = by_destination(series, contract.NODE.rtt_sum.name)["d6"] / received["d6"]
        assert rtt_min["d6"] <= avg <= rtt_max["d6"]
        (labels, _), = [item for item in series[contract.NODE.packets_sent.name]
                        if item[0]["destination_node"] == "d6"]
        assert labels == {"source_node": "a", "destination_node": "d6", "destination_node_ip_address": d.ipv6}

    @pytest.mark.parametrize("percent", [0, 1, 10, 50, 100])
    def test_reported_loss_matches_injected_loss(self, lab_factory: Callable[[list[str]], netlab.Lab],
                                                 tmp_path: Path, percent: int) -> None:
        lab = lab_factory(["a", "b"])
        a, b = lab.hosts
        b.drop_incoming_icmp(percent)
        # 400 pings per address family, as 10 addresses x 40 pings: 4 s at a 100 ms period.
        v4, v6 = add_addresses(b, 10)
        count, per_family = 40, 40 * 10
        families_of = {f"b4-{i}": "IPv4" for i in range(len(v4))} | {f"b6-{i}": "IPv6" for i in range(len(v6))}
        nodes = [{"name": name, "ipAddress": address} for name, address in zip(families_of, v4 + v6, strict=True)]
        series = run_node_ping(a, tmp_path, nodes, count=count, period_ms=100)
        assert by_destination(series, contract.NODE.packets_sent.name) == dict.fromkeys(families_of, count)
        lost = {name: count - received
                for name, received in by_destination(series, contract.NODE.packets_received.name).items()}
        # Each family's total, bounded as tightly as one address pinged 400 times; and every address on its own.
        for family in ("IPv4", "IPv6"):
            total = sum(n for name, n in lost.items() if families_of[name] == family)
            low, high = binomial_bounds(per_family, percent / 100)
            assert max(0, low) <= total <= high, f"{family}: lost {total} of {per_family} at {percent}% drop"
        low, high = binomial_bounds(count, percent / 100)
        for name, n in lost.items():
            assert max(0, low) <= n <= high, f"{name}: lost {n} of {count} at {percent}% drop"


@pytest.mark.netns
class TestNodeExporter:
    """The written file is served by a real node-exporter without scrape errors."""

    def test_scrape(self, lab_factory: Callable[[list[str]], netlab.Lab], tmp_path: Path) -> None:
        lab = lab_factory(["a", "b", "c"])
        a, b, c = lab.hosts
        c.link(up=False)
        (tmp_path / "textfile").mkdir()
        (tmp_path / "textfile" / "other_exporter.prom").write_text("other_metric 1\n")
        nodes = [{"name": "a", "ipAddress": a.ipv4}, {"name": "b", "ipAddress": b.ipv4},
                 {"name": 'c "quoted"', "ipAddress": c.ipv6}]
        run_node_ping(a, tmp_path, nodes, count=5, period_ms=100, cycles=2,  # 100 ms: b must answer all 10
                      external=[{"name": "b-as-external", "host": b.ipv6}])
        with node_exporter(tmp_path / "textfile") as url:
            series = families(get(url))
        assert series["node_textfile_scrape_error"] == [({}, 0.0)]
        assert by_destination(series, contract.NODE.packets_sent.name) == {"b": 10, 'c "quoted"': 10}
        assert by_destination(series, contract.NODE.packets_received.name) == {"b": 10, 'c "quoted"': 0}
        assert by_destination(series, contract.EXTERNAL.packets_received.name) == {"b-as-external": 10}
        assert ("other_metric", [({}, 1.0)]) in series.items()
        mtimes = {labels["file"] for labels, _ in series["node_textfile_mtime_seconds"]}
        assert any(f.endswith("node-ping_a.prom") for f in mtimes)
        assert time.time() - series[contract.LAST_SUCCESS.name][0][1] < 60


@pytest.mark.netns
class TestTwoInstancesOnOneNode:
    """Two node-pings in one network namespace but separate pid namespaces, as two hostNetwork pods
    on one node are: both fpings get the same pid, and so the same ICMP identifier."""

    def test_each_counts_only_its_own_replies(self, lab_factory: Callable[[list[str]], netlab.Lab],
                                              tmp_path: Path) -> None:
        lab = lab_factory(["a", "b"])
        a, b = lab.hosts
        v4, _ = add_addresses(b, 10)
        b.drop_incoming_icmp(50)
        nodes = [{"name": f"b{i}", "ipAddress": address} for i, address in enumerate(v4)]
        (tmp_path / "nodes.json").write_text(json.dumps(nodes))
        count = 100
        # `unshare --pid --fork`: node-ping is pid 1 and its fping pid 2 in each, as in a container.
        argv = a.cmd("unshare", "--pid", "--fork", *NODE_PING, "once", "--node-name", "a",
                     "--config", str(tmp_path / "nodes.json"), "--external-config", str(tmp_path / "none.json"),
                     "--count", str(count), "--period-ms", "20")
        processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=Path(__file__).parents[1]) for _ in range(2)]
        try:
            outputs = [process.communicate(timeout=120) for process in processes]
        finally:
            for process in processes:
                process.kill()
                process.wait()
        low, high = binomial_bounds(count * len(nodes), 0.5)
        for (out, err), process in zip(outputs, processes, strict=True):
            assert process.returncode == 0, err
            series = families(out)
            sent = sum(by_destination(series, contract.NODE.packets_sent.name).values())
            received = sum(by_destination(series, contract.NODE.packets_received.name).values())
            # Taking the other's replies as well, each would see about a quarter lost, not half.
            assert sent == count * len(nodes) and low <= sent - received <= high, (sent, received, err)
        # They ran at the same time, so one waited for the other's fping, and said so.
        assert any("another node-ping runs in this network namespace" in err for _, err in outputs)
