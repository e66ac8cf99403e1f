"""Which cells of the matrix are bad: the one decision that the verdicts and the marked matrices of
the output share (pure)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

from node_ping.diagnose.explain import MIN_CELLS_FOR_NODE
from node_ping.diagnose.matrix import Counts, Matrix, Pair
from node_ping.diagnose.stats import Pooled, above, clamp_background, pooled_lines


@dataclass(frozen=True)
class Thresholds:
    """A cell is bad at or above these: loss as a ratio (0.05 = 5 %), average RTT in ms. A loss must
    also be significantly above the cluster's background (`stats`). `node_loss_ratio`: a node's whole
    row or column, pooled, is bad at or above it when significant and every peer agrees, even with
    each cell below `loss_ratio`; None judges cells only."""

    loss_ratio: float = 0.05
    latency_ms: float = 50.0
    node_loss_ratio: float | None = None

    def bad_loss(self, counts: Counts) -> bool:
        """The pair loses at least the loss that matters (significance aside)."""
        return counts.measured and counts.loss_ratio >= self.loss_ratio

    def slow(self, counts: Counts) -> bool:
        """The pair's replies are too slow on average; a pair with no replies is never slow (it is lost)."""
        avg = counts.rtt_avg_ms
        return avg is not None and avg >= self.latency_ms


@dataclass(frozen=True)
class Judgement:
    """The bad cells of one matrix: `bad_loss` on their own, `lossy` with the cells of the pooled lines
    (a node's row or column bad as a whole) added: what the loss verdicts and the loss matrix use."""

    background: float
    bad_loss: frozenset[Pair]
    lossy: frozenset[Pair]
    slow: frozenset[Pair]
    external_lossy: frozenset[Pair]
    pooled: Mapping[tuple[str, str], Pooled] = field(default_factory=dict)


def judge(matrix: Matrix, thresholds: Thresholds) -> Judgement:
    """Decide, once, which cells are bad."""
    cells = matrix.measured_nodes()
    summed = matrix.summary
    if summed is None:
        median = statistics.median(c.loss_ratio for c in cells.values()) if cells else 0.0
    else:
        median = summed.background  # Prometheus's median over every pair, not just the cells at hand
    base = clamp_background(median, thresholds.loss_ratio)
    bad_loss = frozenset(pair for pair, counts in cells.items()
                         if thresholds.bad_loss(counts) and above(counts, base))
    pooled: dict[tuple[str, str], Pooled] = {}
    if thresholds.node_loss_ratio is not None:
        # Summed in Prometheus, only the lines fetched whole can be pooled, but the test's level is
        # shared by every line there is.
        whole = None if summed is None else set(summed.whole_lines)
        tests = None if summed is None else len(summed.lines)
        lines = pooled_lines(cells, base, median, thresholds.node_loss_ratio, MIN_CELLS_FOR_NODE,
                             only=whole, tests=tests)
        pooled = {(line.direction, line.node): line for line in lines}
    # A pooled line's cells are bad as a whole: `explain` then names its node, not its cells.
    lossy = bad_loss | {pair for line in pooled.values() for pair in line.cells}
    slow = frozenset(pair for pair, counts in cells.items() if thresholds.slow(counts))
    external = frozenset(pair for pair, counts in matrix.measured_external().items() if thresholds.bad_loss(counts))
    return Judgement(base, bad_loss, frozenset(lossy), slow, external, pooled)
