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
from node_ping.diagnose.promql import (
    GROUP_DESTINATION,
    GROUP_SOURCE,
    D,
    NodeExprs,
    PathExprs,
    S,
    pair_counts,
    pair_queries,
)
from node_ping.diagnose.recorded import PATHS, Names, Recorded

FULL_FETCH_PAIRS = 20_000
"""Up to this many node pairs (about 140 nodes in full mesh) the whole matrix is fetched."""
MAX_CELLS = 50_000
"""At most this many candidate cells are fetched, the worst first; the summary counts the rest."""
MAX_WHOLE_LINES = 40
"""At most this many rows or columns are fetched whole to check a pooled finding."""
PARALLEL = 2
"""Queries sent at once: each is a pass over every pair series, which Prometheus makes on one core."""

def _names_regex(names: Iterable[str]) -> str:
    """A PromQL string literal matching exactly these names (RE2, anchored by Prometheus)."""
    return json.dumps("|".join(re.escape(name) for name in sorted(names)))


def _by_pair(samples: Iterable[tuple[dict[str, str], float]]) -> dict[Pair, float]:
    return {(labels[S], labels[D]): value for labels, value in samples if labels.get(S) and labels.get(D)}


def pair_count(prometheus: Prometheus, at: float) -> int:
    """How many node pairs are probed at `at`: the host probers' node target counts summed, N series
    at any size; where the gauge is missing (probers before it), the rows' pairs the recording rules
    keep, or else Prometheus's count of the pair series (a pass over them)."""
    targets = contract.TARGETS
    samples = prometheus.query(f'sum({targets.name}{{{targets.labels[-1]}="node", {contract.PATH}=""}})', at)
    if not samples:
        samples = prometheus.query(f"sum({Names('').line(S, 'pairs')} >= 0)", at)  # not the EMPTY series
    if not samples:
        samples = prometheus.query(f"count({contract.NODE.packets_sent.name})", at)
    return round(samples[0][1]) if samples else 0


_INFO = contract.NODE_INFO
_PLACES = f"max by ({S}, {_INFO.labels[1]}, {_INFO.labels[2]}) ({_INFO.name})"


def _places_from(samples: list[Sample]) -> dict[str, Place]:
    zone, rack = _INFO.labels[1], _INFO.labels[2]
    return {labels[S]: Place(labels.get(zone, ""), labels.get(rack, "")) for labels, _ in samples if labels.get(S)}


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
    for direction, label in (("send", S), ("receive", D)):
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


class _Asks:
    """What to ask for each sum: the recorded series when the rules keep them, else the PromQL
    that computes them (a pass over every pair series each)."""

    def __init__(self, window: str, thresholds: Thresholds, recorded: Recorded | None) -> None:
        self.exprs = NodeExprs(window, thresholds.loss_ratio, thresholds.latency_ms)
        self.names = recorded.names if recorded else None
        self.thresholds = thresholds

    def line(self, label: str, what: str) -> str:
        return self.names.line(label, what) if self.names else self.exprs.line(label, what)

    @property
    def lossy(self) -> str:
        # The rules keep the pairs at or above their own threshold, no higher than diagnose's; `+ 0`
        # drops the recorded name, which would otherwise come with each of up to MAX_CELLS pairs.
        return f"{self.names.lossy} + 0 >= {self.thresholds.loss_ratio!r}" if self.names else self.exprs.lossy

    @property
    def slow(self) -> str:
        return f"{self.names.slow} + 0 >= {self.thresholds.latency_ms!r}" if self.names else self.exprs.too_slow

    @property
    def worst(self) -> str:
        return self.names.worst if self.names else self.exprs.worst

    def blocks(self, by: str) -> str:
        return self.names.blocks(by) if self.names else self.exprs.blocks(by)


def fetch_summed(prometheus: Prometheus, window: str, at: float, thresholds: Thresholds,
                 recorded: Recorded | None = None) -> tuple[dict[Pair, Counts], Summary, dict[str, Place]]:
    """The candidate cells (and the whole lines worth a closer look), the sums behind the rest, and
    where each node sits; the sums from the recording rules when `recorded`."""
    asks = _Asks(window, thresholds, recorded)
    first = {f"{direction}_{what}": asks.line(label, what)
             for direction, label in (("send", S), ("receive", D)) for what in ("pairs", "sent", "received")}
    first |= {"lossy": asks.lossy, "slow": asks.slow, "places": _PLACES}
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
        later["worst"] = asks.worst
    node_loss_ratio = thresholds.node_loss_ratio
    rest = _without_cells(lines, cells)
    heavy = [key for key in lines if node_loss_ratio is not None and rest[key].loss_ratio >= node_loss_ratio]
    groupings = [by for by in ("zone", "rack") if len({getattr(p, by) for p in places.values()} - {""}) >= 2]
    if found or heavy:
        # The blocks say how large each group pair is: without them, the cells at hand (a line
        # fetched whole) would look like a whole block.
        later |= {f"blocks_{by}": asks.blocks(by) for by in groupings}
    answers = _together(prometheus, later, at) if later else {}
    # Lines whose pooled loss reaches the node threshold: fetched whole, the worst first, for the
    # analysis to judge whether every peer agrees. A matcher on one node's name reads only its own
    # series, so this costs little however large the cluster.
    whole = [key for _, key in sorted(((lines[key].loss_ratio, key) for key in heavy), reverse=True)][:MAX_WHOLE_LINES]
    for label, direction in ((S, "send"), (D, "receive")):
        names = [node for d, node in whole if d == direction]
        if names:
            cells.update(_line_cells(prometheus, window, f"{{{label}=~{_names_regex(names)}}}", at))
    lossy = {pair: counts for pair, counts in cells.items() if counts.loss_ratio >= thresholds.loss_ratio}
    blocks = {by: _blocks_from(answers[f"blocks_{by}"], places, by, lossy, lines) for by in groupings
              if f"blocks_{by}" in answers}
    worst = max(_by_pair(answers.get("worst", [])).items(), key=lambda item: item[1], default=None)
    summary = Summary(lines=lines, background=median, candidates=found, left_out=max(0, found - MAX_CELLS),
                      whole_lines=tuple(whole), blocks=blocks, worst_loss=worst,
                      recorded_at=recorded.evaluated_at if recorded else None)
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
        key = (labels.get(GROUP_SOURCE, ""), labels.get(GROUP_DESTINATION, ""))
        if all(key):
            blocks[key] = Block(round(value), 0, round(value) * per_pair, 0.0)
    for (source, destination), counts in cells.items():
        key = (getattr(places.get(source, Place()), by), getattr(places.get(destination, Place()), by))
        if key in blocks:
            block = blocks[key]
            blocks[key] = Block(block.measured, block.bad + 1, block.sent, block.lost + counts.sent - counts.received)
    return blocks


def _line_cells(prometheus: Prometheus, window: str, matcher: str, at: float) -> dict[Pair, Counts]:
    return pair_counts(_together(prometheus, pair_queries(contract.NODE, window, matcher), at), contract.NODE)


def fetch_path(prometheus: Prometheus, path: str, window: str, at: float, *, loss_ratio: float,
               recorded: Recorded | None = None) -> PathCells:
    """One more path's (`recorded.PATHS`) lossy cells (loss at or above `loss_ratio`) and, when there
    are any, its line sizes: O(nodes + bad pairs) at any size, one pass over its pair series when
    nothing is lost (none with the recording rules). Empty when nothing is lost or the path is not
    probed (the feature off)."""
    exprs = PathExprs(PATHS[path], window, loss_ratio)
    names = recorded.names if recorded else None
    # A loss ratio outside 0..1 is no answer to this query (a proxy or stand-in answering anything).
    lossy = [(labels, value) for labels, value in
             prometheus.query(f"{names.path_lossy(path)} >= {loss_ratio!r}" if names else exprs.lossy, at)
             if 0.0 <= value <= 1.0]
    if not lossy:
        return PathCells()
    queries = {"sent": names.path_lossy_sent(path) if names else exprs.lossy_sent}
    queries |= {direction: names.path_pairs(path, label) if names else exprs.line_pairs(label)
                for direction, label in (("send", S), ("receive", D))}
    answers = _together(prometheus, queries, at)
    loss = {(labels[S], labels[D]): value for labels, value in lossy if labels.get(S) and labels.get(D)}
    cells = {pair: Counts(value, value * (1 - loss[pair]), None)
             for pair, value in _by_pair(answers["sent"]).items() if pair in loss}
    sizes = {(direction, labels[label]): round(value) for direction, label in (("send", S), ("receive", D))
             for labels, value in answers[direction] if labels.get(label)}
    sizes_mtu = sorted({labels.get(exprs.mtu, "") for labels, _ in lossy} - {""}) if exprs.mtu else []
    return PathCells(cells, sizes, ",".join(sizes_mtu))
