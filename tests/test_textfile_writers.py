"""Real node-ping processes sharing one textfile directory: one writer per file, and no temp files
piling up while node-ping runs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from node_ping import contract
from tests.support.exposition import Series, by_destination, families
from tests.support.processes import NODE_PING, stop

BOUND_S = 60
"""How long a wait may hang before the test gives up; each normally ends within seconds."""

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None]) -> T:
    """Poll `check` until it returns something other than None (bounded)."""
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


class Lab:
    """A textfile directory, a node list of loopback targets, and the node-pings started on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root / "textfile"
        self.directory.mkdir()
        self.nodes = root / "nodes.json"
        self.nodes.write_text(json.dumps([{"name": "a", "ipAddress": "127.0.0.2"}]))
        self.file = self.directory / "node-ping_n1.prom"
        self.processes: list[subprocess.Popen[Any]] = []

    def start(self, name: str, count: int) -> tuple[subprocess.Popen[Any], Path]:
        """node-ping for node n1 with `count` pings a cycle (its cycle_nominal_seconds tells its file
        from another's); returns the process and its log."""
        log = self.root / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE_PING_", "PROMETHEUS_", "MY_NODE"))}
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [*NODE_PING, "run", "--node-name", "n1", "--textfile-dir", str(self.directory),
                 "--config", str(self.nodes), "--external-config", str(self.root / "none.json"),
                 "--count", str(count), "--period-ms", "20", "--health-file", str(self.root / f"{name}.health")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        self.processes.append(process)
        return process, log

    def read(self) -> Series | None:
        try:
            return families(self.file.read_text())
        except FileNotFoundError:
            return None

    def close(self) -> None:
        for process in self.processes:
            stop(process)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        made.close()


def one(series: Series, metric: contract.Metric) -> float:
    ((_, value),) = series[metric.name]
    return value


def nominal(series: Series) -> float:
    return one(series, contract.CYCLE_NOMINAL)


class TestTwoNodePingsForOneNode:
    """A surge during a rolling update, or a second release with the same prefix: one file, two writers."""

    def test_one_writes_the_other_waits_then_takes_over(self, lab: Lab) -> None:
        first, _ = lab.start("first", count=1)
        first_nominal = nominal(wait_for("the first node-ping's file", lab.read))
        second, second_log = lab.start("second", count=2)
        second_health = lab.root / "second.health"
        wait_for("a cycle of the second node-ping", lambda: second_health.exists() or None)

        # While both run, every read of the file shows counters that only go up.
        samples: list[tuple[float, float, float]] = []

        def changed() -> Series | None:
            series = lab.read()
            return series if series and (not samples or one(series, contract.CYCLES) != samples[-1][1]) else None

        while len(samples) < 30:
            series = wait_for("the file to change", changed)
            samples.append((nominal(series), one(series, contract.CYCLES),
                            by_destination(series, contract.NODE.packets_sent.name)["a"]))
        for before, after in itertools.pairwise(samples):
            assert after[1] > before[1] and after[2] >= before[2], f"a counter went backwards: {before} -> {after}"
        assert {sample[0] for sample in samples} == {first_nominal}, "the second node-ping wrote the file"

        warning = second_log.read_text()
        assert warning.count("another node-ping writes") == 1, warning
        assert "another --prefix" in warning
        # Not a crash loop: the second one is alive and its liveness probe passes.
        assert second.poll() is None
        health = subprocess.run([*NODE_PING, "health", "--health-file", str(second_health), "--max-age", "30"],
                                capture_output=True, text=True, timeout=BOUND_S, check=False)
        assert health.returncode == 0, health.stderr

        stop(first)

        def second_writes() -> float | None:
            series = lab.read()
            return one(series, contract.CYCLES) if series and nominal(series) != first_nominal else None

        cycles = wait_for("the second node-ping to take over", second_writes)
        assert nominal(lab.read() or {}) == 2 * first_nominal
        wait_for("the second node-ping's next write", lambda: (second_writes() or 0) > cycles or None)
        assert "textfile writer: resolved" in second_log.read_text()
        assert second.poll() is None


class TestDeadTempFiles:
    """Temp files a killed writer left go while node-ping runs, not only at its next start."""

    def test_planted_while_running_they_go_without_a_restart(self, lab: Lab) -> None:
        process, log = lab.start("only", count=1)
        wait_for("the file", lab.read)
        an_hour_ago = time.time() - 3600
        dead = [lab.directory / f"node-ping_n1.prom.{token}.tmp" for token in ("0123456789abcdef", "0a1b2c3d4e5f6789")]
        kept = [lab.directory / "node-ping_n1.prom.00000000000000aa.tmp",  # young: maybe a write in flight
                lab.directory / "node-ping_n2.prom.0123456789abcdef.tmp",  # another node's: start-up clean-up
                lab.directory / "other-exporter.prom.0123456789abcdef.tmp"]
        for file in dead + kept:
            file.write_text("x 1\n" * 1000)
        for file in dead + kept[1:]:
            os.utime(file, (an_hour_ago, an_hour_ago))

        wait_for("the dead temp files to go", lambda: True if not any(f.exists() for f in dead) else None)
        assert all(file.exists() for file in kept)
        assert process.poll() is None
        assert f"removed {dead[0]}, a temp file left by a writer that was killed" in log.read_text()
