"""Run fping: the only place that starts a process.

Exit codes: 0 all answered, 1 some unreachable, 2 unknown host (all three are data); 3 bad
arguments and 4 a system call failure are errors, and so is death by a signal.

fping never outlives node-ping: it is started with the parent-death signal SIGKILL, so a node-ping
killed outright (SIGKILL, the OOM killer) takes its fping along. Its stderr is read as it comes and
only report lines are kept, within what its command line can justify: an fping (or something in its
place) that writes without end cannot take node-ping's memory with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import logging
import math
import os
import resource
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, cast

from node_ping.probe import lock
from node_ping.probe.output import Stderr

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

SIDE_GRACE_S = 1.0
"""How long a side run (the MTU probe) may go on after the main fping ended: it is planned to end
first, and must not lengthen the cycle when it does not."""

LOCK_WAIT_RUNS = 3
"""Other node-pings' fping runs (each within the time limit) to wait for before giving up a cycle."""

SEQUENCE_NUMBERS = 65_535
SEQUENCE_HOLD_MS = 10_000
SEQUENCE_SAFETY = 0.9
"""fping's sequence-number pool, how long it holds a number, and the share of it we use."""

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when the thread that started it ends

_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no parent-death signal, fping ends with its run
    _prctl = None

_START_FAILURES = {  # what can be lacking when fping is started; the next cycle tries again
    errno.EMFILE: "node-ping has as many files open as its limit allows (ulimit -n)",
    errno.ENFILE: "the system's table of open files is full (fs.file-max)",
    errno.ENOMEM: "out of memory",
    errno.EAGAIN: "the limit on processes is reached (the pod's pids limit or RLIMIT_NPROC)",
}

_running: set[subprocess.Popen[bytes]] = set()
_running_lock = threading.Lock()


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
    report: str  # fping's report lines (what it wrote to stderr, without anything else)
    returncode: int
    cpu_seconds: float  # user + system time of fping itself
    waited_s: float = 0.0  # for another node-ping's fping in this network namespace (lock)
    dropped_lines: int = 0  # other lines of fping's stderr: ICMP errors, duplicates, anything unexpected
    cut_reports: int = 0  # report lines past the bounds (see Stderr): their targets count as unreported
    side_report: str = ""  # the side runs' report lines (the MTU probe)
    side_error: str | None = None  # why a side run failed; its report is then partial or empty


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


def build_argv(addresses: Sequence[str], count: int, period_ms: int, binary: str = "fping",
               options: Sequence[str] = ()) -> list[str]:
    """The fping command line, with any further `options`. Addresses come after `--` so nothing can
    be read as an option."""
    for address in addresses:
        if not address or address.startswith("-"):
            raise ValueError(f"refusing to pass {address!r} to fping")
    gap = packet_gap_ms(len(addresses), period_ms)
    return [binary, "-p", str(period_ms), "-A", "-C", str(count), "-B", "1", "-q", "-r", "1",
            "-i", f"{gap:.3f}".rstrip("0").rstrip("."), *options, "--", *addresses]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill, and always reap: never leave an fping child or its pipes behind."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
    with contextlib.suppress(OSError):  # what fping (or a wrapper script) started: its group dies with it
        os.killpg(process.pid, signal.SIGKILL)
    with _running_lock:
        _running.discard(process)
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


def kill_running() -> None:
    """Kill every fping still running, for an exit that cannot wait for the loop to stop them."""
    with _running_lock:
        processes = list(_running)
    for process in processes:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)


def _in_child(parent: int) -> None:
    """Runs in the forked child, before exec.

    The parent-death signal fires when the thread that forked ends: the main thread, which runs the
    loop for as long as node-ping lives. The kernel keeps it across exec unless the exec gains
    privileges (a non-root user running a setuid or file-capability fping); then fping ends with
    its own run. A parent that died before prctl would never send it: hence the getppid() check.
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, ())  # node-ping blocks its stop signals; fping must not
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LC_ALL": "C"}
    parent = os.getpid()
    try:
        # stdout is not read: with -q, fping writes its report to stderr and nothing to stdout.
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, env=env, process_group=0,
                                   # Safe with threads: _in_child takes no lock and imports nothing.
                                   preexec_fn=lambda: _in_child(parent))  # noqa: PLW1509
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
    except OSError as err:
        raise FpingFailed(f"cannot start {argv[0]}: {_lacking(err)}; trying again next cycle") from None
    except subprocess.SubprocessError as err:  # _in_child failed
        raise FpingFailed(f"cannot start {argv[0]}: {err}") from None
    with _running_lock:
        _running.add(process)
    return process


def _check_exit(code: int, stderr: Stderr) -> None:
    """Raise FpingFailed unless the exit code means fping produced data."""
    if code < 0:
        raise FpingFailed(f"fping was killed by signal {-code}")
    if code == 4 and not stderr.lines and not stderr.messages:
        # With -q, fping says nothing when it cannot open an ICMP socket: explain it here.
        raise FpingFailed("fping exited with code 4 without a message: it could not open an ICMP socket; "
                          "it needs the NET_RAW capability (or, without it, a group inside "
                          "net.ipv4.ping_group_range and fping 5.2 or later)")
    if code not in (0, 1, 2):
        tail = " ".join(stderr.messages)
        raise FpingFailed(f"fping exited with code {code}: {tail or 'no message'}")


def run(argv: list[str], timeout_s: float, stop: threading.Event, poll_s: float = 0.1) -> FpingResult:
    """Run fping to completion; raise an FpingError subclass when there is no usable report."""
    return run_all([argv], timeout_s, stop, poll_s)


def run_all(argvs: list[list[str]], timeout_s: float, stop: threading.Event, poll_s: float = 0.1,
            side: Sequence[list[str]] = ()) -> FpingResult:
    """Run several fping processes side by side (each over its own targets) and join their reports,
    once no other node-ping's fping runs in this network namespace (see lock).

    `side` runs (the MTU probe) run alongside under the same turn, but their failure is theirs
    alone: it is reported in the result's `side_error`, never raised, and a side run still going
    SIDE_GRACE_S after the main ones ended is killed rather than allowed to lengthen the cycle.
    Processes of one pid namespace have their own pids, so their ICMP identifiers never collide.
    """
    try:
        with lock.exclusive_icmp(stop, LOCK_WAIT_RUNS * timeout_s) as waited_s:
            return dataclasses.replace(_run_all(argvs, list(side), timeout_s, stop, poll_s), waited_s=waited_s)
    except lock.Busy as err:
        raise FpingTimeout(f"{err}; their replies and ours would mix, so we wait our turn") from None
    except lock.Stopped:
        raise Interrupted("stopped while waiting for another node-ping's fping") from None
    except OSError as err:  # no descriptor left for the lock's socket or the pipes' selector, say
        raise FpingFailed(f"cannot run fping: {_lacking(err)}") from None


def _lacking(err: OSError) -> str:
    why = _START_FAILURES.get(err.errno or 0)
    return f"{err.strerror or err} ({why})" if why else f"{err.strerror or err}"


def _run_all(argvs: list[list[str]], side: list[list[str]], timeout_s: float, stop: threading.Event,
             poll_s: float) -> FpingResult:
    cpu_before = _children_cpu()
    processes: list[subprocess.Popen[bytes]] = []
    outputs: list[Stderr] = []
    side_error: str | None = None
    try:
        for argv in argvs:
            processes.append(_start(argv))
            outputs.append(Stderr(argv))
        for argv in side:
            try:
                processes.append(_start(argv))
            except FpingError as err:
                side_error = str(err)
                break
            outputs.append(Stderr(argv))
        _collect(list(zip(processes, outputs, strict=True)), timeout_s, stop, poll_s, len(argvs))
        if any(process.poll() is None for process in processes[len(argvs):]):
            side_error = f"it was still running {SIDE_GRACE_S:g} s after the main fping ended; killed"
    finally:
        for process in processes:
            _stop(process)
    if stop.is_set():
        # A stop signal sent to the whole process group (Ctrl-C, `timeout`) also ends fping: that
        # is the stop, not an fping fault, and its cut-short report must not be counted.
        raise Interrupted("stopped while fping was running")
    cpu = _children_cpu() - cpu_before
    main, side_outputs = outputs[:len(argvs)], outputs[len(argvs):]
    for process, output in zip(processes, main, strict=False):
        _check_exit(process.returncode, output)
    for process, output in zip(processes[len(argvs):], side_outputs, strict=True):
        try:
            _check_exit(process.returncode, output)
        except FpingFailed as err:
            side_error = side_error or str(err)
    dropped, cut = sum(o.dropped_lines for o in outputs), sum(o.cut_reports for o in outputs)
    if cut:
        log.warning("fping wrote %d lines too long, or too many, for the report of its %d targets: dropped, and "
                    "a target whose report was among them counts as unreported", cut,
                    sum(len(argv) - argv.index("--") - 1 for argv in [*argvs, *side] if "--" in argv))
    if dropped:
        log.debug("fping wrote %d lines besides its report (ICMP errors, duplicates): not kept", dropped)
    return FpingResult(report="".join(o.report for o in main),
                       returncode=max(p.returncode for p in processes[:len(argvs)]), cpu_seconds=cpu,
                       dropped_lines=dropped, cut_reports=cut, side_report="".join(o.report for o in side_outputs),
                       side_error=side_error)


def _collect(runs: list[tuple[subprocess.Popen[bytes], Stderr]], timeout_s: float, stop: threading.Event,
             poll_s: float, main: int) -> None:
    """Read every fping's stderr to its end, then wait for them all; raise Interrupted on a stop
    request, FpingTimeout past the time limit. The runs past the first `main` are side runs: they
    are waited for only until SIDE_GRACE_S after the main ones ended."""
    deadline = time.monotonic() + timeout_s
    main_fds = {cast(IO[bytes], process.stderr).fileno() for process, _ in runs[:main]}
    side_until = math.inf

    def check() -> None:
        if stop.is_set():
            raise Interrupted("stopped while fping was running")
        if time.monotonic() > deadline:
            raise FpingTimeout(f"fping ran longer than {timeout_s:.0f} s and was killed")

    def main_done() -> bool:
        return all(process.poll() is not None for process, _ in runs[:main]) and not main_fds & set(selector.get_map())

    with selectors.DefaultSelector() as selector:
        for process, output in runs:
            selector.register(cast(IO[bytes], process.stderr).fileno(), selectors.EVENT_READ, output)
        while selector.get_map() and time.monotonic() < side_until:
            for process, _ in runs:  # fping ended: what it left behind must not hold its stderr open
                if process.poll() is not None:
                    with contextlib.suppress(OSError):
                        os.killpg(process.pid, signal.SIGKILL)
            for key, _ in selector.select(poll_s):
                chunk = os.read(key.fd, 65_536)
                if chunk:
                    key.data.feed(chunk)
                else:
                    selector.unregister(key.fd)
                    key.data.close()
            check()
            if side_until == math.inf and main_done():
                side_until = time.monotonic() + SIDE_GRACE_S
    for index, (process, _) in enumerate(runs):
        while True:
            try:
                process.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                check()
                if index >= main and time.monotonic() >= side_until:
                    break  # a side run past its grace: killed by the caller
