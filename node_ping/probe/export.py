"""The exporter's state after a cycle (a snapshot), and its exposition text (names: node_ping.contract)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node_ping import __version__, contract
from node_ping.contract import ERROR_KINDS, TARGET_KINDS, Kind, PingFamily
from node_ping.probe.report import CycleStats


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


_FAMILY_CLASS: dict[Kind, type[CounterMetricFamily] | type[GaugeMetricFamily]] = {
    Kind.COUNTER: CounterMetricFamily, Kind.GAUGE: GaugeMetricFamily}

# The value of a row for each of the six per-target metrics, in the contract's order. The gauges are
# None when nothing came back: no series rather than a false 0 ms.
_ROW_VALUES: tuple[Callable[[TargetRow], float | None], ...] = (
    lambda r: r.sent,
    lambda r: r.received,
    lambda r: r.rtt_sum_ms,
    lambda r: r.last.rtt_min_ms if r.last else None,
    lambda r: r.last.rtt_max_ms if r.last else None,
    lambda r: r.last.rtt_mdev_ms if r.last else None,
)


def _ping_metrics(family: PingFamily, source: str, rows: Sequence[TargetRow]) -> Iterator[Metric]:
    """One metric family at a time, so 5,000 targets never hold all six families in memory."""
    for declared, value_of in zip(family.metrics, _ROW_VALUES, strict=True):
        metric = _FAMILY_CLASS[declared.kind](declared.base, declared.help, labels=declared.labels)
        for row in rows:
            value = value_of(row)
            if value is not None:
                metric.add_metric([source, *row.labels], value)
        yield metric


def _own(declared: contract.Metric, source: str, values: dict[str, float | None]) -> Metric:
    """A self metric: one series per value of its second label (or a single one, keyed "", when it
    has none); a value of None leaves the series out."""
    metric = _FAMILY_CLASS[declared.kind](declared.base, declared.help, labels=declared.labels)
    for label_value, value in sorted(values.items()):
        if value is not None:
            metric.add_metric([source, label_value] if len(declared.labels) > 1 else [source], value)
    return metric


def _self_metrics(snap: Snapshot) -> Iterator[Metric]:
    src = snap.source_node
    # A healthy fping run ends up to a period before count x period (the last round needs no
    # full period): that is on time, not "early".
    lateness = (None if snap.probe_duration_s is None or snap.cycle_nominal_s is None
                else max(0.0, snap.probe_duration_s - snap.cycle_nominal_s))
    values: dict[contract.Metric, dict[str, float | None]] = {
        contract.EXCEPTIONS: {"": snap.exceptions},
        contract.ERRORS: dict(snap.errors),
        contract.CYCLES: {"": snap.cycles},
        contract.TARGETS: dict(snap.targets),
        contract.CYCLE_DURATION: {"": snap.cycle_duration_s},
        contract.CYCLE_NOMINAL: {"": snap.cycle_nominal_s},
        contract.CYCLE_LATENESS: {"": lateness},
        contract.LAST_SUCCESS: {"": snap.last_success_ts},
        contract.FPING_CPU: {"": snap.fping_cpu_s},
        contract.OWN_CPU: {"": snap.own_cpu_s},
        contract.BUILD_INFO: {__version__: 1},
    }
    for declared in contract.SELF_METRICS:
        yield _own(declared, src, values[declared])


class SnapshotCollector(Collector):
    """Serves whichever snapshot is current; the loop swaps in a new one after every cycle."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot  # one read: a scrape never mixes two cycles
        yield from _ping_metrics(contract.NODE, snap.source_node, snap.nodes)
        yield from _ping_metrics(contract.EXTERNAL, snap.source_node, snap.external)
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
    line = re.compile(rf'^{contract.LAST_SUCCESS.name}\{{{contract.SOURCE}="{re.escape(node_name)}"\}} (\S+)$',
                      re.MULTILINE)
    match = line.search(text)
    if match is None:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None
