"""The command line as an operator uses it: env vars and flags, signals, start-up clean-up, HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node_ping import contract
from node_ping.probe.export import last_success_in
from tests.support.exposition import families
from tests.support.ports import free_port
from tests.support.processes import NODE_PING, communicate

NODES = [{"name": "me", "ipAddress": "127.0.0.1"}, {"name": "peer", "ipAddress": "127.0.0.2"},
         {"name": "peer6", "ipAddress": "::1"}]


def node_ping(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m node_ping ARGS` with only the given node-ping env vars set."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE_PING", "MY_NODE", "PROMETHEUS_"))}
    full_env.update(env or {})
    return subprocess.Popen([*NODE_PING, *args], env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    """Wait for the process and collect its output. `timeout` only bounds a hang: past it the
    process is killed (and reaped) so that nothing outlives a failed test."""
    out, err = communicate(process, timeout)
    return process.returncode, out, err


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "textfile").mkdir()
    (tmp_path / "nodes.json").write_text(json.dumps(NODES))
    return {"MY_NODE_NAME": "me", "PROMETHEUS_TEXTFILE_DIR": str(tmp_path / "textfile"),
            "NODE_PING_CONFIG": str(tmp_path / "nodes.json"),
            "NODE_PING_EXTERNAL_CONFIG": str(tmp_path / "external.json")}


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError), open(task / "children") as handle:  # a thread may end
            found += [int(child) for child in handle.read().split()]
    return found


def wait_for(predicate: Callable[[], object], seconds: float = 20) -> None:
    """Poll until `predicate()` is true; fail after `seconds` (a bound, not a measurement)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


class TestRunCommand:
    """`node-ping run` configured by env vars, as the DaemonSet does.

    Periods are 100 ms where the exit code is asserted: fping's reply timeout is the period, and a
    cycle in which not even loopback answered fails (exit 1); at a few ms a descheduled fping on a
    loaded machine could see that happen."""

    def test_env_vars_and_cycles(self, setup: dict[str, str]) -> None:
        code, _, err = finish(node_ping("run", "--cycles", "2", "--count", "2", "--period-ms", "100", env=setup))
        assert code == 0, err
        series = families((Path(setup["PROMETHEUS_TEXTFILE_DIR"]) / "node-ping_me.prom").read_text())
        sent = {labels["destination_node"]: v for labels, v in series[contract.NODE.packets_sent.name]}
        assert sent == {"peer": 4, "peer6": 4}  # itself excluded, 2 cycles x 2 pings

    def test_flags_override_env(self, setup: dict[str, str]) -> None:
        code, _, err = finish(node_ping("--cycles", "1", "--count", "1", "--period-ms", "100",
                                        "--node-name", "peer", "--prefix", "np-", env=setup))
        assert code == 0, err
        assert [p.name for p in Path(setup["PROMETHEUS_TEXTFILE_DIR"]).iterdir()] == ["np-peer.prom"]

    def test_a_long_node_name_needs_no_short_prefix_without_a_textfile(self, setup: dict[str, str]) -> None:
        """Valid Kubernetes node names go up to 253 characters; only a file name has a limit."""
        code, out, err = finish(node_ping("once", "--node-name", "n" * 253, "--count", "1", "--period-ms", "100",
                                          env=setup))
        assert code == 0, err
        assert f'source_node="{"n" * 253}"' in out

    def test_count_and_period_from_env(self, setup: dict[str, str]) -> None:
        env = {**setup, "NODE_PING_COUNT": "3", "NODE_PING_PERIOD_MS": "100"}
        assert finish(node_ping("run", "--cycles", "1", env=env))[0] == 0
        text = (Path(setup["PROMETHEUS_TEXTFILE_DIR"]) / "node-ping_me.prom").read_text()
        assert f'{contract.CYCLE_NOMINAL.name}{{source_node="me"}} 0.3' in text

    @pytest.mark.parametrize(("drop", "extra", "message"), [
        ("MY_NODE_NAME", [], "MY_NODE_NAME"),
        ("PROMETHEUS_TEXTFILE_DIR", [], "PROMETHEUS_TEXTFILE_DIR"),
        (None, ["--prefix", ""], "prefix"),
        (None, ["--count", "0"], "'--count' (env var: 'NODE_PING_COUNT'): 0 is not in the range 1<=x<=10000"),
        (None, ["--node-name", "n" * 241], "use a --prefix of at most 9 characters"),
        (None, ["--node-name", "n" * 251], "serve the metrics with --listen-address instead"),
        (None, ["--prefix", "p" * 201], "at most 200"),
        (None, ["--node-name", "a", "--prefix", "p" * 252], "use a --prefix of at most 200 characters"),
        (None, ["--listen-address", "nonsense"], "listen address"),
    ])
    def test_bad_settings_exit_2_with_a_clear_message(self, setup: dict[str, str], drop: str | None,
                                                      extra: list[str], message: str) -> None:
        env = {k: v for k, v in setup.items() if k != drop}
        code, _, err = finish(node_ping("run", "--cycles", "1", *extra, env=env))
        assert code == 2 and message in err
        assert "Traceback" not in err

    def test_startup_removes_only_own_stale_files(self, setup: dict[str, str]) -> None:
        textfile = Path(setup["PROMETHEUS_TEXTFILE_DIR"])
        for name in ("node-ping_renamed-node.prom", "node-ping_me.prom.0123456789abcdef.tmp", "smartmon.prom",
                     "README"):
            (textfile / name).write_text("x 1\n")
        old = time.time() - 3600  # a temp file left by a crash an hour ago
        os.utime(textfile / "node-ping_me.prom.0123456789abcdef.tmp", (old, old))
        assert finish(node_ping("run", "--cycles", "1", "--count", "1", "--period-ms", "100", env=setup))[0] == 0
        assert sorted(p.name for p in textfile.iterdir()) == ["README", "node-ping_me.prom", "smartmon.prom"]


    def test_a_restart_keeps_the_last_success_of_the_instance_before(self, setup: dict[str, str]) -> None:
        """A prober that never succeeds, restarted again and again by its liveness probe, must still
        look as old as it is, or "no success for 5 minutes" could never fire."""
        own = Path(setup["PROMETHEUS_TEXTFILE_DIR"]) / "node-ping_me.prom"
        own.write_text(f'{contract.LAST_SUCCESS.name}{{source_node="me"}} 1.7e+09\n')
        code, _, err = finish(node_ping("run", "--cycles", "1", "--count", "1", "--fping", "/bin/false", env=setup))
        assert code == 1, err
        assert f'{contract.LAST_SUCCESS.name}{{source_node="me"}} 1.7e+09' in own.read_text()
        assert finish(node_ping("run", "--cycles", "1", "--count", "1", "--period-ms", "100", env=setup))[0] == 0
        assert time.time() - (last_success_in(own.read_text(), "me") or 0) < 60

    def test_listen_address_in_use_is_a_clear_error(self, setup: dict[str, str]) -> None:
        # The file of the instance that holds the port: one that cannot start leaves it alone.
        running = Path(setup["PROMETHEUS_TEXTFILE_DIR"]) / "node-ping_me.prom"
        running.write_text("x 1\n")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            code, _, err = finish(node_ping("run", "--cycles", "1", "--listen-address", f"127.0.0.1:{port}",
                                            env=setup))
        assert code == 2 and f"cannot serve metrics on 127.0.0.1:{port}" in err
        assert "Traceback" not in err
        assert running.read_text() == "x 1\n"


class TestSignals:
    """SIGTERM/SIGINT end the program within 2 s, with no temp file and no fping child left."""

    def test_once_to_a_full_disk_says_so(self, setup: dict[str, str]) -> None:
        with open("/dev/full", "w") as full:
            result = subprocess.run([*NODE_PING, "once", "--count", "1", "--period-ms", "100"],
                                    env=setup, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
                                    cwd=Path(__file__).parents[1], check=False)
        assert result.returncode == 1
        assert "cannot write the metrics to stdout: No space left on device" in result.stderr
        assert "Traceback" not in result.stderr

    def test_once_interrupted_prints_nothing_and_says_so(self, setup: dict[str, str]) -> None:
        """Ctrl-C on `once`: no half-cycle of zeros on stdout for a script to take as data."""
        process = node_ping("once", "--count", "200", "--period-ms", "50", env=setup)
        try:
            wait_for(lambda: children(process.pid))
            process.send_signal(signal.SIGINT)
            code, out, err = finish(process)
        finally:
            process.kill()
            process.wait()
        assert code == 130, err
        assert out == ""

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_stop_during_fping(self, setup: dict[str, str], signum: signal.Signals) -> None:
        process = node_ping("run", "--count", "200", "--period-ms", "50", env=setup)
        try:
            wait_for(lambda: children(process.pid))
            fping_pids = children(process.pid)
            signalled = time.monotonic()
            process.send_signal(signum)
            code, _, err = finish(process)
            took = time.monotonic() - signalled  # until the exit was seen: if anything, a little more
        finally:
            process.kill()
            process.wait()
        assert code == 0, err
        assert took <= 2, f"node-ping ran on for {took:.2f} s after the signal"
        assert all(not Path(f"/proc/{pid}").exists() for pid in fping_pids)
        assert not list(Path(setup["PROMETHEUS_TEXTFILE_DIR"]).glob("*.tmp"))
        assert "stopping" in err


Samples = list[tuple[str, tuple[tuple[str, str], ...], float]]


def samples(text: str) -> Samples:
    """Every sample of an exposition text as (name, labels, value), in a stable order."""
    return sorted((sample.name, tuple(sorted(sample.labels.items())), sample.value)
                  for family in text_string_to_metric_families(text) for sample in family.samples)


class TestHttpAndHealth:
    """--listen-address serves the same metrics; `health` reports liveness for the probe."""

    @pytest.fixture
    def running(self, setup: dict[str, str], tmp_path: Path) -> Iterator[tuple[int, Path]]:
        port = free_port()
        health = tmp_path / "health"
        process = node_ping("run", "--count", "2", "--period-ms", "500", "--listen-address", f"127.0.0.1:{port}",
                            "--health-file", str(health), env=setup)
        try:
            yield port, health
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                finish(process, timeout=10)  # kills it if SIGTERM did not end it
            process.wait()

    def test_metrics_over_http_match_the_file(self, running: tuple[int, Path], setup: dict[str, str]) -> None:
        port, _ = running
        textfile = Path(setup["PROMETHEUS_TEXTFILE_DIR"]) / "node-ping_me.prom"
        wait_for(textfile.exists)

        def cycles(series: Samples) -> set[float]:
            return {value for name, _, value in series if name == contract.CYCLES.name}

        # Cycles go on while we read: a file read on each side of the scrape, all three of the same
        # cycle, shows what both served for one snapshot (~1 s cycles: the first try nearly always).
        for _attempt in range(20):
            before = samples(textfile.read_text())
            served = samples(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
            after = samples(textfile.read_text())
            if before == after and cycles(served) == cycles(after):
                break
        else:
            raise AssertionError("no scrape fell between two writes of the file in 20 tries")
        # Every series, label and value alike: timestamps, durations and CPU counters included.
        assert served == after
        names = {name for name, _, _ in served}
        assert {dict(labels)["destination_node"] for name, labels, _ in served
                if name == contract.NODE.packets_sent.name} == {"peer", "peer6"}
        assert not [name for name in names if name.startswith(("process_", "python_")) or "created" in name]

    def test_health_command(self, running: tuple[int, Path]) -> None:
        _, health = running
        wait_for(health.exists)
        assert finish(node_ping("health", "--health-file", str(health), "--max-age", "30"))[0] == 0

    def test_stale_health_file(self, tmp_path: Path) -> None:
        health = tmp_path / "health"
        health.touch()
        os.utime(health, (time.time() - 100, time.time() - 100))
        code, _, err = finish(node_ping("health", "--health-file", str(health), "--max-age", "30"))
        assert code == 1 and "unhealthy: last successful cycle 100 s ago" in err

    def test_health_before_first_cycle(self, tmp_path: Path) -> None:
        code, _, err = finish(node_ping("health", "--health-file", str(tmp_path / "none"), "--max-age", "9"))
        assert code == 1 and "no cycle has succeeded" in err

    def test_a_health_file_from_the_future(self, tmp_path: Path) -> None:
        """After the clock is set back a working prober touches the file again within a cycle; one
        that stays dated in the future means no cycle has succeeded since."""
        health = tmp_path / "health"
        health.touch()
        os.utime(health, (time.time() + 3600, time.time() + 3600))
        code, _, err = finish(node_ping("health", "--health-file", str(health), "--max-age", "60"))
        assert code == 1 and "in the future" in err
        os.utime(health, (time.time() + 5, time.time() + 5))  # clocks a little apart: fine
        assert finish(node_ping("health", "--health-file", str(health), "--max-age", "60"))[0] == 0

    @pytest.mark.parametrize("max_age", ["nan", "inf", "0", "-5", "soon"])
    def test_a_max_age_that_cannot_fail_is_refused(self, tmp_path: Path, max_age: str) -> None:
        """NaN compares false with every age: the probe would pass for ever."""
        health = tmp_path / "health"
        health.touch()
        os.utime(health, (0, 0))  # 1970: stale whatever the limit
        code, _, err = finish(node_ping("health", "--health-file", str(health), "--max-age", max_age))
        assert code == 2 and "--max-age" in err


class TestOnce:
    """`node-ping once --example` is the quick start."""

    def test_example_prints_metrics(self) -> None:
        code, out, err = finish(node_ping("once", "--example"))
        assert code == 0, err
        series = families(out)
        received = {labels["destination_node"]: v for labels, v in series[contract.NODE.packets_received.name]}
        assert received == {"loopback-a": 5, "loopback-b": 5, "loopback-v6": 5}
        assert series[contract.EXTERNAL.packets_received.name][0][1] == 5


class TestCommandGroup:
    """`node-ping` chooses the command: `run` by default, an error for a word that names none, and the
    shell's code when a command is interrupted."""

    def test_a_misspelt_command_is_named_as_such(self) -> None:
        code, _, err = finish(node_ping("diagnoze", "--prometheus", "http://127.0.0.1:1"))
        assert code == 2
        assert "No such command 'diagnoze'" in err and "--prometheus" not in err

    def test_ctrl_c_during_diagnose_exits_130_not_1(self) -> None:
        """1 would read as "faults found" to a script."""
        with socket.socket() as silent:  # accepts the connection, never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            process = node_ping("diagnose", "--prometheus", f"http://127.0.0.1:{silent.getsockname()[1]}",
                                "--timeout", "60")
            try:
                connection, _ = silent.accept()  # diagnose is waiting for its answer now
                with connection:
                    process.send_signal(signal.SIGINT)
                    code, _, _ = finish(process, timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        assert code == 130
