"""`node-ping diagnose`'s output: text for people (verdicts, then the matrices as evidence, then a
legend of shortened names) or JSON for scripts (every verdict with its numbers, and every cell).

Pure: a Report in, a string out. Which cells are marked bad is the analysis's decision
(`judge.judge`); this module only shows it.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from node_ping.diagnose.analysis import NODE_SILENT, NODE_STALE, Thresholds, Verdict
from node_ping.diagnose.judge import judge
from node_ping.diagnose.matrix import Counts, Matrix, Pair, natural_key, natural_pair_key
from node_ping.diagnose.wording import iso

# Longer names are shortened in the matrices (with a legend), so a row of a 20-node cluster still
# fits a terminal; 12 characters hold "ip-10-0-1-23" and most cloud short names.
_LABEL_WIDTH = 12
# Above this many nodes a matrix shows only the rows and columns with marked cells, the most
# marked first: 20 columns of 8 characters still fit a wide terminal.
_FULL_MATRIX_NODES = 20


def _common_affixes(names: Sequence[str]) -> tuple[int, int]:
    """Lengths of the prefix and suffix all names share, cut at a separator so labels stay words."""
    def cut(common: str) -> int:
        return max((common.rfind(sep) + 1 for sep in "-._"), default=0)

    def shared(texts: Sequence[str]) -> str:
        length = 0
        for chars in zip(*texts, strict=False):
            if len(set(chars)) > 1:
                break
            length += 1
        return texts[0][:length]

    return cut(shared(names)), cut(shared([name[::-1] for name in names]))


def abbreviate(names: Sequence[str], letter: str = "n", width: int = _LABEL_WIDTH,
               reserved: Collection[str] = ()) -> dict[str, str]:
    """Short, unique labels for a matrix; the caller prints a legend for those that differ.

    Names of `width` characters or fewer are their own label. A longer name loses the prefix and
    suffix (cut at a separator) that all the long names share, when what is left fits and is
    unique; otherwise it gets letter + number. No label equals another name or label, nor anything
    in `reserved` (the labels of the other matrix axis), so a label always means one name.
    """
    labels = {name: name for name in names if len(name) <= width}
    long_names = [name for name in names if len(name) > width]
    taken = {*names, *reserved}
    if len(long_names) > 1:
        prefix, suffix = _common_affixes(long_names)
        short = {name: name[prefix:len(name) - suffix] for name in long_names}
        repeated = {label for label, count in Counter(short.values()).items() if count > 1}
        for name, label in short.items():
            if 0 < len(label) <= width and label not in repeated and label not in taken:
                labels[name] = label
        taken |= set(labels.values())
    numbers = (f"{letter}{index}" for index in itertools.count(1))
    for name in long_names:
        if name not in labels:
            labels[name] = next(label for label in numbers if label not in taken)
    return {name: labels[name] for name in names}


def _table(title: str, rows: Mapping[str, str], columns: Mapping[str, str],
           cell: Callable[[str, str], str]) -> list[str]:
    """A matrix with rows and columns given as {name: label}, right-aligned, with a marker column
    kept free in every cell so the numbers line up."""
    texts = {(r, c): cell(r, c) for r in rows for c in columns}
    row_width = max(len(label) for label in rows.values())
    widths = {c: max([len(columns[c])] + [len(texts[(r, c)]) for r in rows]) for c in columns}
    lines = [title, " " * row_width + "".join(f"  {columns[c]:>{widths[c]}}" for c in columns)]
    lines += [f"{rows[r]:<{row_width}}" + "".join(f"  {texts[(r, c)]:>{widths[c]}}" for c in columns)
              for r in rows]
    return lines


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


@dataclass(frozen=True)
class Report:
    """A diagnosis and what it was made from."""

    matrix: Matrix
    verdicts: Sequence[Verdict]
    thresholds: Thresholds
    window: str
    at: float
    url: str
    warnings: Sequence[str] = ()  # Prometheus's, e.g. a partial response: the matrix may be incomplete

    @property
    def healthy(self) -> bool:
        return not any(verdict.is_fault for verdict in self.verdicts)


def _pick(names: Sequence[str], marked: Sequence[str], limit: int) -> list[str]:
    """All names if few; else those with marked cells, the most marked first, `limit` at most."""
    if len(names) <= limit:
        return list(names)
    counts = Counter(marked)
    return sorted(sorted(counts, key=lambda name: (-counts[name], natural_key(name)))[:limit], key=natural_key)


def _matrix_section(title: str, cells: Mapping[Pair, Counts], *, rows: Mapping[str, str],
                    columns: Mapping[str, str], show: Callable[[Counts], float | None],
                    bad: Collection[Pair], complete: bool = True) -> tuple[list[str], list[str], list[str]]:
    """One matrix (rows and columns as {name: label}) with the `bad` cells marked, and the names of the
    rows and the columns it shows: on a large cluster only those with marked cells."""
    marked = [pair for pair, counts in cells.items() if show(counts) is not None and pair in bad]
    row_names = _pick(list(rows), [s for s, _ in marked], _FULL_MATRIX_NODES)
    column_names = _pick(list(columns), [d for _, d in marked], _FULL_MATRIX_NODES)
    if not row_names or not column_names:
        return ["", f"{title}: no cell marked among {len(rows)} rows (--output json has every cell)"], [], []
    if len(row_names) < len(rows) or len(column_names) < len(columns):
        title += (f"; showing {len(row_names)} of {len(rows)} rows and {len(column_names)} of {len(columns)} "
                  "columns, those with the most marked cells (--output json has every cell)")

    def cell(source: str, destination: str) -> str:
        if source == destination:
            return ". "
        counts = cells.get((source, destination))
        number = None if counts is None else show(counts)
        if counts is None and not complete:
            return "~ "
        if counts is None or number is None:
            return "- "
        return f"{number:.1f}" + ("!" if (source, destination) in bad else " ")

    table = _table(title, {r: rows[r] for r in row_names}, {c: columns[c] for c in column_names}, cell)
    return ["", *table], row_names, column_names


def render_text(report: Report) -> str:
    """Verdicts first, then the matrices they were read from, then a legend of shortened names."""
    matrix, thresholds = report.matrix, report.thresholds
    nodes, targets = matrix.node_names(), matrix.external_names()
    lines = [f"node-ping diagnose: {_plural(len(nodes), 'node')}, {_plural(len(targets), 'external target')}, "
             f"{report.window} up to {iso(report.at)}, from {report.url}", ""]
    lines += verdict_lines(report.verdicts)
    summary = matrix.summary
    if summary is not None:
        pairs = summary.pairs
        source = ("Summed by node-ping's recording rules (evaluated at "
                  f"{iso(summary.recorded_at)})" if summary.recorded_at is not None else "Summed in Prometheus")
        lines += ["", f"{source}: {pairs:,} pairs; the matrices show the {len(matrix.nodes):,} cells that "
                      "could be bad and the rows and columns fetched whole; ~ = below the thresholds, not fetched"
                      + (f"; {summary.left_out:,} more bad cells left out" if summary.left_out else "")]
    loss_pct = thresholds.loss_ratio * 100
    external = matrix.measured_external()
    # One set of labels for every node that heads a row, of the node matrices or the external one.
    labels = abbreviate(sorted({*nodes, *(source for source, _ in external)}, key=natural_key))
    node_labels = {node: labels[node] for node in nodes}
    # A stale node's row would show numbers from before its data stopped as if they were current.
    row_labels = {node: label for node, label in node_labels.items() if node not in matrix.stale}
    # Target labels never repeat a node's name or label, so the one legend below is unambiguous.
    target_labels = abbreviate(targets, letter="t", reserved={*labels, *labels.values()})
    shown_nodes: set[str] = set()
    shown_targets: set[str] = set()

    def loss(counts: Counts) -> float:
        return counts.loss_ratio * 100

    judged = judge(matrix, thresholds)  # the analysis's own decision: the marks are the verdicts' cells
    sections: list[tuple[str, Mapping[Pair, Counts], Mapping[str, str], Mapping[str, str],
                         Callable[[Counts], float | None], Collection[Pair]]] = []
    if row_labels:
        cells = matrix.measured_nodes()
        sections += [
            (f"Packet loss % (rows: from, columns: to; ! = a bad pair: {loss_pct:g}% or more and above the "
              "background, or in a lossy row or column; - = no data)",
             cells, row_labels, node_labels, loss, judged.lossy),
            (f"Average RTT ms (! = {thresholds.latency_ms:g} ms or more, - = no reply or no data)",
             cells, row_labels, node_labels, lambda counts: counts.rtt_avg_ms, judged.slow),
        ]
    if targets:
        sources = {source: labels[source] for source in sorted({s for s, _ in external}, key=natural_key)}
        sections.append((f"External packet loss % (rows: node, columns: external target; ! = {loss_pct:g}% or more)",
                         external, sources, target_labels, loss, judged.external_lossy))
    for title, section_cells, rows, columns, show, bad in sections:
        section, row_names, column_names = _matrix_section(
            title, section_cells, rows=rows, columns=columns, show=show, bad=bad,
            complete=summary is None or section_cells is external)
        lines += section
        shown_nodes.update(row_names)
        (shown_targets if columns is target_labels else shown_nodes).update(column_names)
    legend = [f"  {label} = {name}" for mapping, shown in ((labels, shown_nodes), (target_labels, shown_targets))
              for name, label in mapping.items() if label != name and name in shown]
    if legend:
        lines += ["", "Names:", *legend]
    return "".join(f"{line.rstrip()}\n" for line in lines)


VERDICTS_PER_KIND = 10
"""The text shows at most this many verdicts of one kind, then how many more (--output json has all)."""


def verdict_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """One line per verdict; past VERDICTS_PER_KIND of a kind, one line saying how many more."""
    lines, shown = [], Counter[str]()
    for verdict in verdicts:
        shown[verdict.kind] += 1
        if shown[verdict.kind] <= VERDICTS_PER_KIND:
            lines.append(f"* [{verdict.kind}] {verdict.message}")
    for kind, count in shown.items():
        if count > VERDICTS_PER_KIND:
            lines.append(f"* [{kind}] ... and {count - VERDICTS_PER_KIND} more {kind} verdicts (--output json has all)")
    return lines


def _cell_json(source: str, destination: str, counts: Counts, key: str) -> dict[str, Any]:
    avg = counts.rtt_avg_ms
    return {"source": source, key: destination, "sent": round(counts.sent, 3), "received": round(counts.received, 3),
            "loss_percent": round(counts.loss_ratio * 100, 3), "rtt_avg_ms": None if avg is None else round(avg, 3)}


def _naturally(cells: Mapping[Pair, Counts]) -> list[tuple[Pair, Counts]]:
    return sorted(cells.items(), key=lambda item: natural_pair_key(item[0]))


def _probers_json(report: Report) -> dict[str, dict[str, Any]]:
    """What the own metrics of each node named as stale or silent say about its prober."""
    named = {node for verdict in report.verdicts if verdict.kind in (NODE_STALE, NODE_SILENT)
             for node in verdict.nodes}
    document = {}
    for node in sorted(named, key=natural_key):
        prober = report.matrix.prober(node)
        since = prober.since_success_s
        document[node] = {"state": prober.state,
                          "last_success_seconds_before_end": None if since is None else round(since, 3),
                          "errors": {kind: round(count, 3) for kind, count in sorted(prober.errors.items())}}
    return document


def _completeness(matrix: Matrix) -> dict[str, Any]:
    """Whether "matrix" holds every pair, and if not, what was left out and the sums behind it."""
    summary = matrix.summary
    if summary is None:
        return {"matrix_complete": True, "pairs": len(matrix.measured_nodes()), "left_out": None}
    pairs = summary.pairs
    left_out = (f"{pairs - len(matrix.nodes):,} pairs below the thresholds (their sums are in \"lines\")"
                + (f", and {summary.left_out:,} bad cells over the limit of what is fetched"
                   if summary.left_out else ""))
    return {
        "matrix_complete": False, "pairs": pairs, "left_out": left_out,
        "bad_cells_left_out": summary.left_out,
        "sums": ({"from": "recording rules", "evaluated_at": iso(summary.recorded_at)}
                 if summary.recorded_at is not None else {"from": "queries"}),
        "background_loss_percent": round(summary.background * 100, 3),
        "lines": [{"node": node, "direction": direction, "pairs": line.pairs, "sent": round(line.sent, 3),
                   "loss_percent": round(line.loss_ratio * 100, 3)}
                  for (direction, node), line in sorted(summary.lines.items(),
                                                        key=lambda item: (natural_key(item[0][1]), item[0][0]))],
    }


def render_json(report: Report) -> str:
    """The verdicts with their evidence numbers, and the whole matrix, for scripts."""
    matrix, thresholds = report.matrix, report.thresholds
    document = {
        "healthy": report.healthy,
        "prometheus": report.url,
        "range": report.window,
        "time": report.at,
        "thresholds": {"loss_percent": round(thresholds.loss_ratio * 100, 6), "latency_ms": thresholds.latency_ms},
        "verdicts": [
            {"kind": v.kind, "nodes": list(v.nodes), "targets": list(v.targets),
             "groups": {group: list(members) for group, members in v.groups.items()}, "message": v.message,
             "summary": dict(v.summary),
             "evidence": [{"source": e.source, "destination": e.destination, "loss_percent": e.loss_percent,
                           "rtt_avg_ms": e.rtt_avg_ms} for e in v.evidence]}
            for v in report.verdicts
        ],
        "nodes": matrix.node_names(),
        "external_targets": matrix.external_names(),
        # Left out of "matrix" and "external": their numbers are from before their data stopped.
        "stale_nodes": {node: None if ago is None else round(ago, 3)
                        for node, ago in sorted(matrix.stale.items(), key=lambda item: natural_key(item[0]))},
        "probers": _probers_json(report),
        "places": {node: {"zone": place.zone, "rack": place.rack}
                   for node, place in sorted(matrix.places.items(), key=lambda item: natural_key(item[0]))},
        **_completeness(matrix),
        # The other paths: only their cells at or above the loss threshold are fetched.
        "paths": {path: {"mtu": cells.mtu or None,
                         "lossy_cells": [_cell_json(s, d, c, "destination") for (s, d), c in _naturally(cells.cells)]}
                  for path, cells in sorted(matrix.paths.items())},
        "matrix": [_cell_json(s, d, c, "destination") for (s, d), c in _naturally(matrix.measured_nodes())],
        "external": [_cell_json(s, t, c, "target") for (s, t), c in _naturally(matrix.measured_external())],
        "warnings": list(report.warnings),
    }
    return json.dumps(document, indent=2) + "\n"
