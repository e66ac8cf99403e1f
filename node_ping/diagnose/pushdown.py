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
import queue
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from node_ping import contract
from node_ping.diagnose.judge import Thresholds
from node_ping.diagnose.matrix import Block, Counts, Line, Pair, PathCells, Place, Summary
from node_ping.diagnose.prometheus import Prometheus, Sample

FULL_FETCH_PAIRS = 20_000
"""Up to this many node pairs (about 140 nodes in full mesh) the whole matrix is fetched."""
MAX_CELLS = 50_000
"""At most this many candidate cells are fetched, the worst first; the summary counts the rest."""
MAX_WHOLE_LINES = 40
"""At most this many rows or columns are fetched whole to check a pooled finding."""
PARALLEL = 2
"""Queries sent at once: each is a pass over every pair series, which Prometheus makes on one core."""

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
        self.loss = f"clamp(1 - {self.received} / ({self.sent} > 0), 0, 1)"
        self.slow = f"({self.rtt} / ({self.received} > 0))"
        self.lossy = f"({self.loss}) >= {loss_ratio!r}"
        self.too_slow = f"{self.slow} >= {latency_ms!r}"

    def line(self, label: str, what: str) -> str:
        """A row's or column's pairs (an instant count of the series: cheaper than a range), pings sent
        or received."""
        if what == "pairs":
            return f"count by ({label}) ({self.line_pairs_expr})"
        return f"sum by ({label}) ({self.sent if what == 'sent' else self.received})"

    @property
    def line_pairs_expr(self) -> str:
        return f"max by ({_S}, {_D}) ({contract.NODE.packets_sent.name})"

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
    """How many node pairs are probed at `at`: the host probers' node target counts summed, N series
    at any size; Prometheus's count of the pair series where the gauge is missing."""
    targets = contract.TARGETS
    samples = prometheus.query(f'sum({targets.name}{{{targets.labels[-1]}="node", {contract.PATH}=""}})', at)
    if not samples:
        samples = prometheus.query(f"count({contract.NODE.packets_sent.name})", at)
    return round(samples[0][1]) if samples else 0


_INFO = contract.NODE_INFO
_PLACES = f"max by ({_S}, {_INFO.labels[1]}, {_INFO.labels[2]}) ({_INFO.name})"


def _places_from(samples: list[Sample]) -> dict[str, Place]:
    zone, rack = _INFO.labels[1], _INFO.labels[2]
    return {labels[_S]: Place(labels.get(zone, ""), labels.get(rack, "")) for labels, _ in samples if labels.get(_S)}


def places_of(prometheus: Prometheus, at: float) -> dict[str, Place]:
    """Where each node sits, as its own info metric says."""
    return _places_from(prometheus.query(_PLACES, at))


def _together(prometheus: Prometheus, queries: Mapping[str, str], at: float) -> dict[str, list[Sample]]:
    """Several queries at once, PARALLEL at a time, each thread with its own client: Prometheus answers
    them on as many cores, and each costs a pass over every pair series."""
    clients: queue.SimpleQueue[Prometheus] = queue.SimpleQueue()
    forks = [prometheus.fork() for _ in range(PARALLEL - 1)]
    for client in (prometheus, *forks):
        clients.put(client)

    def run(promql: str) -> list[Sample]:
        client = clients.get()
        try:
            return client.query(promql, at)
        finally:
            clients.put(client)

    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            futures = {name: pool.submit(run, promql) for name, promql in queries.items()}
            return {name: future.result() for name, future in futures.items()}
    finally:
        for client in forks:
            client.close()


def _lines_from(answers: Mapping[str, list[Sample]]) -> dict[tuple[str, str], Line]:
    lines: dict[tuple[str, str], Line] = {}
    for direction, label in (("send", _S), ("receive", _D)):
        def by_node(name: str, label: str = label) -> dict[str, float]:
            return {labels[label]: value for labels, value in answers[name] if labels.get(label)}

        pairs, sent, received = (by_node(f"{direction}_{what}") for what in ("pairs", "sent", "received"))
        for node, count in pairs.items():
            total = sent.get(node, 0.0)
            lines[(direction, node)] = Line(round(count), total, max(0.0, total - received.get(node, total)))
    return lines


def _candidates(answers: Mapping[str, list[Sample]], lines: Mapping[tuple[str, str], Line]) -> dict[Pair, Counts]:
    """The cells at or above a threshold. Their pings are taken as their row's average: each pair of a
    row gets the same pings a cycle, and fetching them would cost another pass over every pair."""
    loss, slow = _by_pair(answers["lossy"]), _by_pair(answers["slow"])
    cells = {}
    for pair in loss.keys() | slow.keys():
        row = lines.get(("send", pair[0]), Line())
        sent = row.sent / row.pairs if row.pairs else 0.0
        received = sent * (1 - loss.get(pair, row.loss_ratio))
        rtt = slow.get(pair)
        cells[pair] = Counts(sent, received, None if rtt is None else rtt * received)
    return cells


def _without_cells(lines: Mapping[tuple[str, str], Line],
                   cells: Mapping[Pair, Counts]) -> dict[tuple[str, str], Line]:
    """Every line without its cells at hand: a row lossy only for its few bad pairs (the one towards
    a dead node) is no pooled finding, and fetching it whole would cost a line for every node."""
    rest = dict(lines)
    for (source, destination), counts in cells.items():
        for key in (("send", source), ("receive", destination)):
            line = rest.get(key, Line())
            rest[key] = Line(line.pairs - 1, line.sent - counts.sent, line.lost - (counts.sent - counts.received))
    return rest


def fetch_summed(prometheus: Prometheus, window: str, at: float,
                 thresholds: Thresholds) -> tuple[dict[Pair, Counts], Summary, dict[str, Place]]:
    """The candidate cells (and the whole lines worth a closer look), the sums behind the rest, and
    where each node sits."""
    exprs = _Exprs(window, thresholds.loss_ratio, thresholds.latency_ms)
    first = {f"{direction}_{what}": exprs.line(label, what)
             for direction, label in (("send", _S), ("receive", _D)) for what in ("pairs", "sent", "received")}
    first |= {"lossy": exprs.lossy, "slow": exprs.too_slow,
              "places": _PLACES}
    answers = _together(prometheus, first, at)
    lines = _lines_from(answers)
    cells = _candidates(answers, lines)
    found = len(cells)
    if found > MAX_CELLS:
        keep = sorted(cells, key=lambda p: (-cells[p].loss_ratio, p))[:MAX_CELLS]
        cells = {p: cells[p] for p in keep}
    # The background: the median row, near the median pair when the loss is spread evenly, and for
    # free (BACKGROUND_FLOOR keeps it at 1 % at least in any case).
    rows = sorted(line.loss_ratio for (direction, _), line in lines.items() if direction == "send")
    median = rows[len(rows) // 2] if rows else 0.0
    places = _places_from(answers["places"])
    later: dict[str, str] = {}
    if not found:
        later["worst"] = f"topk(1, {exprs.loss})"
    node_loss_ratio = thresholds.node_loss_ratio
    rest = _without_cells(lines, cells)
    heavy = [key for key in lines if node_loss_ratio is not None and rest[key].loss_ratio >= node_loss_ratio]
    groupings = [by for by in ("zone", "rack") if len({getattr(p, by) for p in places.values()} - {""}) >= 2]
    if found:
        later |= {f"blocks_{by}": f"count by ({_GROUP_SOURCE}, {_GROUP_DESTINATION}) "
                                  f"({exprs.grouped(exprs.line_pairs_expr, by)})" for by in groupings}
    answers = _together(prometheus, later, at) if later else {}
    # Lines whose pooled loss reaches the node threshold: fetched whole, the worst first, for the
    # analysis to judge whether every peer agrees. A matcher on one node's name reads only its own
    # series, so this costs little however large the cluster.
    whole = [key for _, key in sorted(((lines[key].loss_ratio, key) for key in heavy), reverse=True)][:MAX_WHOLE_LINES]
    for label, direction in ((_S, "send"), (_D, "receive")):
        names = [node for d, node in whole if d == direction]
        if names:
            cells.update(_line_cells(prometheus, window, f"{{{label}=~{_names_regex(names)}}}", at))
    lossy = {pair: counts for pair, counts in cells.items() if counts.loss_ratio >= thresholds.loss_ratio}
    blocks = {by: _blocks_from(answers[f"blocks_{by}"], places, by, lossy, lines) for by in groupings
              if f"blocks_{by}" in answers}
    worst = max(_by_pair(answers.get("worst", [])).items(), key=lambda item: item[1], default=None)
    summary = Summary(lines=lines, background=median, candidates=found, left_out=max(0, found - MAX_CELLS),
                      whole_lines=tuple(whole), blocks=blocks, worst_loss=worst)
    return cells, summary, places


def _blocks_from(samples: list[Sample], places: Mapping[str, Place], by: str, cells: Mapping[Pair, Counts],
                 lines: Mapping[tuple[str, str], Line]) -> dict[tuple[str, str], Block]:
    """Each block's measured pairs as Prometheus counted them; its bad pairs and lost pings from the
    lossy cells, its pings from the average pair (the noise of the good pairs left out)."""
    sent = sum(line.sent for (direction, _), line in lines.items() if direction == "send")
    pairs = sum(line.pairs for (direction, _), line in lines.items() if direction == "send")
    per_pair = sent / pairs if pairs else 0.0
    blocks: dict[tuple[str, str], Block] = {}
    for labels, value in samples:
        key = (labels.get(_GROUP_SOURCE, ""), labels.get(_GROUP_DESTINATION, ""))
        if all(key):
            blocks[key] = Block(round(value), 0, round(value) * per_pair, 0.0)
    for (source, destination), counts in cells.items():
        key = (getattr(places.get(source, Place()), by), getattr(places.get(destination, Place()), by))
        if key in blocks:
            block = blocks[key]
            blocks[key] = Block(block.measured, block.bad + 1, block.sent, block.lost + counts.sent - counts.received)
    return blocks


def _line_cells(prometheus: Prometheus, window: str, matcher: str, at: float) -> dict[Pair, Counts]:
    family = contract.NODE
    queries = {metric.name: _pair_sum(metric, window, matcher)
               for metric in (family.packets_sent, family.packets_received, family.rtt_sum)}
    values = [_by_pair(samples) for samples in _together(prometheus, queries, at).values()]
    return {pair: Counts(sent, values[1][pair], values[2].get(pair, 0.0))
            for pair, sent in values[0].items() if pair in values[1]}


def fetch_path(prometheus: Prometheus, metrics: tuple[contract.Metric, contract.Metric], window: str, at: float,
               loss_ratio: float) -> PathCells:
    """One more path's lossy cells (loss at or above `loss_ratio`) and, when there are any, its line
    sizes: O(nodes + bad pairs) at any size, one pass over its pair series when nothing is lost.
    Empty when nothing is lost or the path is not probed (the feature off). `metrics`: its sent and
    received counters."""
    sent, received = metrics
    mtu = contract.MTU if contract.MTU in sent.labels else ""
    by = f"{_S}, {_D}" + (f", {mtu}" if mtu else "")
    sums = [f"sum by ({by}) (increase({metric.name}[{window}]))" for metric in (sent, received)]
    # A loss ratio outside 0..1 is no answer to this query (a proxy or stand-in answering anything).
    lossy = [(labels, value) for labels, value in
             prometheus.query(f"clamp(1 - {sums[1]} / ({sums[0]} > 0), 0, 1) >= {loss_ratio!r}", at)
             if 0.0 <= value <= 1.0]
    if not lossy:
        return PathCells()
    queries = {"sent": f"({sums[0]}) and on ({by}) (clamp(1 - {sums[1]} / ({sums[0]} > 0), 0, 1) >= {loss_ratio!r})"}
    queries |= {direction: f"count by ({label}) (max by ({_S}, {_D}) ({sent.name}))"
                for direction, label in (("send", _S), ("receive", _D))}
    answers = _together(prometheus, queries, at)
    loss = {(labels[_S], labels[_D]): value for labels, value in lossy if labels.get(_S) and labels.get(_D)}
    cells = {pair: Counts(value, value * (1 - loss[pair]), None)
             for pair, value in _by_pair(answers["sent"]).items() if pair in loss}
    sizes = {(direction, labels[label]): round(value) for direction, label in (("send", _S), ("receive", _D))
             for labels, value in answers[direction] if labels.get(label)}
    sizes_mtu = sorted({labels.get(mtu, "") for labels, _ in lossy} - {""})
    return PathCells(cells, sizes, ",".join(sizes_mtu))
