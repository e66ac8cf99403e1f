"""The loss and latency matrix Prometheus gives, and what each node's own metrics say about its prober (pure).

A cell is, per (source node, destination), how many pings were sent and answered over a time range
and the sum of their round-trip times: what `increase()` of the exporter's counters gives. A node
whose own data stopped before the end of the range (`stale_sources`) is stale: its row describes
the past, not the network now. What its own metrics say (`probers`: gone, stopped, failing or
running) tells why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Pair = tuple[str, str]
"""(source node, destination): a destination node, or an external target's name."""

# What a node's own metrics (not its pair series) say about its prober at the end of the range.
PROBER_GONE = "gone"  # none scraped: the node, its node-ping pod or its node-exporter down, or not scraped
PROBER_STOPPED = "stopped"  # still served but standing still: a stopped prober's textfile
PROBER_FAILING = "failing"  # it cycles and is scraped, but no cycle has succeeded within the grace
PROBER_RUNNING = "running"  # it cycles and succeeds (or has just started)
PROBER_STATES = (PROBER_GONE, PROBER_STOPPED, PROBER_FAILING, PROBER_RUNNING)

# A source is stale when the last success Prometheus scraped from it was already this many nominal
# cycles old at that scrape (and at least _STALE_FLOOR_S). See `stale_sources`.
_STALE_CYCLES = 3
_STALE_FLOOR_S = 60.0

_DIGITS = re.compile(r"([0-9]+)")

NaturalKey = tuple[tuple[str | int, ...], str]


def natural_key(name: str) -> NaturalKey:
    """Sort key that orders the numbers inside names by value: node-2 before node-10.

    Splitting on digit runs puts text at even and numbers at odd positions, so two keys always
    compare text with text and numbers with numbers; the name itself breaks ties (n01, n1).
    """
    parts = _DIGITS.split(name)
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts)), name


def natural_pair_key(pair: tuple[str, str]) -> tuple[NaturalKey, NaturalKey]:
    """natural_key for a (source, destination) pair."""
    return natural_key(pair[0]), natural_key(pair[1])


@dataclass(frozen=True)
class Counts:
    """Pings of one pair over the range. Floats: `increase()` extrapolates to the range's edges."""

    sent: float
    received: float
    rtt_sum_ms: float | None = 0.0  # None: not fetched (a large cluster's lossy pair, `pushdown`)

    @property
    def measured(self) -> bool:
        return self.sent > 0

    @property
    def loss_ratio(self) -> float:
        if not self.measured:
            return 0.0
        # Extrapolation at the range's edges can put received a hair above sent.
        return min(1.0, max(0.0, 1.0 - self.received / self.sent))

    @property
    def rtt_avg_ms(self) -> float | None:
        """None when nothing came back (a dead link must never read as a fast one) or when the RTT
        was not fetched."""
        if self.rtt_sum_ms is None or self.received <= 0:
            return None
        return self.rtt_sum_ms / self.received


@dataclass(frozen=True)
class Place:
    """Where a node sits, as its own info metric (contract.NODE_INFO) says: zone and rack, empty when unknown."""

    zone: str = ""
    rack: str = ""


@dataclass(frozen=True)
class Block:
    """All measured pairs from one group of nodes to another (or inside one), summed; `bad` is how
    many of them the analysis found bad (0 until it has looked)."""

    measured: int = 0
    bad: int = 0
    sent: float = 0.0
    lost: float = 0.0

    @property
    def loss_ratio(self) -> float:
        return min(1.0, max(0.0, self.lost / self.sent)) if self.sent > 0 else 0.0

    def add(self, counts: Counts, bad: bool) -> Block:
        return Block(self.measured + 1, self.bad + bad, self.sent + counts.sent,
                     self.lost + counts.sent - counts.received)


@dataclass(frozen=True)
class Line:
    """A node's whole row ("send") or column ("receive"): how many pairs it has, pings sent and lost."""

    pairs: int = 0
    sent: float = 0.0
    lost: float = 0.0

    @property
    def loss_ratio(self) -> float:
        return min(1.0, max(0.0, self.lost / self.sent)) if self.sent > 0 else 0.0


@dataclass(frozen=True)
class Summary:
    """What Prometheus summed for a large cluster, whose matrix holds only the cells that matter
    (`pushdown`): every line, the median pair loss, the blocks by zone and rack (by "zone"/"rack", then
    (from group, to group)), the worst and the slowest pair (when no cell is bad), how many cells
    could be bad and how many of those were left out, and which lines were fetched whole."""

    lines: Mapping[tuple[str, str], Line]
    background: float = 0.0
    candidates: int = 0
    left_out: int = 0
    whole_lines: tuple[tuple[str, str], ...] = ()
    blocks: Mapping[str, Mapping[tuple[str, str], Block]] = field(default_factory=dict)
    worst_loss: tuple[Pair, float] | None = None
    slowest: tuple[Pair, float] | None = None
    recorded_at: float | None = None
    """When the recording rules the sums came from were evaluated; None: asked of Prometheus directly."""

    @property
    def pairs(self) -> int:
        """How many pairs there are: every row's, summed."""
        return sum(line.pairs for (direction, _), line in self.lines.items() if direction == "send")


@dataclass(frozen=True)
class PathCells:
    """Another path than the small pings between the nodes' own addresses: the pod network, or packets
    of the MTU size. Only its cells at or above the loss threshold are fetched (`cells`), with how many
    pairs each node's row ("send") and column ("receive") has (`sizes`); `mtu` is the packet size."""

    cells: Mapping[Pair, Counts] = field(default_factory=dict)
    sizes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    mtu: str = ""


@dataclass(frozen=True)
class Matrix:
    """What Prometheus knows about the range: node pairs and (node, external target) pairs, the
    source nodes whose data stopped before its end (`stale`: node -> how many seconds before the end
    its last successful cycle ended, None when unknown), and what each node's own metrics say about
    its prober (`probers`; a node missing there is PROBER_GONE)."""

    nodes: Mapping[Pair, Counts]
    external: Mapping[Pair, Counts] = field(default_factory=dict)
    stale: Mapping[str, float | None] = field(default_factory=dict)
    probers: Mapping[str, Prober] = field(default_factory=dict)
    places: Mapping[str, Place] = field(default_factory=dict)
    # Set for a large cluster: `nodes` then holds only the cells that could be bad (and the lines
    # fetched whole), and the summary the sums behind the rest.
    summary: Summary | None = None
    paths: Mapping[str, PathCells] = field(default_factory=dict)  # "mtu", "pod": see PathCells

    def prober(self, node: str) -> Prober:
        """What `node`'s own metrics say about its prober; gone when Prometheus has none."""
        return self.probers.get(node) or Prober(PROBER_GONE)

    def node_names(self) -> list[str]:
        """Nodes in a pair that sent pings in the range, stale sources included (verdicts name them).
        A pair that sent nothing in the range (an exporter that stopped cycling before it, a node
        gone) says nothing about the nodes, so it neither counts nor dilutes."""
        names = {name for pair in _sent(self.nodes) if pair[0] != pair[1] for name in pair}
        if self.summary is not None:
            names |= {node for (_, node), line in self.summary.lines.items() if line.sent > 0}
        return sorted(names, key=natural_key)

    def external_names(self) -> list[str]:
        """External targets some node measures now (see measured_external)."""
        return sorted({target for _, target in self.measured_external()}, key=natural_key)

    def sources(self) -> list[str]:
        """Nodes that sent pings in the range, to peers or to external targets, stale or not."""
        pairs = [pair for pair in _sent(self.nodes) if pair[0] != pair[1]] + list(_sent(self.external))
        sources = {source for source, _ in pairs}
        if self.summary is not None:
            sources |= {node for (direction, node), line in self.summary.lines.items()
                        if direction == "send" and line.sent > 0}
        return sorted(sources, key=natural_key)

    def measured_nodes(self) -> dict[Pair, Counts]:
        """Node pairs with current numbers: pings sent in the range, by a source that is not stale."""
        return {pair: counts for pair, counts in _sent(self.nodes).items()
                if pair[0] != pair[1] and pair[0] not in self.stale}

    def measured_external(self) -> dict[Pair, Counts]:
        """(node, external target) pairs with current numbers (see measured_nodes)."""
        return {pair: counts for pair, counts in _sent(self.external).items() if pair[0] not in self.stale}


def _sent(cells: Mapping[Pair, Counts]) -> dict[Pair, Counts]:
    return {pair: counts for pair, counts in cells.items() if counts.measured}


@dataclass(frozen=True)
class Freshness:
    """What Prometheus holds at the end of the range about one source node's own data."""

    series: bool  # its pair series (sent counters) are still there at the end of the range
    last_success: float | None = None  # contract.LAST_SUCCESS, unix time
    scraped_at: float | None = None  # when Prometheus scraped that value
    nominal_s: float | None = None  # contract.CYCLE_NOMINAL: absent until a first cycle ends
    # Whether contract.CYCLES moved within the grace before the end (or appeared within it): a
    # prober that runs, not a textfile left behind. None: no such counter at the end of the range.
    cycling: bool | None = None
    # contract.ERRORS by kind: how much each kind rose over the range (only those that did).
    errors: Mapping[str, float] = field(default_factory=dict)

    @property
    def scraped(self) -> bool:
        """Its own metrics, not just its pair series, are still scraped at the end of the range."""
        return self.scraped_at is not None or self.cycling is not None


@dataclass(frozen=True)
class Prober:
    """What one node's own metrics say about its prober at the end of the range.

    `state` is one of PROBER_STATES; `since_success_s` how long before the end of the range its last
    successful cycle ended (its start-up, until one has), None when not scraped; `errors` the error
    kinds that rose over the range, and by how much.
    """

    state: str
    since_success_s: float | None = None
    errors: Mapping[str, float] = field(default_factory=dict)


def grace_s(nominal_s: float | None) -> float:
    """How old a scraped last success may be before its prober counts as stopped or failing.

    A working prober's metrics hold a success at most one (perhaps late) cycle old whenever they are
    read, whatever the scrape interval, which is why the scrape time and not the end of the range is
    compared. _STALE_CYCLES nominal cycles leave room for a failed or late cycle or two; _STALE_FLOOR_S
    for very short cycles, where start-up and DNS dominate, and for some clock skew between node and
    Prometheus.
    """
    return max(_STALE_CYCLES * (nominal_s or 0.0), _STALE_FLOOR_S)


def fallback_nominal_s(freshness: Mapping[str, Freshness]) -> float:
    """The nominal cycle for a prober that has none yet (none until its first cycle ends): the
    DaemonSet gives every node the same."""
    return max((f.nominal_s for f in freshness.values() if f.nominal_s), default=0.0)


def probers(freshness: Mapping[str, Freshness], at: float) -> dict[str, Prober]:
    """Each node's prober as its own metrics show it at `at` (see PROBER_STATES).

    Its last success (its start-up time until a first one) older than `grace_s` at its last scrape
    means it is failing if its cycle counter still moves, and stopped if not (or if it has no counter
    to tell, as exporters older than it).
    """
    fallback = fallback_nominal_s(freshness)
    states: dict[str, Prober] = {}
    for node, seen in freshness.items():
        errors = dict(seen.errors)
        if not seen.scraped:
            states[node] = Prober(PROBER_GONE, errors=errors)
            continue
        since = None if seen.last_success is None else max(0.0, at - seen.last_success)
        late = (seen.last_success is not None and seen.scraped_at is not None
                and seen.scraped_at - seen.last_success > grace_s(seen.nominal_s or fallback))
        state = PROBER_RUNNING if not late else PROBER_FAILING if seen.cycling else PROBER_STOPPED
        states[node] = Prober(state, since, errors)
    return states


def stale_sources(sources: Iterable[str], freshness: Mapping[str, Freshness], at: float) -> dict[str, float | None]:
    """The sources whose data stopped before `at`, each with how long before `at` its last successful
    cycle ended (None when that is not known).

    When a prober stops, node-exporter keeps serving its last textfile: the samples stay fresh but
    the counters go flat, so "did the counters grow in the range" cannot tell. Two signs can:
    - its pair series and its own metrics are both gone at `at` (node-exporter or the node itself
      down: Prometheus marks the series stale at the first failed scrape). Pair series gone while
      its own metrics are scraped, with a recent success (or start-up), is a prober that is starting
      (in HTTP mode they appear with its first cycle) or has nothing to probe: not stale;
    - the last success it reported was already old when Prometheus scraped it (`probers`: stopped
      or failing), whether its pair series are there or not.
    A source without the gauge (an exporter older than it) is taken as fresh while its series last.
    """
    states = probers(freshness, at)
    stale: dict[str, float | None] = {}
    for source in sources:
        seen, prober = freshness.get(source), states.get(source)
        if prober is not None and prober.state in (PROBER_STOPPED, PROBER_FAILING):
            stale[source] = prober.since_success_s
        elif seen is None or (not seen.series and not seen.scraped):
            stale[source] = None
    return stale
