"""Running fping: the command line, exit codes, time limits, never leaving a child behind, bounded
output and resources that run out.

Most tests run the real fping against loopback. Faults real fping does not produce on demand (a
hang, death by a signal, a flood of output) are played by small shell scripts standing in for the
fping binary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_ping import contract
from node_ping.probe import fping, lock, output
from node_ping.probe.report import complete_reports, parse_report
from tests.support.exposition import by_destination, families
from tests.support.limits import descriptors_left, open_descriptors
from tests.support.processes import NODE_PING, REPO
from tests.support.procfs import peak_memory_bytes, wait_until


def fake_fping(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fping"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def wait_for_pid(pidfile: Path, timeout_s: float = 10) -> int:
    """The pid a stand-in wrote with `echo $$ > pidfile`, once the whole line is there (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            text = pidfile.read_text()
        except FileNotFoundError:
            text = ""
        if text.endswith("\n"):
            return int(text)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    raise AssertionError(f"the stand-in did not write {pidfile} within {timeout_s} s")


def stop_once_running(pidfile: Path, stop: threading.Event) -> threading.Thread:
    """Set `stop` as soon as the stand-in is running (it has written its pid), so the stop always
    lands while it sleeps; set it anyway after the bound so the run under test cannot hang."""
    def arm() -> None:
        try:
            wait_for_pid(pidfile)
        finally:
            stop.set()

    thread = threading.Thread(target=arm, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def held_lock() -> Iterator[Callable[[], None]]:
    """Hold the network namespace's fping lock as another node-ping would; yields a release function."""
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind(lock.LOCK_ADDRESS)
    try:
        yield holder.close
    finally:
        holder.close()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process fping.run starts, so a test can check it was reaped however early it died."""
    processes: list[subprocess.Popen[bytes]] = []
    real_start = fping._start

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        processes.append(real_start(argv))
        return processes[-1]

    monkeypatch.setattr(fping, "_start", start)
    yield processes


class TestArgv:
    """The original flags, a gap that fits the round into the period, and no way to inject options."""

    def test_original_flags_and_separator(self) -> None:
        argv = fping.build_argv(["10.0.0.1", "fd00::1"], count=30, period_ms=1000)
        assert argv[:11] == ["fping", "-p", "1000", "-A", "-C", "30", "-B", "1", "-q", "-r", "1"]
        assert argv[-3:] == ["--", "10.0.0.1", "fd00::1"]

    @pytest.mark.parametrize("bad", ["-f/etc/passwd", "--help", ""])
    def test_refuses_option_like_addresses(self, bad: str) -> None:
        with pytest.raises(ValueError, match="refusing"):
            fping.build_argv(["10.0.0.1", bad], 1, 1000)

    @pytest.mark.parametrize("targets", [1, 10, 300, 2000, 5000])
    def test_a_round_fits_in_one_period(self, targets: int) -> None:
        gap = fping.packet_gap_ms(targets, 1000)
        assert gap <= fping.DEFAULT_GAP_MS
        # What fping really spends per packet is the gap plus its own send cost.
        assert targets * (gap + fping.SEND_COST_MS) <= 1000 * 0.7 + 1e-9

    def test_targets_per_process_follow_fpings_sequence_numbers(self) -> None:
        # 65,535 sequence numbers, each held 10 s: targets x (10 s / period) must stay below that.
        for period_ms in (1, 200, 1000, 5000):
            limit = fping.max_targets_per_run(period_ms)
            assert limit * 10_000 / period_ms <= 65_535
        assert fping.max_targets_per_run(1000) >= 5000

    def test_gap_in_argv(self) -> None:
        argv = fping.build_argv([f"10.0.{i // 250}.{i % 250 + 1}" for i in range(300)], 30, 1000)
        assert argv[argv.index("-i") + 1] == "2.233"


class TestRun:
    """Exit codes 0-2 are data; anything else is an error with a message; nothing is left running."""

    def test_real_fping_on_loopback(self) -> None:
        # fping's reply timeout in -C mode is the period, and it handles due timeouts before it
        # reads replies: at a period of a few ms, a descheduled fping counts loopback replies as
        # lost. 100 ms leaves a loaded machine room for exit code 0 ("all answered").
        argv = fping.build_argv(["127.0.0.1", "::1"], count=3, period_ms=100)
        result = fping.run(argv, timeout_s=10, stop=threading.Event())
        assert result.returncode == 0
        report = parse_report(result.report)
        assert set(report) == {"127.0.0.1", "::1"} and all(len(s) == 3 for s in report.values())
        assert result.cpu_seconds >= 0

    def test_missing_binary(self) -> None:
        with pytest.raises(fping.FpingNotFound, match="install fping"):
            fping.run(["/nonexistent/fping", "127.0.0.1"], 5, threading.Event())

    def test_exit_code_4_is_an_error_with_fpings_message(self) -> None:
        # Binding to an address this host does not have fails before anything is sent.
        with pytest.raises(fping.FpingFailed, match="code 4: fping: cannot bind source address"):
            fping.run(["fping", "-C", "1", "-S", "10.255.255.254", "--", "127.0.0.1"], 5, threading.Event())

    def test_exit_code_3_is_an_error(self, tmp_path: Path) -> None:
        binary = fake_fping(tmp_path, "echo 'fping: bad option' >&2; exit 3")
        with pytest.raises(fping.FpingFailed, match="code 3: fping: bad option"):
            fping.run([binary], 5, threading.Event())

    def test_exit_codes_1_and_2_are_data(self, tmp_path: Path) -> None:
        for code in (1, 2):
            binary = fake_fping(tmp_path, f"echo '10.0.0.1 : - -' >&2; exit {code}")
            assert fping.run([binary], 5, threading.Event()).returncode == code

    def test_hung_fping_is_killed_at_the_deadline(self, tmp_path: Path,
                                                  started: list[subprocess.Popen[bytes]]) -> None:
        binary = fake_fping(tmp_path, "exec sleep 60")
        with pytest.raises(fping.FpingTimeout, match="longer than") as caught:
            fping.run([binary], timeout_s=0.5, stop=threading.Event())
        # Known from the start, not from a pidfile the stand-in may not have written before the
        # deadline on a slow machine: the process was waited for and is gone.
        (process,) = started
        assert process.returncode is not None
        assert not Path(f"/proc/{process.pid}").exists()
        # The exception (held here, as a log handler may) keeps run's frame alive: its pipes must
        # be closed anyway, or every timed-out cycle would leak a descriptor (stdout is not a pipe).
        assert caught.value.__traceback__ is not None
        assert process.stdout is None
        assert process.stderr is not None and process.stderr.closed

    def test_killed_by_a_signal(self, tmp_path: Path) -> None:
        binary = fake_fping(tmp_path, "echo '10.0.0.1 : 0.1' >&2; kill -9 $$")
        with pytest.raises(fping.FpingFailed, match="signal 9"):
            fping.run([binary], 5, threading.Event())

    def test_stop_request_interrupts_and_reaps(self, tmp_path: Path) -> None:
        pidfile = tmp_path / "pid"
        binary = fake_fping(tmp_path, f"echo $$ > {pidfile}; exec sleep 60")
        stop = threading.Event()
        arming = stop_once_running(pidfile, stop)
        with pytest.raises(fping.Interrupted):
            fping.run([binary], timeout_s=30, stop=stop)
        arming.join()
        assert not Path(f"/proc/{wait_for_pid(pidfile, 0)}").exists()

    def test_several_processes_join_their_reports(self) -> None:
        argvs = [fping.build_argv([address], count=2, period_ms=10) for address in ("127.0.0.1", "127.0.0.2", "::1")]
        result = fping.run_all(argvs, 10, threading.Event())
        assert sorted(parse_report(result.report)) == ["127.0.0.1", "127.0.0.2", "::1"]

    def test_side_runs_report_apart_and_fail_alone(self, tmp_path: Path) -> None:
        """The MTU probe's runs: their report is kept apart, and their failure is theirs alone."""
        main = [fping.build_argv(["127.0.0.2"], count=2, period_ms=10)]
        side = fping.build_argv(["127.0.0.3"], count=1, period_ms=10, options=["-M", "-b", "1472"])
        result = fping.run_all(main, 10, threading.Event(), side=[side])
        assert list(parse_report(result.report)) == ["127.0.0.2"]
        assert list(parse_report(result.side_report)) == ["127.0.0.3"] and result.side_error is None
        (tmp_path / "broken").mkdir()
        (tmp_path / "hung").mkdir()
        broken = fake_fping(tmp_path / "broken", "exit 3")
        hung = fake_fping(tmp_path / "hung", "exec sleep 60")
        for bad, why in ((broken, "exited with code 3"), (hung, "still running"), ("/nonexistent/fping", "not found")):
            started = time.monotonic()
            result = fping.run_all(main, 10, threading.Event(), side=[[bad]])
            assert list(parse_report(result.report)) == ["127.0.0.2"]
            assert result.side_error is not None and why in result.side_error
            assert time.monotonic() - started < fping.SIDE_GRACE_S + 2

    def test_stop_ends_every_process(self, tmp_path: Path) -> None:
        pidfile = tmp_path / "pid"
        slow = fake_fping(tmp_path, f"echo $$ > {pidfile}; exec sleep 60")
        argvs = [["fping", "-C", "1", "-S", "10.255.255.254", "--", "127.0.0.1"], [slow]]
        stop = threading.Event()
        arming = stop_once_running(pidfile, stop)
        with pytest.raises(fping.Interrupted):
            fping.run_all(argvs, 30, stop)
        arming.join()
        assert not Path(f"/proc/{wait_for_pid(pidfile, 0)}").exists()

    def test_waits_for_another_node_pings_fping(self) -> None:
        """Another node-ping in this network namespace holds the lock: wait, then run."""
        argv = fping.build_argv(["127.0.0.1"], count=1, period_ms=10)
        with held_lock() as release:
            threading.Timer(0.3, release).start()
            result = fping.run(argv, timeout_s=10, stop=threading.Event())
        assert result.waited_s >= 0.25
        assert "127.0.0.1 :" in result.report

    def test_gives_up_on_a_lock_held_past_the_limit(self) -> None:
        with held_lock(), pytest.raises(fping.FpingTimeout, match="for other node-pings in this network namespace"):
            fping.run(["fping", "--", "127.0.0.1"], timeout_s=0.3, stop=threading.Event())

    def test_two_node_pings_take_turns(self) -> None:
        """The holder comes back for the lock within milliseconds (it only writes its file in
        between): a waiter must still get the next turn, or it fails every cycle."""
        argv = fping.build_argv(["127.0.0.1"], count=3, period_ms=20)
        turns: list[str] = []

        def node_ping(name: str) -> None:
            for _ in range(5):
                fping.run(argv, timeout_s=30, stop=threading.Event())
                turns.append(name)
                time.sleep(0.002)  # writing the textfile

        threads = [threading.Thread(target=node_ping, args=(name,)) for name in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(turns) == ["a"] * 5 + ["b"] * 5
        runs = "".join(turns)
        # While both are in line they alternate (a slow thread start may let the first run alone for a
        # while, and the one left runs alone once the other is done).
        in_line = runs.lstrip(runs[0]).rstrip(runs[-1])
        assert len(in_line) >= 4 and "aa" not in in_line and "bb" not in in_line, runs

    def test_stop_while_waiting_for_the_lock(self) -> None:
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        with held_lock(), pytest.raises(fping.Interrupted):
            fping.run(["fping", "--", "127.0.0.1"], timeout_s=30, stop=stop)

    def test_runs_with_c_locale(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        binary = fake_fping(tmp_path, 'if [ "$LC_ALL" = C ]; then echo "10.0.0.1 : 0.5" >&2; '
                                      'else echo "fping: locale $LC_ALL" >&2; exit 3; fi')
        monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
        assert fping.run([binary], 5, threading.Event()).report == "10.0.0.1 : 0.5\n"


FLOODING_FPING = """count=1
while [ $# -gt 0 ]; do case "$1" in -C) count=$2; shift 2;; --) shift; break;; *) shift;; esac; done
head -c 200000000 /dev/zero >&2
echo >&2
yes 'ICMP Host Unreachable from 10.0.0.1 for ICMP Echo sent to 10.0.0.2' | head -c 60000000 >&2
yes '127.0.0.2 : duplicate for [0], 64 bytes, 0.340 ms' | head -c 40000000 >&2
for address in "$@"; do
    samples=""; i=0
    while [ $i -lt "$count" ]; do samples="$samples 0.05"; i=$((i + 1)); done
    echo "$address :$samples" >&2
done"""
"""300 MB of output that is no report (one 200 MB line, ICMP errors, duplicates), then a valid report."""

MEMORY_LIMIT = 128 * 2**20
"""The chart's memory limit for the prober container."""


class TestBoundedOutput:
    """fping's output is read as it comes; only report lines are kept, within bounds its command line
    justifies. A line past the bounds is dropped whole: it never reads as fewer samples."""

    def test_a_flood_of_output_leaves_memory_low_and_targets_measured(self, tmp_path: Path) -> None:
        (tmp_path / "textfile").mkdir()
        (tmp_path / "nodes.json").write_text(json.dumps([{"name": "me", "ipAddress": "127.0.0.1"},
                                                         {"name": "peer", "ipAddress": "127.0.0.2"}]))
        textfile = tmp_path / "textfile" / "node-ping_me.prom"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE_PING", "MY_NODE", "PROMETHEUS_"))}
        env.update(MY_NODE_NAME="me", NODE_PING_CONFIG=str(tmp_path / "nodes.json"),
                   NODE_PING_EXTERNAL_CONFIG=str(tmp_path / "external.json"),
                   PROMETHEUS_TEXTFILE_DIR=str(tmp_path / "textfile"),
                   NODE_PING_FPING=fake_fping(tmp_path, FLOODING_FPING))
        with (tmp_path / "stderr").open("w") as stderr:
            process = subprocess.Popen([*NODE_PING, "run", "--count", "3", "--period-ms", "100"], env=env, cwd=REPO,
                                       stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_until(textfile.exists, 60, "the first cycle writes the textfile")
            peak = peak_memory_bytes(process.pid)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()
            process.wait()
        assert peak < MEMORY_LIMIT / 2, f"node-ping's peak memory was {peak / 2**20:.0f} MiB"
        series = families(textfile.read_text())
        assert by_destination(series, contract.NODE.packets_sent.name) == {"peer": 3}
        assert by_destination(series, contract.NODE.packets_received.name) == {"peer": 3}
        assert "Traceback" not in (tmp_path / "stderr").read_text()

    def test_an_overlong_report_line_is_dropped_whole(self, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
        binary = fake_fping(tmp_path, f"""echo "127.0.0.1 :{' 0.1' * 5000}" >&2
            echo 'ICMP Host Unreachable from 10.0.0.1 for ICMP Echo sent to 10.0.0.2' >&2
            echo '127.0.0.2 : 0.1 0.2 0.3' >&2""")
        with caplog.at_level(logging.WARNING):
            result = fping.run([binary, "-C", "3", "--", "127.0.0.1", "127.0.0.2"], 10, threading.Event())
        assert dict(complete_reports(result.report, 3)) == {"127.0.0.2": (0.1, 0.2, 0.3)}
        assert "127.0.0.1" not in parse_report(result.report)
        assert (result.cut_reports, result.dropped_lines) == (1, 1)
        assert "counts as unreported" in caplog.text

    def test_report_lines_past_the_total_bound_are_dropped(self, tmp_path: Path) -> None:
        # Lines that look like reports (on an address not probed), far more than 2 targets can have.
        binary = fake_fping(tmp_path, """yes '10.9.9.9 : 0.1 0.1 0.1' | head -n 100000 >&2
            echo '127.0.0.2 : 0.1 0.2 0.3' >&2""")
        result = fping.run([binary, "-C", "3", "--", "127.0.0.1", "127.0.0.2"], 10, threading.Event())
        assert len(result.report) <= (output.REPORT_ADDRESS_ROOM + 3 * output.REPORT_SAMPLE_ROOM) * (
            2 + output.REPORT_SPARE_LINES)
        assert "127.0.0.2" not in parse_report(result.report)  # unreported, not misread
        assert result.cut_reports > 0


class TestResourcesRunOut:
    """No descriptor (or memory, or process) left to start fping: an FpingError that says so, which
    the cycle counts as an fping error, never an unexpected exception, and nothing leaked."""

    def test_no_descriptor_left(self) -> None:
        argv = fping.build_argv(["127.0.0.1"], count=1, period_ms=10)
        before = open_descriptors()
        messages: list[str] = []
        for left in range(8):  # bounded: the first few fail, at some point fping runs
            with descriptors_left(left):
                try:
                    fping.run(argv, timeout_s=10, stop=threading.Event())
                except fping.FpingError as err:
                    messages.append(str(err))
                    continue
            break
        assert messages, "fping ran with no descriptor left"
        assert any("cannot start fping: Too many open files (node-ping has as many files open as its limit "
                   "allows (ulimit -n))" in message for message in messages), messages
        assert open_descriptors() == before
