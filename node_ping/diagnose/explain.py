"""Which nodes and links explain a set of bad cells of the matrix (pure).

A node whose row (what it sends) or column (what it receives) is mostly bad is flagged, the worst
first; bad cells no flagged node explains are links; when that story would name too many faults,
the fault is cluster-wide. Loss and latency verdicts are both read from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from node_ping.diagnose.matrix import Pair, natural_key, natural_pair_key

MIN_CELLS_FOR_NODE = 2
"""A node needs at least this many bad cells in its row or column: with one peer left, a node fault
and a link fault look the same, and the link is the smaller claim."""



@dataclass(frozen=True)
class Explanation:
    """Which nodes and pairs explain a set of bad cells."""

    receive: frozenset[str]  # nodes whose column is mostly bad
    send: frozenset[str]  # nodes whose row is mostly bad
    links: tuple[tuple[str, str], ...]  # sorted unordered pairs with bad cells no node explains
    cluster_wide: bool
    # Every line's cells, ("send", node) a row and ("receive", node) a column: built once here so
    # that describing a flagged node costs its own row and column, not a scan of the matrix.
    lines: Mapping[tuple[str, str], Sequence[Pair]] = field(default_factory=dict)
    # Pairs per line when `lines` holds only some of them (a large cluster summed in Prometheus).
    sizes: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def line(self, node: str, direction: str, bad: AbstractSet[Pair]) -> tuple[Sequence[Pair], list[Pair]]:
        """The node's row ("send") or column ("receive"), and the bad cells in it."""
        mine = self.lines.get((direction, node), ())
        return mine, [p for p in mine if p in bad]

    def size(self, node: str, direction: str) -> int:
        """How many measured pairs the node's row ("send") or column ("receive") has."""
        return self.sizes.get((direction, node), len(self.lines.get((direction, node), ())))


def explain(nodes: Sequence[str], measured: Iterable[Pair], bad: AbstractSet[Pair],
            sizes: Mapping[tuple[str, str], int] | None = None) -> Explanation:
    """Greedy: flag the node direction (row or column) with the largest share of bad cells among the
    cells not yet explained, until none is mostly bad; leftovers are links.

    Taking the worst first and then leaving its cells out is what keeps one bad node from making its
    peers look bad too (each peer has one bad cell towards it), and keeps a bad pair elsewhere from
    being blamed on the node. `sizes` gives the pairs per line when `measured` holds only some of
    them: the cells not at hand are good ones, and count only as such.
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
    sizes = sizes or {}
    open_cells = {line: max(sizes.get(line, 0), len(line_cells)) for line, line_cells in members.items()}
    open_bad = {line: sum(cell in bad for cell in line_cells) for line, line_cells in members.items()}
    flagged: set[tuple[str, str]] = set()

    def explained(cell: Pair) -> bool:
        return ("send", cell[0]) in flagged or ("receive", cell[1]) in flagged

    order = {node: index for index, node in enumerate(nodes)}
    while True:
        candidates = [
            (open_bad[line] / open_cells[line], open_bad[line], -order.get(line[1], 0), line == ("send", line[1]), line)
            for line in members
            if line not in flagged and open_bad[line] >= MIN_CELLS_FOR_NODE and open_bad[line] * 2 > open_cells[line]
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
    pairs = max(len(cells), sum(size for (direction, _), size in sizes.items() if direction == "send"))
    cluster_wide = (len(bad) * 2 > pairs and faults * 2 > len(nodes)) or faults > len(nodes)
    return Explanation(frozenset(receive), frozenset(send), links, cluster_wide, members, dict(sizes))
