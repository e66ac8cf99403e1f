"""Recording rules that keep, for one window, every sum a summed diagnosis needs (`pushdown`).

Without them, a diagnosis of a large cluster makes about ten passes over every pair series: 1,000
nodes in full mesh are a million pairs, and each pass takes Prometheus seconds. With them,
Prometheus makes those passes on its own schedule, and diagnose reads O(nodes + bad pairs) recorded
series. The rules are written once, here, from the PromQL diagnose would ask (`promql`);
scripts/generate_monitoring.py writes them into monitoring/node-ping.recording.yaml and the chart.

diagnose uses them when `node_ping:diagnose_rules:info{range="<its --range>"}` was evaluated within
two of its intervals (+ GRACE_S), its thresholds are no lower than the ones recorded (the rules
keep only pairs at or above theirs) and every other rule wrote its series in that evaluation;
otherwise it asks Prometheus directly, and says which it did.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from node_ping import contract
from node_ping.diagnose.judge import Thresholds
from node_ping.diagnose.prometheus import Prometheus
from node_ping.diagnose.promql import D, NodeExprs, PathExprs, S, number

GROUP = "node-ping.diagnose"
INFO = "node_ping:diagnose_rules:info"
MAX_AGE_S = 150.0
"""Recorded sums older than this are not used when the rules do not say their interval."""
GRACE_S = 30.0
"""Recorded sums are used up to two intervals and this much old: one evaluation may be missed or slow."""
DEFAULT_RANGE = "15m"
"""The window recorded by default: diagnose's default --range."""
DEFAULT_INTERVAL = "1m"
EMPTY = -1
"""The value of the series without labels a rule writes when it finds nothing."""
PATHS = {"mtu": contract.NODE.mtu_metrics, "pod": (contract.POD.packets_sent, contract.POD.packets_received)}
"""The paths besides the node family's small pings whose lossy pairs are recorded, as queries.py names them."""

_NODE = contract.NODE.packets_sent.name.removesuffix("_packets_sent_total")
_PAIR_LEVEL = f"{S}_{D}"


def _base(metrics: tuple[contract.Metric, contract.Metric]) -> str:
    return metrics[0].name.removesuffix("_packets_sent_total")


@dataclass(frozen=True)
class Names:
    """The recorded series for one window."""

    window: str

    def line(self, label: str, what: str) -> str:
        """A row's (`label` source_node) or column's pairs, pings sent or received."""
        if what == "pairs":
            return f"{label}:{_NODE}_pairs:count"
        return f"{label}:{_NODE}_packets_{what}:increase{self.window}"

    @property
    def lossy(self) -> str:
        return f"{_PAIR_LEVEL}:{_NODE}_lossy:ratio{self.window}"

    @property
    def slow(self) -> str:
        return f"{_PAIR_LEVEL}:{_NODE}_slow_rtt_ms:avg{self.window}"

    @property
    def worst(self) -> str:
        return f"{_PAIR_LEVEL}:{_NODE}_worst:ratio{self.window}"

    def blocks(self, by: str) -> str:
        return f"{by}:{_NODE}_pairs:count"

    def path_lossy(self, path: str) -> str:
        return f"{_PAIR_LEVEL}:{_base(PATHS[path])}_lossy:ratio{self.window}"

    def path_lossy_sent(self, path: str) -> str:
        return f"{_PAIR_LEVEL}:{_base(PATHS[path])}_lossy_packets_sent:increase{self.window}"

    def path_pairs(self, path: str, label: str) -> str:
        return f"{label}:{_base(PATHS[path])}_pairs:count"

    def every(self) -> list[str]:
        """Every recorded series but the info one, in the order of the rules."""
        return [record for record, _expr in _rules(self.window, 0.0, 0.0)]


def rules(window: str, interval: str, loss_ratio: float | str, latency_ms: float | str) -> list[dict[str, Any]]:
    """The recording rules, in order: `record`, `expr`, and `labels` for the info series, the last.
    `interval`: the group's, which the info series tells diagnose."""
    info = {"range": window, "interval": interval, "loss_ratio": number(loss_ratio), "latency_ms": number(latency_ms)}
    # Each rule writes one series without labels, EMPTY, when it finds nothing: an evaluation that
    # found no lossy pair then differs from one that failed (a query limit, a timeout), which
    # writes nothing and would otherwise read as a healthy cluster.
    # The info series comes last: Prometheus writes each rule's series before it evaluates the next,
    # so once the info series of an evaluation is there, every other rule's of it is too.
    return [*({"record": record, "expr": f"({expr}) or on () vector({EMPTY})"}
              for record, expr in _rules(window, loss_ratio, latency_ms)),
            {"record": INFO, "expr": "vector(1)", "labels": info}]


def _rules(window: str, loss_ratio: float | str, latency_ms: float | str) -> Iterator[tuple[str, str]]:
    names, exprs = Names(window), NodeExprs(window, loss_ratio, latency_ms)
    for label in (S, D):
        for what in ("pairs", "sent", "received"):
            yield names.line(label, what), exprs.line(label, what)
    yield names.lossy, exprs.lossy
    yield names.slow, exprs.too_slow
    yield names.worst, exprs.worst
    for by in ("zone", "rack"):
        yield names.blocks(by), exprs.blocks(by)
    for path, metrics in PATHS.items():
        path_exprs = PathExprs(metrics, window, loss_ratio)
        yield names.path_lossy(path), path_exprs.lossy
        # The pairs the rule above just wrote (a rule sees the earlier ones of its evaluation): one
        # pass over the path's series instead of three.
        yield names.path_lossy_sent(path), path_exprs.sent_of(f"{names.path_lossy(path)} >= 0")
        for label in (S, D):
            yield names.path_pairs(path, label), path_exprs.line_pairs(label)


@dataclass(frozen=True)
class Recorded:
    """Recording rules diagnose can read: their names, and when they were last evaluated."""

    names: Names
    evaluated_at: float


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?")


def max_age_s(interval: str | None) -> float:
    """How old recorded sums may be: two of the rules' intervals and GRACE_S (a Prometheus duration
    in hours, minutes and seconds, as the chart writes it), or MAX_AGE_S when it cannot tell."""
    match = _DURATION.fullmatch(interval or "")
    if not interval or match is None:
        return MAX_AGE_S
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return 2 * (hours * 3600 + minutes * 60 + seconds) + GRACE_S


def find(prometheus: Prometheus, window: str, thresholds: Thresholds, at: float) -> Recorded | None:
    """The rules recording `window`, if Prometheus evaluated them lately (`max_age_s`) before `at`,
    every rule of that evaluation wrote its series, and they keep every pair at or above
    `thresholds`; None means ask Prometheus directly."""
    usable = []
    for labels, evaluated in prometheus.query(f'timestamp({INFO}{{range="{window}"}})', at):
        loss_ratio, latency_ms = _float(labels.get("loss_ratio")), _float(labels.get("latency_ms"))
        if (loss_ratio is not None and latency_ms is not None
                and 0 <= at - evaluated <= max_age_s(labels.get("interval"))
                and loss_ratio <= thresholds.loss_ratio and latency_ms <= thresholds.latency_ms):
            usable.append(Recorded(Names(window), evaluated))
    newest = max(usable, key=lambda recorded: recorded.evaluated_at, default=None)
    return newest if newest is not None and _all_written(prometheus, newest, at) else None


def _all_written(prometheus: Prometheus, recorded: Recorded, at: float) -> bool:
    """Whether every rule wrote its series in the evaluation of the info series (or a later one):
    a rule that failed leaves older samples, or none."""
    names = recorded.names.every()
    selector = "{__name__=~" + json.dumps("|".join(re.escape(name) for name in names)) + "}"
    newest = {labels.get("rule", ""): value for labels, value in prometheus.query(
        f'max by (rule) (timestamp(label_replace({selector}, "rule", "$1", "__name__", "(.+)")))', at)}
    return all(newest.get(name, float("-inf")) >= recorded.evaluated_at - 0.001 for name in names)
