"""Diagnose a large cluster by summing in Prometheus: fetch O(nodes + bad pairs), not the N x N matrix.

Above FULL_FETCH_PAIRS pairs, diagnose asks Prometheus for what the analysis needs, already summed:
each node's row and column (pairs, pings sent and lost), the median pair loss (the background), the
blocks between zones and racks, the worst and the slowest pair, and only the cells that could be bad
(loss at or above --loss-threshold, or RTT at or above --latency-threshold), at most MAX_CELLS of
them, the worst first. The rows and columns whose pooled loss could be a finding are then fetched
whole, so that every peer's agreement can be checked. What was left out is said (`Summary`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from node_ping import contract
from node_ping.diagnose.judge import Thresholds
from node_ping.diagnose.matrix import Block, Counts, Line, Pair, PathCells, Place, Summary
from node_ping.diagnose.prometheus import Prometheus

FULL_FETCH_PAIRS = 20_000
"""Up to this many node pairs (about 140 nodes in full mesh) the whole matrix is fetched."""
MAX_CELLS = 50_000
"""At most this many candidate cells are fetched, the worst first; the summary counts the rest."""
MAX_WHOLE_LINES = 40
"""At most this many rows or columns are fetched whole to check a pooled finding."""

_S, _D = contract.SOURCE, contract.NODE.destination
_GROUP_SOURCE, _GROUP_DESTINATION = "node_ping_source_group", "node_ping_destination_group"


def _pair_sum(metric: contract.Metric, window: str, matcher: str = "") -> str:
    return f"sum by ({_S}, {_D}) (increase({metric.name}{matcher}[{window}]))"


class _Exprs:
    """The PromQL of one diagnosis: per-pair sums, and the conditions on them."""

    def __init__(self, window: str, loss_ratio: float, latency_ms: float) -> None:
        family = contract.NODE
        self.sent = _pair_sum(family.packets_sent, window)
        self.received = _pair_sum(family.packets_received, window)
        self.rtt = _pair_sum(family.rtt_sum, window)
        self.window = window
        self.loss = f"clamp(1 - {self.received} / ({self.sent} > 0), 0, 1)"
        self.slow = f"({self.rtt} / ({self.received} > 0))"
        self.lossy = f"({self.loss}) >= {loss_ratio!r}"
        self.candidate = f"({self.lossy}) or ({self.slow} >= {latency_ms!r})"

    def line(self, label: str, what: str) -> str:
        if what == "pairs":
            return f"count by ({label}) ({self.sent} > 0)"
        return f"sum by ({label}) ({self.sent if what == 'sent' else self.received})"

    def grouped(self, expr: str, by: str) -> str:
        """`expr` per pair, with the source's and the destination's group (zone or rack) as labels."""
        info = f"max by ({_S}, {by}) ({contract.NODE_INFO.name})"
        source = f'max by ({_S}, {_GROUP_SOURCE}) (label_replace({info}, "{_GROUP_SOURCE}", "$1", "{by}", "(.+)"))'
        destination = (f'max by ({_D}, {_GROUP_DESTINATION}) (label_replace(label_replace({info}, "{_D}", "$1", '
                       f'"{_S}", "(.+)"), "{_GROUP_DESTINATION}", "$1", "{by}", "(.+)"))')
        return (f"(({expr}) * on ({_S}) group_left ({_GROUP_SOURCE}) {source}) "
                f"* on ({_D}) group_left ({_GROUP_DESTINATION}) {destination}")


def _names_regex(names: Iterable[str]) -> str:
    """A PromQL string literal matching exactly these names (RE2, anchored by Prometheus)."""
    return json.dumps("|".join(re.escape(name) for name in sorted(names)))


def _by_pair(samples: Iterable[tuple[dict[str, str], float]]) -> dict[Pair, float]:
    return {(labels[_S], labels[_D]): value for labels, value in samples if labels.get(_S) and labels.get(_D)}


def pair_count(prometheus: Prometheus, at: float) -> int:
    """How many node pair series Prometheus holds at `at`: an instant look-up, cheap at any size."""
    samples = prometheus.query(f"count({contract.NODE.packets_sent.name})", at)
    return round(samples[0][1]) if samples else 0


def _cells(prometheus: Prometheus, exprs: _Exprs, selector: str, at: float) -> dict[Pair, Counts]:
    """sent, received and RTT of the pairs `selector` (a PromQL filter: `and on(...) (...)`) keeps."""
    values = [_by_pair(prometheus.query(f"({expr}) {selector}", at))
              for expr in (exprs.sent, exprs.received, exprs.rtt)]
    return {pair: Counts(sent, values[1][pair], values[2].get(pair, 0.0))
            for pair, sent in values[0].items() if pair in values[1]}


def _lines(prometheus: Prometheus, exprs: _Exprs, at: float) -> dict[tuple[str, str], Line]:
    lines: dict[tuple[str, str], Line] = {}
    for direction, label in (("send", _S), ("receive", _D)):
        got = {what: {labels[label]: value for labels, value in prometheus.query(exprs.line(label, what), at)
                      if labels.get(label)} for what in ("pairs", "sent", "received")}
        for node, pairs in got["pairs"].items():
            sent = got["sent"].get(node, 0.0)
            lines[(direction, node)] = Line(round(pairs), sent, max(0.0, sent - got["received"].get(node, sent)))
    return lines


def _agreeing(prometheus: Prometheus, exprs: _Exprs, median: float, at: float) -> dict[tuple[str, str], int]:
    """Per line, how many of its pairs lose more than the median pair."""
    found: dict[tuple[str, str], int] = {}
    for direction, label in (("send", _S), ("receive", _D)):
        for labels, value in prometheus.query(f"count by ({label}) (({exprs.loss}) > {median!r})", at):
            if labels.get(label):
                found[(direction, labels[label])] = round(value)
    return found


def places_of(prometheus: Prometheus, at: float) -> dict[str, Place]:
    info = contract.NODE_INFO
    zone, rack = info.labels[1], info.labels[2]
    samples = prometheus.query(f"max by ({_S}, {zone}, {rack}) ({info.name})", at)
    return {labels[_S]: Place(labels.get(zone, ""), labels.get(rack, "")) for labels, _ in samples if labels.get(_S)}


def _blocks(prometheus: Prometheus, exprs: _Exprs, by: str, at: float) -> dict[tuple[str, str], Block]:
    def per_block(expr: str) -> dict[tuple[str, str], float]:
        return {(labels[_GROUP_SOURCE], labels[_GROUP_DESTINATION]): value
                for labels, value in prometheus.query(expr, at)
                if labels.get(_GROUP_SOURCE) and labels.get(_GROUP_DESTINATION)}

    keys = f"{_GROUP_SOURCE}, {_GROUP_DESTINATION}"
    measured = per_block(f"count by ({keys}) ({exprs.grouped(f'{exprs.sent} > 0', by)})")
    bad = per_block(f"count by ({keys}) ({exprs.grouped(exprs.lossy, by)})")
    sent = per_block(f"sum by ({keys}) ({exprs.grouped(exprs.sent, by)})")
    received = per_block(f"sum by ({keys}) ({exprs.grouped(exprs.received, by)})")
    return {key: Block(round(count), round(bad.get(key, 0.0)), sent.get(key, 0.0),
                       max(0.0, sent.get(key, 0.0) - received.get(key, 0.0)))
            for key, count in measured.items()}


def _extreme(prometheus: Prometheus, expr: str, at: float) -> tuple[Pair, float] | None:
    found = _by_pair(prometheus.query(f"topk(1, {expr})", at))
    return max(found.items(), key=lambda item: item[1]) if found else None


def fetch_summed(prometheus: Prometheus, window: str, at: float,
                 thresholds: Thresholds) -> tuple[dict[Pair, Counts], Summary, dict[str, Place]]:
    """The candidate cells (and the whole lines worth a closer look), the sums behind the rest, and
    where each node sits."""
    exprs = _Exprs(window, thresholds.loss_ratio, thresholds.latency_ms)
    node_loss_ratio = thresholds.node_loss_ratio
    lines = _lines(prometheus, exprs, at)
    background = prometheus.query(f"quantile(0.5, {exprs.loss})", at)
    candidates = prometheus.query(f"count({exprs.candidate})", at)
    found = round(candidates[0][1]) if candidates else 0
    selector = f"and on ({_S}, {_D}) ({exprs.candidate})"
    if found > MAX_CELLS:
        selector = f"and on ({_S}, {_D}) topk({MAX_CELLS}, {exprs.loss})"
    cells = _cells(prometheus, exprs, selector, at) if found else {}
    # Lines whose pooled loss reaches the node threshold with every peer agreeing (each of its pairs
    # losing more than the median pair): fetched whole, the worst first, for the analysis to judge.
    median = background[0][1] if background else 0.0
    agreeing = _agreeing(prometheus, exprs, median, at) if node_loss_ratio is not None else {}
    wanted = sorted(((line.loss_ratio, key) for key, line in lines.items()
                     if node_loss_ratio is not None and line.loss_ratio >= node_loss_ratio
                     and agreeing.get(key, 0) >= line.pairs), reverse=True)
    whole = [key for _, key in wanted[:MAX_WHOLE_LINES]]
    for label, direction in ((_S, "send"), (_D, "receive")):
        names = [node for d, node in whole if d == direction]
        if names:
            matcher = f"{{{label}=~{_names_regex(names)}}}"
            cells.update(_line_cells(prometheus, window, matcher, at))
    places = places_of(prometheus, at)
    blocks: dict[str, dict[tuple[str, str], Block]] = {}
    if found:
        for by in ("zone", "rack"):
            if len({getattr(place, by) for place in places.values()} - {""}) >= 2:
                blocks[by] = _blocks(prometheus, exprs, by, at)
    worst = _extreme(prometheus, exprs.loss, at) if not found else None
    slowest = _extreme(prometheus, exprs.slow, at) if not found else None
    summary = Summary(lines=lines, background=background[0][1] if background else 0.0, candidates=found,
                      left_out=max(0, found - MAX_CELLS), whole_lines=tuple(whole), blocks=blocks,
                      worst_loss=worst, slowest=slowest)
    return cells, summary, places


def _line_cells(prometheus: Prometheus, window: str, matcher: str, at: float) -> dict[Pair, Counts]:
    family = contract.NODE
    values = [_by_pair(prometheus.query(_pair_sum(metric, window, matcher), at))
              for metric in (family.packets_sent, family.packets_received, family.rtt_sum)]
    return {pair: Counts(sent, values[1][pair], values[2].get(pair, 0.0))
            for pair, sent in values[0].items() if pair in values[1]}


def lines_of(cells: Mapping[Pair, Counts]) -> dict[tuple[str, str], Line]:
    """Every row and column summed from the cells: what `_lines` gets from Prometheus."""
    lines: dict[tuple[str, str], Line] = {}
    for (source, destination), counts in cells.items():
        for key in (("send", source), ("receive", destination)):
            line = lines.get(key, Line())
            lines[key] = Line(line.pairs + 1, line.sent + counts.sent, line.lost + counts.sent - counts.received)
    return lines


def fetch_path(prometheus: Prometheus, metrics: tuple[contract.Metric, contract.Metric], window: str, at: float,
               loss_ratio: float) -> PathCells:
    """One more path's lossy cells (loss at or above `loss_ratio`) and its line sizes: O(nodes + bad
    pairs) at any size. Empty when the path is not probed (the feature off). `metrics`: its sent
    and received counters."""
    sent, received = metrics
    mtu = contract.MTU if contract.MTU in sent.labels else ""
    by = f"{_S}, {_D}" + (f", {mtu}" if mtu else "")
    sums = [f"sum by ({by}) (increase({metric.name}[{window}]))" for metric in (sent, received)]
    lossy = f"clamp(1 - {sums[1]} / ({sums[0]} > 0), 0, 1) >= {loss_ratio!r}"
    values = [prometheus.query(f"({expr}) and on ({by}) ({lossy})", at) for expr in sums]
    got = [{(labels[_S], labels[_D]): (value, labels.get(mtu, "")) for labels, value in samples
            if labels.get(_S) and labels.get(_D)} for samples in values]
    cells = {pair: Counts(value, got[1][pair][0]) for pair, (value, _) in got[0].items() if pair in got[1]}
    sizes: dict[tuple[str, str], int] = {}
    for direction, label in (("send", _S), ("receive", _D)):
        for labels, value in prometheus.query(f"count by ({label}) ({sums[0]} > 0)", at):
            if labels.get(label):
                sizes[(direction, labels[label])] = round(value)
    sizes_mtu = sorted({size for _, size in got[0].values() if size})
    return PathCells(cells, sizes, ",".join(sizes_mtu))
