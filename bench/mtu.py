"""What the MTU probe costs: packets, bytes, CPU and series per cycle with it off and on.

    python -m bench.mtu [--sizes 10,200] [--count 30] [--period-ms 1000] [--cycles 2]

For each number of targets N, `node-ping run` probes N loopback addresses (127.1.0.1, ...; every
127.0.0.0/8 address answers locally) for a few cycles, once with `--mtu 0` and once with the
default `--mtu 1500`, inside a network namespace of its own (root needed), so the kernel's ICMP and
IP counters of that namespace count its packets and no others: echo requests sent (IcmpMsg
OutType8) and IP bytes sent (IpExt OutOctets, requests and replies: on loopback both are sent
here). CPU seconds of node-ping and fping come from its own counters, series from its file; all
per cycle, counted from the end of the first cycle (which includes start-up) to the end of the
last. Nothing leaves the namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cycle import loopback_targets, values
from node_ping import contract

NAMESPACE = f"npbench-mtu-{os.getpid()}"


def netns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NAMESPACE, *argv]


def kernel_counters() -> dict[str, int]:
    """The namespace's echo requests sent and IP bytes sent."""
    found: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        lines = subprocess.run(netns("cat", f"/proc/net/{name}"), capture_output=True, text=True,
                               check=True).stdout.splitlines()
        for header, numbers in zip(lines[::2], lines[1::2], strict=True):
            prefix, *keys = header.split()
            found.update({f"{prefix}{key}": int(value) for key, value in zip(keys, numbers.split()[1:], strict=True)})
    return {"echo_requests": found.get("IcmpMsg:OutType8", 0), "bytes": found.get("IpExt:OutOctets", 0)}


@dataclass
class Row:
    targets: int
    mtu: int
    packets: float
    kbytes: float
    own_cpu_s: float
    fping_cpu_s: float
    cycle_s: float
    series: int


def measure(n: int, mtu: int, count: int, period_ms: int, cycles: int) -> Row:
    subprocess.run(["ip", "netns", "add", NAMESPACE], check=True)
    try:
        subprocess.run(netns("ip", "link", "set", "lo", "up"), check=True)
        with tempfile.TemporaryDirectory(prefix="node-ping-bench-") as tmp:
            work = Path(tmp)
            (work / "textfile").mkdir()
            (work / "nodes.json").write_text(json.dumps(loopback_targets(n)))
            prom = work / "textfile" / "node-ping_bench.prom"
            process = subprocess.Popen(
                netns(sys.executable, "-m", "node_ping", "run", "--node-name", "bench",
                      "--textfile-dir", str(work / "textfile"), "--config", str(work / "nodes.json"),
                      "--external-config", str(work / "none.json"), "--count", str(count),
                      "--period-ms", str(period_ms), "--cycles", str(cycles + 1), "--mtu", str(mtu)),
                stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + (cycles + 1) * (count * period_ms / 1000 * 1.5 + 10)
            while not (prom.exists() and values(prom.read_text()).get(contract.CYCLES.name)):
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"{n} targets: the first cycle did not complete")
                time.sleep(0.02)
            first, first_kernel = values(prom.read_text()), kernel_counters()
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
            last, last_kernel = values(prom.read_text()), kernel_counters()
            text = prom.read_text()
    finally:
        subprocess.run(["ip", "netns", "delete", NAMESPACE], check=False)
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))

    def per_cycle(key: str) -> float:
        return (last[key] - first[key]) / cycles

    return Row(n, mtu, (last_kernel["echo_requests"] - first_kernel["echo_requests"]) / cycles,
               (last_kernel["bytes"] - first_kernel["bytes"]) / cycles / 1024, per_cycle(contract.OWN_CPU.name),
               per_cycle(contract.FPING_CPU.name), last[contract.CYCLE_DURATION.name], series)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,200")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--period-ms", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=2)
    args = parser.parse_args()
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, count {args.count} x "
          f"period {args.period_ms} ms, {args.cycles} cycles each, IPv4 loopback targets in a namespace")
    print("| targets | --mtu | echo requests/cycle | IP KB sent/cycle | node-ping CPU s/cycle | fping CPU s/cycle "
          "| last cycle s | series |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        rows = [measure(size, mtu, args.count, args.period_ms, args.cycles) for mtu in (0, 1500)]
        for row in rows:
            print(f"| {row.targets} | {row.mtu} | {row.packets:.0f} | {row.kbytes:.1f} | {row.own_cpu_s:.3f} "
                  f"| {row.fping_cpu_s:.3f} | {row.cycle_s:.2f} | {row.series} |", flush=True)
        off, on = rows
        print(f"| {size} | on vs off | {100 * (on.packets / off.packets - 1):+.1f} % "
              f"| {100 * (on.kbytes / off.kbytes - 1):+.1f} % | {100 * (on.own_cpu_s / off.own_cpu_s - 1):+.1f} % "
              f"| {100 * (on.fping_cpu_s / off.fping_cpu_s - 1):+.1f} % | | {on.series - off.series:+d} |", flush=True)


if __name__ == "__main__":
    main()
