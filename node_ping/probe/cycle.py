"""One probe cycle, and the loop that repeats it until told to stop.

config ──► targets ──► fping ──► parse ──► stats ──► snapshot ──► textfile / HTTP
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from node_ping.contract import CONFIG_ERROR, DNS_ERROR, FPING_ERROR, INTERNAL_ERROR, WRITE_ERROR
from node_ping.probe import fping, mtu
from node_ping.probe.config import CONFIG, EXTERNAL_CONFIG, MTU, PREFIX, Settings
from node_ping.probe.export import Snapshot, TargetRow, render_chunks
from node_ping.probe.problems import LastGood, Problems, some
from node_ping.probe.report import CycleStats, complete_reports, summarize
from node_ping.probe.resolve import resolve_all
from node_ping.probe.textfile import Taken, Tampered, output_path, touch, write_textfile
from node_ping.probe.topology import select_peers
from node_ping.targets import ExternalTarget, NodeTarget, read_external, read_nodes

log = logging.getLogger(__name__)

K = TypeVar("K", NodeTarget, ExternalTarget)


@dataclass
class _Totals:
    sent: int = 0
    received: int = 0
    rtt_sum_ms: float = 0.0
    last: CycleStats | None = None

    def add(self, stats: CycleStats) -> None:
        self.sent += stats.sent
        self.received += stats.received
        self.rtt_sum_ms += stats.rtt_sum_ms
        self.last = stats


CANARY = "127.0.0.1"
"""Probed every cycle beside the targets. Loopback always answers, so when it does not and no target
does either, fping cannot receive replies at all, and a 100 % loss for every target would be a lie."""


WAITED_S = 0.05
"""A wait for the fping lock this long means another node-ping had it (an uncontended take is ~0)."""

QUIET_CYCLES = 10
"""Cycles in a row without such a wait before "another node-ping runs here" counts as resolved."""


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Outcome:
    """How a cycle went."""

    probed: bool  # fping ran and works: the loopback canary answered (or there was nothing to probe)
    published: bool  # the result reached the textfile or the HTTP endpoint (or stdout, for `once`)
    lists_usable: bool  # each target list was read, or a last good one was kept; False: probing blind
    reported: bool = True  # fping reported on every target; False: some are counted as fping errors

    @property
    def ok(self) -> bool:
        """The prober works: what the liveness probe checks. A bad target list is not its fault, and
        a restart would not fix it; the config error counter and alert say so instead."""
        return self.probed and self.published

    @property
    def complete(self) -> bool:
        """Nothing was missing: what `once` and `run --cycles` exit with."""
        return self.ok and self.lists_usable and self.reported


STOPPED = Outcome(probed=False, published=False, lists_usable=True)


class Prober:
    """Holds what outlives a cycle: cumulative counters, the last good target lists, error counts."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time,
                 last_success_ts: float | None = None) -> None:
        self.settings = settings
        self._clock = clock
        self._problems = Problems()
        self._cycles_without_wait = QUIET_CYCLES
        self._nodes = LastGood("node list", lambda: read_nodes(settings.config_path, CONFIG.hint))
        self._external = LastGood("external list",
                                  lambda: read_external(settings.external_config_path, EXTERNAL_CONFIG.hint))
        self._node_totals: dict[NodeTarget, _Totals] = {}
        self._external_totals: dict[ExternalTarget, _Totals] = {}
        self._mtu_totals: dict[NodeTarget, _Totals] = {}
        # The previous instance's last success (see metrics.last_success_in), else start-up: not
        # leaving the gauge out lets "no success for 5 minutes" fire for a prober that has never
        # succeeded (no NET_RAW, say) as for one that stopped.
        now = clock()
        self.snapshot = Snapshot(source_node=settings.node_name,
                                 last_success_ts=min(last_success_ts, now) if last_success_ts else now,
                                 pod_path=settings.pod_path, mtu=settings.mtu)
        self.on_snapshot: Callable[[Snapshot], None] = lambda snapshot: None

    def _error(self, kind: str) -> None:
        errors = dict(self.snapshot.errors)
        errors[kind] += 1
        self.snapshot = dataclasses.replace(self.snapshot, errors=errors)

    def _resolve_external(self, targets: Sequence[ExternalTarget],
                          stop: threading.Event) -> dict[ExternalTarget, str]:
        resolved = resolve_all([target.host for target in targets], stop=stop)
        if resolved.failures:
            self._error(DNS_ERROR)
        if not resolved.stopped:
            failures = list(resolved.failures.values())
            self._problems.report("external names", some(failures, sep="; ") if failures else None)
        return {target: resolved.addresses[target.host] for target in targets if target.host in resolved.addresses}

    def cycle(self, stop: threading.Event) -> Outcome:
        """Probe every target once (count pings each) and publish the result."""
        started = time.monotonic()
        s = self.settings
        # External hosts are the host prober's: through the pod network they would be measured twice.
        target_files = (self._nodes,) if s.pod_path else (self._nodes, self._external)
        for target_file in target_files:
            if not target_file.load(self._problems):
                self._error(CONFIG_ERROR)
        nodes = select_peers(s.node_name, self._nodes.targets, s.topology, s.peers_per_zone)
        external = {} if s.pod_path else self._resolve_external(self._external.targets, stop)
        node_addresses = {node: node.address for node in nodes}
        mtu_addresses = self._mtu_targets(node_addresses)
        # One probe per address, shared by every target on it.
        addresses = list(dict.fromkeys([*node_addresses.values(), *external.values()]))

        probe_started = time.monotonic()
        probed = self._probe(addresses, stop, list(dict.fromkeys(mtu_addresses.values())))
        probe_s = time.monotonic() - probe_started
        if probed is None:
            return STOPPED  # publish nothing half-done
        reports, mtu_reports, fping_cpu, ok = probed
        reported = self._report_missing(node_addresses, external, reports) if ok else True
        node_rows = self._account(self._node_totals, node_addresses, reports, lambda n: (n.name, n.address))
        mtu_rows = self._account(self._mtu_totals, mtu_addresses, mtu_reports, lambda n: (n.name, n.address))
        own = next((node for node in self._nodes.targets if node.name == s.node_name), None)
        # A name that did not resolve this cycle is still configured: keep its counters.
        external_rows = self._account(self._external_totals, external, reports, lambda e: (e.name, e.host),
                                      keep=self._external.targets)
        prev = self.snapshot
        self.snapshot = dataclasses.replace(
            prev,
            nodes=node_rows,
            external=external_rows,
            mtu_rows=mtu_rows,
            node_info=(own.zone or "", own.rack or "") if own else ("", ""),
            exceptions=prev.exceptions + (0 if ok else 1),
            cycles=prev.cycles + 1,
            targets={"node": len(nodes), "external": len(external)},
            cycle_duration_s=time.monotonic() - started if ok and addresses else prev.cycle_duration_s,
            # Failed runs too: an fping that hung until it was killed is the latest of all.
            probe_duration_s=probe_s if addresses else prev.probe_duration_s,
            cycle_nominal_s=s.nominal_cycle_s,
            last_success_ts=self._clock() if ok else prev.last_success_ts,
            fping_cpu_s=prev.fping_cpu_s + fping_cpu,
            own_cpu_s=_own_cpu(),
        )
        outcome = Outcome(probed=ok, published=self.publish(),
                          lists_usable=all(f.usable for f in target_files), reported=reported)
        log.debug("cycle %d: %d node and %d external targets in %.1f s (%s)", self.snapshot.cycles, len(nodes),
                  len(external), time.monotonic() - started, outcome)
        return outcome

    def _probe(self, addresses: Sequence[str], stop: threading.Event,
               mtu_addresses: Sequence[str]) -> tuple[dict[str, CycleStats], dict[str, CycleStats], float, bool] | None:
        """Run fping, and the MTU probe's beside it; return the stats of every complete report of each,
        fping's CPU time and whether all went well. None if a stop was requested meanwhile."""
        if not addresses:
            return {}, {}, 0.0, True
        s = self.settings
        probe = list(addresses) if CANARY in addresses else [*addresses, CANARY]
        per_run = fping.max_targets_per_run(s.period_ms)
        batches = [probe[i:i + per_run] for i in range(0, len(probe), per_run)]
        try:
            argvs = [fping.build_argv(batch, s.count, s.period_ms, s.fping) for batch in batches]
            side = mtu.argvs(mtu_addresses, s.mtu, s.count, s.period_ms, s.fping)
            result = fping.run_all(argvs, s.fping_timeout_s, stop, side=side)
        except fping.Interrupted:
            return None
        except (fping.FpingError, OSError) as err:
            # OSError: fping could not be started (not an executable, no descriptors or memory left).
            why = f"cannot run {s.fping}: {err.strerror or err}" if isinstance(err, OSError) else str(err)
            self._error(FPING_ERROR)
            self._problems.report("fping", f"fping failed: {why}; keeping the previous counters, nothing "
                                  "measured this cycle")
            return {}, {}, 0.0, False
        # Waiting is a state, not an event: while another node-ping runs, some turns come at once.
        self._cycles_without_wait = 0 if result.waited_s >= WAITED_S else self._cycles_without_wait + 1
        self._problems.report("network namespace", None if self._cycles_without_wait >= QUIET_CYCLES else
                              "another node-ping runs in this network namespace (a second release, a surge "
                              "during a rolling update): our fping takes turns with its fping, since the "
                              "replies of both would mix; cycles take longer while both run")
        # Summarised line by line: 5,000 x 30 floats are never held at once.
        reports = {address: summarize(samples) for address, samples in complete_reports(result.report, s.count)}
        canary = reports.get(CANARY) if CANARY in addresses else reports.pop(CANARY, None)
        if canary is not None and not canary.received and not any(r.received for r in reports.values()):
            self._error(FPING_ERROR)
            self._problems.report("fping", "fping got no reply at all, not even from 127.0.0.1: it cannot receive "
                                  "ICMP replies here. Without NET_RAW, fping 5.1 uses ICMP datagram sockets and "
                                  "drops every reply: give the container NET_RAW. With it, a firewall in this "
                                  "network namespace drops echo replies. Nothing counted this cycle")
            return {}, {}, result.cpu_seconds, False
        if canary is None:
            # Loopback always gets a report from a working fping: without one, fping itself failed.
            self._error(FPING_ERROR)
            self._problems.report("fping", f"fping reported nothing on {CANARY}, which always answers: it did "
                                  "not run to the end; the targets it did report on are counted")
            return reports, {}, result.cpu_seconds, False
        self._problems.report("fping", None)
        return reports, self._mtu_reports(result, mtu_addresses), result.cpu_seconds, True

    def _mtu_targets(self, node_addresses: dict[NodeTarget, str]) -> dict[NodeTarget, str]:
        """The node targets the MTU probe covers; an IPv6 target below IPv6's minimum MTU is named, not probed."""
        s = self.settings
        chosen = {node: address for node, address in node_addresses.items() if mtu.probed(address, s.mtu)}
        left_out = len(node_addresses) - len(chosen) if s.mtu != mtu.OFF else 0
        self._problems.report("MTU probe", f"Invalid value for {MTU.hint}: {s.mtu} is below {mtu.IPV6_MIN}, the "
                              f"smallest MTU of any IPv6 link, so {left_out} IPv6 node targets get no MTU probe; "
                              f"use {mtu.IPV6_MIN} or more, or 0 (off)" if left_out else None)
        return chosen

    def _mtu_reports(self, result: fping.FpingResult, addresses: Sequence[str]) -> dict[str, CycleStats]:
        """The MTU probe's stats. Its failure (not its lost replies: those are what it measures) is an
        fping error, logged; the small pings' data stands either way."""
        count = mtu.pings(self.settings.count)
        reports = {address: summarize(samples) for address, samples in complete_reports(result.side_report, count)}
        if result.side_error is not None:
            self._error(FPING_ERROR)
        missing = [address for address in addresses if address not in reports]
        self._problems.report("MTU fping", f"the MTU probe's fping failed: {result.side_error}; the small pings "
                              "are counted, the MTU counters wait for the next cycle" if result.side_error else
                              f"the MTU probe's fping reported nothing on {some(missing)}; not counted this cycle"
                              if missing else None)
        return reports



    def _report_missing(self, nodes: dict[NodeTarget, str], external: dict[ExternalTarget, str],
                        reports: dict[str, CycleStats]) -> bool:
        """Name the targets a working fping reported nothing on (without a complete report we do not know
        what was sent: nothing is counted for them) and count one fping error; False if there were any."""
        missing = [f"node {node.name} ({address})" for node, address in nodes.items() if address not in reports]
        missing += [f"external {target.name} ({target.host}{'' if address == target.host else f' = {address}'})"
                    for target, address in external.items() if address not in reports]
        if missing:
            self._error(FPING_ERROR)
        self._problems.report("fping report", f"fping reported nothing on {some(missing)}; nothing is counted "
                              "for them this cycle, the other targets are" if missing else None)
        return not missing

    def fail(self, before: Snapshot) -> None:
        """Count a cycle that ended in an unexpected exception (begun at `before`) as a cycle, an exception
        and an `internal` error. The RTT gauges describe the last cycle, which measured nothing to trust:
        kept, they would pass old numbers as new. The counters stay."""
        self._error(INTERNAL_ERROR)
        now = self.snapshot
        # Where the cycle got as far as recording itself, it is not counted twice.
        self.snapshot = dataclasses.replace(
            now, nodes=tuple(dataclasses.replace(row, last=None) for row in now.nodes),
            external=tuple(dataclasses.replace(row, last=None) for row in now.external),
            cycles=now.cycles + (0 if now.cycles > before.cycles else 1),
            exceptions=now.exceptions + (0 if now.exceptions > before.exceptions else 1), own_cpu_s=_own_cpu())

    @staticmethod
    def _account(totals: dict[K, _Totals], address_of: dict[K, str], reports: dict[str, CycleStats],
                 labels: Callable[[K], tuple[str, str]], keep: Sequence[K] = ()) -> tuple[TargetRow, ...]:
        """Add this cycle's stats; forget targets that left the config (they vanish from the file).

        Targets in `keep` were not probed this cycle but are still configured. Their counters stay,
        as do those of targets fping reported nothing on; the RTT gauges describe this cycle only,
        so every target without a report loses them until its next one."""
        for target in set(totals) - set(address_of) - set(keep):
            del totals[target]
        for kept in totals.values():
            kept.last = None  # set again by add() where this cycle has a report
        for target, address in address_of.items():
            stats = reports.get(address)
            if stats is not None:
                totals.setdefault(target, _Totals()).add(stats)
        return tuple(TargetRow(labels(t), v.sent, v.received, v.rtt_sum_ms, v.last)
                     for t, v in sorted(totals.items()))

    def publish(self) -> bool:
        """Write the textfile (if configured) and hand the snapshot to the HTTP collector.

        False when the result reached nobody: the textfile could not be written and no HTTP
        endpoint serves it either. The write error counter is then only in memory, so the
        liveness probe is what makes such a pod visible."""
        self.on_snapshot(self.snapshot)
        s = self.settings
        if s.textfile_dir is None:
            return True
        path = output_path(s.textfile_dir, s.prefix, s.node_name)
        try:
            write_textfile(path, render_chunks(self.snapshot))
        except Taken as taken:
            self._error(WRITE_ERROR)
            self.on_snapshot(self.snapshot)
            self._problems.report("textfile", None)
            self._problems.report("textfile writer", f"{taken}. During a rolling update this passes by itself; if "
                                  f"another release of node-ping runs on this node, give one of them another "
                                  f"{PREFIX.flag} ({PREFIX.env})")
            return True  # this node's data still reaches the file, through the other node-ping
        except OSError as err:
            self._error(WRITE_ERROR)
            self.on_snapshot(self.snapshot)
            served = s.listen is not None
            reason = str(err) if isinstance(err, Tampered) else \
                f"cannot write {path}: {err.strerror or err}; the previous file is left as it was"
            self._problems.report("textfile", f"{reason}{'' if served else '; this cycle counts as failed'}")
            return served
        self._problems.report("textfile writer", None)
        self._problems.report("textfile", None)
        return True

    def touch_health(self) -> None:
        """Mark a successful cycle for `node-ping health` (the liveness probe), if configured."""
        health_file = self.settings.health_file
        if health_file is None:
            return
        try:
            touch(health_file)  # never through a link planted in its directory
        except OSError as err:
            self._problems.report("health file", f"cannot touch health file {health_file}: "
                                  f"{err.strerror or err}; the liveness probe will fail")
        else:
            self._problems.report("health file", None)


def run(prober: Prober, stop: threading.Event, health: Callable[[], None] = lambda: None) -> int:
    """Repeat cycles until `stop` is set or --cycles is reached. Never exits on a bad cycle.

    Returns 0, or 1 when --cycles was reached and the last cycle was not complete (so `once` in a
    script tells success from failure); a stop by signal is always 0."""
    s = prober.settings
    done = 0
    outcome = Outcome(probed=True, published=True, lists_usable=True)
    while not stop.is_set() and (s.cycles is None or done < s.cycles):
        started = time.monotonic()
        before = prober.snapshot
        try:
            outcome = prober.cycle(stop)
        except Exception:
            # A bug must not become a crash loop: log it with its traceback, count it, go on.
            log.exception("cycle failed unexpectedly; continuing")
            prober.fail(before)
            # The count must reach the file, or a bug in every cycle looks like a stale file.
            outcome = Outcome(probed=False, published=prober.publish(), lists_usable=True)
        if stop.is_set():
            break
        done += 1
        if outcome.ok:
            health()
        # A cycle normally lasts count x period; if it failed fast, wait that long before retrying.
        remaining = s.nominal_cycle_s - (time.monotonic() - started)
        if (not outcome.ok or not prober.snapshot.targets["node"] + prober.snapshot.targets["external"]) \
                and remaining > 0 and (s.cycles is None or done < s.cycles):
            stop.wait(remaining)
    return 0 if outcome.complete or stop.is_set() else 1
