"""Latency accuracy: the RTTs node-ping reports match delays applied on purpose, over IPv4 and IPv6.

This kernel has no netem, so host b answers echo requests itself (tests/support/responder.py) after a known
delay, with the kernel's own echo replies turned off there. The responder logs every delay it
actually applied; node-ping's min, average (rtt sum / received), max and mdev for b must match
those within 0.5 ms + 5 %. Between the two stand the bridge (some tens of µs) and fping's
rounding: it prints RTTs of 10-100 ms to 0.1 ms and RTTs above 100 ms to whole milliseconds.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node_ping import contract
from tests.support import netlab
from tests.support.exposition import by_destination
from tests.support.netlab import run_node_ping
from tests.support.processes import PYTHON
from tests.support.processes import stop as stop_process

REPO = Path(__file__).parents[1]


@dataclass(frozen=True)
class Profile:
    delay_ms: float
    jitter_ms: float  # delays are uniform in [delay - jitter, delay + jitter]
    # fping waits for a reply no longer than the period (in -C mode, at most 2 s), so the period
    # must exceed the longest delay, with room to spare: fping handles due timeouts before it
    # reads replies, so a descheduled fping (or a late responder) near the edge turns an answered
    # ping into loss. Every profile leaves at least 70 ms.
    period_ms: int
    count: int

    def __str__(self) -> str:
        return f"{self.delay_ms:g}ms" + (f"±{self.jitter_ms:g}" if self.jitter_ms else "")


PROFILES = [Profile(20, 0, period_ms=100, count=40), Profile(20, 10, period_ms=100, count=50),
            Profile(150, 50, period_ms=300, count=25)]


@dataclass(frozen=True)
class Applied:
    """What the responder did, per address family: the delay of every reply it sent, in ms."""

    delays: dict[str, list[float]]

    @classmethod
    def read(cls, log: Path, source: dict[str, str]) -> Applied:
        delays: dict[str, list[float]] = {"v4": [], "v6": []}
        text = log.read_text()
        for line in text[:text.rfind("\n") + 1].splitlines():  # whole lines: it may be writing one
            family, peer, _ident, _sequence, _intended, applied, clock = line.split()
            assert clock == "kernel", "the responder fell back to its own clock for the send time"
            if peer == source[family]:
                delays[family].append(float(applied))
        return cls(delays)

    @classmethod
    def wait(cls, log: Path, source: dict[str, str], expected: dict[str, int], timeout_s: float = 10) -> Applied:
        """The log once it holds the expected number of replies per family (or what it holds at
        the bound).

        The responder logs a reply just after sending it, so its last line can come after the
        prober that received the reply has already exited."""
        deadline = time.monotonic() + timeout_s
        while True:
            applied = cls.read(log, source)
            if all(len(applied.delays[f]) >= n for f, n in expected.items()) or time.monotonic() > deadline:
                return applied
            time.sleep(0.02)


Responder = Callable[[netlab.Host, Profile], Path]


def quiet(host: netlab.Host) -> None:
    """Turn off the kernel's own echo replies in `host` (its namespace only)."""
    host.run("sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1")
    host.run("sysctl", "-qw", "net.ipv6.icmp.echo_ignore_all=1")


@pytest.fixture
def responder(tmp_path: Path) -> Iterator[Responder]:
    """Start tests/support/responder.py in a host whose kernel no longer answers pings; stopped at teardown."""
    processes: list[subprocess.Popen[str]] = []

    def start(host: netlab.Host, profile: Profile) -> Path:
        quiet(host)
        log = tmp_path / f"responder-{host.name}.log"
        process = subprocess.Popen(
            host.cmd(PYTHON, str(REPO / "tests" / "support" / "responder.py"), "--log", str(log),
                     "--delay-ms", str(profile.delay_ms), "--jitter-ms", str(profile.jitter_ms), "--seed", "7"),
            stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready", "the responder did not start"
        return log

    try:
        yield start
    finally:
        for process in processes:
            stop_process(process, grace_s=5)


def within(reported: float, truth: float) -> bool:
    return abs(reported - truth) <= 0.5 + 0.05 * truth


@pytest.mark.netns
@pytest.mark.slow
class TestLatencyAccuracy:
    """min, average, max and mdev as the responder applied them, for IPv4 and IPv6."""

    @pytest.mark.parametrize("profile", PROFILES, ids=str)
    def test_reported_rtt_matches_applied_delay(self, lab_factory: Callable[[list[str]], netlab.Lab],
                                                responder: Responder, tmp_path: Path, profile: Profile) -> None:
        lab = lab_factory(["a", "b"])
        a, b = lab.hosts
        targets = [{"name": "b4", "ipAddress": b.ipv4}, {"name": "b6", "ipAddress": b.ipv6}]
        for workdir in ("silent", "probe"):
            (tmp_path / workdir).mkdir()
        # With the kernel's replies off and no responder yet, b is silent: every reply below is the responder's.
        quiet(b)
        # (At 100 ms, so that 127.0.0.1, which node-ping probes beside them, surely answers: a
        # cycle in which nothing at all answered is an fping failure.)
        silent = run_node_ping(a, tmp_path / "silent", targets, count=3, period_ms=100)
        assert by_destination(silent, contract.NODE.packets_received.name) == {"b4": 0, "b6": 0}

        log = responder(b, profile)
        # The responder would answer the MTU probe's pings too: only the small ones are measured here.
        series = run_node_ping(a, tmp_path / "probe", targets, count=profile.count, period_ms=profile.period_ms,
                               args=["--mtu", "0"])
        applied = Applied.wait(log, {"v4": a.ipv4, "v6": a.ipv6}, {"v4": profile.count, "v6": profile.count})

        received = by_destination(series, contract.NODE.packets_received.name)
        assert received == {"b4": profile.count, "b6": profile.count}
        rtt_sum = by_destination(series, contract.NODE.rtt_sum.name)
        gauges = {"min": contract.NODE.rtt_min, "max": contract.NODE.rtt_max, "mdev": contract.NODE.rtt_mdev}
        reported = {stat: by_destination(series, gauge.name) for stat, gauge in gauges.items()}
        for name, family in (("b4", "v4"), ("b6", "v6")):
            delays = applied.delays[family]
            assert len(delays) == profile.count, f"{family}: the responder answered {len(delays)} times"
            truth = {"min": min(delays), "avg": statistics.fmean(delays), "max": max(delays),
                     "mdev": statistics.pstdev(delays)}
            measured = {"min": reported["min"][name], "avg": rtt_sum[name] / received[name],
                        "max": reported["max"][name], "mdev": reported["mdev"][name]}
            for stat, value in measured.items():
                assert within(value, truth[stat]), (
                    f"{family} {stat}: node-ping says {value:.3f} ms, the responder applied {truth[stat]:.3f} ms")


@pytest.mark.netns
class TestSlowReplies:
    """A reply slower than the period is a lost ping (fping's timeout in -C mode is the period)."""

    def test_reply_after_the_period_counts_as_loss(self, lab_factory: Callable[[list[str]], netlab.Lab],
                                                   responder: Responder, tmp_path: Path) -> None:
        lab = lab_factory(["a", "b"])
        a, b = lab.hosts
        # 100 ms late: a margin no scheduler delay closes (the responder is never early), and
        # 127.0.0.1, probed beside b, gets a whole period to answer.
        log = responder(b, Profile(200, 0, period_ms=100, count=5))
        series = run_node_ping(a, tmp_path, [{"name": "b4", "ipAddress": b.ipv4}], count=5, period_ms=100,
                               args=["--mtu", "0"])
        applied = Applied.wait(log, {"v4": a.ipv4, "v6": a.ipv6}, {"v4": 5})
        assert len(applied.delays["v4"]) == 5  # every one answered, after node-ping stopped waiting
        assert by_destination(series, contract.NODE.packets_sent.name) == {"b4": 5}
        assert by_destination(series, contract.NODE.packets_received.name) == {"b4": 0}
        assert contract.NODE.rtt_max.name not in series
