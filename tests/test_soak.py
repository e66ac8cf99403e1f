"""Thousands of short cycles of a real `node-ping run` process against loopback targets: memory and
file descriptors stay flat, no temp file is left behind, every file a reader sees while cycles
race past is complete, and targets churning or the config flipping to invalid every cycle never
bring the process down.

127.0.0.0/8 answers locally on Linux, so dozens of loopback targets cost no network at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node_ping import contract
from node_ping.probe.textfile import lock_name
from tests.support.processes import NODE_PING

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
SOURCE = "self"
# The node's own entry is not in its list here: zone and rack unknown.
LAST_LINE = f'{contract.NODE_INFO.name}{{rack="",source_node="{SOURCE}",zone=""}} 1.0\n'
# Families every file carries, by the names prometheus_client's parser gives them (no _total).
SELF_FAMILIES = {contract.EXCEPTIONS.base, contract.ERRORS.base, contract.CYCLES.base, contract.TARGETS.name,
                 contract.CYCLE_DURATION.name, contract.CYCLE_NOMINAL.name,
                 contract.CYCLE_LATENESS.name, contract.LAST_SUCCESS.name,
                 contract.FPING_CPU.base, contract.OWN_CPU.base, contract.BUILD_INFO.name, contract.NODE_INFO.name}
NODE_FAMILIES = {contract.NODE.packets_sent.base, contract.NODE.packets_received.base,
                 contract.NODE.rtt_sum.base, contract.NODE.rtt_min.name, contract.NODE.rtt_max.name,
                 contract.NODE.rtt_mdev.name, contract.NODE.mtu_packets_sent.base,
                 contract.NODE.mtu_packets_received.base}

Series = dict[str, dict[str, float]]
"""sample name -> destination (or kind, or "") -> value"""


def loopback_nodes(count: int) -> list[dict[str, str]]:
    return [{"name": f"n{i}", "ipAddress": f"127.0.{i // 200 + 1}.{i % 200 + 1}"} for i in range(count)]


def write_atomic(path: Path, text: str) -> None:
    """As the kubelet updates a mounted ConfigMap: the reader sees the old or the new file."""
    temp = path.with_name(f".{path.name}.writing")
    temp.write_text(text)
    os.replace(temp, path)


def read_complete(text: str) -> Series:
    """Parse one read of the textfile; fail unless it is a whole file."""
    assert text.endswith(LAST_LINE), f"file does not end with the node_info line: {text[-200:]!r}"
    series: Series = {}
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for sample in family.samples:
            key = sample.labels.get("destination_node") or sample.labels.get("kind") or ""
            series.setdefault(sample.name, {})[key] = sample.value
    missing = (SELF_FAMILIES | NODE_FAMILIES) - names
    assert not missing, f"families missing from the file: {sorted(missing)}"
    return series


@dataclass
class Reader:
    """Reads the textfile in a loop while node-ping replaces it, as node-exporter does on scrape."""

    path: Path
    check: Callable[[Series], None]
    reads: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                continue  # before the first cycle
            try:
                self.check(read_complete(text))
            except (AssertionError, ValueError, KeyError) as err:
                self.failures.append(f"{type(err).__name__}: {err}")
            self.reads += 1
            time.sleep(0.002)  # parsing holds the GIL: leave the other test threads their turn


@dataclass
class Exporter:
    process: subprocess.Popen[bytes]
    textfile: Path
    config: Path
    log: Path

    @property
    def output(self) -> Path:
        return self.textfile / f"node-ping_{SOURCE}.prom"

    def usage(self) -> tuple[int, frozenset[str]]:
        """Resident memory in KiB and the open file descriptors ("3 -> pipe:[1234]"), from /proc."""
        pid = self.process.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return rss, frozenset(open_descriptors(pid))

    def cycles(self) -> int:
        try:
            return int(read_complete(self.output.read_text())[contract.CYCLES.name][""])
        except (FileNotFoundError, AssertionError, KeyError):
            return 0

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


StartExporter = Callable[..., Exporter]


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[StartExporter]:
    """Start `node-ping run --count 1 --period-ms 20 [extra flags]` on a nodes.json; killed at teardown,
    with any fping it left running."""
    started: list[Exporter] = []

    def start(nodes: list[dict[str, str]], *extra: str) -> Exporter:
        textfile = tmp_path / "textfile"
        textfile.mkdir()
        config = tmp_path / "nodes.json"
        write_atomic(config, json.dumps(nodes))
        log = tmp_path / "node-ping.log"
        with open(log, "wb") as log_handle:
            process = subprocess.Popen(
                [*NODE_PING, "run", "--node-name", SOURCE, "--textfile-dir", str(textfile),
                 "--config", str(config), "--external-config", str(tmp_path / "absent.json"),
                 "--count", "1", "--period-ms", "20", *extra],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=log_handle, stderr=log_handle, start_new_session=True)
        exporter = Exporter(process, textfile, config, log)
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        if exporter.process.poll() is None:
            exporter.process.kill()
        exporter.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(exporter.process.pid, signal.SIGKILL)  # its own session: fping or a stand-in


@pytest.fixture
def patient_fping(tmp_path: Path) -> str:
    """fping with a 1 s reply timeout, for the soak's 20 ms period (node-ping's argv passes through).

    The soak needs thousands of cycles in about a minute, so it probes with a 20 ms period, and
    fping's reply timeout in -C mode is the period. fping handles due timeouts before it reads
    replies, so on a loaded machine a descheduled fping would count a loopback reply already
    waiting in its socket as lost, and "received = sent" would fail for a reason that has nothing
    to do with node-ping. Loopback answers in microseconds: the longer timeout changes nothing
    but that, and keeps the zero-loss checks exact.
    """
    wrapper = tmp_path / "fping-patient"
    wrapper.write_text('#!/bin/sh\nexec fping -t 1000 "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def open_descriptors(pid: int) -> Iterator[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            yield f"{fd.name} -> {os.readlink(fd)}"


@dataclass
class Sample:
    cycles: int
    rss_kib: int
    descriptors: frozenset[str]


def window(samples: list[Sample], low: int, high: int) -> list[Sample]:
    chosen = [s for s in samples if low <= s.cycles <= high]
    assert len(chosen) >= 5, f"only {len(chosen)} samples between cycles {low} and {high}"
    return chosen


def held_throughout(samples: list[Sample]) -> frozenset[str]:
    """Descriptors open in every sample: the long-lived ones. fping's pipes and the temp file come
    and go with each cycle (a new pipe inode every time), so only a descriptor that is never
    closed survives the intersection, whatever moment of the cycle each sample caught."""
    return frozenset.intersection(*(s.descriptors for s in samples))


class TestSoak:
    """~2000 cycles over 48 loopback targets, read concurrently all the time."""

    CYCLES = 2000
    TARGETS = 48

    # Not a rate: only a bound so that a hung run fails instead of blocking CI (~45 s when idle).
    TIMEOUT_S = 600

    def test_memory_and_descriptors_flat_files_always_complete(
            self, start_exporter: StartExporter, patient_fping: str) -> None:
        nodes = loopback_nodes(self.TARGETS)
        # The MTU probe runs too (its fping processes must leak nothing either), at 576 bytes: every
        # raw ICMP socket gets a copy of every ICMP packet, and 48 requests and replies of 1500 bytes,
        # sent by the MTU fping in the same few ms as the main one starts at this 20 ms period, can
        # fill the main fping's receive buffer before it reads, on a loaded machine (docs/paths.md).
        exporter = start_exporter(nodes, "--fping", patient_fping, "--mtu", "576")

        def honest(series: Series) -> None:
            # Every target was listed from the start and loopback never drops a ping (nor, with
            # patient_fping, does a descheduled fping), so every complete file says:
            # sent = received = cycles, for every target.
            cycles = series[contract.CYCLES.name][""]
            sent = series[contract.NODE.packets_sent.name]
            assert len(sent) == self.TARGETS
            assert set(sent.values()) == {cycles}, f"sent {set(sent.values())} after {cycles} cycles"
            assert series[contract.NODE.packets_received.name] == sent

        reader = Reader(exporter.output, honest)
        thread = threading.Thread(target=reader.loop, daemon=True)
        thread.start()
        samples: list[Sample] = []
        strays: set[str] = set()
        deadline = time.monotonic() + self.TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                assert exporter.process.poll() is None, exporter.log.read_text()[-2000:]
                cycles = exporter.cycles()
                samples.append(Sample(cycles, *exporter.usage()))
                # The writer's lock beside the file is expected while it runs; node-exporter reads *.prom only.
                strays |= {p.name for p in exporter.textfile.iterdir()
                           if p.name not in (exporter.output.name, lock_name(exporter.output.name))
                           and not p.name.endswith(".tmp")}
                if cycles >= self.CYCLES:
                    break
                time.sleep(0.1)
        finally:
            reader.stop.set()
            thread.join(10)
        assert exporter.stop() == 0
        done = samples[-1].cycles
        assert done >= self.CYCLES, f"only {done} of {self.CYCLES} cycles before the {self.TIMEOUT_S} s bound"

        # After warm-up nothing grows with the number of cycles: a leak of one rendered file (tens of
        # KiB) or one descriptor per cycle would show here many times over. Measured: ~27 MiB, and
        # the allocator settles within a few thousand cycles (+0.3 MiB by cycle 2000, +0.9 MiB by
        # 4000, then flat to 12,000).
        early, late = window(samples, 100, 400), window(samples, done - 300, done)
        early_rss = max(s.rss_kib for s in early)
        late_rss = max(s.rss_kib for s in late)
        assert late_rss <= early_rss + 1024, f"RSS grew from {early_rss} KiB to {late_rss} KiB over {done} cycles"
        # A leaked descriptor stays open from the cycle that leaked it on.
        leaked = held_throughout(late) - held_throughout(early)
        assert not leaked, f"descriptors held open by cycle {done} that were not by cycle 400: {sorted(leaked)}"

        assert reader.reads > 100 and not reader.failures, (reader.reads, reader.failures[:3])
        assert not strays
        # No temp file left, and the lock is gone with its writer.
        assert [p.name for p in exporter.textfile.iterdir()] == [exporter.output.name]
        final = read_complete(exporter.output.read_text())
        assert final[contract.ERRORS.name] == dict.fromkeys(contract.ERROR_KINDS, 0)
        assert "Traceback" not in exporter.log.read_text()


class TestChurn:
    """The node list changes every cycle, and every other version of it is broken."""

    def test_nodes_join_and_leave_and_config_flips_to_invalid(
            self, start_exporter: StartExporter, patient_fping: str) -> None:
        pool = loopback_nodes(30)
        addresses = {node["name"]: node["ipAddress"] for node in pool}
        exporter = start_exporter(pool[:10], "--fping", patient_fping)
        # Files that cannot be used at all: node-ping must keep probing the last good list.
        broken = ['[{"name": "n0", "ipAddress": ', "{}", "", "null", "\x00\xff garbage"]

        def plausible(series: Series) -> None:
            cycles = series[contract.CYCLES.name][""]
            sent = series[contract.NODE.packets_sent.name]
            assert sent, "a file without any target although every valid list has some"
            for name, value in sent.items():
                assert addresses[name]  # only names that were ever configured
                assert 1 <= value <= cycles
                assert series[contract.NODE.packets_received.name][name] == value
            assert series[contract.TARGETS.name]["node"] == len(sent)

        reader = Reader(exporter.output, plausible)
        stop_churn = threading.Event()
        versions = [0]

        def churn() -> None:
            step = 0
            while not stop_churn.is_set():
                step += 1
                if step % 2:
                    write_atomic(exporter.config, broken[step // 2 % len(broken)])
                else:
                    # A sliding window of 10 nodes: one joins and one leaves each time.
                    start = step // 2 % 20
                    write_atomic(exporter.config, json.dumps(pool[start:start + 10]))
                versions[0] = step
                stop_churn.wait(0.01)  # about one cycle

        threads = [threading.Thread(target=reader.loop, daemon=True), threading.Thread(target=churn, daemon=True)]
        deadline = time.monotonic() + 300  # a bound, not a rate (~8 s when idle)
        while exporter.cycles() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # a first good list; before it, a broken file rightly means no targets
        for thread in threads:
            thread.start()
        try:
            while time.monotonic() < deadline and (versions[0] < 400 or exporter.cycles() < 400):
                assert exporter.process.poll() is None, exporter.log.read_text()[-2000:]
                time.sleep(0.2)
        finally:
            stop_churn.set()
            reader.stop.set()
            for thread in threads:
                thread.join(10)
        assert exporter.process.poll() is None, exporter.log.read_text()[-2000:]
        assert exporter.cycles() >= 400 and versions[0] >= 400, (exporter.cycles(), versions[0])
        assert reader.reads > 50 and not reader.failures, (reader.reads, reader.failures[:3])

        # Settle on one valid list: the next cycles probe exactly it, nodes that left are gone.
        final_nodes = pool[20:25]
        write_atomic(exporter.config, json.dumps(final_nodes))
        # The cycle after the one running now started after the write, so it read the final list.
        series = wait_for(exporter, exporter.cycles() + 2)
        assert set(series[contract.NODE.packets_sent.name]) == {n["name"] for n in final_nodes}
        assert series[contract.ERRORS.name]["config"] >= 100
        assert series[contract.ERRORS.name]["fping"] == 0
        assert series[contract.EXCEPTIONS.name][""] == 0
        assert exporter.stop() == 0
        log = exporter.log.read_text()
        assert "Traceback" not in log and "unexpectedly" not in log
        assert [p.name for p in exporter.textfile.iterdir()] == [exporter.output.name]


def fping_child(pid: int, timeout_s: float = 10) -> int:
    """The pid of the fping that `pid` is running right now (waits for the next one)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            for child in children.read_text().split():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "fping":
                        return int(child)
        time.sleep(0.01)
    raise AssertionError(f"no fping child of {pid} within {timeout_s} s")


def wait_for(exporter: Exporter, cycles: int, timeout_s: float = 120) -> Series:
    """The first file seen with at least `cycles` cycles (the bound only stops a hung run)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert exporter.process.poll() is None, exporter.log.read_text()[-2000:]
        if exporter.cycles() >= cycles:
            return read_complete(exporter.output.read_text())
        time.sleep(0.05)
    raise AssertionError(f"cycle {cycles} not written within {timeout_s} s: {exporter.log.read_text()[-2000:]}")


def written_pid(pidfile: Path, timeout_s: float = 30) -> int:
    """The pid a stand-in wrote with `echo $$ > pidfile`, once the whole line is there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            text = pidfile.read_text()
            if text.endswith("\n"):
                return int(text)
        time.sleep(0.01)
    raise AssertionError(f"{pidfile} not written within {timeout_s} s")


class TestFpingFaults:
    """fping dying or hanging under a running `node-ping run`: the process carries on, the file on
    disk keeps the last good numbers, and the error shows in node_ping_errors_total{kind="fping"}."""

    NODES = loopback_nodes(4)

    def test_fping_killed_mid_cycle(self, start_exporter: StartExporter) -> None:
        # 20 pings 100 ms apart: fping runs for two seconds of every cycle, long enough to be hit.
        exporter = start_exporter(self.NODES, "--count", "20", "--period-ms", "100")
        wait_for(exporter, 1)
        for _attempt in range(5):
            child = fping_child(exporter.process.pid)
            # Cycles run one after another, so the fping found belongs to the cycle after the last
            # one written, unless that cycle was written in between (then the kill below misses).
            good = read_complete(exporter.output.read_text())
            assert set(good[contract.NODE.packets_sent.name].values()) == {20 * good[contract.CYCLES.name][""]}
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            failed = wait_for(exporter, int(good[contract.CYCLES.name][""]) + 1)
            if failed[contract.ERRORS.name]["fping"]:
                break
            # That fping had already exited (a zombie takes SIGKILL silently): its cycle was good.
        else:
            raise AssertionError("no fping was caught running in five tries")

        # The cycle whose fping was killed is the one written next, and it is a failed cycle.
        assert failed[contract.CYCLES.name][""] == good[contract.CYCLES.name][""] + 1
        assert failed[contract.ERRORS.name]["fping"] == 1
        assert failed[contract.EXCEPTIONS.name][""] == 1
        # Nothing of the killed run is counted: the counters are the last good cycle's, and the RTT
        # gauges, which describe the last cycle, are gone: it measured nothing.
        for name in (contract.NODE.packets_sent.name, contract.NODE.packets_received.name,
                     contract.NODE.rtt_sum.name):
            assert failed[name] == good[name], name
        assert good[contract.NODE.rtt_min.name] and contract.NODE.rtt_min.name not in failed
        assert failed[contract.LAST_SUCCESS.name] == good[contract.LAST_SUCCESS.name]

        recovered = wait_for(exporter, int(failed[contract.CYCLES.name][""]) + 1)
        # Every cycle but the killed one counted its 20 pings, all answered.
        good_cycles = recovered[contract.CYCLES.name][""] - 1
        assert set(recovered[contract.NODE.packets_sent.name].values()) == {20 * good_cycles}
        assert recovered[contract.NODE.packets_received.name] == recovered[contract.NODE.packets_sent.name]
        assert recovered[contract.ERRORS.name]["fping"] == 1
        assert exporter.stop() == 0
        assert "fping was killed by signal 9" in exporter.log.read_text()

    def test_hanging_fping_is_killed_at_the_hard_timeout(self, start_exporter: StartExporter,
                                                         tmp_path: Path) -> None:
        # A stand-in that hangs on its second run and ignores SIGTERM (SIG_IGN survives exec).
        # With --count 5 --period-ms 200 the hard timeout is 5 x 0.2 s x 1.5 + 10 s = 11.5 s.
        calls, hung = tmp_path / "calls", tmp_path / "hung.pid"
        wrapper = tmp_path / "fping-hangs-once"
        # The MTU probe's runs (-M) pass through: the second main run is the one that hangs.
        wrapper.write_text(f"""#!/bin/sh
case " $* " in *" -M "*) exec fping "$@";; esac
n=$(cat {calls} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {calls}
if [ "$n" = 2 ]; then echo $$ > {hung}; trap '' TERM; exec sleep 3600; fi
exec fping "$@"
""")
        wrapper.chmod(0o755)
        exporter = start_exporter(self.NODES, "--count", "5", "--period-ms", "200", "--fping", str(wrapper))
        good = wait_for(exporter, 1)
        pid = written_pid(hung)
        assert Path(f"/proc/{pid}").exists()
        assert read_complete(exporter.output.read_text())[contract.CYCLES.name] == good[contract.CYCLES.name]

        failed = wait_for(exporter, 2)
        assert not Path(f"/proc/{pid}").exists(), "the hung fping was left running"
        assert failed[contract.ERRORS.name]["fping"] == 1
        assert failed[contract.NODE.packets_sent.name] == good[contract.NODE.packets_sent.name]
        recovered = wait_for(exporter, 3)
        assert set(recovered[contract.NODE.packets_sent.name].values()) == {10}
        assert exporter.stop() == 0
        assert "fping ran longer than 12 s and was killed" in exporter.log.read_text()

    @pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
    def test_signal_to_the_whole_process_group_is_a_clean_stop(self, start_exporter: StartExporter,
                                                               signum: signal.Signals) -> None:
        # Ctrl-C in a terminal, or `timeout`, signals fping too: that is a stop, not an fping fault.
        exporter = start_exporter(self.NODES, "--count", "20", "--period-ms", "100")
        good = wait_for(exporter, 1)
        fping_child(exporter.process.pid)
        os.killpg(exporter.process.pid, signum)
        assert exporter.process.wait(timeout=30) == 0
        final = read_complete(exporter.output.read_text())
        assert final[contract.ERRORS.name]["fping"] == 0, exporter.log.read_text()[-1000:]
        # The interrupted cycle published nothing: every cycle in the file counted all 20 pings.
        # (Which cycle was interrupted depends on timing; that none of it shows does not.)
        cycles = final[contract.CYCLES.name][""]
        assert cycles >= good[contract.CYCLES.name][""]
        assert set(final[contract.NODE.packets_sent.name].values()) == {20 * cycles}
