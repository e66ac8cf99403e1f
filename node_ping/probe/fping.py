"""Run fping: the only place that starts a process.

Exit codes: 0 all answered, 1 some unreachable, 2 unknown host (all three are data); 3 bad
arguments and 4 a system call failure are errors, and so is death by a signal.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import resource
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from node_ping.probe import lock

log = logging.getLogger(__name__)

DEFAULT_GAP_MS = 10.0
"""fping's own default minimum gap between any two packets."""

ROUND_SHARE = 0.7
"""Share of one period that a round of packets (one to every target) may take; the rest is
headroom so the round stays inside the period even when the prober is briefly descheduled."""

SEND_COST_MS = 0.1
"""What fping spends per packet on top of the gap (measured: 0.075-0.085 ms on a 2-core VM with
5,000 targets). Without subtracting it, 5,000 targets at a 0.16 ms gap took 0.25 ms each and a
30 s cycle grew to 37 s."""

MIN_GAP_MS = 0.01
"""fping counts in nanoseconds; below 10 µs the send loop, not the gap, is the limit."""

LOCK_WAIT_RUNS = 3
"""Other node-pings' fping runs (each within the time limit) to wait for before giving up a cycle."""

SEQUENCE_NUMBERS = 65_535
SEQUENCE_HOLD_MS = 10_000
SEQUENCE_SAFETY = 0.9
"""fping's sequence-number pool, how long it holds a number, and the share of it we use."""


class FpingError(Exception):
    """fping could not produce a report this cycle."""


class FpingNotFound(FpingError):
    pass


class FpingTimeout(FpingError):
    pass


class FpingFailed(FpingError):
    pass


class Interrupted(FpingError):
    """The run was stopped on request (SIGTERM/SIGINT); not a fault."""


@dataclass(frozen=True)
class FpingResult:
    report: str  # what fping wrote to stderr
    returncode: int
    cpu_seconds: float  # user + system time of fping itself
    waited_s: float = 0.0  # for another node-ping's fping in this network namespace (lock)


def packet_gap_ms(target_count: int, period_ms: float) -> float:
    """The `-i` gap that lets one packet to every target fit in one period.

    fping's default 10 ms gap makes a round of 300 targets take 3 s, so a 1 s period silently
    becomes 3 s and the cycle triples. Never wider than fping's default. Past about 10,000 targets
    per second of period even the smallest gap cannot keep up; the cycle lateness gauge
    then shows it.
    """
    if target_count <= 0:
        return DEFAULT_GAP_MS
    gap = period_ms * ROUND_SHARE / target_count - SEND_COST_MS
    return max(MIN_GAP_MS, min(DEFAULT_GAP_MS, gap))


def build_argv(addresses: Sequence[str], count: int, period_ms: int, binary: str = "fping") -> list[str]:
    """The fping command line. Addresses come after `--` so nothing can be read as an option."""
    for address in addresses:
        if not address or address.startswith("-"):
            raise ValueError(f"refusing to pass {address!r} to fping")
    gap = packet_gap_ms(len(addresses), period_ms)
    return [binary, "-p", str(period_ms), "-A", "-C", str(count), "-B", "1", "-q", "-r", "1",
            "-i", f"{gap:.3f}".rstrip("0").rstrip("."), "--", *addresses]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stop(process: subprocess.Popen[str]) -> None:
    """Terminate, then kill, and always reap: never leave an fping child or its pipes behind."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
    # communicate() closes the pipes when fping finishes; when it was cut short they would stay
    # open for as long as an exception's traceback keeps this frame alive.
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def max_targets_per_run(period_ms: int) -> int:
    """How many targets one fping process can take at this period.

    fping holds every sent packet's sequence number for 10 s and has 65,535 of them, so one
    process can send at most 65,535 packets in any 10 s: at a 1 s period that is 6,553 targets,
    at 200 ms only 1,310. Past that it stops with "not enough sequence numbers available".
    """
    return max(1, int(SEQUENCE_NUMBERS * SEQUENCE_SAFETY * period_ms / SEQUENCE_HOLD_MS))


def _start(argv: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "LC_ALL": "C"}
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, errors="replace")
    except FileNotFoundError:
        raise FpingNotFound(f"{argv[0]} not found; install fping (Debian: apt-get install fping)") from None
    except PermissionError as err:
        if err.errno == errno.EPERM:
            # The kernel refuses to start a binary whose file capability (Debian's fping has
            # cap_net_raw=ep) it cannot grant: NET_RAW is not in the capability bounding set.
            raise FpingFailed(f"cannot execute {argv[0]}: operation not permitted; it needs the NET_RAW "
                              "capability, which this container does not have: add NET_RAW to "
                              "securityContext.capabilities") from None
        raise FpingNotFound(f"cannot execute {argv[0]}: {err}") from None


def _check_exit(code: int, report: str) -> None:
    """Raise FpingFailed unless the exit code means fping produced data."""
    if code < 0:
        raise FpingFailed(f"fping was killed by signal {-code}")
    if code == 4 and not report.strip():
        # With -q, fping says nothing when it cannot open an ICMP socket: explain it here.
        raise FpingFailed("fping exited with code 4 without a message: it could not open an ICMP socket; "
                          "it needs the NET_RAW capability (or, without it, a group inside "
                          "net.ipv4.ping_group_range and fping 5.2 or later)")
    if code not in (0, 1, 2):
        tail = " ".join(report.strip().splitlines()[-3:])
        raise FpingFailed(f"fping exited with code {code}: {tail or 'no message'}")


def run(argv: list[str], timeout_s: float, stop: threading.Event, poll_s: float = 0.1) -> FpingResult:
    """Run fping to completion; raise an FpingError subclass when there is no usable report."""
    return run_all([argv], timeout_s, stop, poll_s)


def run_all(argvs: list[list[str]], timeout_s: float, stop: threading.Event, poll_s: float = 0.1) -> FpingResult:
    """Run several fping processes side by side (each over its own targets) and join their reports,
    once no other node-ping's fping runs in this network namespace (see lock).

    Processes of one pid namespace have their own pids, so their ICMP identifiers never collide.
    """
    try:
        with lock.exclusive_icmp(stop, LOCK_WAIT_RUNS * timeout_s) as waited_s:
            return dataclasses.replace(_run_all(argvs, timeout_s, stop, poll_s), waited_s=waited_s)
    except lock.Busy as err:
        raise FpingTimeout(f"{err}; their replies and ours would mix, so we wait our turn") from None
    except lock.Stopped:
        raise Interrupted("stopped while waiting for another node-ping's fping") from None


def _run_all(argvs: list[list[str]], timeout_s: float, stop: threading.Event, poll_s: float) -> FpingResult:
    cpu_before = _children_cpu()
    processes: list[subprocess.Popen[str]] = []
    reports: list[str] = []
    try:
        for argv in argvs:
            processes.append(_start(argv))
        deadline = time.monotonic() + timeout_s
        for process in processes:
            while True:
                try:
                    reports.append(process.communicate(timeout=poll_s)[1])
                    break
                except subprocess.TimeoutExpired:
                    if stop.is_set():
                        raise Interrupted("stopped while fping was running") from None
                    if time.monotonic() > deadline:
                        raise FpingTimeout(f"fping ran longer than {timeout_s:.0f} s and was killed") from None
    finally:
        for process in processes:
            _stop(process)
    if stop.is_set():
        # A stop signal sent to the whole process group (Ctrl-C, `timeout`) also ends fping: that
        # is the stop, not an fping fault, and its cut-short report must not be counted.
        raise Interrupted("stopped while fping was running")
    cpu = _children_cpu() - cpu_before
    for process, report in zip(processes, reports, strict=True):
        _check_exit(process.returncode, report)
    return FpingResult(report="".join(reports), returncode=max(p.returncode for p in processes), cpu_seconds=cpu)
