"""Metric names, help texts and the exposition text, all in one place.

The `kube_node_ping_*` and `external_ping_*` names and labels are the 2019 script's public
contract: dashboards use them, so they never change. Our own metrics use base units.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node_ping import __version__
from node_ping.stats import CycleStats

ERROR_KINDS = ("config", "fping", "write", "dns")
"""Every error kind is exported from the start, so `increase()` sees the first error."""

TARGET_KINDS = ("node", "external")


@dataclass(frozen=True)
class TargetRow:
    """Everything exported about one target: cumulative counters and the last cycle's gauges."""

    labels: tuple[str, str]  # (destination name, destination address or host)
    sent: int
    received: int
    rtt_sum_ms: float
    last: CycleStats | None  # None until the first successful cycle that probed it


@dataclass(frozen=True)
class Snapshot:
    """The exporter's state after a cycle; immutable so an HTTP scrape can read it at any time."""

    source_node: str
    nodes: Sequence[TargetRow] = ()
    external: Sequence[TargetRow] = ()
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    exceptions: int = 0
    cycles: int = 0
    targets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TARGET_KINDS, 0))
    cycle_duration_s: float | None = None
    cycle_nominal_s: float | None = None
    last_success_ts: float | None = None
    fping_cpu_s: float = 0.0
    own_cpu_s: float = 0.0


@dataclass(frozen=True)
class _Family:
    prefix: str
    label_names: tuple[str, str]
    what: str  # "other nodes" / "external hosts", for help texts


NODE_FAMILY = _Family("kube_node_ping", ("destination_node", "destination_node_ip_address"), "another node")
EXTERNAL_FAMILY = _Family("external_ping", ("destination_name", "destination_host"), "an external host")


def _ping_metrics(family: _Family, source: str, rows: Sequence[TargetRow]) -> Iterator[Metric]:
    names = ("source_node", *family.label_names)
    sent = CounterMetricFamily(f"{family.prefix}_packets_sent", f"ICMP echo requests sent to {family.what}.",
                               labels=names)
    received = CounterMetricFamily(f"{family.prefix}_packets_received",
                                   f"ICMP echo replies received from {family.what}.", labels=names)
    rtt_sum = CounterMetricFamily(f"{family.prefix}_rtt_milliseconds",
                                  f"Sum of round-trip times of the replies from {family.what}, in ms.",
                                  labels=names)
    gauges = {
        "min": GaugeMetricFamily(f"{family.prefix}_rtt_min",
                                 "Shortest round-trip time of the last cycle, in ms; absent if nothing came back.",
                                 labels=names),
        "max": GaugeMetricFamily(f"{family.prefix}_rtt_max",
                                 "Longest round-trip time of the last cycle, in ms; absent if nothing came back.",
                                 labels=names),
        "mdev": GaugeMetricFamily(f"{family.prefix}_rtt_mdev",
                                  "Standard deviation of the round-trip times of the last cycle, in ms; "
                                  "absent if nothing came back.", labels=names),
    }
    for row in rows:
        values = [source, *row.labels]
        sent.add_metric(values, row.sent)
        received.add_metric(values, row.received)
        rtt_sum.add_metric(values, row.rtt_sum_ms)
        last = row.last
        if last is None:
            continue
        for key, rtt in (("min", last.rtt_min_ms), ("max", last.rtt_max_ms), ("mdev", last.rtt_mdev_ms)):
            if rtt is not None:  # None when nothing came back: no gauge rather than a false 0 ms
                gauges[key].add_metric(values, rtt)
    yield from (sent, received, rtt_sum, *gauges.values())


def _self_metrics(snap: Snapshot) -> Iterator[Metric]:
    src = ["source_node"]
    exceptions = CounterMetricFamily("kube_node_ping_exceptions", "Cycles that ended in an error.", labels=src)
    exceptions.add_metric([snap.source_node], snap.exceptions)
    yield exceptions
    errors = CounterMetricFamily("node_ping_errors", "Errors by kind: config, fping, write, dns.",
                                 labels=["source_node", "kind"])
    for kind, value in sorted(snap.errors.items()):
        errors.add_metric([snap.source_node, kind], value)
    yield errors
    cycles = CounterMetricFamily("node_ping_cycles", "Probe cycles completed.", labels=src)
    cycles.add_metric([snap.source_node], snap.cycles)
    yield cycles
    targets = GaugeMetricFamily("node_ping_targets", "Targets probed in the last cycle.",
                                labels=["source_node", "kind"])
    for kind, value in sorted(snap.targets.items()):
        targets.add_metric([snap.source_node, kind], value)
    yield targets
    optional_gauges = (
        ("node_ping_cycle_duration_seconds", "Wall-clock length of the last cycle.", snap.cycle_duration_s),
        ("node_ping_cycle_nominal_seconds", "Nominal cycle length: count x period.", snap.cycle_nominal_s),
        ("node_ping_cycle_lateness_seconds",
         "How much longer than nominal the last cycle took; large values mean a starved prober.",
         None if snap.cycle_duration_s is None or snap.cycle_nominal_s is None
         else snap.cycle_duration_s - snap.cycle_nominal_s),
        ("node_ping_last_success_timestamp_seconds", "Unix time the last cycle completed.",
         snap.last_success_ts),
    )
    for name, help_text, maybe in optional_gauges:
        gauge = GaugeMetricFamily(name, help_text, labels=src)
        if maybe is not None:
            gauge.add_metric([snap.source_node], maybe)
        yield gauge
    for name, help_text, seconds in (
        ("node_ping_fping_cpu_seconds", "CPU time (user+system) used by fping.", snap.fping_cpu_s),
        ("node_ping_cpu_seconds", "CPU time (user+system) used by node-ping itself.", snap.own_cpu_s),
    ):
        counter = CounterMetricFamily(name, help_text, labels=src)
        counter.add_metric([snap.source_node], seconds)
        yield counter
    info = GaugeMetricFamily("node_ping_build_info", "Version of node-ping; always 1.",
                             labels=["source_node", "version"])
    info.add_metric([snap.source_node, __version__], 1)
    yield info


class SnapshotCollector(Collector):
    """Serves whichever snapshot is current; the loop swaps in a new one after every cycle."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot  # one read: a scrape never mixes two cycles
        yield from _ping_metrics(NODE_FAMILY, snap.source_node, snap.nodes)
        yield from _ping_metrics(EXTERNAL_FAMILY, snap.source_node, snap.external)
        yield from _self_metrics(snap)


def new_registry(collector: SnapshotCollector) -> CollectorRegistry:
    """A registry with only our metrics: no process_*/python_* series, no *_created series."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(snapshot: Snapshot) -> str:
    """The exposition text of one snapshot (pure)."""
    return generate_latest(new_registry(SnapshotCollector(snapshot))).decode("utf-8")
