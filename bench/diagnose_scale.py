"""Time and memory of `node-ping diagnose` against a real Prometheus holding N nodes' data.

    python -m bench.diagnose_scale [--nodes 1000] [--topology full|zone] [--zones 5] [--peers-per-zone 3]
        [--scenario healthy|node|zone-cut|partition|lossy-zone-pair] [--seed 1] [--range 5m]
        [--request-timeout SECONDS] [--runs 1] [--source DIR] [--recording-rules] [--keep DIR | --reuse DIR]

1. Writes the history N exporters would have left (bench/scale_data.py: the series diagnose reads,
   30 pings per pair per 30 s scrape, 0-0.5 % random loss per pair, the scenario's fault on top),
   range + 3 minutes of it, as OpenMetrics.
2. Backfills it with `promtool tsdb create-blocks-from openmetrics` and prints how long that took
   and the TSDB's size. This is the slow part: 1,000 nodes in full mesh are 3 million series and
   7.5 GB of text, which took promtool 8.5 minutes and 16.7 GB of peak RSS (the input, mapped into
   memory, included) on 2 cores. `--keep DIR` keeps the TSDB (and what it holds, in DIR/bench.json);
   `--reuse DIR` skips steps 1 and 2 and takes the cluster from there.
3. Starts the real `prometheus` over it on a free loopback port, with query limits high enough
   for the full matrix (printed). With `--recording-rules`, first evaluates diagnose's recording
   rules (node_ping.diagnose.recorded, for the --range) at the end of the history with `promtool
   tsdb create-blocks-from rules` against that Prometheus, prints how long one evaluation of the
   whole group took (what Prometheus pays every rule interval), and restarts Prometheus with the
   recorded blocks added, as a Prometheus that has been evaluating them would hold them.
4. Runs `node-ping diagnose --prometheus URL --time END --range R --output json` `--runs` times and
   prints one line per run (`--source DIR` runs the node_ping package in DIR instead, e.g. a
   `git archive` of another commit, for before/after figures): exit code, wall time, peak RSS, the
   bytes and queries Prometheus answered it (Prometheus's own /metrics, before and after), the
   verdict kinds, whether the verdicts name every node of each injected fault group ("named") and
   how many others they blame ("innocent"), after its slowest queries (Prometheus's query log);
   then Prometheus's own peak RSS.

Every subprocess has a timeout; the temp dir is removed unless --keep; prometheus is stopped however
the run ends. It prints numbers and asserts nothing; exit 2 for a bad setting.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import promserver, scale_data
from node_ping.diagnose import recorded
from node_ping.diagnose.judge import Thresholds

HEADROOM_S = 180  # history before the range: diagnose's freshness check looks up to 3 cycles back
QUERY_MAX_SAMPLES = 1_000_000_000
QUERY_TIMEOUT_S = 600
BACKFILL_TIMEOUT_S = 3 * 3600
DIAGNOSE_TIMEOUT_S = 1800
QUERY_HANDLER = "/api/v1/query"
META = "bench.json"
SLOWEST = 3  # queries listed per run, from Prometheus's query log


@dataclass(frozen=True)
class Setup:
    """What the TSDB holds: enough to name the fault again with --reuse."""

    nodes: int
    topology: str
    zones: int
    peers_per_zone: int
    scenario: str
    seed: int
    step_s: int
    history_s: int
    end: int
    recorded: str = ""  # the rules evaluated into the TSDB (`_rules_text`'s digest), if any
    recorded_blocks: tuple[str, ...] = ()  # the blocks they were written to, removed before new rules


    def cluster(self) -> scale_data.Cluster:
        return scale_data.Cluster(self.nodes, self.zones, self.topology, self.peers_per_zone)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--topology", choices=("full", "zone"), default="full")
    parser.add_argument("--zones", type=int, default=5)
    parser.add_argument("--peers-per-zone", type=int, default=3)
    parser.add_argument("--scenario", choices=scale_data.SCENARIOS, default="node")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--range", default="5m", help="diagnose's --range, in whole minutes (e.g. 5m)")
    parser.add_argument("--scrape-interval", type=int, default=30, choices=(15, 30), help="seconds")
    parser.add_argument("--request-timeout", type=float, help="diagnose's --timeout (default: its own)")
    parser.add_argument("--runs", type=int, default=1, help="diagnose runs against the same Prometheus")
    parser.add_argument("--recording-rules", action="store_true",
                        help="evaluate diagnose's recording rules for --range into the TSDB first (kept with --keep)")
    parser.add_argument("--source", type=Path, metavar="DIR",
                        help="run diagnose from the node_ping package in DIR (e.g. `git archive` of another commit, "
                             "for before/after figures) instead of the installed one")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--keep", type=Path, metavar="DIR", help="keep the TSDB in DIR (new or empty)")
    where.add_argument("--reuse", type=Path, metavar="DIR", help="use the TSDB a --keep run left in DIR")
    return parser


def _range_s(text: str) -> int | None:
    match = re.fullmatch(r"([1-9][0-9]*)m", text)
    return int(match.group(1)) * 60 if match else None


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2, naming the flag, on a setting the bench cannot run."""
    if _range_s(args.range) is None:
        parser.error(f"--range {args.range!r}: give whole minutes, e.g. 5m")
    if args.runs < 1:
        parser.error("--runs: give 1 or more")
    if args.source is not None and not (args.source / "node_ping" / "__main__.py").is_file():
        parser.error(f"--source {args.source}: no node_ping package there")
    if args.request_timeout is not None and args.request_timeout <= 0:
        parser.error("--request-timeout: give seconds above 0")
    if args.reuse is not None:
        if not (args.reuse / META).is_file():
            parser.error(f"--reuse {args.reuse}: no {META} there; make one with --keep")
        return
    if args.nodes < 2:
        parser.error("--nodes: give 2 or more")
    if args.zones < 1 or args.nodes < args.zones:
        parser.error("--zones: give 1 or more, and at most --nodes")
    if args.scenario in ("zone-cut", "lossy-zone-pair") and args.zones < 2:
        parser.error(f"--scenario {args.scenario} needs --zones 2 or more")
    if args.topology == "zone" and args.peers_per_zone < 1:
        parser.error("--peers-per-zone: give 1 or more")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: give a new or empty directory")


@contextlib.contextmanager
def _workdir(args: argparse.Namespace) -> Iterator[Path]:
    """--keep's or --reuse's directory, or a temp dir removed however the run ends."""
    if args.reuse is not None or args.keep is not None:
        path = args.reuse if args.reuse is not None else args.keep
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="node-ping-diagnose-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _build(args: argparse.Namespace, work: Path) -> Setup:
    """Steps 1 and 2: generate the history and backfill it into work/data."""
    history_s = (_range_s(args.range) or 0) + HEADROOM_S
    setup = Setup(args.nodes, args.topology, args.zones, args.peers_per_zone, args.scenario, args.seed,
                  args.scrape_interval, history_s, scale_data.end_time(time.time(), history_s, args.scrape_interval))
    cluster = setup.cluster()
    fault = cluster.fault(setup.scenario, setup.seed)
    print(f"# {setup.nodes} nodes, {setup.topology} topology, {setup.zones} zones, scenario {setup.scenario} "
          f"(seed {setup.seed}): {fault.description}", flush=True)
    source = work / "history.om"
    try:
        started = time.monotonic()
        written = scale_data.write(source, cluster, fault, seed=setup.seed, end=setup.end, history_s=history_s,
                                   step_s=setup.step_s)
        print(f"generate: {written.pairs:,} pairs, {written.series:,} series, {written.samples:,} samples, "
              f"{written.size_bytes / 1e9:.2f} GB of OpenMetrics in {time.monotonic() - started:.1f} s", flush=True)
        filled = promserver.backfill(source, work / "data", BACKFILL_TIMEOUT_S)
    finally:
        source.unlink(missing_ok=True)
    print(f"backfill: promtool took {filled.wall_s:.1f} s, peak RSS {filled.peak_rss_mb:,.0f} MB; TSDB "
          f"{promserver.directory_size(work / 'data') / 1e6:,.1f} MB", flush=True)
    (work / META).write_text(json.dumps(asdict(setup), indent=2) + "\n")
    return setup


@dataclass(frozen=True)
class Outcome:
    """What one diagnose run printed, judged against the injected fault."""

    kinds: Counter[str]
    named: bool
    blamed: int
    innocent: int


def judge(document: dict[str, Any], groups: Sequence[frozenset[str]]) -> Outcome:
    """`named`: every node of every fault group is blamed by a verdict or is a member of a group a
    verdict names (its "groups", where diagnose gives them: a partition blames neither side); for
    the healthy scenario, no fault verdict at all. `innocent`: nodes blamed that are in no group."""
    faults = [v for v in document.get("verdicts", []) if v["kind"] != "healthy"]
    kinds = Counter(str(v["kind"]) for v in document.get("verdicts", []))
    blamed = {node for v in faults for node in v["nodes"]}
    in_groups = {node for v in faults for members in (v.get("groups") or {}).values() for node in members}
    culprits = frozenset().union(*groups)
    named = all(group <= blamed | in_groups for group in groups) if groups else not faults
    return Outcome(kinds, named, len(blamed), len(blamed - culprits))


def _environment(args: argparse.Namespace) -> dict[str, str] | None:
    """--source ahead of the installed package on sys.path (its editable finder comes after the path
    finder). Diagnose runs in the work dir: `-m` puts the working directory, a checkout perhaps, first."""
    return {**os.environ, "PYTHONPATH": str(args.source.resolve())} if args.source else None


def _package(args: argparse.Namespace, work: Path) -> str:
    """Where the node_ping that diagnose runs comes from."""
    found = subprocess.run([sys.executable, "-c", "import node_ping; print(node_ping.__file__)"], cwd=work,
                           env=_environment(args), capture_output=True, text=True, timeout=60, check=False)
    return str(Path(found.stdout.strip()).parent) if found.returncode == 0 else f"(unknown: {found.stderr.strip()})"


def _diagnose(setup: Setup, server: promserver.Server, args: argparse.Namespace, work: Path, run: int) -> str:
    """Step 4, once: the line of numbers."""
    command = [sys.executable, "-m", "node_ping", "diagnose", "--prometheus", server.url, "--time", str(setup.end),
               "--range", args.range, "--output", "json"]
    if args.request_timeout is not None:
        command += ["--timeout", f"{args.request_timeout:g}"]
    before, logged = server.handler_totals(QUERY_HANDLER), server.query_log_size()
    output = work / f"diagnose-{run}.json"
    result = promserver.measured(command, DIAGNOSE_TIMEOUT_S, stdout=output, cwd=work, env=_environment(args))
    after = server.handler_totals(QUERY_HANDLER)
    served = {key: after[key] - before[key] for key in after}
    for seconds, promql in server.slowest(logged, SLOWEST):
        print(f"  query {seconds:8.2f} s  {promql[:160]}", flush=True)
    numbers = (f"exit={'timeout' if result.returncode is None else result.returncode} wall={result.wall_s:.2f}s "
               f"peak_rss={result.peak_rss_mb:.0f}MB received={served['bytes'] / 1e6:.2f}MB "
               f"queries={served['responses']:.0f} prometheus_time={served['seconds']:.2f}s "
               f"json={output.stat().st_size / 1e6:.2f}MB")
    try:
        document = json.loads(output.read_text())
    except ValueError:
        last = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return f"{numbers} | no JSON: {last[0][:300]}"
    finally:
        output.unlink(missing_ok=True)
    outcome = judge(document, setup.cluster().fault(setup.scenario, setup.seed).groups)
    kinds = ",".join(f"{kind}:{count}" for kind, count in sorted(outcome.kinds.items())) or "none"
    return (f"{numbers} | verdicts={kinds} named={'yes' if outcome.named else 'no'} blamed={outcome.blamed} "
            f"innocent={outcome.innocent}")


def _rules_text(window: str) -> str:
    """diagnose's recording rules for `window` as a rules file."""
    thresholds = Thresholds()
    rules = recorded.rules(window, recorded.DEFAULT_INTERVAL, thresholds.loss_ratio, thresholds.latency_ms)
    return yaml.safe_dump({"groups": [{"name": recorded.GROUP, "rules": rules}]}, sort_keys=False, width=1 << 20)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _record(setup: Setup, args: argparse.Namespace, work: Path, flags: list[str]) -> Setup:
    """Evaluate the recording rules for --range once, at the end of the history, into the TSDB."""
    text = _rules_text(args.range)
    rules_file, out = work / "recording.yaml", work / "recorded-blocks"
    rules_file.write_text(text)
    shutil.rmtree(out, ignore_errors=True)
    for block in setup.recorded_blocks:
        shutil.rmtree(work / "data" / block, ignore_errors=True)
    with promserver.running_prometheus(work / "data", flags) as server:
        # One evaluation: a 60 s span at a 60 s step holds one instant (promtool aligns it to the group).
        result = promserver.measured(
            ["promtool", "tsdb", "create-blocks-from", "rules", "--quiet", f"--url={server.url}",
             f"--start={setup.end - 60}", f"--end={setup.end}", "--eval-interval=60s", f"--output-dir={out}",
             str(rules_file)], BACKFILL_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"promtool create-blocks-from rules failed: {result.stderr.strip()[-2000:]}")
    print(f"recording rules: one evaluation of {text.count('- record:')} rules ({args.range}) took promtool "
          f"{result.wall_s:.1f} s against Prometheus", flush=True)
    blocks = tuple(block.name for block in (out.iterdir() if out.is_dir() else ()) if block.is_dir())
    for name in blocks:
        (out / name).rename(work / "data" / name)
    shutil.rmtree(out, ignore_errors=True)
    updated = Setup(**{**asdict(setup), "recorded": _digest(text), "recorded_blocks": blocks})
    (work / META).write_text(json.dumps(asdict(updated), indent=2) + "\n")
    return updated


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(143)  # unwinds: prometheus stopped, the temp dir removed


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    if (missing := promserver.missing_tools()) is not None:
        print(f"diagnose_scale: {missing}", file=sys.stderr)
        return 2
    with _workdir(args) as work:
        if args.reuse is not None:
            setup = Setup(**json.loads((work / META).read_text()))
            print(f"# reusing {work}: {setup.nodes} nodes, {setup.topology} topology, {setup.zones} zones, "
                  f"scenario {setup.scenario} (seed {setup.seed}); generation flags are ignored", flush=True)
            if (_range_s(args.range) or 0) > setup.history_s - HEADROOM_S:
                parser.error(f"--range {args.range}: {work} holds {(setup.history_s - HEADROOM_S) // 60}m at most")
        else:
            setup = _build(args, work)
        print(f"diagnose: node_ping from {_package(args, work)}", flush=True)
        flags = promserver.limits(QUERY_MAX_SAMPLES, QUERY_TIMEOUT_S)
        if args.recording_rules and setup.recorded != _digest(_rules_text(args.range)):
            setup = _record(setup, args, work, flags)
        started = time.monotonic()
        with promserver.running_prometheus(work / "data", flags) as server:
            print(f"prometheus: ready in {time.monotonic() - started:.1f} s at {server.url} with {' '.join(flags)}",
                  flush=True)
            for run in range(1, args.runs + 1):
                line = _diagnose(setup, server, args, work, run)
                print(f"run {run}: nodes={setup.nodes} topology={setup.topology} scenario={setup.scenario} "
                      f"range={args.range} {line}", flush=True)
            print(f"prometheus: peak RSS {server.peak_rss_mb():,.0f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
