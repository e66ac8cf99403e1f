"""Cycle length, CPU and memory of `node-ping run` against N loopback targets.

    python -m bench.cycle [--sizes 100,500,2000,5000] [--count 30] [--period-ms 1000]

Every 127.0.0.0/8 address answers on the local machine, so N targets need no network. For each N,
node-ping runs two full cycles; the numbers are of the second one (the first includes start-up):
cycle length against the nominal count x period, CPU seconds of node-ping and of fping in that
cycle, node-ping's peak RSS, and the textfile's size and series count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from node_ping import contract


def loopback_targets(n: int) -> list[dict[str, str]]:
    """127.1.0.1, 127.1.0.2, ...: distinct addresses that all answer locally."""
    return [{"name": f"node-{i:05d}", "ipAddress": f"127.{1 + i // 65025}.{i // 255 % 255}.{1 + i % 255}"}
            for i in range(n)]


def values(text: str) -> dict[str, float]:
    """Self metrics by name. Only node_ping_* lines are parsed: parsing the whole file every poll
    would steal the CPU of the prober being measured."""
    own = "\n".join(line for line in text.splitlines() if line.startswith(("node_ping_", "# TYPE node_ping_")))
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(own + "\n"):
        for sample in family.samples:
            if sample.name.startswith("node_ping_") and "kind" not in sample.labels:
                found[sample.name] = sample.value
    return found


@dataclass
class Row:
    targets: int
    nominal_s: float
    cycle_s: float
    own_cpu_s: float
    fping_cpu_s: float
    peak_rss_mb: float
    file_kb: float
    series: int


def measure(n: int, count: int, period_ms: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="node-ping-bench-") as tmp:
        work = Path(tmp)
        (work / "textfile").mkdir()
        (work / "nodes.json").write_text(json.dumps(loopback_targets(n)))
        prom = work / "textfile" / "node-ping_bench.prom"
        process = subprocess.Popen(
            [sys.executable, "-m", "node_ping", "run", "--node-name", "bench", "--textfile-dir", str(work / "textfile"),
             "--config", str(work / "nodes.json"), "--external-config", str(work / "none.json"),
             "--count", str(count), "--period-ms", str(period_ms)],
            stderr=subprocess.DEVNULL)
        try:
            samples: list[dict[str, float]] = []
            deadline = time.monotonic() + 3 * (count * period_ms / 1000 * 1.5 + 10)
            seen_mtime = 0.0
            while len(samples) < 2 and time.monotonic() < deadline:
                if prom.exists() and prom.stat().st_mtime != seen_mtime:
                    seen_mtime = prom.stat().st_mtime
                    current = values(prom.read_text())
                    if current.get(contract.CYCLES.name, 0) > len(samples):
                        samples.append(current)
                time.sleep(0.1)
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
            text = prom.read_text()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
    if len(samples) < 2:
        raise RuntimeError(f"{n} targets: two cycles did not complete in time")
    first, second = samples
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return Row(n, second[contract.CYCLE_NOMINAL.name], second[contract.CYCLE_DURATION.name],
               second[contract.OWN_CPU.name] - first[contract.OWN_CPU.name],
               second[contract.FPING_CPU.name] - first[contract.FPING_CPU.name],
               peak_kb / 1024, len(text.encode()) / 1024, series)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,500,2000,5000")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--period-ms", type=int, default=1000)
    args = parser.parse_args()
    print(f"# {platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, count {args.count} x period {args.period_ms} ms")
    print("| targets | nominal s | cycle s | over nominal | node-ping CPU s/cycle | node-ping CPU % of a core "
          "| fping CPU s/cycle | peak RSS MB | textfile KB | series |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        row = measure(size, args.count, args.period_ms)
        over = 100 * (row.cycle_s / row.nominal_s - 1)
        print(f"| {row.targets} | {row.nominal_s:.1f} | {row.cycle_s:.2f} | {over:+.1f} % "
              f"| {row.own_cpu_s:.3f} | {100 * row.own_cpu_s / row.cycle_s:.2f} % | {row.fping_cpu_s:.3f} "
              f"| {row.peak_rss_mb:.1f} | {row.file_kb:.0f} | {row.series} |", flush=True)


if __name__ == "__main__":
    main()
