"""Metric names, help texts and the exposition text, all in one place.

The `kube_node_ping_*` and `external_ping_*` names and labels are the 2019 script's public
contract: dashboards use them, so they never change. Our own metrics use base units.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
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
    probe_duration_s: float | None = None  # the pings alone: what a starved prober stretches
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


_ABSENT_IF_SILENT = "; absent if nothing came back."

# (suffix, kind, help, value of a row): the six per-target metrics, in exposition order.
_PING_METRICS: tuple[tuple[str, type[CounterMetricFamily] | type[GaugeMetricFamily], str,
                           Callable[[TargetRow], float | None]], ...] = (
    ("packets_sent", CounterMetricFamily, "ICMP echo requests sent to {what}.", lambda r: r.sent),
    ("packets_received", CounterMetricFamily, "ICMP echo replies received from {what}.", lambda r: r.received),
    ("rtt_milliseconds", CounterMetricFamily, "Sum of round-trip times of the replies from {what}, in ms.",
     lambda r: r.rtt_sum_ms),
    # The gauges are None when nothing came back: no series rather than a false 0 ms.
    ("rtt_min", GaugeMetricFamily, "Shortest round-trip time of the last cycle, in ms" + _ABSENT_IF_SILENT,
     lambda r: r.last.rtt_min_ms if r.last else None),
    ("rtt_max", GaugeMetricFamily, "Longest round-trip time of the last cycle, in ms" + _ABSENT_IF_SILENT,
     lambda r: r.last.rtt_max_ms if r.last else None),
    ("rtt_mdev", GaugeMetricFamily,
     "Standard deviation of the round-trip times of the last cycle, in ms" + _ABSENT_IF_SILENT,
     lambda r: r.last.rtt_mdev_ms if r.last else None),
)


def _ping_metrics(family: _Family, source: str, rows: Sequence[TargetRow]) -> Iterator[Metric]:
    """One metric family at a time, so 5,000 targets never hold all six families in memory."""
    names = ("source_node", *family.label_names)
    for suffix, kind, help_text, value_of in _PING_METRICS:
        metric = kind(f"{family.prefix}_{suffix}", help_text.format(what=family.what), labels=names)
        for row in rows:
            value = value_of(row)
            if value is not None:
                metric.add_metric([source, *row.labels], value)
        yield metric


def _own(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, help_text: str, source: str,
         values: dict[str, float | None], *, label: str = "") -> Metric:
    """A self metric: one series per labelled value (or a single one when `label` is empty);
    a value of None leaves the series out."""
    metric = kind(name, help_text, labels=["source_node", label] if label else ["source_node"])
    for label_value, value in sorted(values.items()):
        if value is not None:
            metric.add_metric([source, label_value] if label else [source], value)
    return metric


def _self_metrics(snap: Snapshot) -> Iterator[Metric]:
    src = snap.source_node
    # A healthy fping run ends up to a period before count x period (the last round needs no
    # full period): that is on time, not "early".
    lateness = (None if snap.probe_duration_s is None or snap.cycle_nominal_s is None
                else max(0.0, snap.probe_duration_s - snap.cycle_nominal_s))
    yield _own(CounterMetricFamily, "kube_node_ping_exceptions", "Cycles that ended in an error.", src,
               {"": snap.exceptions})
    yield _own(CounterMetricFamily, "node_ping_errors", "Errors by kind: config, fping, write, dns.", src,
               dict(snap.errors), label="kind")
    yield _own(CounterMetricFamily, "node_ping_cycles", "Probe cycles run, successful or not.", src, {"": snap.cycles})
    yield _own(GaugeMetricFamily, "node_ping_targets", "Targets probed in the last cycle.", src,
               dict(snap.targets), label="kind")
    yield _own(GaugeMetricFamily, "node_ping_cycle_duration_seconds", "Wall-clock length of the last cycle.", src,
               {"": snap.cycle_duration_s})
    yield _own(GaugeMetricFamily, "node_ping_cycle_nominal_seconds", "Nominal cycle length: count x period.", src,
               {"": snap.cycle_nominal_s})
    yield _own(GaugeMetricFamily, "node_ping_cycle_lateness_seconds",
               "How much longer than nominal the last cycle's pings took (DNS look-ups and the write not "
               "included); large values mean a starved prober.", src,
               {"": lateness})
    yield _own(GaugeMetricFamily, "node_ping_last_success_timestamp_seconds",
               "Unix time the last successful cycle ended; until one has, when node-ping started.", src,
               {"": snap.last_success_ts})
    yield _own(CounterMetricFamily, "node_ping_fping_cpu_seconds", "CPU time (user+system) used by fping.", src,
               {"": snap.fping_cpu_s})
    yield _own(CounterMetricFamily, "node_ping_cpu_seconds", "CPU time (user+system) used by node-ping itself.",
               src, {"": snap.own_cpu_s})
    yield _own(GaugeMetricFamily, "node_ping_build_info", "Version of node-ping; always 1.", src,
               {__version__: 1}, label="version")


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


class _OneFamily(Collector):
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self.metric


def render_chunks(snapshot: Snapshot) -> Iterator[str]:
    """The exposition text of one snapshot, a metric family at a time (pure).

    prometheus_client formats each family (so escaping is exactly what the HTTP endpoint serves),
    but the whole text of 5,000 targets is never built in memory at once.
    """
    for metric in SnapshotCollector(snapshot).collect():
        yield generate_latest(_OneFamily(metric)).decode("utf-8")


def render(snapshot: Snapshot) -> str:
    """The exposition text of one snapshot (pure)."""
    return "".join(render_chunks(snapshot))


def last_success_in(text: str, node_name: str) -> float | None:
    """The last-success timestamp a previous textfile holds for `node_name`, if any (pure).

    A restart must not reset "no cycle has succeeded since": a prober that never succeeds and is
    restarted by its liveness probe would otherwise never look old enough to alert on.
    """
    line = re.compile(rf'^node_ping_last_success_timestamp_seconds\{{source_node="{re.escape(node_name)}"\}} (\S+)$',
                      re.MULTILINE)
    match = line.search(text)
    if match is None:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None
