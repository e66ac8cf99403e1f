"""bench/diagnose_scale.py at a tiny size: its made-up history is what diagnose reads (a real promtool
backfill, a real Prometheus, node-ping diagnose naming the injected node), the whole bench runs end to
end and leaves no temp dir behind, and a bad setting is refused with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from bench import promserver, scale_data
from tests.support.processes import NODE_PING, PYTHON, REPO

NODES = 6
SEED = 4
RANGE = "5m"
STEP_S = 30
HISTORY_S = 8 * 60


@pytest.fixture(autouse=True)
def _tools() -> None:
    reason = promserver.missing_tools()
    if reason:
        pytest.skip(reason)


def bench(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """The bench as a user runs it, its temp dirs under `tmp`."""
    return subprocess.run([PYTHON, "-m", "bench.diagnose_scale", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TMPDIR": str(tmp)}, check=False)


class TestGeneratedHistory:
    """The generator's series, backfilled, are what diagnose reads: it names exactly the injected node."""

    def test_diagnose_names_the_node_that_was_cut_off(self, tmp_path: Path) -> None:
        cluster = scale_data.Cluster(NODES, zones=2)
        fault = cluster.fault("node", SEED)
        (culprit,) = fault.groups[0]
        end = scale_data.end_time(time.time(), HISTORY_S, STEP_S)
        source = tmp_path / "history.om"
        written = scale_data.write(source, cluster, fault, seed=SEED, end=end, history_s=HISTORY_S, step_s=STEP_S)
        assert written.pairs == NODES * (NODES - 1)
        promserver.backfill(source, tmp_path / "data", timeout_s=60)
        with promserver.running_prometheus(tmp_path / "data", promserver.limits(10_000_000, 60)) as server:
            answer = subprocess.run([*NODE_PING, "diagnose", "--prometheus", server.url, "--time", str(end),
                                     "--range", RANGE, "--output", "json"],
                                    capture_output=True, text=True, timeout=30, check=False)
        assert answer.returncode == 1, answer.stderr
        document = json.loads(answer.stdout)
        faults = [v for v in document["verdicts"] if v["kind"] != "healthy"]
        assert [(v["kind"], v["nodes"]) for v in faults] == [("node-isolated", [culprit])]
        assert len(document["nodes"]) == NODES


class TestBenchRun:
    """The bench from the command line: one line of numbers per run, the fault named, nothing left behind."""

    def test_end_to_end_names_the_injected_node_and_cleans_up(self, tmp_path: Path) -> None:
        result = bench("--nodes", str(NODES), "--zones", "2", "--scenario", "node", "--seed", str(SEED),
                       "--range", RANGE, tmp=tmp_path)
        assert result.returncode == 0, result.stderr
        runs = [line for line in result.stdout.splitlines() if line.startswith("run 1:")]
        assert len(runs) == 1, result.stdout
        assert "exit=1 " in runs[0]
        assert "verdicts=node-isolated:1 named=yes blamed=1 innocent=0" in runs[0]
        assert "backfill: promtool took" in result.stdout
        assert "--query.max-samples=" in result.stdout
        assert list(tmp_path.iterdir()) == []  # the temp dir is gone, prometheus with it

    def test_recording_rules_are_evaluated_into_the_tsdb_once(self, tmp_path: Path) -> None:
        """--recording-rules evaluates diagnose's rules at the end of the history, and a --reuse of
        the kept TSDB with the same rules does not evaluate them again."""
        kept = tmp_path / "kept"
        result = bench("--nodes", str(NODES), "--zones", "2", "--scenario", "node", "--seed", str(SEED),
                       "--range", RANGE, "--recording-rules", "--keep", str(kept), tmp=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "recording rules: one evaluation of 20 rules (5m) took promtool" in result.stdout
        setup = json.loads((kept / "bench.json").read_text())
        assert setup["recorded"] and setup["recorded_blocks"]
        assert all((kept / "data" / block).is_dir() for block in setup["recorded_blocks"])
        again = bench("--reuse", str(kept), "--range", RANGE, "--recording-rules", tmp=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "recording rules:" not in again.stdout
        assert "verdicts=node-isolated:1 named=yes blamed=1 innocent=0" in again.stdout

    def test_a_bad_range_is_refused_naming_the_flag(self, tmp_path: Path) -> None:
        result = bench("--nodes", str(NODES), "--range", "90s", tmp=tmp_path)
        assert result.returncode == 2
        assert "--range '90s': give whole minutes" in result.stderr
        assert list(tmp_path.iterdir()) == []
