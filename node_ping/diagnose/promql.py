"""The PromQL of a diagnosis over the pair counters, written once: the whole matrix's per-pair sums
(and their answers as counts), and the sums of a large cluster (`pushdown`), which diagnose asks of
Prometheus directly or which the recording rules (`recorded`) keep for it to read instead.

Thresholds and windows are text or numbers: the rules file writes numbers, the chart's template
writes `{{ .range }}`-style placeholders in their place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from node_ping import contract
from node_ping.diagnose.matrix import Counts, Pair
from node_ping.diagnose.prometheus import Sample

S, D = contract.SOURCE, contract.NODE.destination
GROUP_SOURCE, GROUP_DESTINATION = "node_ping_source_group", "node_ping_destination_group"
PAIR = f"{S}, {D}"


def number(value: float | str) -> str:
    """A threshold as PromQL reads it: a float's repr, a placeholder as it is."""
    return value if isinstance(value, str) else repr(value)


def pair_sum(metric_name: str, window: str, matcher: str = "", by: str = PAIR) -> str:
    return f"sum by ({by}) (increase({metric_name}{matcher}[{window}]))"


def pair_queries(family: contract.PingFamily, window: str, matcher: str = "") -> dict[str, str]:
    """PromQL for sent, received and RTT sum of one family over the window, per pair (of the series
    `matcher` selects, e.g. `{source_node=~"a|b"}`)."""
    by = f"{S}, {family.destination}"
    return {name: pair_sum(metric.name, window, matcher, by)
            for name, metric in (("sent", family.packets_sent), ("received", family.packets_received),
                                 ("rtt", family.rtt_sum))}


def pair_counts(answers: Mapping[str, Iterable[Sample]], family: contract.PingFamily) -> dict[Pair, Counts]:
    """The answers to `pair_queries` as counts per pair. The exporter always writes sent and received
    together; a pair with only one of them (a scrape cut short) cannot give a loss figure, so it is
    left out rather than read as 100 % loss."""
    values = {name: {(labels[S], labels[family.destination]): value for labels, value in samples
                     if labels.get(S) and labels.get(family.destination)}
              for name, samples in answers.items()}
    return {pair: Counts(sent, values["received"][pair], values["rtt"].get(pair, 0.0))
            for pair, sent in values["sent"].items() if pair in values["received"]}


def loss_of(sent: str, received: str) -> str:
    """The loss ratio of pairs whose pings were sent; clamped, as a counter reset can make it leave 0..1."""
    return f"clamp(1 - {received} / ({sent} > 0), 0, 1)"


class NodeExprs:
    """The per-pair sums of the node family over a window, and the conditions on them."""

    def __init__(self, window: str, loss_ratio: float | str, latency_ms: float | str) -> None:
        family = contract.NODE
        self.window = window
        self.sent = pair_sum(family.packets_sent.name, window)
        self.received = pair_sum(family.packets_received.name, window)
        self.rtt = pair_sum(family.rtt_sum.name, window)
        self.loss = loss_of(self.sent, self.received)
        self.slow = f"({self.rtt} / ({self.received} > 0))"
        self.lossy = f"({self.loss}) >= {number(loss_ratio)}"
        self.too_slow = f"{self.slow} >= {number(latency_ms)}"
        self.worst = f"topk(1, {self.loss})"

    def line(self, label: str, what: str) -> str:
        """A row's or column's pairs (an instant count of the series: cheaper than a range), pings sent
        or received (summed straight from the series: a third faster than through the pairs)."""
        if what == "pairs":
            return f"count by ({label}) ({self.line_pairs_expr})"
        metric = contract.NODE.packets_sent if what == "sent" else contract.NODE.packets_received
        return f"sum by ({label}) (increase({metric.name}[{self.window}]))"

    @property
    def line_pairs_expr(self) -> str:
        return f"max by ({PAIR}) ({contract.NODE.packets_sent.name})"

    def grouped(self, expr: str, by: str) -> str:
        """`expr` per pair, with the source's and the destination's group (zone or rack) as labels."""
        info = f"max by ({S}, {by}) ({contract.NODE_INFO.name})"
        source = f'max by ({S}, {GROUP_SOURCE}) (label_replace({info}, "{GROUP_SOURCE}", "$1", "{by}", "(.+)"))'
        destination = (f'max by ({D}, {GROUP_DESTINATION}) (label_replace(label_replace({info}, "{D}", "$1", '
                       f'"{S}", "(.+)"), "{GROUP_DESTINATION}", "$1", "{by}", "(.+)"))')
        return (f"(({expr}) * on ({S}) group_left ({GROUP_SOURCE}) {source}) "
                f"* on ({D}) group_left ({GROUP_DESTINATION}) {destination}")

    def blocks(self, by: str) -> str:
        """How many pairs are measured from each group to each group (zone or rack)."""
        return f"count by ({GROUP_SOURCE}, {GROUP_DESTINATION}) ({self.grouped(self.line_pairs_expr, by)})"


class PathExprs:
    """Another path's (the pod network's, or the MTU-sized pings') pairs over a window: its lossy pairs,
    their pings sent, and how many pairs each line has. `metrics`: its sent and received counters."""

    def __init__(self, metrics: tuple[contract.Metric, contract.Metric], window: str,
                 loss_ratio: float | str) -> None:
        self.sent_metric = metrics[0]
        self.mtu = contract.MTU if contract.MTU in self.sent_metric.labels else ""
        self.by = PAIR + (f", {self.mtu}" if self.mtu else "")
        self.sums = [pair_sum(metric.name, window, by=self.by) for metric in metrics]
        self.lossy = f"{loss_of(*self.sums)} >= {number(loss_ratio)}"
        self.lossy_sent = self.sent_of(self.lossy)

    def sent_of(self, pairs: str) -> str:
        """The pings sent to the pairs of `pairs`."""
        return f"({self.sums[0]}) and on ({self.by}) ({pairs})"

    def line_pairs(self, label: str) -> str:
        return f"count by ({label}) (max by ({PAIR}) ({self.sent_metric.name}))"
