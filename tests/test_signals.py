"""Signals as an operator or the kubelet sends them to `node-ping run` and `once`, and a node-ping
killed outright: what each signal does, that fping never outlives node-ping, and that a stop ends the
process even when its main thread is stuck in a system call.

Real processes throughout: node-ping, the real fping against loopback, signals from this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_ping.probe.command import INTERRUPTED, STOP_GRACE_S
from tests.support.processes import NODE_PING, PYTHON, REPO
from tests.support.procfs import child_pids, runs, wait_until
from tests.support.stuck import READY

NODES = [{"name": "me", "ipAddress": "127.0.0.1"}, {"name": "peer", "ipAddress": "127.0.0.2"}]
LONG_FPING = ("--count", "400", "--period-ms", "50", "--mtu", "0")  # one fping child: no MTU probe beside it
"""An fping run of 20 s: still running whenever a test looks."""


class NodePing:
    """One node-ping process, its stderr in a file; killed and reaped (with any fping it left) at the end."""

    def __init__(self, tmp_path: Path, *args: str, command: tuple[str, ...] = NODE_PING) -> None:
        (tmp_path / "textfile").mkdir(exist_ok=True)
        (tmp_path / "nodes.json").write_text(json.dumps(NODES))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE_PING", "MY_NODE", "PROMETHEUS_"))}
        env.update(MY_NODE_NAME="me", NODE_PING_CONFIG=str(tmp_path / "nodes.json"),
                   NODE_PING_EXTERNAL_CONFIG=str(tmp_path / "external.json"),
                   PROMETHEUS_TEXTFILE_DIR=str(tmp_path / "textfile"))
        self.stderr_path = tmp_path / "stderr"
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen([*command, *args], env=env, cwd=REPO, text=True,
                                            stdout=subprocess.PIPE, stderr=stderr)
        self.fping: list[int] = []

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for_fping(self) -> list[int]:
        wait_until(lambda: child_pids(self.process.pid), 30, "node-ping starts fping")
        self.fping = child_pids(self.process.pid)
        return self.fping

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()
        for pid in self.fping:
            if runs(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[NodePing]]:
    """Start node-pings with `started.append(NodePing(...))`; all of them ended at teardown."""
    processes: list[NodePing] = []
    try:
        yield processes
    finally:
        for process in processes:
            process.close()


def ended(node_ping: NodePing, seconds: float = 10) -> int:
    """The exit code, once the process has ended (within `seconds`: a bound on a hang)."""
    try:
        return node_ping.process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"node-ping still runs {seconds:g} s on; it logged:\n{node_ping.stderr}") from None


STOPS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
         # Signals whose default would end node-ping without a word: a stop like the others.
         signal.SIGALRM, signal.SIGXCPU, signal.SIGPWR, signal.SIGRTMIN]


class TestWhatEachSignalDoes:
    """SIGTERM, SIGINT, SIGHUP and SIGQUIT stop cleanly (logged, fping killed, exit 0; 130 for
    `once`); SIGUSR1 and SIGUSR2 are logged and change nothing."""

    @pytest.mark.parametrize("signum", STOPS, ids=[s.name for s in STOPS])
    def test_stop_signals_end_run_cleanly(self, tmp_path: Path, started: list[NodePing],
                                          signum: signal.Signals) -> None:
        node_ping = NodePing(tmp_path, "run", *LONG_FPING)
        started.append(node_ping)
        fping = node_ping.wait_for_fping()
        node_ping.process.send_signal(signum)
        assert ended(node_ping) == 0, node_ping.stderr
        assert f"received {signum.name}" in node_ping.stderr and "stopping" in node_ping.stderr
        assert "Traceback" not in node_ping.stderr
        assert not [pid for pid in fping if runs(pid)]
        assert not list((tmp_path / "textfile").glob("*.tmp"))

    @pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT], ids=["SIGHUP", "SIGQUIT"])
    def test_stop_signals_interrupt_once(self, tmp_path: Path, started: list[NodePing],
                                         signum: signal.Signals) -> None:
        node_ping = NodePing(tmp_path, "once", *LONG_FPING)
        started.append(node_ping)
        fping = node_ping.wait_for_fping()
        node_ping.process.send_signal(signum)
        assert ended(node_ping) == INTERRUPTED, node_ping.stderr
        assert node_ping.process.stdout is not None and node_ping.process.stdout.read() == ""
        assert not [pid for pid in fping if runs(pid)]

    @pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2], ids=["SIGUSR1", "SIGUSR2"])
    def test_user_signals_are_logged_and_change_nothing(self, tmp_path: Path, started: list[NodePing],
                                                        signum: signal.Signals) -> None:
        node_ping = NodePing(tmp_path, "run", "--count", "3", "--period-ms", "100")
        started.append(node_ping)
        node_ping.wait_for_fping()
        node_ping.process.send_signal(signum)
        wait_until(lambda: f"received {signum.name}" in node_ping.stderr, 10, f"node-ping logs {signum.name}")
        # Cycles go on: the textfile is written after the signal.
        (tmp_path / "textfile" / "node-ping_me.prom").unlink(missing_ok=True)
        wait_until((tmp_path / "textfile" / "node-ping_me.prom").exists, 20, "a cycle after the signal")
        assert node_ping.process.poll() is None
        node_ping.process.send_signal(signal.SIGTERM)
        assert ended(node_ping) == 0, node_ping.stderr
        assert "carrying on" in node_ping.stderr


class TestFpingDiesWithNodePing:
    """fping is started with a parent-death signal: a node-ping killed outright takes it along."""

    def test_sigkill_of_node_ping_ends_its_fping(self, tmp_path: Path, started: list[NodePing]) -> None:
        node_ping = NodePing(tmp_path, "run", *LONG_FPING)
        started.append(node_ping)
        (fping,) = node_ping.wait_for_fping()
        node_ping.process.kill()
        node_ping.process.wait()
        # Without it, this fping pings on as an orphan for the rest of its 20 s run.
        wait_until(lambda: not runs(fping), 5, f"the orphaned fping {fping} ends")


    def test_what_a_wrapper_fping_started_ends_too(self, tmp_path: Path, started: list[NodePing]) -> None:
        """--fping may be a wrapper script that runs the real fping as its child (no exec): stopping
        node-ping ends the whole group, not only the wrapper."""
        wrapper = tmp_path / "fping-wrapper"
        wrapper.write_text('#!/bin/sh\nfping "$@"\n')
        wrapper.chmod(0o755)
        node_ping = NodePing(tmp_path, "run", *LONG_FPING, "--fping", str(wrapper))
        started.append(node_ping)
        (shell,) = node_ping.wait_for_fping()
        wait_until(lambda: child_pids(shell), 30, "the wrapper starts fping")
        (fping,) = child_pids(shell)
        node_ping.fping.append(fping)  # killed at teardown if this test fails
        node_ping.process.send_signal(signal.SIGTERM)
        assert ended(node_ping) == 0, node_ping.stderr
        wait_until(lambda: not runs(fping), 5, f"the wrapper's fping {fping} ends")


class TestStuckMainThread:
    """A stop signal ends node-ping within 2 s even when its main thread never comes back from a
    system call: fping killed, the reason logged, the usual exit code."""

    @pytest.mark.parametrize("variant", [[], ["--no-handlers-run"]], ids=["fifo", "fifo-signals-blocked"])
    def test_sigterm_ends_a_node_ping_stuck_on_a_fifo(self, tmp_path: Path, started: list[NodePing],
                                                      variant: list[str]) -> None:
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        node_ping = NodePing(tmp_path, "run", command=(PYTHON, "-m", "tests.support.stuck", str(fifo), *variant))
        started.append(node_ping)
        wait_until(lambda: READY in node_ping.stderr, 30, "node-ping opens the FIFO")
        node_ping.process.send_signal(signal.SIGTERM)
        # Bounded well past the grace, which the log line below states.
        assert ended(node_ping, 5) == 0, node_ping.stderr
        assert "received SIGTERM" in node_ping.stderr
        assert f"still running {STOP_GRACE_S:g} s after SIGTERM: ending now; the main thread is in stuck_read()" \
            in node_ping.stderr, node_ping.stderr
