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
    mtu: int = 0  # the MTU probe's packet size; 0: off, and its counters are not exported
    mtu_rows: Sequence[TargetRow] = ()  # the MTU probe's counters per node target (no RTT)
    node_info: tuple[str, str] | None = None  # this node's (zone, rack) from its nodes.json entry
    pod_path: bool = False  # the pod-network prober: the pod family, self metrics marked, no node info

    @property
    def family(self) -> PingFamily:
        """The family node targets are exported under: the host network's, or the pod network's."""
        return contract.POD if self.pod_path else contract.NODE


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


def _mtu_metrics(family: PingFamily, snap: Snapshot) -> Iterator[Metric]:
    """The MTU probe's pair: the family's labels plus the size proven."""
    for declared, value_of in zip(family.mtu_metrics, _ROW_VALUES, strict=False):
        metric = _FAMILY_CLASS[declared.kind](declared.base, declared.help, labels=declared.labels)
        for row in snap.mtu_rows:
            metric.add_metric([snap.source_node, *row.labels, str(snap.mtu)], value_of(row) or 0)
        yield metric


def _own(declared: contract.Metric, source: str, values: dict[str, float | None], pod_path: bool) -> Metric:
    """A self metric: one series per value of its second label (or a single one, keyed "", when it
    has none); a value of None leaves the series out. The pod prober's carry path="pod"."""
    labels, tail = (*declared.labels, contract.PATH), [contract.POD_PATH]
    if not pod_path:  # the host prober's series stay exactly as they always were
        labels, tail = declared.labels, []
    metric = _FAMILY_CLASS[declared.kind](declared.base, declared.help, labels=labels)
    for label_value, value in sorted(values.items()):
        if value is not None:
            metric.add_metric([source, label_value, *tail] if len(declared.labels) > 1 else [source, *tail], value)
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
        yield _own(declared, src, values[declared], snap.pod_path)
    if snap.node_info is not None and not snap.pod_path:  # its labels are fixed: the host prober says it
        info = contract.NODE_INFO
        metric = _FAMILY_CLASS[info.kind](info.base, info.help, labels=info.labels)
        metric.add_metric([src, *snap.node_info], 1)
        yield metric


class SnapshotCollector(Collector):
    """Serves whichever snapshot is current; the loop swaps in a new one after every cycle."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot  # one read: a scrape never mixes two cycles
        yield from _ping_metrics(snap.family, snap.source_node, snap.nodes)
        if snap.mtu:
            yield from _mtu_metrics(snap.family, snap)
        if not snap.pod_path:  # the pod prober probes no external host
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


def last_success_in(text: str, node_name: str, pod_path: bool = False) -> float | None:
    """The last-success timestamp a previous textfile holds for `node_name` (of the pod prober if
    `pod_path`), if any (pure).

    A restart must not reset "no cycle has succeeded since": a prober that never succeeds and is
    restarted by its liveness probe would otherwise never look old enough to alert on.
    """
    path = f'{contract.PATH}="{contract.POD_PATH}",' if pod_path else ""  # labels are written sorted
    line = re.compile(rf'^{contract.LAST_SUCCESS.name}\{{{path}{contract.SOURCE}="{re.escape(node_name)}"\}} (\S+)$',
                      re.MULTILINE)
    match = line.search(text)
    if match is None:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None
