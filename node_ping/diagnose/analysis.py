"""Name the faulty node, link or cluster from a loss and latency matrix (pure).

A bad column means a node that cannot receive, a bad row one that cannot send, both an isolated
node; bad cells no node explains are links; too many faults at once are cluster-wide (`explain`).
Latency gets the same treatment, external targets a simpler one; stale and silent nodes are named
with what their own metrics say about their prober. Which cells are bad is decided once, in
`judge`, for the verdicts and the rendered matrices alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

from node_ping.diagnose import absent, grouped, paths
from node_ping.diagnose.explain import MIN_CELLS_FOR_NODE, Explanation, explain
from node_ping.diagnose.groups import CUT_LOSS, group_faults
from node_ping.diagnose.judge import Thresholds, judge
from node_ping.diagnose.matrix import (
    Counts,
    Matrix,
    Pair,
    natural_key,
    natural_pair_key,
)
from node_ping.diagnose.stats import pooled_lines
from node_ping.diagnose.verdicts import (
    CLUSTER,
    EXTERNAL_CLUSTER,
    EXTERNAL_NODE,
    EXTERNAL_TARGET,
    HEALTHY,
    KINDS,
    LATENCY_CLUSTER,
    LATENCY_LINK,
    LATENCY_NODE,
    LINK,
    NODE_ISOLATED,
    NODE_LOSSY,
    NODE_RECEIVE,
    NODE_SEND,
    NODE_SILENT,
    NODE_STALE,
    Evidence,
    Verdict,
)
from node_ping.diagnose.wording import loss_span, ms_span, pct

__all__ = [  # the verdict types and kinds are read from here too
    "CLUSTER", "EXTERNAL_CLUSTER", "EXTERNAL_NODE", "EXTERNAL_TARGET", "HEALTHY", "KINDS", "LATENCY_CLUSTER",
    "LATENCY_LINK", "LATENCY_NODE", "LINK", "NODE_ISOLATED", "NODE_LOSSY", "NODE_RECEIVE", "NODE_SEND",
    "NODE_SILENT", "NODE_STALE", "Evidence", "Thresholds", "Verdict", "diagnose"]


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
        judged = judge(matrix, thresholds)
        self.background, self.pooled = judged.background, judged.pooled
        self.bad_loss, self.lossy, self.slow = judged.bad_loss, judged.lossy, judged.slow
        self.external_lossy = judged.external_lossy
        self.host_lossy = judged.lossy  # before the group verdicts take their cells
        self.paths = matrix.paths
        self.places = matrix.places
        self.summary = matrix.summary
        # Pairs per line: counted from the cells, or summed in Prometheus for a large cluster.
        self.sizes = {} if self.summary is None else {
            key: line.pairs for key, line in self.summary.lines.items() if key[1] not in self.stale}
        self.pairs = len(self.cells) if self.summary is None else max(
            len(self.cells), sum(size for (direction, _), size in self.sizes.items() if direction == "send"))

    def groups(self) -> list[Verdict]:
        """Faults of whole zones, racks or sides; their cells are left to no other loss verdict."""
        # Summed in Prometheus, a full mesh still tells its sides: every pair there is measured.
        full_mesh = self.summary is not None and all(
            size == len(self.nodes) - 1 for (direction, _), size in self.sizes.items() if direction == "send")
        faults = group_faults(self.nodes, self.places, self.cells, self.lossy, complete=self.summary is None,
                              full_mesh=full_mesh, blocks=None if self.summary is None else self.summary.blocks)
        explained = frozenset(cell for fault in faults for cell in fault.cells)
        if explained and self.pooled:
            # Rows and columns pooled again without the group's cells: a node is not lossy for the
            # share of its peers that sit behind a cut.
            rest = {pair: counts for pair, counts in self.cells.items() if pair not in explained}
            median = statistics.median(c.loss_ratio for c in rest.values()) if rest else 0.0
            size = self.thresholds.node_loss_ratio or 1.0
            lines = pooled_lines(rest, self.background, median, size, MIN_CELLS_FOR_NODE)
            self.pooled = {(line.direction, line.node): line for line in lines}
        self.bad_loss = self.bad_loss - explained
        self.lossy = self.bad_loss | {pair for line in self.pooled.values() for pair in line.cells} - explained
        return [Verdict(grouped.kind_of(fault), fault.blamed_nodes, grouped.message(fault),
                        grouped.evidence(fault, self.cells), summary=grouped.summary(fault), groups=fault.groups)
                for fault in faults]

    def loss(self) -> list[Verdict]:
        """Group faults first, then nodes and links (or cluster-wide) for the bad cells they leave."""
        verdicts = self.groups()
        found = explain(self.nodes, self.cells, self.lossy, self.sizes)
        if found.cluster_wide:
            ratios = [self.cells[p].loss_ratio for p in self.bad_loss] or [1.0]
            return [*verdicts, Verdict(
                CLUSTER, tuple(self.nodes),
                f"cluster-wide: {len(self.bad_loss)} of {self.pairs} pairs lose packets "
                f"(median {pct(statistics.median(ratios))}, worst {pct(max(ratios))}): "
                "look at the network as a whole, not at single nodes",
                _evidence(self.cells, self.bad_loss),
                summary={"bad_pairs": len(self.bad_loss), "pairs": self.pairs,
                         "median_loss_percent": round(statistics.median(ratios) * 100, 3)},
            )]
        for node in sorted(found.send | found.receive, key=natural_key):
            verdicts.append(self._node_loss(node, found))
        for a, b in found.links:
            verdicts.append(self._link_loss(a, b))
        return verdicts

    def _own(self, node: str, found: Explanation, bad: list[Pair]) -> list[Pair]:
        """The cells of `node`'s verdict that no other flagged node explains (a peer that cannot send
        or receive at all would otherwise stretch its loss range to 100 %)."""
        own = [p for p in bad if not (p[0] != node and p[0] in found.send)
               and not (p[1] != node and p[1] in found.receive)]
        return own or bad

    def _pooled_loss(self, node: str, found: Explanation) -> Verdict | None:
        """A node flagged by its pooled row or column, not by a majority of bad cells: its pooled loss
        and the evidence (peers, pings), without the cells other verdicts explain."""
        direction = "receive" if node in found.receive else "send"
        line = self.pooled.get((direction, node))
        _, cell_bad = found.line(node, direction, self.bad_loss)
        peers = found.size(node, direction)
        if line is None or len(cell_bad) * 2 > peers or (node in found.send and node in found.receive):
            return None
        own = self._own(node, found, list(line.cells))
        sent = sum(self.cells[p].sent for p in own)
        lost = sum(self.cells[p].sent - self.cells[p].received for p in own)
        ratio = lost / sent if sent > 0 else 0.0
        evidence = (f"{len(own)} of {peers} peers agree, {round(lost):,} of {round(sent):,} pings lost, "
                    f"against a background of {pct(self.background)}")
        if direction == "receive":
            kind, message = NODE_RECEIVE, f"node {node} loses {pct(ratio)} of the pings sent to it ({evidence})"
        else:
            kind, message = NODE_SEND, f"node {node} loses {pct(ratio)} of the pings it sends ({evidence})"
        summary = {f"{direction}_bad_peers": len(own), f"{direction}_peers": peers,
                   "pooled_loss_percent": round(ratio * 100, 3), "pooled_sent": round(sent),
                   "pooled_lost": round(lost), "background_loss_percent": round(self.background * 100, 3),
                   "worst_loss_percent": round(max(self.cells[p].loss_ratio for p in own) * 100, 3)}
        return Verdict(kind, (node,), message, _evidence(self.cells, own), summary=summary)

    def _node_loss(self, node: str, found: Explanation) -> Verdict:
        pooled = self._pooled_loss(node, found)
        if pooled is not None:
            return pooled
        _, row_bad = found.line(node, "send", self.lossy)
        _, column_bad = found.line(node, "receive", self.lossy)
        row, column = found.size(node, "send"), found.size(node, "receive")
        sends, receives = node in found.send, node in found.receive
        bad = self._own(node, found, (row_bad if sends else []) + (column_bad if receives else []))
        span = loss_span([self.cells[p].loss_ratio for p in bad])
        if sends and receives and statistics.median(self.cells[p].loss_ratio for p in bad) >= CUT_LOSS:
            kind = NODE_ISOLATED
            message = (f"node {node} is isolated: it cannot send to or receive from most peers "
                       f"({len(row_bad)} of {row} outgoing and {len(column_bad)} of {column} "
                       f"incoming pairs lose {span})")
        elif sends and receives:
            kind = NODE_LOSSY
            message = (f"node {node} loses {span} of its pings to and from most peers ({len(row_bad)} of "
                       f"{row} outgoing and {len(column_bad)} of {column} incoming pairs): "
                       "look at its network interface, cable or switch port")
        elif receives:
            kind = NODE_RECEIVE
            message = (f"node {node} cannot receive from most peers: pings to it are lost from "
                       f"{len(column_bad)} of {column} peers ({span})")
        else:
            kind = NODE_SEND
            message = f"node {node} cannot send: its pings to {len(row_bad)} of {row} peers are lost ({span})"
        summary: dict[str, float] = {}
        if sends:
            summary |= {"send_bad_peers": len(row_bad), "send_peers": row}
        if receives:
            summary |= {"receive_bad_peers": len(column_bad), "receive_peers": column}
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
                words.append(f"{lead} {pct(counts.loss_ratio)}")
            else:
                words.append(f"{lead} " + ("no replies" if avg is None else f"{avg:.1f} ms"))
        return ", ".join(words), measured

    def _link_loss(self, a: str, b: str) -> Verdict:
        words, measured = self._directions(a, b, "loss")
        return Verdict(LINK, (a, b), f"link {a}<->{b} only: {words}", _evidence(self.cells, measured),
                       summary={"worst_loss_percent": round(max(self.cells[p].loss_ratio for p in measured) * 100, 3)})

    def other_paths(self) -> list[Verdict]:
        """The MTU probe's and the pod network's faults, where the small host pings pass."""
        return [verdict for path in (paths.MTU, paths.POD) if path in self.paths
                for verdict in paths.path_verdicts(path, self.paths[path], self.nodes, self.host_lossy,
                                                   loss_ratio=self.thresholds.loss_ratio, background=self.background)]

    def latency(self) -> list[Verdict]:
        # A lost pair has no RTT and is already a loss verdict; latency looks at what came back.
        timed = [p for p, c in self.cells.items() if c.rtt_avg_ms is not None]
        found = explain(self.nodes, timed, self.slow, self.sizes)
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
            _, row_slow = found.line(node, "send", self.slow)
            _, column_slow = found.line(node, "receive", self.slow)
            slow = (row_slow if node in found.send else []) + (column_slow if node in found.receive else [])
            considered = ((found.size(node, "send") if node in found.send else 0)
                          + (found.size(node, "receive") if node in found.receive else 0))
            verdicts.append(Verdict(
                LATENCY_NODE, (node,),
                f"high latency at node {node}: {len(slow)} of {considered} pairs with its peers average "
                f"{ms_span([averages[p] for p in slow])}",
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
        bad = self.external_lossy
        by_target: dict[str, list[Pair]] = {}
        for pair in self.external:
            by_target.setdefault(pair[1], []).append(pair)
        down = []  # targets lost from most of the nodes that probe them
        for target in self.targets:
            pairs = by_target.get(target, [])
            n_bad = sum(p in bad for p in pairs)
            if n_bad >= MIN_CELLS_FOR_NODE and n_bad * 2 > len(pairs):
                down.append(target)
        verdicts = []
        if len(down) >= MIN_CELLS_FOR_NODE and len(down) * 2 > len(self.targets):
            lost = [p for p in bad if p[1] in down]
            verdicts.append(Verdict(
                EXTERNAL_CLUSTER, tuple(sorted({p[0] for p in lost}, key=natural_key)),
                f"external connectivity lost cluster-wide: {len(down)} of {len(self.targets)} external targets "
                f"are lost from most nodes ({loss_span([self.external[p].loss_ratio for p in lost])}): "
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
                    f"{loss_span([self.external[p].loss_ratio for p in lost])} of the pings to it",
                    _evidence(self.external, lost), targets=(target,),
                    summary={"bad_nodes": len(lost), "nodes": len(pairs)},
                ))
        by_node: dict[str, list[Pair]] = {}
        for pair in sorted(bad, key=natural_pair_key):
            if pair[1] not in down:
                by_node.setdefault(pair[0], []).append(pair)
        for node, lost in by_node.items():
            probed = [p for p in self.external if p[0] == node]
            words = ", ".join(f"{t} {pct(self.external[(node, t)].loss_ratio)}" for _, t in lost)
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
        sources = {s for s, _ in self.cells} | {s for s, _ in self.external}
        if self.summary is not None:  # the cells at hand are only some: every row summed counts
            sources |= {node for (direction, node), line in self.summary.lines.items()
                        if direction == "send" and line.sent > 0}
        return absent.silent(sources, {d for _, d in self.cells}, self.stale, self.prober)

    def stale_nodes(self) -> list[Verdict]:
        return absent.stale(self.stale, self.prober)

    def healthy(self) -> Verdict:
        worst = max(((p, c.loss_ratio) for p, c in self.cells.items()), key=lambda item: item[1], default=None)
        slowest = max(((p, c.rtt_avg_ms) for p, c in self.cells.items() if c.rtt_avg_ms is not None),
                      key=lambda item: item[1], default=None)
        if self.summary is not None:  # the cells at hand are only the bad ones; Prometheus found these
            worst, slowest = self.summary.worst_loss or worst, self.summary.slowest or slowest
        parts = [f"healthy: {len(self.nodes)} nodes ({self.pairs} pairs)"]
        if self.targets:
            parts.append(f" and {len(self.targets)} external target" + ("s" if len(self.targets) > 1 else ""))
        parts.append(f" below {pct(self.thresholds.loss_ratio)} loss and "
                     f"{self.thresholds.latency_ms:g} ms average RTT")
        summary: dict[str, float] = {"pairs": self.pairs}
        if worst is not None:
            # With nothing lost anywhere, naming one pair as the worst would point at a random pair.
            where = f" ({worst[0][0]}->{worst[0][1]})" if worst[1] > 0 else ""
            parts.append(f"; worst loss {pct(worst[1])}{where}")
            summary["worst_loss_percent"] = round(worst[1] * 100, 3)
        if slowest is not None:
            parts.append(f", highest average RTT {slowest[1]:.1f} ms ({slowest[0][0]}->{slowest[0][1]})")
            summary["worst_rtt_ms"] = round(slowest[1], 3)
        return Verdict(HEALTHY, tuple(self.nodes), "".join(parts), summary=summary)


def diagnose(matrix: Matrix, thresholds: Thresholds | None = None) -> list[Verdict]:
    """Every independent fault the matrix shows, or a single `healthy` verdict.

    Order: loss (groups, cluster, nodes, links), the MTU and pod paths, latency, external targets,
    silent nodes, stale nodes.
    """
    analysis = _Analysis(matrix, thresholds or Thresholds())
    verdicts = (analysis.loss() + analysis.other_paths() + analysis.latency() + analysis.external_loss()
                + analysis.silent() + analysis.stale_nodes())
    return verdicts or [analysis.healthy()]
