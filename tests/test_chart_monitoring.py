"""What the chart ships for monitoring: templates/prometheusrule.yaml (node-ping's alerts as a
PrometheusRule) and templates/dashboard-configmap.yaml (the Grafana dashboard for the sidecar).

Both the template and monitoring/node-ping.rules.yaml are written from monitoring/src/alerts.yaml
by scripts/generate_monitoring.py (tests/test_generated.py fails while either is stale). Here: with
default values the PrometheusRule's groups equal the rules file, values.yaml's defaults are the
source's, and the dashboard ConfigMap carries monitoring/node-ping-dashboard.json. Values change
exactly the expressions, durations and words they name, and promtool accepts and evaluates the
result. The PrometheusRule is a CRD without a schema in kubernetes-validate, so its structure is
checked here; the ConfigMap is validated against the Kubernetes schemas by tests/test_chart.py
(scenario ci/monitoring-values.yaml).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from node_ping.contract import NODE
from tests.support.chart import CHART, NAMESPACE, SCENARIOS, Rendered, render
from tests.support.promtools import (
    ALERTS_SOURCE,
    DASHBOARD_FILE,
    GRAFANA_DEFAULTS,
    RECORDING_FILE,
    RULES_FILE,
    assert_silencers_come_first,
    iter_panels,
    load_dashboard,
    load_rules,
    promql_test,
    run_promtool,
    substitute,
)

MONITORING_SCENARIO = SCENARIOS["monitoring-values.yaml"]

# Limits the dashboard ConfigMap must stay under: the API server rejects a ConfigMap whose data
# exceeds 1 MiB, and client-side `kubectl apply` (and tools built on it) copies the whole object
# into the annotation kubectl.kubernetes.io/last-applied-configuration, where all annotations
# together may hold 256 KiB.
CONFIGMAP_DATA_LIMIT = 1024 * 1024
ANNOTATIONS_LIMIT = 256 * 1024

DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def with_rules(values: dict[str, Any] | None = None, *, recording: bool = False) -> dict[str, Any]:
    """`values` with the PrometheusRule turned on; its recording rules (tests/test_recording_rules.py)
    only with `recording`, so that every group here holds alerts."""
    merged = copy.deepcopy(values or {})
    rule = merged.setdefault("prometheusRule", {})
    rule["enabled"] = True
    rule.setdefault("recordingRules", {}).setdefault("enabled", recording)
    return merged


def tuned(key: str, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Values that turn the PrometheusRule on and set prometheusRule.alerts.<key>."""
    return with_rules({"prometheusRule": {"alerts": {key: settings}}, **extra})


def rule_groups(rendered: Rendered) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = rendered.one("PrometheusRule")["spec"]["groups"]
    return groups


def rules_by_alert(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def file_rules() -> dict[str, dict[str, Any]]:
    return rules_by_alert(load_rules()["groups"])


def write_rules(groups: list[dict[str, Any]], directory: Path, name: str = "chart.rules.yaml") -> Path:
    """The groups as a plain rules file, as Prometheus gets them from the operator."""
    path = directory / name
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def check_rules(path: Path) -> None:
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def replace_each(text: str, edits: list[tuple[str, str]]) -> str:
    """Apply (old, new) replacements; an `old` that is not in the text is a broken test case."""
    for old, new in edits:
        assert old in text, f"{old!r} not in {text!r}"
        text = text.replace(old, new)
    return text


# Textfile prefixes with the files each must and must not match: the one regex metacharacter a
# prefix may hold (values.schema.json allows letters, digits, '_', '-' and '.') matches only itself.
PREFIXES = [
    ("node-ping_", "node-ping_a.prom", "other_a.prom"),
    ("nping_", "nping_a.prom", "node-ping_a.prom"),
    ("np.v2-", "np.v2-a.prom", "npXv2-a.prom"),
    ("np-b.", "np-b.a.prom", "np-b_a.prom"),
]


def assert_textfile_age_of(expr: str, matched: str, unmatched: str, tmp_path: Path) -> None:
    """`expr` is the age of the files node-exporter read whose name is `matched`, not `unmatched`."""
    # Both files were last written at time 0, so at 10m both are 600 s old. node-exporter puts the
    # full path in the `file` label (a PromQL string: quotes and backslashes escaped).
    def file_label(name: str) -> str:
        path = "/var/run/node-exporter-textfile/" + name
        return 'file="' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'

    series = {f"node_textfile_mtime_seconds{{{file_label(name)}}}": "0x10" for name in (matched, unmatched)}
    # The panel picks the oldest files over the dashboard's range: here the whole 10 minutes.
    case = {"expr": substitute(expr, {**GRAFANA_DEFAULTS, "__range": "10m"}), "eval_time": "10m",
            "exp_samples": [{"labels": f"{{{file_label(matched)}}}", "value": 600}]}
    result = promql_test(tmp_path, series, [case])
    assert result.returncode == 0, result.stdout + result.stderr


class TestInstall:
    """`helm install` with the monitoring scenario creates both objects next to the exporter."""

    def test_install(self) -> None:
        with helm.Config(namespace=NAMESPACE, storage_driver="memory") as config:
            release = config.install(CHART, "node-ping", MONITORING_SCENARIO, dry_run="client")
        kinds = [obj["kind"] for obj in yaml.safe_load_all(release["manifest"]) if obj]
        assert kinds.count("PrometheusRule") == 1
        assert kinds.count("ConfigMap") == 2  # the targets and the dashboard


class TestRulesFileIsTheTruth:
    """With default values the PrometheusRule carries monitoring/node-ping.rules.yaml unchanged."""

    def test_off_by_default(self, chart: helm.Chart) -> None:
        assert not render(chart).has("PrometheusRule")

    def test_groups_equal_the_rules_file(self, chart: helm.Chart) -> None:
        *groups, recording = rule_groups(render(chart, with_rules(recording=True)))
        assert recording == yaml.safe_load(RECORDING_FILE.read_text(encoding="utf-8"))["groups"][0]
        expected = load_rules()["groups"]
        # Group by group and rule by rule first, so that a failure names the rule that drifted.
        assert [g["name"] for g in groups] == [g["name"] for g in expected]
        for got, want in zip(groups, expected, strict=True):
            assert [r["alert"] for r in got["rules"]] == [r["alert"] for r in want["rules"]], got["name"]
            for got_rule, want_rule in zip(got["rules"], want["rules"], strict=True):
                assert got_rule == want_rule, (
                    f"{want_rule['alert']} rendered with default values differs from {RULES_FILE.name}")
        assert groups == expected

    def test_defaults_of_every_alert_are_the_files(self, chart: helm.Chart) -> None:
        """values.yaml names the file's thresholds: one entry per alert, the same `for` and severity."""
        alerts = chart.values["prometheusRule"]["alerts"]
        rules = file_rules()
        names = {key: "NodePing" + key[0].upper() + key[1:] for key in alerts}
        assert sorted(names.values()) == sorted(rules)
        for key, name in names.items():
            assert alerts[key]["enabled"] is True
            assert alerts[key]["for"] == rules[name]["for"], name
            assert alerts[key]["severity"] == rules[name]["labels"]["severity"], name
            if "range" in alerts[key]:
                assert f"[{alerts[key]['range']}]" in rules[name]["expr"], name

    def test_defaults_are_the_sources(self, chart: helm.Chart) -> None:
        """values.yaml's prometheusRule defaults are exactly the params, `for` and severity that
        monitoring/src/alerts.yaml gives each alert, and its runbook document."""
        source = yaml.safe_load(ALERTS_SOURCE.read_text(encoding="utf-8"))
        values = chart.values["prometheusRule"]
        assert values["runbookUrl"] == source["runbook_url"]
        declared = {rule["alert"]: rule for group in source["groups"] for rule in group["rules"]}
        assert sorted(values["alerts"]) == sorted(name[len("NodePing"):][0].lower() + name[len("NodePing") + 1:]
                                                  for name in declared)
        for key, settings in values["alerts"].items():
            rule = declared["NodePing" + key[0].upper() + key[1:]]
            expected = {"enabled": True, **rule.get("params", {}), "for": rule["for"], "severity": rule["severity"]}
            assert settings == expected, f"prometheusRule.alerts.{key} in values.yaml differs from {ALERTS_SOURCE.name}"


@dataclass(frozen=True)
class Tuning:
    """Values for one alert, and the edits they must make to that alert's rule in the rules file."""

    key: str
    settings: dict[str, Any]
    expr: list[tuple[str, str]]
    description: list[tuple[str, str]] = field(default_factory=list)

    @property
    def alert(self) -> str:
        return "NodePing" + self.key[0].upper() + self.key[1:]

    def expected(self, rule: dict[str, Any]) -> dict[str, Any]:
        want = copy.deepcopy(rule)
        want["expr"] = replace_each(rule["expr"], self.expr)
        want["annotations"]["description"] = replace_each(rule["annotations"]["description"], self.description)
        want["for"] = self.settings.get("for", rule["for"])
        want["labels"]["severity"] = self.settings.get("severity", rule["labels"]["severity"])
        return want


TUNINGS = [
    Tuning("nodeUnreachable",
           {"threshold": 0.1, "minNodes": 3, "nodeShare": 0.75, "range": "10m", "for": "15m", "severity": "page"},
           [("[2m]", "[10m]"), (") > 0.05", ") > 0.1"), (">= 2", ">= 3"), ("\n> 0.5\n", "\n> 0.75\n")],
           [("more than 5%", "more than 10%")]),
    Tuning("nodeCannotReachPeers",
           {"threshold": 0.025, "minNodes": 4, "nodeShare": 0.3, "range": "3m", "for": "3m", "severity": "warning"},
           [("[2m]", "[3m]"), (") > 0.05", ") > 0.025"), (">= 2", ">= 4"), ("\n> 0.5\n", "\n> 0.3\n")],
           [("more than 5%", "more than 2.5%")]),
    # The window also bounds how long after NodePingNodeUnreachable fired the alert stays silent.
    Tuning("nodeIntermittentLoss",
           {"threshold": 0.02, "minNodes": 3, "nodeShare": 0.6, "range": "2h", "for": "30m", "severity": "critical"},
           [("[1h]", "[2h]"), (") > 0.01", ") > 0.02"), (">= 2", ">= 3"), ("\n> 0.5\n", "\n> 0.6\n")],
           [("more than 1%", "more than 2%"), ("over the last 1 hour", "over the last 2 hours")]),
    # The window also bounds how long after a node alert the pair stays silent.
    Tuning("packetLoss", {"threshold": 0.02, "range": "1h", "for": "15m", "severity": "critical"},
           [("[5m]", "[1h]"), (") > 0.05", ") > 0.02")],
           [("over the last 5 minutes", "over the last 1 hour")]),
    Tuning("highLatency", {"threshold": 7.5, "range": "30m", "for": "1h", "severity": "info"},
           [("[5m]", "[30m]"), ("\n> 50\n", "\n> 7.5\n")],
           [("over the last 5 minutes", "over the last 30 minutes"), ("threshold 50 ms", "threshold 7.5 ms")]),
    Tuning("externalTargetDown", {"threshold": 0.3, "minNodes": 5, "nodeShare": 0.9, "range": "15m", "for": "2m"},
           [("[5m]", "[15m]"), (") > 0.5", ") > 0.3"), (">= 2", ">= 5"), ("\n> 0.5\n", "\n> 0.9\n")],
           [("more than half", "more than 30%")]),
    Tuning("externalTargetUnreachable", {"threshold": 0.8, "range": "90s", "for": "10m", "severity": "critical"},
           [("[5m]", "[90s]"), (") > 0.5", ") > 0.8")],
           [("over the last 5 minutes", "over the last 90 seconds")]),
    # The window also bounds how long after NodePingNodeUnreachable the alert stays silent.
    Tuning("podNodeUnreachable",
           {"threshold": 0.1, "minNodes": 3, "nodeShare": 0.75, "range": "10m", "for": "15m", "severity": "page"},
           [("[2m]", "[10m]"), (") > 0.05", ") > 0.1"), (") <= 0.05", ") <= 0.1"), (">= 2", ">= 3"),
            ("\n> 0.5\n", "\n> 0.75\n")],
           [("more than 5%", "more than 10%"), ("at most 5%", "at most 10%")]),
    Tuning("podPacketLoss", {"threshold": 0.02, "range": "1h", "for": "15m", "severity": "critical"},
           [("[5m]", "[1h]"), (") > 0.05", ") > 0.02"), (") <= 0.05", ") <= 0.02")],
           [("over the last 5 minutes", "over the last 1 hour"), ("at most 5%", "at most 2%")]),
    Tuning("nodeMtuBlackHole",
           {"threshold": 0.3, "passThreshold": 0.02, "minPackets": 9, "minNodes": 3, "nodeShare": 0.6,
            "range": "15m", "for": "5m", "severity": "critical"},
           [("[5m]", "[15m]"), (") > 0.1", ") > 0.3"), (") <= 0.05", ") <= 0.02"), (">= 20)", ">= 9)"),
            (">= 2", ">= 3"), ("\n> 0.5\n", "\n> 0.6\n")],
           [("more than 10%", "more than 30%"), ("over the last 5 minutes", "over the last 15 minutes"),
            ("at most 5%", "at most 2%")]),
    Tuning("mtuBlackHole",
           {"threshold": 0.5, "passThreshold": 0.01, "minPackets": 6, "range": "10m", "for": "2m", "severity": "info"},
           [("[5m]", "[10m]"), (") > 0.15", ") > 0.5"), (") <= 0.05", ") <= 0.01"), (">= 20)", ">= 6)")],
           [("over the last 5 minutes", "over the last 10 minutes"), ("at most 5%", "at most 1%")]),
    Tuning("textfileStale", {"threshold": 900, "for": "20m", "severity": "critical"}, [("> 300", "> 900")]),
    Tuning("noRecentSuccess", {"threshold": 120, "for": "1m"}, [("> 300", "> 120")]),
    Tuning("errors", {"threshold": 3, "range": "1m", "for": "1h30m"},
           [("[5m]", "[1m]"), ("> 0\n", "> 3\n")],
           [("in the last 5 minutes", "in the last 1 minute"), ("for 10 minutes", "for 1h30m")]),
    Tuning("exporterMissing", {"range": "30m", "for": "2h", "severity": "info"}, [("[5m]", "[30m]")]),
]


class TestTuning:
    """Each alert's values change its expression, `for`, severity and the words of its description,
    and nothing else; the tuned rules still pass promtool."""

    def test_every_alert_has_a_case(self, chart: helm.Chart) -> None:
        assert sorted(t.key for t in TUNINGS) == sorted(chart.values["prometheusRule"]["alerts"])

    @pytest.mark.parametrize("tuning", TUNINGS, ids=lambda t: t.key)
    def test_values_edit_only_their_rule(self, chart: helm.Chart, tuning: Tuning) -> None:
        rendered = rules_by_alert(rule_groups(render(chart, tuned(tuning.key, tuning.settings))))
        original = file_rules()
        assert rendered[tuning.alert] == tuning.expected(original[tuning.alert])
        for name, rule in original.items():
            if name != tuning.alert:
                assert rendered[name] == rule, f"tuning {tuning.key} changed {name}"

    def test_all_tuned_at_once_pass_promtool(self, chart: helm.Chart, tmp_path: Path) -> None:
        values = with_rules({
            "prometheusRule": {"alerts": {t.key: t.settings for t in TUNINGS},
                               "additionalRuleLabels": {"team": "network"}},
            "textfile": {"prefix": "np.v2-"},
        })
        groups = rule_groups(render(chart, values))
        rules = rules_by_alert(groups)
        for tuning in TUNINGS:
            assert rules[tuning.alert]["for"] == tuning.settings.get("for", file_rules()[tuning.alert]["for"])
        check_rules(write_rules(groups, tmp_path))

    def test_ci_scenario_passes_promtool(self, chart: helm.Chart, tmp_path: Path) -> None:
        groups = rule_groups(render(chart, MONITORING_SCENARIO))
        rules = rules_by_alert(groups)
        assert "NodePingExporterMissing" not in rules  # disabled in the scenario
        assert "[10m]" in rules["NodePingPacketLoss"]["expr"]
        assert rules["NodePingErrors"]["labels"] == {"severity": "info", "team": "network"}
        recording = {rule["record"]: rule for rule in groups[-1]["rules"]}
        assert recording["node_ping:diagnose_rules:info"]["labels"]["range"] == "5m"
        assert "[5m]" in recording["destination_node:kube_node_ping_packets_received:increase5m"]["expr"]
        check_rules(write_rules(groups, tmp_path))

    def test_tuned_threshold_and_for_change_when_an_alert_fires(self, chart: helm.Chart, tmp_path: Path) -> None:
        """A pair losing 3% of its pings: quiet with the default 5% threshold; pending, then firing
        10 minutes later, with a 2% threshold and `for: 10m`."""
        sent, received = NODE.packets_sent.name, NODE.packets_received.name
        series = {
            f'{sent}{{source_node="a", destination_node="b"}}': "0+60x20",
            f'{received}{{source_node="a", destination_node="b"}}': "0+58.2x20",
            f'{sent}{{source_node="b", destination_node="a"}}': "0+60x20",
            f'{received}{{source_node="b", destination_node="a"}}': "0+60x20",
        }
        query = 'ALERTS{alertname="NodePingPacketLoss"}'

        def expect(minute: int, state: str | None) -> dict[str, Any]:
            labels = (f'ALERTS{{alertname="NodePingPacketLoss", alertstate="{state}", severity="warning", '
                      'source_node="a", destination_node="b"}')
            return {"expr": query, "eval_time": f"{minute}m",
                    "exp_samples": [{"labels": labels, "value": 1}] if state else []}

        default = write_rules(rule_groups(render(chart, with_rules())), tmp_path, "default.rules.yaml")
        result = promql_test(tmp_path, series, [expect(minute, None) for minute in (2, 11, 20)],
                             rule_files=[default.name])
        assert result.returncode == 0, result.stdout + result.stderr

        tuned_rules = write_rules(rule_groups(render(chart, tuned("packetLoss", {"threshold": 0.02, "for": "10m"}))),
                                  tmp_path, "tuned.rules.yaml")
        # Loss is visible from the 1m sample on (increase() needs two samples); `for: 10m` fires at 11m.
        cases = [expect(2, "pending"), expect(10, "pending"), expect(11, "firing"), expect(20, "firing")]
        result = promql_test(tmp_path, series, cases, rule_files=[tuned_rules.name])
        assert result.returncode == 0, result.stdout + result.stderr


class TestDisabling:
    """A disabled alert is gone; the alert it silenced loses that `unless` line and alerts alone."""

    @pytest.mark.parametrize(("key", "silenced", "line"), [
        ("nodeUnreachable", "NodePingPacketLoss",
         'unless on (destination_node) max_over_time(ALERTS{alertname="NodePingNodeUnreachable"}[5m])\n'),
        ("nodeUnreachable", "NodePingNodeIntermittentLoss",
         'unless on (destination_node) max_over_time(ALERTS{alertname="NodePingNodeUnreachable", '
         'alertstate="firing"}[1h])\n'),
        ("nodeCannotReachPeers", "NodePingPacketLoss",
         'unless on (source_node) max_over_time(ALERTS{alertname="NodePingNodeCannotReachPeers"}[5m])\n'),
        ("externalTargetDown", "NodePingExternalTargetUnreachable",
         'unless on (destination_name) ALERTS{alertname="NodePingExternalTargetDown"}\n'),
        ("textfileStale", "NodePingNoRecentSuccess",
         'unless on (instance, path) ALERTS{alertname="NodePingTextfileStale"}\n'),
    ])
    def test_disabled_silencer(self, chart: helm.Chart, tmp_path: Path, key: str, silenced: str, line: str) -> None:
        groups = rule_groups(render(chart, tuned(key, {"enabled": False})))
        rules = rules_by_alert(groups)
        original = file_rules()
        assert "NodePing" + key[0].upper() + key[1:] not in rules
        assert rules[silenced]["expr"] == replace_each(original[silenced]["expr"], [(line, "")])
        assert len(rules) == len(original) - 1
        check_rules(write_rules(groups, tmp_path))

    def test_a_group_without_rules_is_left_out(self, chart: helm.Chart) -> None:
        exporter_alerts = ("textfileStale", "noRecentSuccess", "errors", "exporterMissing")
        values = with_rules({"prometheusRule": {"alerts": {key: {"enabled": False} for key in exporter_alerts}}})
        assert [g["name"] for g in rule_groups(render(chart, values))] == ["node-ping.network"]

    def test_all_disabled(self, chart: helm.Chart) -> None:
        values = with_rules({"prometheusRule": {"alerts": {
            key: {"enabled": False} for key in chart.values["prometheusRule"]["alerts"]}}})
        assert rule_groups(render(chart, values)) == []
        values["prometheusRule"]["recordingRules"]["enabled"] = True
        assert [g["name"] for g in rule_groups(render(chart, values))] == ["node-ping.diagnose"]


class TestRuleOptions:
    """Object metadata, rule labels, runbook links and the textfile prefix."""

    def test_metadata(self, chart: helm.Chart) -> None:
        rule = render(chart, MONITORING_SCENARIO).one("PrometheusRule")
        assert rule["metadata"]["name"] == "node-ping"
        assert rule["metadata"]["namespace"] == NAMESPACE
        # What kube-prometheus-stack's ruleSelector matches, next to the chart's own labels.
        assert rule["metadata"]["labels"]["release"] == "kps"
        assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "node-ping"

    def test_namespace_annotations_and_common_labels(self, chart: helm.Chart) -> None:
        values = with_rules({"prometheusRule": {"namespace": "prometheus", "annotations": {"owner": "network"}},
                             "commonLabels": {"team": "network"}, "commonAnnotations": {"contact": "ops"}})
        metadata = render(chart, values).one("PrometheusRule")["metadata"]
        assert metadata["namespace"] == "prometheus"
        assert metadata["annotations"] == {"owner": "network", "contact": "ops"}
        assert metadata["labels"]["team"] == "network"

    def test_additional_rule_labels(self, chart: helm.Chart) -> None:
        values = with_rules({"prometheusRule": {"alerts": {"highLatency": {"severity": "info"}},
                                                "additionalRuleLabels": {"team": "network", "severity": "ignored"}}})
        rules = rules_by_alert(rule_groups(render(chart, values)))
        original = file_rules()
        for name, rule in rules.items():
            # severity is set per alert and wins over additionalRuleLabels.
            severity = "info" if name == "NodePingHighLatency" else original[name]["labels"]["severity"]
            assert rule["labels"] == {"team": "network", "severity": severity}, name

    def test_runbook_url(self, chart: helm.Chart) -> None:
        base = "https://git.example.com/node-ping/blob/main/monitoring/README.md"
        rules = rules_by_alert(rule_groups(render(chart, with_rules({"prometheusRule": {"runbookUrl": base}}))))
        assert rules
        for name, rule in rules.items():
            assert rule["annotations"]["runbook_url"] == f"{base}#{name.lower()}"

    @pytest.mark.parametrize(("prefix", "matched", "unmatched"), PREFIXES)
    def test_textfile_prefix(self, chart: helm.Chart, tmp_path: Path, prefix: str, matched: str,
                             unmatched: str) -> None:
        """NodePingTextfileStale watches the files this release writes, `<textfile.prefix>*.prom`."""
        rules = rules_by_alert(rule_groups(render(chart, with_rules({"textfile": {"prefix": prefix}}))))
        assert_textfile_age_of(rules["NodePingTextfileStale"]["expr"], matched, unmatched, tmp_path)


class TestPrometheusRuleStructure:
    """The PrometheusRule has the shape the Prometheus Operator's CRD accepts (no schema for it in
    kubernetes-validate): spec.groups of named groups with alerting rules of string fields."""

    @pytest.mark.parametrize("values", [with_rules(recording=True), MONITORING_SCENARIO],
                             ids=["defaults", "ci-monitoring"])
    def test_structure(self, chart: helm.Chart, values: dict[str, Any]) -> None:
        rule = render(chart, values).one("PrometheusRule")
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
        assert DNS_SUBDOMAIN.match(rule["metadata"]["name"])
        assert set(rule["spec"]) == {"groups"}
        groups = rule["spec"]["groups"]
        assert len({g["name"] for g in groups}) == len(groups)
        *alert_groups, recording = groups
        # The recording rules: an interval, records with a valid metric name, the info series' labels.
        assert recording["name"] == "node-ping.diagnose" and DURATION.match(recording["interval"])
        assert all(METRIC_NAME.match(item["record"]) and isinstance(item["expr"], str) for item in recording["rules"])
        assert all(set(item) <= {"record", "expr", "labels"} for item in recording["rules"])
        for group in alert_groups:
            assert set(group) == {"name", "rules"} and group["rules"], group["name"]
            for item in group["rules"]:
                assert set(item) == {"alert", "expr", "for", "labels", "annotations"}, item.get("alert")
                assert isinstance(item["alert"], str) and isinstance(item["expr"], str)
                assert DURATION.match(item["for"]), item["for"]
                for section in ("labels", "annotations"):
                    assert all(isinstance(k, str) and isinstance(v, str) for k, v in item[section].items())
                assert all(LABEL_NAME.match(name) for name in item["labels"])

    def test_silencing_alerts_come_first_in_the_same_group(self, chart: helm.Chart) -> None:
        """A rule sees another rule's ALERTS in the same evaluation only if that rule is earlier in the group."""
        assert assert_silencers_come_first(rule_groups(render(chart, MONITORING_SCENARIO))) == 12


class TestValuesSchema:
    """values.schema.json rejects mistyped alert settings before anything is rendered."""

    @pytest.mark.parametrize(("values", "where"), [
        ({"alerts": {"packetLoss": {"threshold": 5}}}, "/prometheusRule/alerts/packetLoss/threshold"),  # 5 = 500%
        ({"alerts": {"packetLoss": {"threshold": "0.05"}}}, "/prometheusRule/alerts/packetLoss/threshold"),
        ({"alerts": {"packetLoss": {"range": "5 minutes"}}}, "/prometheusRule/alerts/packetLoss/range"),
        ({"alerts": {"packetLoss": {"for": ""}}}, "/prometheusRule/alerts/packetLoss/for"),
        ({"alerts": {"packetLoss": {"severity": ""}}}, "/prometheusRule/alerts/packetLoss/severity"),
        ({"alerts": {"packetLoss": {"treshold": 0.1}}}, "treshold"),
        ({"alerts": {"packetloss": {"threshold": 0.1}}}, "packetloss"),
        ({"alerts": {"nodeUnreachable": {"minNodes": 0}}}, "/prometheusRule/alerts/nodeUnreachable/minNodes"),
        ({"alerts": {"nodeIntermittentLoss": {"range": "1 hour"}}},
         "/prometheusRule/alerts/nodeIntermittentLoss/range"),
        ({"alerts": {"textfileStale": {"range": "5m"}}}, "range"),  # the textfile alert has no window
        ({"additionalRuleLabels": {"team-name": "network"}}, "team-name"),  # not a Prometheus label name
        ({"additionalRuleLabels": {"tier": 1}}, "/prometheusRule/additionalRuleLabels/tier"),
        ({"runbookUrl": ""}, "/prometheusRule/runbookUrl"),
    ])
    def test_rejects(self, chart: helm.Chart, values: dict[str, Any], where: str) -> None:
        with pytest.raises(helm.HelmValuesError) as info:
            chart.validate_schema(chart.merge_values({"prometheusRule": values}))
        assert where in str(info.value)

    def test_dashboard_labels_are_strings(self, chart: helm.Chart) -> None:
        with pytest.raises(helm.HelmValuesError, match="/grafanaDashboard/labels/grafana_dashboard"):
            chart.validate_schema(chart.merge_values({"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}}))


class TestDashboardConfigMap:
    """The dashboard reaches Grafana's sidecar unchanged, with the sidecar's label."""

    def test_off_by_default(self, chart: helm.Chart) -> None:
        names = [cm["metadata"]["name"] for cm in render(chart).all("ConfigMap")]
        assert names == ["node-ping-config"]

    def test_configmap(self, chart: helm.Chart) -> None:
        configmap = render(chart, MONITORING_SCENARIO).one("ConfigMap", "node-ping-dashboard")
        metadata = configmap["metadata"]
        assert metadata["namespace"] == NAMESPACE
        assert metadata["labels"]["grafana_dashboard"] == "1"
        assert metadata["annotations"] == {"grafana_folder": "Network"}
        assert list(configmap["data"]) == ["node-ping.json"]
        # Exactly the file: Grafana's own {{...}} legend formats are not touched by Helm.
        text = configmap["data"]["node-ping.json"]
        assert text == DASHBOARD_FILE.read_text(encoding="utf-8")
        assert "{{" in text
        assert json.loads(text)["uid"] == "node-ping"

    @pytest.mark.parametrize(("prefix", "matched", "unmatched"), PREFIXES)
    def test_textfile_age_panel_follows_the_prefix(self, chart: helm.Chart, tmp_path: Path, prefix: str,
                                                   matched: str, unmatched: str) -> None:
        values = {"grafanaDashboard": {"enabled": True}, "textfile": {"prefix": prefix}}
        rendered = json.loads(render(chart, values).one("ConfigMap", "node-ping-dashboard")["data"]["node-ping.json"])
        (age,) = [target for panel in iter_panels(rendered["panels"]) if panel.get("title") == "Textfile age"
                  for target in panel["targets"]]
        assert_textfile_age_of(age["expr"], matched, unmatched, tmp_path)
        # Nothing else in the dashboard changes.
        (shipped,) = [target for panel in iter_panels(load_dashboard()["panels"])
                      if panel.get("title") == "Textfile age" for target in panel["targets"]]
        age["expr"] = shipped["expr"]
        assert rendered == load_dashboard()

    def test_fits_the_size_limits(self, chart: helm.Chart) -> None:
        configmap = render(chart, MONITORING_SCENARIO).one("ConfigMap", "node-ping-dashboard")
        data = sum(len(value.encode()) for value in configmap["data"].values())
        assert data < CONFIGMAP_DATA_LIMIT
        assert len(json.dumps(configmap).encode()) < ANNOTATIONS_LIMIT, \
            "too big for client-side `kubectl apply`, which keeps a copy in an annotation"

    def test_namespace_and_other_sidecar_label(self, chart: helm.Chart) -> None:
        """A sidecar configured with another label: drop the default one (null) and add it."""
        values = {"grafanaDashboard": {"enabled": True, "namespace": "grafana",
                                       "labels": {"grafana_dashboard": None, "dashboards": "node-ping"}}}
        metadata = render(chart, values).one("ConfigMap", "node-ping-dashboard")["metadata"]
        assert metadata["namespace"] == "grafana"
        assert metadata["labels"]["dashboards"] == "node-ping"
        assert "grafana_dashboard" not in metadata["labels"]
        assert "annotations" not in metadata


class TestNotes:
    """NOTES.txt says where the alerts and the dashboard went, only when they were created."""

    def test_monitoring_scenario(self, chart: helm.Chart) -> None:
        notes = render(chart, MONITORING_SCENARIO).notes
        assert f"kubectl -n {NAMESPACE} get prometheusrule node-ping --show-labels" in notes
        assert "ConfigMap node-ping-dashboard" in notes

    def test_defaults(self, chart: helm.Chart) -> None:
        notes = render(chart).notes
        assert "prometheusrule" not in notes and "node-ping-dashboard" not in notes
