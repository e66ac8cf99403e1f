"""The monitoring files as tests see them: load them, substitute Grafana variables, run promtool.

`alert_expressions()` and `dashboard_queries()` are also meant for end-to-end tests that evaluate
every alert expression and dashboard query against a live Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
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
        for rule in group["rules"]:
            for silencer in re.findall(r'ALERTS\{alertname="(\w+)"', rule["expr"]):
                assert silencer in seen, f"{rule['alert']} reads ALERTS of {silencer}, which must come first"
                checked += 1
            seen.append(rule["alert"])
    return checked
