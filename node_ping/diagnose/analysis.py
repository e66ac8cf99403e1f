"""Name the faulty node, link or cluster from a loss and latency matrix (pure).

The input is, per (source node, destination), how many pings were sent and answered over a time
range and the sum of their round-trip times: what `increase()` of the exporter's counters gives.
The output is a list of verdicts a person can act on. A bad destination column means a node that
cannot receive, a bad source row one that cannot send, both an isolated node; bad cells that no
node explains are link faults; when most pairs are bad and no small set of nodes explains them,
the fault is cluster-wide. Latency gets the same treatment, external targets a simpler one.
A node whose own data stopped before the end of the range (`stale_sources`) is named as stale, and
its row is left out: its numbers describe the past, not the network now. What its own metrics say
(`probers`: gone, stopped, failing or running) decides what a stale or silent node's verdict advises.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Pair = tuple[str, str]
"""(source node, destination): a destination node, or an external target's name."""

HEALTHY = "healthy"
NODE_ISOLATED = "node-isolated"
NODE_RECEIVE = "node-cannot-receive"
NODE_SEND = "node-cannot-send"
LINK = "link"
CLUSTER = "cluster-wide"
LATENCY_NODE = "latency-node"
LATENCY_LINK = "latency-link"
LATENCY_CLUSTER = "latency-cluster-wide"
EXTERNAL_NODE = "external-node"
EXTERNAL_TARGET = "external-target"
EXTERNAL_CLUSTER = "external-cluster-wide"
NODE_SILENT = "node-silent"
NODE_STALE = "node-stale"

KINDS = (HEALTHY, NODE_ISOLATED, NODE_RECEIVE, NODE_SEND, LINK, CLUSTER, LATENCY_NODE, LATENCY_LINK,
         LATENCY_CLUSTER, EXTERNAL_NODE, EXTERNAL_TARGET, EXTERNAL_CLUSTER, NODE_SILENT, NODE_STALE)

# What a node's own metrics (not its pair series) say about its prober at the end of the range.
PROBER_GONE = "gone"  # none scraped: the node, its node-ping pod or its node-exporter down, or not scraped
PROBER_STOPPED = "stopped"  # still served but standing still: a stopped prober's textfile
PROBER_FAILING = "failing"  # it cycles and is scraped, but no cycle has succeeded within the grace
PROBER_RUNNING = "running"  # it cycles and succeeds (or has just started)
PROBER_STATES = (PROBER_GONE, PROBER_STOPPED, PROBER_FAILING, PROBER_RUNNING)

# A node verdict needs at least this many bad cells in its row or column: with one peer left, a
# node fault and a link fault look the same, and the link is the smaller claim.
_MIN_CELLS_FOR_NODE = 2

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
    rtt_sum_ms: float = 0.0

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
        """None when nothing came back: a dead link must never read as a fast one."""
        return self.rtt_sum_ms / self.received if self.received > 0 else None


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

    def prober(self, node: str) -> Prober:
        """What `node`'s own metrics say about its prober; gone when Prometheus has none."""
        return self.probers.get(node) or Prober(PROBER_GONE)

    def node_names(self) -> list[str]:
        """Nodes in a pair that sent pings in the range, stale sources included (verdicts name them).
        A pair that sent nothing in the range (an exporter that stopped cycling before it, a node
        gone) says nothing about the nodes, so it neither counts nor dilutes."""
        return sorted({name for pair in _sent(self.nodes) if pair[0] != pair[1] for name in pair}, key=natural_key)

    def external_names(self) -> list[str]:
        """External targets some node measures now (see measured_external)."""
        return sorted({target for _, target in self.measured_external()}, key=natural_key)

    def sources(self) -> list[str]:
        """Nodes that sent pings in the range, to peers or to external targets, stale or not."""
        pairs = [pair for pair in _sent(self.nodes) if pair[0] != pair[1]] + list(_sent(self.external))
        return sorted({source for source, _ in pairs}, key=natural_key)

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
    last_success: float | None = None  # node_ping_last_success_timestamp_seconds, unix time
    scraped_at: float | None = None  # when Prometheus scraped that value
    nominal_s: float | None = None  # node_ping_cycle_nominal_seconds: absent until a first cycle ends
    # Whether node_ping_cycles_total moved within the grace before the end (or appeared within it): a
    # prober that runs, not a textfile left behind. None: no such counter at the end of the range.
    cycling: bool | None = None
    # node_ping_errors_total by kind: how much each kind rose over the range (only those that did).
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


@dataclass(frozen=True)
class Thresholds:
    """A cell is bad at or above these: loss as a ratio (0.05 = 5 %), average RTT in ms."""

    loss_ratio: float = 0.05
    latency_ms: float = 50.0


@dataclass(frozen=True)
class Evidence:
    """One measured cell behind a verdict."""

    source: str
    destination: str
    loss_percent: float
    rtt_avg_ms: float | None


@dataclass(frozen=True)
class Verdict:
    """One fault (or the single `healthy` verdict) as a person reads it and a script checks it.

    `kind` is one of KINDS; `nodes` are the nodes it blames (every node for the cluster-wide kinds
    and for healthy); `targets` the external targets, for the external kinds; `message` is the
    sentence to read; `evidence` the measured cells behind it; `summary` the numbers in the message
    under stable keys (which keys depends on the kind).
    """

    kind: str
    nodes: tuple[str, ...]
    message: str
    evidence: tuple[Evidence, ...] = ()
    targets: tuple[str, ...] = ()  # external targets, for the external kinds
    summary: Mapping[str, float] = field(default_factory=dict)

    @property
    def is_fault(self) -> bool:
        return self.kind != HEALTHY


@dataclass(frozen=True)
class _Explanation:
    """Which nodes and pairs explain a set of bad cells."""

    receive: frozenset[str]  # nodes whose column is mostly bad
    send: frozenset[str]  # nodes whose row is mostly bad
    links: tuple[tuple[str, str], ...]  # sorted unordered pairs with bad cells no node explains
    cluster_wide: bool
    # Every line's cells, ("send", node) a row and ("receive", node) a column: built once here so
    # that describing a flagged node costs its own row and column, not a scan of the matrix.
    lines: Mapping[tuple[str, str], Sequence[Pair]] = field(default_factory=dict)

    def line(self, node: str, direction: str, bad: set[Pair]) -> tuple[Sequence[Pair], list[Pair]]:
        """The node's row ("send") or column ("receive"), and the bad cells in it."""
        mine = self.lines.get((direction, node), ())
        return mine, [p for p in mine if p in bad]


def _explain(nodes: Sequence[str], measured: Iterable[Pair], bad: set[Pair]) -> _Explanation:
    """Greedy: flag the node direction (row or column) with the largest share of bad cells among the
    cells not yet explained, until none is mostly bad; leftovers are links.

    Taking the worst first and then leaving its cells out is what keeps one bad node from making its
    peers look bad too (each peer has one bad cell towards it), and keeps a bad pair elsewhere from
    being blamed on the node.
    """
    cells = set(measured)
    bad = bad & cells
    # Per line (("send", node) is a row, ("receive", node) a column): its cells, and how many of
    # them are still unexplained, and bad among those. Kept up to date as nodes are flagged, so
    # each round costs one look at every line rather than at every cell.
    members: dict[tuple[str, str], list[Pair]] = {}
    for cell in cells:
        members.setdefault(("send", cell[0]), []).append(cell)
        members.setdefault(("receive", cell[1]), []).append(cell)
    open_cells = {line: len(line_cells) for line, line_cells in members.items()}
    open_bad = {line: sum(cell in bad for cell in line_cells) for line, line_cells in members.items()}
    flagged: set[tuple[str, str]] = set()

    def explained(cell: Pair) -> bool:
        return ("send", cell[0]) in flagged or ("receive", cell[1]) in flagged

    order = {node: index for index, node in enumerate(nodes)}
    while True:
        candidates = [
            (open_bad[line] / open_cells[line], open_bad[line], -order.get(line[1], 0), line == ("send", line[1]), line)
            for line in members
            if line not in flagged and open_bad[line] >= _MIN_CELLS_FOR_NODE and open_bad[line] * 2 > open_cells[line]
        ]
        if not candidates:
            break
        # Worst share first; ties to more bad cells, then to the first node by name, rows before columns.
        line = max(candidates)[-1]
        for cell in members[line]:
            if explained(cell):
                continue
            other = ("receive", cell[1]) if line[0] == "send" else ("send", cell[0])
            open_cells[other] -= 1
            open_bad[other] -= cell in bad
        flagged.add(line)

    send = {node for direction, node in flagged if direction == "send"}
    receive = {node for direction, node in flagged if direction == "receive"}
    residual = {(min(cell, key=natural_key), max(cell, key=natural_key)) for cell in bad if not explained(cell)}
    links = tuple(sorted(residual, key=natural_pair_key))
    faults = len(send | receive) + len(links)
    # "Most pairs bad" alone is not enough: two isolated nodes out of five make 70 % of the pairs
    # bad, and naming the two nodes is the better answer. Cluster-wide is for when the per-node and
    # per-link story would name more faults than half the nodes (with most pairs bad), or more
    # faults than there are nodes (whatever the share): no list that long helps anyone.
    cluster_wide = (len(bad) * 2 > len(cells) and faults * 2 > len(nodes)) or faults > len(nodes)
    return _Explanation(frozenset(receive), frozenset(send), links, cluster_wide, members)


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def _span(values: Sequence[float], fmt: str, unit: str) -> str:
    low, high = min(values), max(values)
    if f"{low:{fmt}}" == f"{high:{fmt}}":
        return f"{low:{fmt}}{unit}"
    return f"{low:{fmt}}-{high:{fmt}}{unit}"


def _ago(seconds: float) -> str:
    """30s, 10m, 2h5m: whole units, as a person reads a time span."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def _errors_hint(node: str, prober: Prober) -> str:
    """Where to look for why a prober fails: its error counters, with the kinds that rose, and its log."""
    rose = ", ".join(f"{kind} +{round(count)}" for kind, count in sorted(prober.errors.items()) if round(count) > 0)
    counters = f'node_ping_errors_total{{source_node="{node}"}}'
    return f"{counters} ({rose} in the range) and its log" if rose else f"{counters} and its log"


def _since_summary(prober: Prober) -> dict[str, float]:
    """stopped_seconds_before_end for a prober whose last success is too old, as for stale nodes."""
    if prober.state in (PROBER_STOPPED, PROBER_FAILING) and prober.since_success_s is not None:
        return {"stopped_seconds_before_end": round(prober.since_success_s, 3)}
    return {}


def _loss_span(ratios: Sequence[float]) -> str:
    return _span([r * 100 for r in ratios], ".1f", "%")


def _ms_span(values: Sequence[float]) -> str:
    return _span(values, ".1f", " ms")


def _evidence(cells: Mapping[Pair, Counts], pairs: Iterable[Pair]) -> tuple[Evidence, ...]:
    out = []
    for source, destination in sorted(pairs, key=natural_pair_key):
        counts = cells[(source, destination)]
        avg = counts.rtt_avg_ms
        out.append(Evidence(source, destination, round(counts.loss_ratio * 100, 3),
                            None if avg is None else round(avg, 3)))
    return tuple(out)


class _Analysis:
    """One pass over one matrix; methods return the verdicts of one kind of fault."""

    def __init__(self, matrix: Matrix, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.stale = matrix.stale
        self.prober = matrix.prober
        self.cells = matrix.measured_nodes()
        self.nodes = matrix.node_names()
        self.external = matrix.measured_external()
        self.targets = matrix.external_names()
        self.bad_loss = {pair for pair, c in self.cells.items() if c.loss_ratio >= thresholds.loss_ratio}
        self.slow = {pair for pair, c in self.cells.items()
                     if (avg := c.rtt_avg_ms) is not None and avg >= thresholds.latency_ms}

    def loss(self) -> list[Verdict]:
        found = _explain(self.nodes, self.cells, self.bad_loss)
        if found.cluster_wide:
            ratios = [self.cells[p].loss_ratio for p in self.bad_loss]
            return [Verdict(
                CLUSTER, tuple(self.nodes),
                f"cluster-wide: {len(self.bad_loss)} of {len(self.cells)} pairs lose packets "
                f"(median {_pct(statistics.median(ratios))}, worst {_pct(max(ratios))}): "
                "look at the network as a whole, not at single nodes",
                _evidence(self.cells, self.bad_loss),
                summary={"bad_pairs": len(self.bad_loss), "pairs": len(self.cells),
                         "median_loss_percent": round(statistics.median(ratios) * 100, 3)},
            )]
        verdicts: list[Verdict] = []
        for node in sorted(found.send | found.receive, key=natural_key):
            verdicts.append(self._node_loss(node, found))
        for a, b in found.links:
            verdicts.append(self._link_loss(a, b))
        return verdicts

    def _node_loss(self, node: str, found: _Explanation) -> Verdict:
        row, row_bad = found.line(node, "send", self.bad_loss)
        column, column_bad = found.line(node, "receive", self.bad_loss)
        sends, receives = node in found.send, node in found.receive
        bad = (row_bad if sends else []) + (column_bad if receives else [])
        span = _loss_span([self.cells[p].loss_ratio for p in bad])
        if sends and receives:
            kind = NODE_ISOLATED
            message = (f"node {node} is isolated: it cannot send to or receive from most peers "
                       f"({len(row_bad)} of {len(row)} outgoing and {len(column_bad)} of {len(column)} "
                       f"incoming pairs lose {span})")
        elif receives:
            kind = NODE_RECEIVE
            message = (f"node {node} cannot receive from most peers: pings to it are lost from "
                       f"{len(column_bad)} of {len(column)} peers ({span})")
        else:
            kind = NODE_SEND
            message = f"node {node} cannot send: its pings to {len(row_bad)} of {len(row)} peers are lost ({span})"
        summary: dict[str, float] = {}
        if sends:
            summary |= {"send_bad_peers": len(row_bad), "send_peers": len(row)}
        if receives:
            summary |= {"receive_bad_peers": len(column_bad), "receive_peers": len(column)}
        summary["worst_loss_percent"] = round(max(self.cells[p].loss_ratio for p in bad) * 100, 3)
        return Verdict(kind, (node,), message, _evidence(self.cells, bad), summary=summary)

    def _directions(self, a: str, b: str, value: str) -> tuple[str, list[Pair]]:
        """Both directions of a pair in words, the worse first ("pings from b lose 40.0%, from a 0.0%"),
        each name once since real node names are long; and the measured cells among the two."""
        words: list[str] = []
        measured: list[Pair] = []
        verb = "lose" if value == "loss" else "average"

        def badness(pair: Pair) -> float:
            counts = self.cells.get(pair)
            if counts is None:
                return -1.0
            return counts.loss_ratio if value == "loss" else (counts.rtt_avg_ms or 0.0)

        for pair in sorted(((a, b), (b, a)), key=badness, reverse=True):
            lead = f"pings from {pair[0]} {verb}" if not words else f"from {pair[0]}"
            counts = self.cells.get(pair)
            if counts is None:
                words.append(f"{lead} not measured" if words else f"pings from {pair[0]} not measured")
                continue
            measured.append(pair)
            avg = counts.rtt_avg_ms
            if value == "loss":
                words.append(f"{lead} {_pct(counts.loss_ratio)}")
            else:
                words.append(f"{lead} " + ("no replies" if avg is None else f"{avg:.1f} ms"))
        return ", ".join(words), measured

    def _link_loss(self, a: str, b: str) -> Verdict:
        words, measured = self._directions(a, b, "loss")
        return Verdict(LINK, (a, b), f"link {a}<->{b} only: {words}", _evidence(self.cells, measured),
                       summary={"worst_loss_percent": round(max(self.cells[p].loss_ratio for p in measured) * 100, 3)})

    def latency(self) -> list[Verdict]:
        # A lost pair has no RTT and is already a loss verdict; latency looks at what came back.
        timed = [p for p, c in self.cells.items() if c.rtt_avg_ms is not None]
        found = _explain(self.nodes, timed, self.slow)
        averages = {p: self.cells[p].rtt_avg_ms or 0.0 for p in self.slow}
        if found.cluster_wide:
            return [Verdict(
                LATENCY_CLUSTER, tuple(self.nodes),
                f"high latency cluster-wide: {len(self.slow)} of {len(timed)} pairs average "
                f"{self.thresholds.latency_ms:g} ms or more (median {statistics.median(averages.values()):.1f} ms)",
                _evidence(self.cells, self.slow),
                summary={"slow_pairs": len(self.slow), "pairs": len(timed),
                         "median_rtt_ms": round(statistics.median(averages.values()), 3)},
            )]
        verdicts = []
        for node in sorted(found.send | found.receive, key=natural_key):
            # RTT is a round trip, so a slow row and a slow column mean the same: a slow node.
            row, row_slow = found.line(node, "send", self.slow)
            column, column_slow = found.line(node, "receive", self.slow)
            slow = (row_slow if node in found.send else []) + (column_slow if node in found.receive else [])
            considered = (len(row) if node in found.send else 0) + (len(column) if node in found.receive else 0)
            verdicts.append(Verdict(
                LATENCY_NODE, (node,),
                f"high latency at node {node}: {len(slow)} of {considered} pairs with its peers average "
                f"{_ms_span([averages[p] for p in slow])}",
                _evidence(self.cells, slow),
                summary={"slow_pairs": len(slow), "pairs": considered,
                         "worst_rtt_ms": round(max(averages[p] for p in slow), 3)},
            ))
        for a, b in found.links:
            words, measured = self._directions(a, b, "rtt")
            verdicts.append(Verdict(
                LATENCY_LINK, (a, b), f"high latency on link {a}<->{b} only: {words}",
                _evidence(self.cells, measured),
                summary={"worst_rtt_ms": round(max(averages[p] for p in measured if p in averages), 3)},
            ))
        return verdicts

    def external_loss(self) -> list[Verdict]:
        bad = {p for p, c in self.external.items() if c.loss_ratio >= self.thresholds.loss_ratio}
        by_target: dict[str, list[Pair]] = {}
        for pair in self.external:
            by_target.setdefault(pair[1], []).append(pair)
        down = []  # targets lost from most of the nodes that probe them
        for target in self.targets:
            pairs = by_target.get(target, [])
            n_bad = sum(p in bad for p in pairs)
            if n_bad >= _MIN_CELLS_FOR_NODE and n_bad * 2 > len(pairs):
                down.append(target)
        verdicts = []
        if len(down) >= _MIN_CELLS_FOR_NODE and len(down) * 2 > len(self.targets):
            lost = [p for p in bad if p[1] in down]
            verdicts.append(Verdict(
                EXTERNAL_CLUSTER, tuple(sorted({p[0] for p in lost}, key=natural_key)),
                f"external connectivity lost cluster-wide: {len(down)} of {len(self.targets)} external targets "
                f"are lost from most nodes ({_loss_span([self.external[p].loss_ratio for p in lost])}): "
                "check the cluster's way out (NAT gateway, egress firewall, DNS of the targets)",
                _evidence(self.external, lost), targets=tuple(down),
                summary={"lost_targets": len(down), "targets": len(self.targets)},
            ))
        else:
            for target in down:
                pairs = by_target[target]
                lost = [p for p in pairs if p in bad]
                verdicts.append(Verdict(
                    EXTERNAL_TARGET, tuple(sorted((p[0] for p in lost), key=natural_key)),
                    f"external target {target} is lost from most nodes: {len(lost)} of {len(pairs)} nodes lose "
                    f"{_loss_span([self.external[p].loss_ratio for p in lost])} of the pings to it",
                    _evidence(self.external, lost), targets=(target,),
                    summary={"bad_nodes": len(lost), "nodes": len(pairs)},
                ))
        by_node: dict[str, list[Pair]] = {}
        for pair in sorted(bad, key=natural_pair_key):
            if pair[1] not in down:
                by_node.setdefault(pair[0], []).append(pair)
        for node, lost in by_node.items():
            probed = [p for p in self.external if p[0] == node]
            words = ", ".join(f"{t} {_pct(self.external[(node, t)].loss_ratio)}" for _, t in lost)
            if len(lost) * 2 > len(probed):
                message = f"external connectivity lost on node {node}: {words} loss"
            else:
                message = f"node {node} loses packets to some external targets: {words} loss"
            verdicts.append(Verdict(
                EXTERNAL_NODE, (node,), message, _evidence(self.external, lost),
                targets=tuple(t for _, t in lost), summary={"bad_targets": len(lost), "targets": len(probed)},
            ))
        return verdicts

    def silent(self) -> list[Verdict]:
        """Nodes others ping that report no ping data themselves; what their own metrics say decides
        whether their exporter is not there at all, or there but not producing data."""
        sources = {s for s, _ in self.cells} | {s for s, _ in self.external}
        destinations = {d for _, d in self.cells}
        verdicts = []
        for node in sorted(destinations - sources - set(self.stale), key=natural_key):
            prober = self.prober(node)
            runs = f"node {node}'s prober runs and is scraped but has produced no ping data (other nodes ping it)"
            if prober.state == PROBER_FAILING:
                message = (f"{runs}: none of its cycles succeeded in the {_ago(prober.since_success_s or 0.0)} "
                           f"before the end of the range; see {_errors_hint(node, prober)}")
            elif prober.state == PROBER_RUNNING:
                message = f"{runs}: it is starting, or has nothing to probe; see {_errors_hint(node, prober)}"
            elif prober.state == PROBER_STOPPED:
                message = (f"node {node} reports no ping data of its own (other nodes ping it), and its node-ping "
                           f"metrics stopped changing {_ago(prober.since_success_s or 0.0)} before the end of "
                           "the range (its last successful cycle or its start-up): check its node-ping pod and "
                           "its logs")
            else:
                message = (f"node {node} reports no node-ping data at all (other nodes ping it): check that its "
                           "node-ping pod runs and that Prometheus scrapes its node-exporter")
            verdicts.append(Verdict(NODE_SILENT, (node,), message, summary=_since_summary(prober)))
        return verdicts

    def stale_nodes(self) -> list[Verdict]:
        """Nodes whose own data stopped before the end of the range; their rows were left out."""
        verdicts = []
        for node in sorted(self.stale, key=natural_key):
            ago, prober = self.stale[node], self.prober(node)
            if ago is None:
                message = (f"node {node} stopped reporting before the end of the range: its node-ping series end "
                           "early (the node, its node-ping pod or its node-exporter is down, or no longer "
                           "scraped); its row is left out")
            elif prober.state == PROBER_FAILING:
                message = (f"node {node}'s prober runs and is scraped, but none of its cycles succeeded in the "
                           f"{_ago(ago)} before the end of the range: see {_errors_hint(node, prober)}; its row "
                           "is left out")
            else:
                message = (f"node {node} stopped reporting {_ago(ago)} before the end of the range (its last "
                           "successful node-ping cycle), while its old numbers are still scraped: check its "
                           "node-ping pod and its logs; its row is left out")
            summary = {} if ago is None else {"stopped_seconds_before_end": round(ago, 3)}
            verdicts.append(Verdict(NODE_STALE, (node,), message, summary=summary))
        return verdicts

    def healthy(self) -> Verdict:
        worst = max(self.cells.items(), key=lambda item: item[1].loss_ratio, default=None)
        slowest = max(((p, c.rtt_avg_ms) for p, c in self.cells.items() if c.rtt_avg_ms is not None),
                      key=lambda item: item[1], default=None)
        parts = [f"healthy: {len(self.nodes)} nodes ({len(self.cells)} pairs)"]
        if self.targets:
            parts.append(f" and {len(self.targets)} external target" + ("s" if len(self.targets) > 1 else ""))
        parts.append(f" below {_pct(self.thresholds.loss_ratio)} loss and "
                     f"{self.thresholds.latency_ms:g} ms average RTT")
        summary: dict[str, float] = {"pairs": len(self.cells)}
        if worst is not None:
            # With nothing lost anywhere, naming one pair as the worst would point at a random pair.
            where = f" ({worst[0][0]}->{worst[0][1]})" if worst[1].loss_ratio > 0 else ""
            parts.append(f"; worst loss {_pct(worst[1].loss_ratio)}{where}")
            summary["worst_loss_percent"] = round(worst[1].loss_ratio * 100, 3)
        if slowest is not None:
            parts.append(f", highest average RTT {slowest[1]:.1f} ms ({slowest[0][0]}->{slowest[0][1]})")
            summary["worst_rtt_ms"] = round(slowest[1], 3)
        return Verdict(HEALTHY, tuple(self.nodes), "".join(parts), summary=summary)


def diagnose(matrix: Matrix, thresholds: Thresholds | None = None) -> list[Verdict]:
    """Every independent fault the matrix shows, or a single `healthy` verdict.

    Order: loss (cluster, nodes, links), latency, external targets, silent nodes, stale nodes.
    """
    analysis = _Analysis(matrix, thresholds or Thresholds())
    verdicts = (analysis.loss() + analysis.latency() + analysis.external_loss() + analysis.silent()
                + analysis.stale_nodes())
    return verdicts or [analysis.healthy()]
