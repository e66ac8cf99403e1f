"""The MTU probe: packets of full size that vanish while small pings pass are seen, for IPv4 and
IPv6, and a failing probe changes nothing else in the exporter."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node_ping import contract
from node_ping.probe import mtu
from node_ping.probe.config import Settings
from node_ping.probe.cycle import Prober
from node_ping.probe.export import render
from tests.support import netlab
from tests.support.exposition import Series, by_destination, families
from tests.support.netlab import run_node_ping
from tests.support.processes import NODE_PING, REPO

NODE, MTU_SENT, MTU_RECEIVED = contract.NODE, contract.NODE.mtu_packets_sent, contract.NODE.mtu_packets_received


def errors(series: Series) -> dict[str, float]:
    return {labels["kind"]: value for labels, value in series[contract.ERRORS.name]}


def mtu_labels(series: Series) -> set[str]:
    return {labels[contract.MTU] for labels, _ in series[MTU_SENT.name]}


@pytest.mark.netns
class TestBlackHole:
    """A host behind a bridge port of MTU 1400 (the bridge drops larger frames without a word): its
    1500-byte pings are lost, its small ones are not, and nothing else in the exporter moves.

    Periods are 100 ms, as in test_netns.py: fping's reply timeout is the period."""

    def test_full_size_lost_small_pass_ipv4_and_ipv6(self, lab_factory: Callable[[list[str]], netlab.Lab],
                                                      tmp_path: Path) -> None:
        lab = lab_factory(["a", "b", "c"])
        a, b, c = lab.hosts
        lab.port_mtu(c, 1400)
        nodes = [{"name": "a", "ipAddress": a.ipv4}, {"name": "b4", "ipAddress": b.ipv4},
                 {"name": "c4", "ipAddress": c.ipv4}, {"name": "b6", "ipAddress": b.ipv6},
                 {"name": "c6", "ipAddress": c.ipv6}]
        health = tmp_path / "health"
        series = run_node_ping(a, tmp_path, nodes, count=10, period_ms=100, cycles=2,
                               args=["--health-file", str(health)])
        assert by_destination(series, NODE.packets_received.name) == {"b4": 20, "c4": 20, "b6": 20, "c6": 20}
        assert by_destination(series, MTU_SENT.name) == {"b4": 2, "c4": 2, "b6": 2, "c6": 2}
        assert by_destination(series, MTU_RECEIVED.name) == {"b4": 2, "c4": 0, "b6": 2, "c6": 0}
        assert mtu_labels(series) == {"1500"}
        # A path MTU fault is a measurement, not a prober fault: no error, the liveness probe is happy.
        assert set(errors(series).values()) == {0.0}
        assert series[contract.EXCEPTIONS.name] == [({"source_node": "a"}, 0.0)]
        assert health.exists()

        # 1400-byte packets fit the port exactly: the probe's packets are the size it says.
        series = run_node_ping(a, tmp_path / "1400", nodes, count=10, period_ms=100, args=["--mtu", "1400"])
        assert by_destination(series, MTU_RECEIVED.name) == {"b4": 1, "c4": 1, "b6": 1, "c6": 1}
        assert mtu_labels(series) == {"1400"}

    def test_the_sender_never_passes_the_probe_in_fragments(self, lab_factory: Callable[[list[str]], netlab.Lab],
                                                             tmp_path: Path) -> None:
        """A sender whose own interface is smaller than the probe (here loopback at 1400) would cut
        the packet into fragments that pass; don't-fragment makes the kernel refuse it instead, for
        IPv6 (which no router fragments, but the sender would) as for IPv4."""
        lab = lab_factory(["a"])
        (a,) = lab.hosts
        a.run("ip", "link", "set", "lo", "mtu", "1400")
        # Without don't-fragment, 1500-byte pings do pass here, in fragments:
        for size, address in (("1472", "127.0.0.2"), ("1452", "::1")):
            plain = a.run("fping", "-b", size, "-C", "1", "-q", "--", address, check=False)
            assert plain.returncode == 0, plain.stderr
        nodes = [{"name": "v4", "ipAddress": "127.0.0.2"}, {"name": "v6", "ipAddress": "::1"}]
        series = run_node_ping(a, tmp_path, nodes, count=10, period_ms=100)
        assert by_destination(series, MTU_RECEIVED.name) == {"v4": 0, "v6": 0}
        assert by_destination(series, NODE.packets_received.name) == {"v4": 10, "v6": 10}
        assert set(errors(series).values()) == {0.0}


def write_nodes(path: Path, *pairs: tuple[str, str]) -> Path:
    path.write_text(json.dumps([{"name": name, "ipAddress": address} for name, address in pairs]))
    return path


def prober(tmp_path: Path, **overrides: object) -> Prober:
    nodes = write_nodes(tmp_path / "nodes.json", ("v4", "127.0.0.2"), ("v6", "::1"))
    values: dict[str, object] = {"node_name": "self", "textfile_dir": None, "count": 10, "period_ms": 20,
                                 "config_path": nodes, "external_config_path": tmp_path / "external.json"}
    values.update(overrides)
    return Prober(Settings(**values))  # type: ignore[arg-type]


def fake_fping(tmp_path: Path, when_mtu: str) -> str:
    """The real fping, except for the MTU probe's runs (the ones with -M), which do `when_mtu`."""
    script = tmp_path / "fping"
    script.write_text(f'#!/bin/sh\ncase " $* " in *" -M "*) {when_mtu};; esac\nexec {shutil.which("fping")} "$@"\n')
    script.chmod(0o755)
    return str(script)


class TestProbeFails:
    """An MTU fping that fails costs the MTU counters of that cycle, never the small pings' data."""

    def test_crashing_mtu_fping(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        probe = prober(tmp_path, fping=fake_fping(tmp_path, "kill -SEGV $$"))
        with caplog.at_level(logging.WARNING):
            outcome = probe.cycle(threading.Event())
        assert outcome.ok and outcome.complete
        series = families(render(probe.snapshot))
        assert by_destination(series, NODE.packets_received.name) == {"v4": 10, "v6": 10}
        assert MTU_SENT.name not in series  # nothing measured: no counter starts
        # The fping process failed (not a lost reply): one fping error, and the log says what.
        assert errors(series)[contract.FPING_ERROR] == 1
        assert any("MTU probe's fping failed" in r.getMessage() and "signal 11" in r.getMessage()
                   for r in caplog.records)

    def test_hanging_mtu_fping_is_killed_without_lengthening_the_cycle(self, tmp_path: Path) -> None:
        probe = prober(tmp_path, fping=fake_fping(tmp_path, "exec sleep 60"))
        started = time.monotonic()
        assert probe.cycle(threading.Event()).ok
        assert time.monotonic() - started < probe.settings.nominal_cycle_s + 3  # the grace is 1 s
        assert by_destination(families(render(probe.snapshot)), NODE.packets_received.name) == {"v4": 10, "v6": 10}

    def test_off(self, tmp_path: Path) -> None:
        probe = prober(tmp_path, mtu=0)
        assert probe.cycle(threading.Event()).ok
        text = render(probe.snapshot)
        assert MTU_SENT.base not in text and MTU_RECEIVED.base not in text


class TestIpv6BelowItsMinimum:
    """Below 1280 bytes every IPv6 link passes: IPv6 targets get no probe, and the log says why."""

    def test_ipv4_probed_ipv6_named(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        probe = prober(tmp_path, mtu=1000)
        with caplog.at_level(logging.WARNING):
            assert probe.cycle(threading.Event()).ok
            assert probe.cycle(threading.Event()).ok
        series = families(render(probe.snapshot))
        assert by_destination(series, MTU_RECEIVED.name) == {"v4": 2}
        assert mtu_labels(series) == {"1000"}
        assert set(errors(series).values()) == {0.0}
        (warning,) = [r.getMessage() for r in caplog.records if "MTU" in r.getMessage()]  # once, not per cycle
        assert "'--mtu' (env var: 'NODE_PING_MTU')" in warning and "1 IPv6 node targets" in warning


class TestCost:
    """With the defaults the probe adds at most a tenth to the packets of a cycle."""

    @pytest.mark.parametrize(("count", "pings"), [(30, 3), (10, 1), (1, 1), (15, 1), (10_000, 3)])
    def test_pings_per_target(self, count: int, pings: int) -> None:
        assert mtu.pings(count) == pings

    def test_packets_of_exactly_the_size_one_run_per_ip_version(self) -> None:
        argvs = mtu.argvs(["10.0.0.1", "fd00::1", "10.0.0.2"], 1500, 30, 1000, "fping")
        sizes = {argv[-1]: argv[argv.index("-b") + 1] for argv in argvs}
        assert sizes == {"10.0.0.2": "1472", "fd00::1": "1452"}  # 1500 - 28 and 1500 - 48
        for argv in argvs:
            assert "-M" in argv and argv[argv.index("-C") + 1] == "3"
            # Spread over the main run's 30 s and no longer waiting for a reply than it does: it ends first.
            assert argv[argv.index("-p") + 1] == "10000" and argv[argv.index("-t") + 1] == "1000"
        assert mtu.argvs(["10.0.0.1"], 0, 30, 1000, "fping") == []


class TestSettings:
    """Bad --mtu and NODE_PING_MTU values: exit 2 and a message naming the setting."""

    @pytest.mark.parametrize(("args", "env", "fragment"), [
        (["--mtu", "67"], {}, "67 is not an IP packet size: use 0 (off) or 68 to 65535 bytes (1280 or more for IPv6"),
        (["--mtu", "65536"], {}, "65536 is not an IP packet size"),
        (["--mtu", "-1"], {}, "-1 is not an IP packet size"),
        (["--mtu", "1500.5"], {}, "'1500.5' is not a whole number of bytes"),
        ([], {"NODE_PING_MTU": "jumbo"}, "'jumbo' is not a whole number of bytes"),
    ])
    def test_refused(self, args: list[str], env: dict[str, str], fragment: str, tmp_path: Path) -> None:
        result = subprocess.run([*NODE_PING, "once", "--node-name", "a", "--config", str(tmp_path / "none.json"),
                                 *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
                                env={"PATH": "/usr/bin:/bin", **env})
        assert result.returncode == 2, result.stderr
        assert "Invalid value for '--mtu' (env var: 'NODE_PING_MTU')" in result.stderr
        assert fragment in result.stderr

    @pytest.mark.parametrize("value", [0, 68, 1280, 1500, 9000, 65535])
    def test_accepted(self, value: int) -> None:
        assert Settings(node_name="a", textfile_dir=None, mtu=value).mtu == value
