"""Whether a loss is real or chance: the cluster's background loss and a one-sided binomial test (pure).

A cell's pings are Bernoulli trials: under "this pair loses no more than the cluster usually does"
(the background), losing `lost` of `sent` or more has the probability `upper_tail`. Small samples
therefore prove little (2 of 30 lost is 6.7 % but quite likely at 1 % background), and many pings
prove a lot (2 % of 18,000 pings against 1 % is decisive).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from node_ping.diagnose.matrix import Counts, Pair

ALPHA = 0.001
"""A loss counts as above the background when chance would give it less than once in a thousand."""
BACKGROUND_FLOOR = 0.01
"""The background is at least 1 %: a cluster that lost nothing in the range does not make every lost
ping a finding."""


_NEGLIGIBLE_LOG = -700.0  # exp() of it is about 1e-304: nothing compared with any test level


def background(cells: Sequence[Counts], loss_ratio: float) -> float:
    """What a pair is taken to lose by chance: the median loss of all cells, at least
    BACKGROUND_FLOOR, at most half of `loss_ratio` (so that loss everywhere does not hide itself)."""
    return clamp_background(statistics.median([c.loss_ratio for c in cells]) if cells else 0.0, loss_ratio)


def clamp_background(median: float, loss_ratio: float) -> float:
    """The median pair loss made a background: see `background`."""
    return min(max(median, BACKGROUND_FLOOR), loss_ratio / 2)


def upper_tail(lost: int, sent: int, p: float) -> float:
    """P(X >= lost) for X ~ Binomial(sent, p); 1.0 when `lost` is not above the mean.

    Summed term by term from `lost` upwards in logs: above the mean each term is smaller than the
    one before, so the sum stops once the rest cannot matter, after a few standard deviations.
    """
    if lost <= sent * p or sent <= 0:
        return 1.0
    if p <= 0.0 or lost > sent:  # more lost than sent: extrapolated counters at their worst
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)

    def log_term(k: int) -> float:
        return math.lgamma(sent + 1) - math.lgamma(k + 1) - math.lgamma(sent - k + 1) + k * log_p + (sent - k) * log_q

    first = log_term(lost)
    if first < _NEGLIGIBLE_LOG:
        # Above the mean the terms shrink by a factor of (n-k)p/((k+1)q) < 1 each: with the first this
        # small the sum is too, and summing hundreds of terms that underflow to 0 would only cost time.
        return math.exp(first)
    total = 0.0
    for k in range(lost, sent + 1):
        term = math.exp(log_term(k))
        total += term
        if term < total * 1e-12:
            break
    return min(1.0, total)


def above(counts: Counts, p: float, alpha: float = ALPHA) -> bool:
    """The cell's loss is significantly above `p`. Counts are extrapolated floats: rounded."""
    sent = round(counts.sent)
    return upper_tail(round(counts.sent - counts.received), sent, p) < alpha


@dataclass(frozen=True)
class Pooled:
    """A whole row ("send") or column ("receive") of a node, its cells summed."""

    node: str
    direction: str
    cells: tuple[Pair, ...]
    sent: float
    lost: float

    @property
    def loss_ratio(self) -> float:
        return min(1.0, max(0.0, self.lost / self.sent)) if self.sent > 0 else 0.0


def pooled_lines(cells: Mapping[Pair, Counts], base: float, median: float, size: float,
                 min_cells: int, *, only: AbstractSet[tuple[str, str]] | None = None,
                 tests: int | None = None) -> list[Pooled]:
    """Rows and columns whose pooled loss is at least `size` and significantly above `base`, with every
    peer agreeing (each cell loses more than the `median` cell) and at least `min_cells` peers.

    The test is run once per line, so its level is divided by their number (Bonferroni): on a
    healthy cluster of 100 nodes, 200 lines must not make one of them a finding by chance. `only`
    limits the lines to those whose every cell is at hand, `tests` gives the number of lines there are
    when the cells are not all at hand.
    """
    lines: dict[tuple[str, str], list[Pair]] = {}
    for pair in cells:
        lines.setdefault(("send", pair[0]), []).append(pair)
        lines.setdefault(("receive", pair[1]), []).append(pair)
    alpha = ALPHA / max(1, tests or len(lines))
    found = []
    for (direction, node), members in lines.items():
        if only is not None and (direction, node) not in only:
            continue
        if len(members) < min_cells or not all(cells[p].loss_ratio > median for p in members):
            continue
        sent = sum(cells[p].sent for p in members)
        lost = sum(cells[p].sent - cells[p].received for p in members)
        line = Pooled(node, direction, tuple(members), sent, lost)
        if line.loss_ratio >= size and above(Counts(sent, sent - lost), base, alpha):
            found.append(line)
    return found
