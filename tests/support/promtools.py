"""The monitoring files as tests see them: load them, substitute Grafana variables, run promtool.

`alert_expressions()` and `dashboard_queries()` are also meant for end-to-end tests that evaluate
every alert expression and dashboard query against a live Prometheus. `promise_tests()` writes the
"Promise" unit tests of the rules test file: cluster scenarios (a dark node, 20% loss, blackouts, a
day of healthy noise) as the counters node-ping writes, cycle by cycle.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from node_ping import contract

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
ALERTS_SOURCE = MONITORING / "src" / "alerts.yaml"
"""The one source of the alerts: scripts/generate_monitoring.py writes RULES_FILE and the chart's
PrometheusRule template from it."""
RULES_FILE = MONITORING / "node-ping.rules.yaml"
RECORDING_FILE = MONITORING / "node-ping.recording.yaml"
RULES_TEST_FILE = MONITORING / "node-ping.rules.test.yaml"
DASHBOARD_FILE = MONITORING / "node-ping-dashboard.json"
MONITORING_README = MONITORING / "README.md"

# Values Grafana would put in for its built-in and our template variables: the whole range of a
# short dashboard, a rate interval of four 15 s scrapes, and "All" (Grafana's allValue `.*`).
GRAFANA_DEFAULTS: Mapping[str, str] = {
    "__range": "5m",
    "__rate_interval": "1m",
    "__interval": "1m",
    "source": ".*",
    "destination": ".*",
    "external": ".*",
}

METRIC_CONTRACT: frozenset[str] = frozenset(
    [metric.name for metric in contract.ALL_METRICS]
    # The pod-network prober's family, both MTU probes and where each node sits.
    + [metric.name for metric in (*contract.POD.metrics, *contract.NODE.mtu_metrics, *contract.POD.mtu_metrics,
                                  contract.NODE_INFO)]
    + [
        # Added by node-exporter's textfile collector.
        "node_textfile_mtime_seconds",
        "node_textfile_scrape_error",
        # Written by Prometheus itself for every pending or firing alert.
        "ALERTS",
    ]
)
"""Every metric the rules and the dashboard may use: the exporter's contract plus node-exporter's."""


def promtool() -> str:
    """Path of promtool; fails loudly, because a skipped check would pass without checking."""
    path = shutil.which("promtool")
    if path is None:
        raise FileNotFoundError("promtool not found on PATH: install it with `apt-get install prometheus`")
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool with `args`; the caller asserts on the return code and shows the output."""
    # The rules' unit tests take about a minute of CPU (a day of a cluster, evaluated every 15 s):
    # room for a machine that runs other tests beside them.
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)


# ---- alert rules

def load_rules() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(RULES_FILE.read_text(encoding="utf-8")))


def alert_rules() -> dict[str, dict[str, Any]]:
    """Every alerting rule of the rules file, by alert name, in file order."""
    rules: dict[str, dict[str, Any]] = {}
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rules[rule["alert"]] = rule
    return rules


def alert_expressions() -> dict[str, str]:
    """The PromQL expression of every alert, by alert name.

    Expressions that silence pair alerts while a node alert is active read `ALERTS`; without the
    rules loaded into that Prometheus, they return what the pair condition alone returns.
    """
    return {name: str(rule["expr"]).strip() for name, rule in alert_rules().items()}


# ---- dashboard

@dataclass(frozen=True)
class DashboardTarget:
    """One query of one panel, as written in the dashboard (Grafana variables not substituted)."""

    panel_title: str
    ref_id: str
    expr: str
    instant: bool

    @property
    def key(self) -> str:
        return f"{self.panel_title} [{self.ref_id}]"


def load_dashboard() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(DASHBOARD_FILE.read_text(encoding="utf-8")))


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """All panels, including those inside collapsed rows (which keep their panels nested)."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_targets(dashboard: dict[str, Any] | None = None) -> list[DashboardTarget]:
    """Every Prometheus query of every panel, in dashboard order."""
    board = load_dashboard() if dashboard is None else dashboard
    return [
        DashboardTarget(panel["title"], target["refId"], target["expr"], bool(target.get("instant")))
        for panel in iter_panels(board["panels"])
        for target in panel.get("targets", [])
    ]


_VARIABLE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::\w+)?\}|(?P<plain>[A-Za-z_]\w*))")


def substitute(expr: str, values: Mapping[str, str] = GRAFANA_DEFAULTS) -> str:
    """Replace Grafana variables (`$name`, `${name}`, `${name:format}`) in a query.

    Raises KeyError for a variable without a value, so a query never reaches Prometheus with a
    stray `$`. Regex back-references like `"$1"` in label_replace are not variables and stay.
    """
    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in: {expr}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def dashboard_queries(values: Mapping[str, str] = GRAFANA_DEFAULTS) -> dict[str, str]:
    """Every dashboard query with Grafana variables substituted, by "panel title [refId]"."""
    return {target.key: substitute(target.expr, values) for target in dashboard_targets()}


_WORST = re.compile(r"(?P<value>.+)\nand on \((?P<on>[^)]*)\)\n(?P<function>topk|bottomk)\((?P<k>\d+),\n"
                    r"(?P<rank>.+)\n\)", re.DOTALL)


@dataclass(frozen=True)
class Worst:
    """A graph query that draws only the worst series over the dashboard's range:
    `<value>\nand on (<labels>)\ntopk(<k>,\n<rank>\n)` (or bottomk). `rank` is evaluated once, at
    the end of the range (`@ end()`), so the same k series are drawn at every step."""

    value: str
    on: frozenset[str]
    function: str
    k: int
    rank: str


def worst(expr: str) -> Worst | None:
    """The parts of a worst-k graph query; None if `expr` does not have that form."""
    match = _WORST.fullmatch(expr)
    if match is None:
        return None
    labels = frozenset(label.strip() for label in match.group("on").split(","))
    return Worst(match.group("value"), labels, match.group("function"), int(match.group("k")), match.group("rank"))


# ---- PromQL

def check_expressions(exprs: Mapping[str, str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """Parse every expression with `promtool check rules`, each as an alerting rule named by its key.

    An alert name may be any text, so promtool's parse errors name the offending query.
    """
    rules = [{"alert": name, "expr": expr} for name, expr in exprs.items()]
    path = workdir / "queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}, sort_keys=False,
                                   allow_unicode=True), encoding="utf-8")
    return run_promtool("check", "rules", str(path))


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*+)(?!\s*\()")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                       "unless", "offset", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (by lexing, not a full parser: enough for our queries)."""
    text = _STRING.sub('""', expr)
    text = _SELECTOR.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def promql_test(workdir: Path, input_series: Mapping[str, str], cases: list[dict[str, Any]],
                rule_files: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Evaluate PromQL on made-up series with `promtool test rules` (promql_expr_test cases).

    `input_series` maps a series selector to promtool's expanding notation ("0+60x10"), scraped
    every minute; each case is {"expr", "eval_time", "exp_samples": [{"labels", "value"}]}.
    """
    test_file = {
        "rule_files": rule_files or [],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": series, "values": values} for series, values in input_series.items()],
            "promql_expr_test": cases,
        }],
    }
    path = workdir / "queries.test.yaml"
    path.write_text(yaml.safe_dump(test_file, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return run_promtool("test", "rules", str(path))


def assert_silencers_come_first(groups: list[dict[str, Any]]) -> int:
    """A rule sees another rule's ALERTS in the same evaluation only if that rule is earlier in the
    group: assert that for every `ALERTS{alertname="X"}` a rule reads, and return how many there are."""
    checked = 0
    for group in groups:
        seen: list[str] = []
        for rule in (rule for rule in group["rules"] if "alert" in rule):
            for silencer in re.findall(r'ALERTS\{alertname="(\w+)"', rule["expr"]):
                assert silencer in seen, f"{rule['alert']} reads ALERTS of {silencer}, which must come first"
                checked += 1
            seen.append(rule["alert"])
    return checked


# ---- the "Promise" tests of RULES_TEST_FILE: a cluster's counters, cycle by cycle

CYCLE_S, PINGS = 30, 30
"""node-ping's default cycle: 30 pings a second apart, the counters written at its end."""
FAULT_S = 600
"""When a fault starts in a promise test: 10m, a cycle boundary."""
NODES = ("a", "b", "c", "d")

Value = float | str | None
"""A sample for promtool: a number, "stale", or None for a missed scrape."""
Fault = tuple[float, float]
"""Seconds [start, end) in which every ping is lost."""


def _number(value: float) -> str:
    value = round(value, 4)
    return str(int(value)) if value.is_integer() else repr(value)


def expanding(values: list[Value]) -> str:
    """Samples in promtool's expanding notation: runs of equal steps as `a+bxn`, misses as `_xn`."""
    out, i = [], 0
    while i < len(values):
        value = values[i]
        if not isinstance(value, float):
            j = i
            while j + 1 < len(values) and values[j + 1] == value:
                j += 1
            out.append(("_" if j == i else f"_x{j - i + 1}") if value is None else " ".join(["stale"] * (j - i + 1)))
            i = j + 1
            continue
        j = i
        step = 0.0
        if i + 1 < len(values) and isinstance(values[i + 1], float):
            step = round(cast(float, values[i + 1]) - value, 4)
            j = i + 1
            while j + 1 < len(values) and isinstance(values[j + 1], float) \
                    and round(cast(float, values[j + 1]) - cast(float, values[j]), 4) == step:
                j += 1
        if j == i:
            out.append(_number(value))
        else:
            out.append(f"{_number(value)}{'+' if step >= 0 else '-'}{_number(abs(step))}x{j - i}" if step
                       else f"{_number(value)}x{j - i}")
        i = j + 1
    return " ".join(out)


def counter(n: int, delta: Callable[[int], float], *, start: int = 0, stale: int | None = None,
            resets: frozenset[int] = frozenset(), missing: frozenset[int] = frozenset()) -> list[Value]:
    """A counter's n samples: sample i adds delta(i); it appears at `start`, goes stale at `stale`,
    restarts from 0 at each of `resets`, and is not scraped at `missing`."""
    values: list[Value] = []
    total = 0.0
    for i in range(n):
        if i < start or (stale is not None and i > stale):
            values.append(None)
        elif i == stale:
            values.append("stale")
        else:
            total = (0.0 if i in resets else total) + delta(i)
            values.append(None if i in missing else total)
    return values


def series_yaml(name: str, labels: Mapping[str, str], values: list[Value]) -> str:
    selector = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return f"      - series: {name}{{{selector}}}\n        values: {expanding(values)}\n"


def pair_yaml(source: str, destination: str, n: int, sent: Callable[[int], float],
              received: Callable[[int], float], **kwargs: Any) -> str:
    labels = {contract.SOURCE: source, contract.NODE.destination: destination}
    return (series_yaml(contract.NODE.packets_sent.name, labels, counter(n, sent, **kwargs))
            + series_yaml(contract.NODE.packets_received.name, labels, counter(n, received, **kwargs)))


MTU_PINGS = 3
"""Don't-fragment pings of the MTU probe per node target per cycle, 10 s apart (within the issue's
budget of 10% more packets than the 30 small pings)."""
MTU = "1500"
"""The size the promise tests' MTU probe proves, its `mtu` label."""


def family_pair_yaml(family: contract.PingFamily, pair: tuple[str, str], n: int,
                     sent: Callable[[int], float], received: Callable[[int], float], **kwargs: Any) -> str:
    """pair_yaml of a (source, destination) for any family: the pod-network prober's as well as the host's."""
    labels = {contract.SOURCE: pair[0], family.destination: pair[1]}
    return (series_yaml(family.packets_sent.name, labels, counter(n, sent, **kwargs))
            + series_yaml(family.packets_received.name, labels, counter(n, received, **kwargs)))


def mtu_pair_yaml(source: str, destination: str, n: int, sent: Callable[[int], float],
                  received: Callable[[int], float], **kwargs: Any) -> str:
    """The host MTU probe's pair of counters, labelled with the size it proves."""
    labels = {contract.SOURCE: source, contract.NODE.destination: destination, contract.MTU: MTU}
    return (series_yaml(contract.NODE.mtu_packets_sent.name, labels, counter(n, sent, **kwargs))
            + series_yaml(contract.NODE.mtu_packets_received.name, labels, counter(n, received, **kwargs)))


def lost(cycle_start: float, faults: list[Fault]) -> int:
    """Pings of the cycle starting at `cycle_start` (one a second, mid-second) lost to any fault."""
    return sum(1 for k in range(PINGS) if any(a <= cycle_start + k + 0.5 < b for a, b in faults))


def cycles(step: int, faults: list[Fault]) -> tuple[Callable[[int], float], Callable[[int], float]]:
    """(sent, received) per sample at `step`-second scrapes. Sample i at t = i*step carries the cycle
    whose pings ran in [t - 30 - 2*step, t - 2*step]: written at its end, scraped up to one scrape
    later, seen by an evaluation up to one evaluation after that. At 15 s every other sample adds
    nothing."""
    def sent(i: int) -> float:
        return float(PINGS) if (i * step) % CYCLE_S == 0 else 0.0

    def received(i: int) -> float:
        return sent(i) - lost(i * step - CYCLE_S - 2 * step, faults) if sent(i) else 0.0

    return sent, received


def mtu_cycles(step: int, faults: list[Fault]) -> tuple[Callable[[int], float], Callable[[int], float]]:
    """`cycles` for the MTU probe: MTU_PINGS a cycle, at 0.5 s, 10.5 s and 20.5 s into it."""
    def sent(i: int) -> float:
        return float(MTU_PINGS) if (i * step) % CYCLE_S == 0 else 0.0

    def received(i: int) -> float:
        start = i * step - CYCLE_S - 2 * step
        gone = sum(1 for k in range(MTU_PINGS) if any(a <= start + 10 * k + 0.5 < b for a, b in faults))
        return sent(i) - gone if sent(i) else 0.0

    return sent, received


def duration(seconds: float) -> str:
    """600 -> "10m", 690 -> "11m30s", 86400 -> "24h"."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n) or "0s"


def _unreachable(node: str) -> str:
    return (f"          - exp_labels: {{severity: critical, destination_node: {node}}}\n"
            "            exp_annotations:\n"
            f"              summary: Most nodes cannot reach node {node}.\n"
            "              description: >-\n"
            f"                100% of the nodes that ping {node} lose more than 5% of their packets to it. The\n"
            "                problem is on that node (network interface, firewall, CNI, overload), not on one\n"
            "                link.\n"
            "              runbook_url: monitoring/README.md#nodepingnodeunreachable\n")


def _packet_loss(source: str, destination: str, share: str) -> str:
    return (f"          - exp_labels: {{severity: warning, source_node: {source}, destination_node: {destination}}}\n"
            "            exp_annotations:\n"
            f"              summary: Packet loss from {source} to {destination}.\n"
            f"              description: {source} lost {share} of its pings to {destination} over the last 5 minutes.\n"
            "              runbook_url: monitoring/README.md#nodepingpacketloss\n")


def _expect(seconds: float, alert: str, alerts: str = "") -> str:
    if not alerts:
        return f"      - {{eval_time: {duration(seconds)}, alertname: {alert}, exp_alerts: []}}\n"
    return f"      - eval_time: {duration(seconds)}\n        alertname: {alert}\n        exp_alerts:\n{alerts}"


def _cluster(n: int, step: int, to: Mapping[str, list[Fault]] | None = None,
             pairs: Mapping[tuple[str, str], list[Fault]] | None = None, dark_from: Mapping[str, float] | None = None
             ) -> str:
    """NODES pinging each other; `to` loses pings to a node from every source, `pairs` on one link;
    an exporter in `dark_from` can no longer be scraped from then on."""
    text = ""
    for source in NODES:
        dark = (dark_from or {}).get(source)
        missing = frozenset(i for i in range(n) if dark is not None and i * step >= dark)
        for destination in NODES:
            if source != destination:
                faults = [*(to or {}).get(destination, []), *(pairs or {}).get((source, destination), [])]
                text += pair_yaml(source, destination, n, *cycles(step, faults), missing=missing)
    return text


def _block(step: int, minutes: int, title: str, series: Callable[[int], str], tests: str) -> str:
    n = minutes * 60 // step + 1
    return f"  # {title}\n  - interval: {step}s\n    input_series:\n{series(n)}    alert_rule_test:\n{tests}"


def _dark(step: int) -> str:
    seen = FAULT_S + CYCLE_S + 2 * step  # the first lost cycle reaches an evaluation
    tests = (_expect(FAULT_S, "NodePingNodeUnreachable") + _expect(seen, "NodePingNodeUnreachable")
             + _expect(seen + 30, "NodePingNodeUnreachable", _unreachable("d"))
             + _expect(FAULT_S + 120, "NodePingNodeUnreachable", _unreachable("d"))
             + _expect(FAULT_S + 600, "NodePingNodeUnreachable", _unreachable("d"))
             + _expect(FAULT_S + 600, "NodePingPacketLoss") + _expect(FAULT_S + 600, "NodePingNodeIntermittentLoss"))
    title = (f"Promise: a node that goes dark for everyone fires within 2 minutes ({step} s scrapes and "
             "evaluations).\n"
             "  # Node d goes dark at 10m, just as a cycle ends (that cycle lost nothing); its own exporter can no\n"
             f"  # longer be scraped. Each sample carries the cycle that ended {2 * step} s earlier (one scrape and "
             "one\n"
             f"  # evaluation late), so the first lost cycle reaches an evaluation at {duration(seen)}: pending "
             "there,\n"
             f"  # firing one evaluation later, {seen + 30 - FAULT_S} s after the fault.")
    return _block(step, 20, title, lambda n: _cluster(n, step, to={"d": [(FAULT_S, 1e9)]},
                                                      dark_from={"d": FAULT_S + step}), tests)


EVERY_FIFTH: list[Fault] = [(FAULT_S + k, FAULT_S + k + 1) for k in range(0, 100_000, 5)]
"""From the fault on, every fifth ping lost: 20%."""


def _node_loss(step: int) -> str:
    tests = (_expect(FAULT_S, "NodePingNodeUnreachable")
             + _expect(FAULT_S + 300, "NodePingNodeUnreachable", _unreachable("d"))
             + _expect(FAULT_S + 300, "NodePingPacketLoss") + _expect(FAULT_S + 900, "NodePingPacketLoss"))
    title = (f"Promise: a node losing 20% fires within 5 minutes ({step} s scrapes and evaluations).\n"
             "  # From 10m every fifth ping to d is lost, from every source; its pairs stay silenced.")
    return _block(step, 25, title, lambda n: _cluster(n, step, to={"d": EVERY_FIFTH}), tests)


def _link_loss(step: int) -> str:
    share = {30: "16%", 15: "18%"}[step]  # the window still holds cycles from before the fault
    tests = (_expect(FAULT_S, "NodePingPacketLoss")
             + _expect(FAULT_S + 300, "NodePingPacketLoss", _packet_loss("a", "b", share))
             + _expect(FAULT_S + 300, "NodePingNodeUnreachable")
             + _expect(FAULT_S + 300, "NodePingNodeCannotReachPeers")
             + _expect(FAULT_S + 900, "NodePingNodeIntermittentLoss"))
    title = (f"Promise: a link losing 20% fires within 5 minutes ({step} s scrapes and evaluations).\n"
             "  # From 10m every fifth ping from a to b is lost; one witness, so no node alert.")
    return _block(step, 25, title, lambda n: _cluster(n, step, pairs={("a", "b"): EVERY_FIFTH}), tests)


def _blackouts(step: int) -> str:
    first, second = FAULT_S + 15, FAULT_S + 14 * 60 + 15  # 30 s each, each split over two cycles
    tests = (_expect(first - 15, "NodePingNodeUnreachable")
             + _expect(first + 105, "NodePingNodeUnreachable", _unreachable("d"))
             + _expect(first + 600, "NodePingNodeUnreachable")
             + _expect(second + 105, "NodePingNodeUnreachable", _unreachable("d"))
             + _expect(first + 15 * 60, "NodePingPacketLoss")
             + _expect(first + 40 * 60, "NodePingNodeIntermittentLoss"))
    title = (f"Promise: a node dark for 30 s twice within 15 minutes fires within 15 minutes ({step} s).\n"
             "  # d drops everything at 10m15s-10m45s and at 24m15s-24m45s, each across two cycles (15 pings\n"
             "  # lost in each): every blackout of 30 s fires within 2 minutes of its start, and resolves; the\n"
             "  # hour-long flicker alert stays silenced, the pairs too.")
    faults: list[Fault] = [(first, first + 30.0), (second, second + 30.0)]
    return _block(step, 60, title, lambda n: _cluster(n, step, to={"d": faults}), tests)


# ---- the pod network and the MTU probe beside the host path

ALWAYS: list[Fault] = [(FAULT_S, 1e9)]
"""From the fault on, every ping lost."""
EVERY_FIFTH_MTU: list[Fault] = [(FAULT_S + k, FAULT_S + k + 1) for k in range(0, 100_000, 50)]
"""From the fault on, every fifth MTU ping lost (they go out 10 s apart): 20%."""


@dataclass(frozen=True)
class Faults:
    """When one kind of ping is lost: to a node from every source, from a node to every peer, on a link."""

    to: Mapping[str, list[Fault]] = field(default_factory=dict)
    sent_by: Mapping[str, list[Fault]] = field(default_factory=dict)
    pairs: Mapping[tuple[str, str], list[Fault]] = field(default_factory=dict)

    def of(self, source: str, destination: str) -> list[Fault]:
        return [*self.to.get(destination, []), *self.sent_by.get(source, []),
                *self.pairs.get((source, destination), [])]


def _paths_cluster(n: int, step: int, *, host: Faults = Faults(), pod: Faults = Faults(), mtu: Faults = Faults(),
                   dark_from: Mapping[str, float] | None = None) -> str:
    """_cluster with both probers on every node: host pings, pod pings and the host MTU probe."""
    text = ""
    for source in NODES:
        dark = (dark_from or {}).get(source)
        missing = frozenset(i for i in range(n) if dark is not None and i * step >= dark)
        for destination in (node for node in NODES if node != source):
            text += pair_yaml(source, destination, n, *cycles(step, host.of(source, destination)), missing=missing)
            text += family_pair_yaml(contract.POD, (source, destination), n,
                                     *cycles(step, pod.of(source, destination)), missing=missing)
            text += mtu_pair_yaml(source, destination, n, *mtu_cycles(step, mtu.of(source, destination)),
                                  missing=missing)
    return text


def _alert(labels: str, name: str, summary: str, description: str) -> str:
    """One expected alert; `description` as promtool shows it, folded by YAML."""
    return (f"          - exp_labels: {{{labels}}}\n"
            "            exp_annotations:\n"
            f"              summary: \"{summary}\"\n"
            f"              description: \"{description}\"\n"
            f"              runbook_url: monitoring/README.md#{name.lower()}\n")


def _node_mtu_black_hole(node: str) -> str:
    return _alert(f"severity: warning, destination_node: {node}, mtu: '{MTU}'", "NodePingNodeMtuBlackHole",
                  f"Packets of {MTU} bytes are lost to node {node} from most nodes while small ones pass; a path "
                  f"MTU below {MTU} (switch port, VLAN, tunnel).",
                  f"100% of the nodes that ping {node} lose more than 10% of their don't-fragment packets of "
                  f"{MTU} bytes to it over the last 5 minutes, while their small pings lose at most 5%. Something "
                  f"on that node's path carries less than {MTU} bytes and drops larger packets silently (its "
                  "switch port, VLAN, a tunnel or its interface MTU): TCP connections to it hang after the "
                  "handshake.")


def _mtu_black_hole(source: str, destination: str, share: str) -> str:
    return _alert(f"severity: warning, source_node: {source}, destination_node: {destination}, mtu: '{MTU}'",
                  "NodePingMtuBlackHole",
                  f"Packets of {MTU} bytes are lost between {source} and {destination} while small ones pass; a "
                  f"path MTU below {MTU} (switch port, VLAN, tunnel).",
                  f"{source} lost {share} of its don't-fragment pings of {MTU} bytes to {destination} over the "
                  f"last 5 minutes, while its small pings lost at most 5%. A link between them carries less than "
                  f"{MTU} bytes and drops larger packets silently: TCP connections between the two hang after "
                  "the handshake.")


def _pod_node_unreachable(node: str) -> str:
    return _alert(f"severity: critical, destination_node: {node}", "NodePingPodNodeUnreachable",
                  f"Pods on most nodes cannot reach pods on node {node} while the hosts reach it; the pod network "
                  "(CNI) on that node, not the switch.",
                  f"100% of the nodes whose pods ping the pods of {node} lose more than 5% of those pings, while "
                  "their host pings to it lose at most 5%. The pod network of that node is broken (the CNI "
                  "agent, its tunnel, routes or eBPF maps), not the node's link or the switch.")


def _pod_packet_loss(source: str, destination: str, share: str) -> str:
    return _alert(f"severity: warning, source_node: {source}, destination_node: {destination}",
                  "NodePingPodPacketLoss",
                  f"Pods on {source} cannot reach pods on {destination} while the hosts reach each other; the pod "
                  "network (CNI), not the switch.",
                  f"Pods on {source} lost {share} of their pings to the pods of {destination} over the last 5 "
                  "minutes, while the hosts' own pings lost at most 5%. The pod network between the two (the "
                  "CNI's tunnel or routes) is at fault, not the link.")


def _paths_block(step: int, title: str, tests: str, **faults: Any) -> str:
    return _block(step, 25, title, lambda n: _paths_cluster(n, step, **faults), tests)


def _mtu_node(step: int) -> str:
    tests = (_expect(FAULT_S, "NodePingNodeMtuBlackHole")
             + _expect(FAULT_S + 300, "NodePingNodeMtuBlackHole", _node_mtu_black_hole("d"))
             + _expect(FAULT_S + 600, "NodePingNodeMtuBlackHole", _node_mtu_black_hole("d"))
             + _expect(FAULT_S + 300, "NodePingMtuBlackHole") + _expect(FAULT_S + 600, "NodePingMtuBlackHole")
             + _expect(FAULT_S + 600, "NodePingPacketLoss") + _expect(FAULT_S + 600, "NodePingNodeUnreachable"))
    title = (f"Promise: a node behind a port with a smaller MTU fires within 5 minutes ({step} s scrapes and "
             "evaluations).\n"
             f"  # From 10m every {MTU}-byte ping to and from d is lost; the small ones all pass. One alert about d,\n"
             "  # none about its pairs (its row and its column), and no loss alert.")
    faults = Faults(to={"d": ALWAYS}, sent_by={"d": ALWAYS})
    return _paths_block(step, title, tests, mtu=faults)


def _mtu_link(step: int) -> str:
    share = {30: "16.67%", 15: "20%"}[step]  # the window still holds cycles from before the fault
    tests = (_expect(FAULT_S, "NodePingMtuBlackHole")
             + _expect(FAULT_S + 300, "NodePingMtuBlackHole", _mtu_black_hole("a", "b", share))
             + _expect(FAULT_S + 300, "NodePingNodeMtuBlackHole") + _expect(FAULT_S + 300, "NodePingPacketLoss"))
    title = (f"Promise: a link losing 20% of its {MTU}-byte pings, while its small pings pass, fires within 5\n"
             f"  # minutes ({step} s scrapes and evaluations). From 10m every fifth MTU ping from a to b is lost.")
    return _paths_block(step, title, tests, mtu=Faults(pairs={("a", "b"): EVERY_FIFTH_MTU}))


def _link_down(step: int) -> str:
    tests = (_expect(FAULT_S + 300, "NodePingMtuBlackHole") + _expect(FAULT_S + 600, "NodePingMtuBlackHole")
             + _expect(FAULT_S + 600, "NodePingPacketLoss", _packet_loss("a", "b", "100%"))
             + _expect(FAULT_S + 600, "NodePingPodPacketLoss"))
    title = (f"Promise: a link that loses everything is a link fault, not an MTU or a pod network fault ({step} s).\n"
             "  # From 10m a loses every ping to b, small, MTU-sized and pod: NodePingPacketLoss, nothing else.")
    down = Faults(pairs={("a", "b"): ALWAYS})
    return _paths_block(step, title, tests, host=down, pod=down, mtu=down)


def _pod_node(step: int) -> str:
    tests = (_expect(FAULT_S, "NodePingPodNodeUnreachable")
             + _expect(FAULT_S + 120, "NodePingPodNodeUnreachable", _pod_node_unreachable("d"))
             + _expect(FAULT_S + 600, "NodePingPodNodeUnreachable", _pod_node_unreachable("d"))
             + _expect(FAULT_S + 600, "NodePingPodPacketLoss") + _expect(FAULT_S + 120, "NodePingNodeUnreachable"))
    title = (f"Promise: a node whose pod network breaks fires within 2 minutes ({step} s scrapes and evaluations).\n"
             "  # From 10m every pod ping to and from d is lost; its host pings pass. One alert about d, none\n"
             "  # about its pod pairs (its row and its column).")
    faults = Faults(to={"d": ALWAYS}, sent_by={"d": ALWAYS})
    return _paths_block(step, title, tests, pod=faults)


def _pod_link(step: int) -> str:
    share = {30: "16%", 15: "18%"}[step]
    tests = (_expect(FAULT_S, "NodePingPodPacketLoss")
             + _expect(FAULT_S + 300, "NodePingPodPacketLoss", _pod_packet_loss("a", "b", share))
             + _expect(FAULT_S + 300, "NodePingPodNodeUnreachable") + _expect(FAULT_S + 300, "NodePingPacketLoss"))
    title = (f"Promise: pods on a losing 20% to pods on b while the hosts pass fires within 5 minutes ({step} s\n"
             "  # scrapes and evaluations). From 10m every fifth pod ping from a to b is lost.")
    return _paths_block(step, title, tests, pod=Faults(pairs={("a", "b"): EVERY_FIFTH}))


def _dark_on_both_paths(step: int) -> str:
    tests = (_expect(FAULT_S + 120, "NodePingNodeUnreachable", _unreachable("d"))
             + "".join(_expect(FAULT_S + after, "NodePingPodNodeUnreachable") for after in (120, 300, 600))
             + _expect(FAULT_S + 600, "NodePingPodPacketLoss") + _expect(FAULT_S + 600, "NodePingNodeMtuBlackHole")
             + _expect(FAULT_S + 600, "NodePingMtuBlackHole"))
    title = (f"Promise: a node dark on the host path too is the node alert's, not the pod network's ({step} s).\n"
             "  # d goes dark at 10m for every kind of ping and its exporters can no longer be scraped:\n"
             "  # NodePingNodeUnreachable only.")
    everything = Faults(to={"d": ALWAYS})
    return _block(step, 25, title, lambda n: _paths_cluster(n, step, host=everything, pod=everything, mtu=everything,
                                                            dark_from={"d": FAULT_S + step}), tests)


ALERT_NAMES = ("NodePingNodeUnreachable", "NodePingNodeCannotReachPeers", "NodePingNodeIntermittentLoss",
               "NodePingPacketLoss", "NodePingHighLatency", "NodePingExternalTargetDown",
               "NodePingExternalTargetUnreachable", "NodePingPodNodeUnreachable", "NodePingPodPacketLoss",
               "NodePingNodeMtuBlackHole", "NodePingMtuBlackHole", "NodePingTextfileStale",
               "NodePingNoRecentSuccess", "NodePingErrors", "NodePingExporterMissing")


@dataclass(frozen=True)
class Noise:
    """When, in seconds, each thing that happens to a healthy cluster happens."""

    burst: int  # a->c and b->c lose 4 more pings in the same cycle
    burst2: int  # a->b loses 5 more in each of two cycles
    restart: int  # the exporter on b restarts
    missed: int  # one scrape of c fails
    rolling: int  # the exporters of a, b, c and d restart, two minutes apart
    join: int  # node e joins; its exporter starts two minutes later
    leave: int  # node d leaves: probed no more within 90 s, shut down after 3 minutes


STOPS_PROBING_D = {"a": 0, "b": 30, "e": 60, "c": 90}
"""When each node stops probing d after it left (its copy of nodes.json changes), in seconds."""


def _noise_series(step: int, n: int, at: Noise, *, paths: bool = False) -> str:
    """The healthy cluster's series; with `paths`, each node's pod-network prober and MTU probe too."""
    def index(seconds: float) -> int:
        return int(seconds // step)

    def restarted(node: str) -> list[int]:
        times = [at.restart] if node == "b" else []
        times += [at.rolling + 120 * k for k, x in enumerate("abcd") if x == node]
        return [index(t) for t in times]

    text = ""
    for source in (*NODES, "e"):
        first = index(at.join + 120) if source == "e" else 0
        stale = index(at.leave + 180) if source == "d" else None
        missing = frozenset({index(at.missed)}) if source == "c" else frozenset()
        down = restarted(source)

        def ran(i: int, down: list[int] = down) -> bool:
            """A cycle ended for this sample, and the exporter was not restarting (old file served)."""
            return (i * step) % CYCLE_S == 0 and not any(r <= i < r + CYCLE_S // step for r in down)

        resets = frozenset(r + CYCLE_S // step for r in down)
        for destination in (*NODES, "e"):
            if source == destination:
                continue
            start, end = first, stale
            if destination == "e":
                start = max(start, index(at.join))
            if destination == "d" and source != "d":
                end = index(at.leave + STOPS_PROBING_D[source])
            background = 0.005 if source in "ad" or destination == "c" else 0.0

            def sent(i: int, ran: Callable[[int], bool] = ran) -> float:
                return float(PINGS) if ran(i) else 0.0

            def received(i: int, ran: Callable[[int], bool] = ran, pair: tuple[str, str] = (source, destination),
                         background: float = background, start: int = start) -> float:
                if not ran(i):
                    return 0.0
                t, lost_now = i * step, PINGS * background
                if pair[1] == "c" and pair[0] in "ab" and at.burst <= t < at.burst + 30:
                    lost_now += 4
                if pair == ("a", "b") and at.burst2 <= t < at.burst2 + 60:
                    lost_now += 5
                if pair[1] == "e" and i == start:
                    lost_now += 1  # the first ping to a new node waits for its address to resolve
                return PINGS - lost_now

            text += pair_yaml(source, destination, n, sent, received, start=start, stale=end, resets=resets,
                              missing=missing)
            if paths:
                # The pod-network prober sees the same as the host's; its MTU-sized pings see the
                # same random loss, one more lost in the burst, and the first to a new node.
                text += family_pair_yaml(contract.POD, (source, destination), n, sent, received, start=start,
                                         stale=end, resets=resets, missing=missing)

                def mtu_sent(i: int, ran: Callable[[int], bool] = ran) -> float:
                    return float(MTU_PINGS) if ran(i) else 0.0

                def mtu_received(i: int, ran: Callable[[int], bool] = ran,
                                 pair: tuple[str, str] = (source, destination), background: float = background,
                                 start: int = start) -> float:
                    if not ran(i):
                        return 0.0
                    lost_now = MTU_PINGS * background
                    if pair[1] == "c" and pair[0] in "ab" and at.burst <= i * step < at.burst + 30:
                        lost_now += 1
                    if pair[1] == "e" and i == start:
                        lost_now += 1
                    return MTU_PINGS - lost_now

                text += mtu_pair_yaml(source, destination, n, mtu_sent, mtu_received, start=start, stale=end,
                                      resets=resets, missing=missing)
        instance = {"instance": f"{source}:9100"}
        def wrote(i: int, ran: Callable[[int], bool] = ran) -> float:
            return float(CYCLE_S) if ran(i) else 0.0

        written = counter(n, wrote, start=first, stale=stale, missing=missing)
        mtime: list[Value] = [v - 60 + first * step if isinstance(v, float) else v for v in written]
        text += series_yaml("node_textfile_mtime_seconds",
                            {**instance, "file": f"/var/lib/prometheus/node-exporter/node-ping_{source}.prom"}, mtime)
        text += series_yaml(contract.LAST_SUCCESS.name, {**instance, contract.SOURCE: source}, mtime)

        def constant(value: float, first: int = first, stale: int | None = stale,
                     missing: frozenset[int] = missing) -> list[Value]:
            return counter(n, lambda i: value if i == first else 0.0, start=first, stale=stale, missing=missing)

        text += series_yaml(contract.ERRORS.name, {**instance, contract.SOURCE: source, "kind": "fping"}, constant(0))
        text += series_yaml(contract.BUILD_INFO.name, {**instance, contract.SOURCE: source, "version": "0.1.0"},
                            constant(1))
        if paths:
            # The pod-network prober on the same node-exporter: its own textfile, its own metrics.
            pod = {**instance, contract.SOURCE: source, contract.PATH: contract.POD_PATH}
            text += series_yaml("node_textfile_mtime_seconds",
                                {**instance, "file": f"/var/lib/prometheus/node-exporter/node-ping-pod_{source}.prom"},
                                mtime)
            text += series_yaml(contract.LAST_SUCCESS.name, pod, mtime)
            text += series_yaml(contract.ERRORS.name, {**pod, "kind": "fping"}, constant(0))
            text += series_yaml(contract.BUILD_INFO.name, {**pod, "version": "0.1.0"}, constant(1))
    return text


def _noise(step: int, hours: int, at: Noise, title: str, pending: list[tuple[str, str]], *,
           paths: bool = False) -> str:
    n = hours * 3600 // step + 1
    window = f"{hours}h"
    expected = "".join(f"          - labels: '{{alertname=\"{alert}\", alertstate=\"pending\", "
                       f"destination_node=\"{node.split()[0]}\", "
                       + (f"path=\"{node.split()[1]}\", " if " " in node else "")
                       + "severity=\"warning\"}'\n            value: 1\n"
                       for alert, node in pending)
    return (f"  # {title}\n  - interval: {step}s\n    input_series:\n{_noise_series(step, n, at, paths=paths)}"
            "    alert_rule_test:\n"
            + "".join(f"      - {{eval_time: {window}, alertname: {alert}, exp_alerts: []}}\n" for alert in ALERT_NAMES)
            + "    promql_expr_test:\n"
            f"      # Not one alert fired at any evaluation of the {window}.\n"
            f"      - expr: max_over_time(ALERTS{{alertstate=\"firing\"}}[{window}])\n"
            f"        eval_time: {window}\n        exp_samples: []\n"
            "      # Pending at some evaluation: only what `for` exists to wait out.\n"
            f"      - expr: max_over_time(ALERTS[{window}])\n        eval_time: {window}\n"
            f"        exp_samples:\n{expected}")


_DAY = """Promise: a healthy cluster raises nothing over 24 hours (30 s scrapes).
  # Nodes a-d, 30-ping cycles, one sample a cycle, 0.5% random loss on the pairs from a and d and to c.
  # 2h: a->c and b->c lose 4 more pings in the same cycle; 2h30m: a->b loses 5 more in each of two
  # cycles. 3h: the exporter on b restarts (a cycle missed, counters reset). 5h: one scrape of c
  # fails. 8h: a rolling update restarts the exporters of a, b, c and d, two minutes apart. 10h:
  # node e joins: the others ping it at once (their first ping to it is lost), its own exporter
  # starts two minutes later. 14h: node d leaves: the others stop probing it over 90 s as their
  # copies of nodes.json change, and it shuts down three minutes after.
  # Nothing fires; only NodePingExporterMissing (a node pinged before or after its exporter runs)
  # and NodePingNodeIntermittentLoss (one lost ping among the first to a new node) are pending for a
  # while, which their `for` waits out."""

_SHORT = """Promise: the same at 15 s scrapes: the counters move at every other scrape (30 s cycles), and
  # the same events within 2 hours (bursts at 10m and 15m, b restarts at 20m, a missed scrape at 30m,
  # the rolling update from 40m, e joins at 1h, d leaves at 1h20m). The hour-long alert is pending
  # for c early on, while its window holds little else than the 0.5% loss and the burst.
  # Here every node runs both probers: the host one with its MTU probe (3 pings of 1500 bytes a
  # cycle, the same 0.5% loss, one more lost in the burst and the first to a new node lost) and the
  # pod-network one (path="pod": its own textfile and self metrics, the same pings on the pod
  # network). Nothing more is pending than NodePingExporterMissing for each prober of d and e."""


def promise_tests() -> str:
    """The "Promise" tests at the end of RULES_TEST_FILE, as they are written there."""
    hour, minute = 3600, 60
    day = Noise(2 * hour, 5 * hour // 2, 3 * hour, 5 * hour, 8 * hour, 10 * hour, 14 * hour)
    short = Noise(10 * minute, 15 * minute, 20 * minute, 30 * minute, 40 * minute, 60 * minute, 80 * minute)
    scenarios = (_dark, _node_loss, _link_loss, _blackouts, _pod_node, _pod_link, _dark_on_both_paths, _mtu_node,
                 _mtu_link, _link_down)
    blocks = [scenario(step) for scenario in scenarios for step in (30, 15)]
    missing = [("NodePingExporterMissing", node) for node in ("d", "e", "d pod", "e pod")]
    blocks.append(_noise(30, 24, day, _DAY, [*missing[:2], ("NodePingNodeIntermittentLoss", "e")]))
    blocks.append(_noise(15, 2, short, _SHORT, [*missing, ("NodePingNodeIntermittentLoss", "c")], paths=True))
    return "\n".join(blocks)
