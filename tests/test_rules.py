"""Tests of monitoring/node-ping.rules.yaml (written from monitoring/src/alerts.yaml by
scripts/generate_monitoring.py): promtool accepts it, its unit tests pass, and every alert carries
what an on-call person needs (severity, summary, description, a runbook that exists).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.promtools import (
    METRIC_CONTRACT,
    MONITORING_README,
    RULES_FILE,
    RULES_TEST_FILE,
    alert_expressions,
    alert_rules,
    assert_silencers_come_first,
    load_rules,
    metric_names,
    promise_tests,
    run_promtool,
)

SEVERITIES = {"critical", "warning", "info"}
UPDATE = os.environ.get("NODE_PING_UPDATE_GOLDEN") == "1"  # set to rewrite the "Promise" tests


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces to dashes."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def readme_anchors() -> set[str]:
    text = MONITORING_README.read_text(encoding="utf-8")
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, re.MULTILINE)}


class TestPromtool:
    """promtool accepts the rules file and every unit test of the alerts passes."""

    def test_check_rules(self) -> None:
        result = run_promtool("check", "rules", str(RULES_FILE))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_unit_tests_pass(self) -> None:
        result = run_promtool("test", "rules", RULES_TEST_FILE.name, cwd=RULES_TEST_FILE.parent)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_unit_tests_catch_a_missing_silence(self, tmp_path: Path) -> None:
        """Without the `unless ... ALERTS` lines, a cut-off node raises pair alerts and
        NodePingNodeIntermittentLoss as well, and tests fail."""
        shutil.copy(RULES_TEST_FILE, tmp_path)
        text = RULES_FILE.read_text(encoding="utf-8")
        unsilenced = re.sub(r"^\s*unless on \(\w+\) .*ALERTS\{.*\n", "", text, flags=re.MULTILINE)
        assert unsilenced != text
        (tmp_path / RULES_FILE.name).write_text(unsilenced, encoding="utf-8")
        result = run_promtool("test", "rules", RULES_TEST_FILE.name, cwd=tmp_path)
        assert result.returncode != 0
        assert "alertname: NodePingPacketLoss" in result.stdout + result.stderr
        assert "alertname: NodePingNodeIntermittentLoss" in result.stdout + result.stderr

    def test_unit_tests_catch_a_silence_that_counts_pending(self, tmp_path: Path) -> None:
        """NodePingNodeIntermittentLoss is silenced by a NodePingNodeUnreachable that fired, not one
        that is pending: a node that flickers keeps the latter pending for minutes in every ten,
        which would reset the former's `for` each time, and the flicker test fails."""
        shutil.copy(RULES_TEST_FILE, tmp_path)
        text = RULES_FILE.read_text(encoding="utf-8")
        pending_too = text.replace('alertname="NodePingNodeUnreachable", alertstate="firing"',
                                   'alertname="NodePingNodeUnreachable"')
        assert pending_too != text
        (tmp_path / RULES_FILE.name).write_text(pending_too, encoding="utf-8")
        result = run_promtool("test", "rules", RULES_TEST_FILE.name, cwd=tmp_path)
        assert result.returncode != 0
        assert "alertname: NodePingNodeIntermittentLoss, time: 1h," in result.stdout + result.stderr


def edit_alert(text: str, name: str, old: str, new: str) -> str:
    """The rules file with `old` replaced by `new` in alert `name`'s rule only."""
    start = text.index(f"- alert: {name}\n")
    end = text.find("- alert: ", start + 1)
    end = len(text) if end < 0 else end
    rule = text[start:end]
    assert old in rule, f"{old!r} not in {name}"
    return text[:start] + rule.replace(old, new) + text[end:]


def run_unit_tests(workdir: Path, rules: str | None = None, tests: str | None = None) -> str:
    """Run the unit tests in `workdir` on (edited) copies of the rules and the tests; promtool's output."""
    (workdir / RULES_FILE.name).write_text(rules or RULES_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    (workdir / RULES_TEST_FILE.name).write_text(tests or RULES_TEST_FILE.read_text(encoding="utf-8"),
                                                encoding="utf-8")
    result = run_promtool("test", "rules", RULES_TEST_FILE.name, cwd=workdir)
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == ("SUCCESS" in output), output
    return output


class TestPromises:
    """The "Promise" unit tests hold the shipped windows and `for` durations to what the alerts
    promise (a dark node within 2 minutes, 20% loss within 5 on the host path, the pod path and of
    MTU-size packets, nothing from a day of healthy noise), at 15 s and 30 s evaluations; each fails
    when the rules are slower or more eager than that."""

    def test_file_holds_the_scenarios(self) -> None:
        """The "Promise" tests are the cluster scenarios of tests/support/promtools.py, counter by
        counter (NODE_PING_UPDATE_GOLDEN=1 rewrites them)."""
        text = RULES_TEST_FILE.read_text(encoding="utf-8")
        start = text.index("  # Promise:")
        if UPDATE:
            RULES_TEST_FILE.write_text(text[:start] + promise_tests(), encoding="utf-8")
            text = RULES_TEST_FILE.read_text(encoding="utf-8")
        assert text[start:] == promise_tests(), "stale: run with NODE_PING_UPDATE_GOLDEN=1 to rewrite them"

    def test_pass_with_30s_evaluations(self, tmp_path: Path) -> None:
        text = RULES_TEST_FILE.read_text(encoding="utf-8")
        slower = text.replace("\nevaluation_interval: 15s\n", "\nevaluation_interval: 30s\n")
        assert slower != text
        output = run_unit_tests(tmp_path, tests=slower)
        assert "SUCCESS" in output, output

    def test_a_dark_node_with_the_old_windows_is_late(self, tmp_path: Path) -> None:
        """With the 5m window and `for: 5m` a node that went dark at 10m has not fired at 12m."""
        rules = RULES_FILE.read_text(encoding="utf-8")
        for name in ("NodePingNodeUnreachable", "NodePingNodeCannotReachPeers"):
            rules = edit_alert(rules, name, "[2m]", "[5m]")
            rules = edit_alert(rules, name, "for: 30s", "for: 5m")
        output = run_unit_tests(tmp_path, rules=rules)
        assert output.count("alertname: NodePingNodeUnreachable, time: 12m,") >= 2, output  # 30 s and 15 s

    def test_a_lossy_link_with_a_longer_for_is_late(self, tmp_path: Path) -> None:
        """With `for: 5m` a link losing 20% from 10m on has not fired at 15m."""
        rules = edit_alert(RULES_FILE.read_text(encoding="utf-8"), "NodePingPacketLoss", "for: 2m", "for: 5m")
        output = run_unit_tests(tmp_path, rules=rules)
        assert output.count("alertname: NodePingPacketLoss, time: 15m,") >= 2, output

    def test_pod_and_mtu_alerts_without_the_host_path_blame_the_wrong_thing(self, tmp_path: Path) -> None:
        """Without "while the hosts reach each other" (and the node alert's silence), a node dark on
        every path raises the pod network alert; without "while small pings pass", a link that is
        down raises the MTU black hole alert."""
        rules = RULES_FILE.read_text(encoding="utf-8")
        rules = edit_alert(rules, "NodePingPodNodeUnreachable", ") <= 0.05", ") <= 1")
        silence = 'unless on (destination_node) max_over_time(ALERTS{alertname="NodePingNodeUnreachable"}[2m])'
        rules = edit_alert(rules, "NodePingPodNodeUnreachable", silence, "")
        rules = edit_alert(rules, "NodePingMtuBlackHole", ") <= 0.05", ") <= 1")
        output = run_unit_tests(tmp_path, rules=rules)
        assert "alertname: NodePingPodNodeUnreachable, time: 12m," in output, output
        assert "alertname: NodePingMtuBlackHole, time: 15m," in output, output

    def test_a_more_eager_node_alert_fires_on_noise(self, tmp_path: Path) -> None:
        """At a 3% threshold, two sources losing 4 pings to one node in the same cycle page."""
        rules = edit_alert(RULES_FILE.read_text(encoding="utf-8"), "NodePingNodeUnreachable", ") > 0.05", ") > 0.03")
        output = run_unit_tests(tmp_path, rules=rules)
        assert 'expr: "max_over_time(ALERTS{alertstate=\\"firing\\"}[24h])"' in output, output


class TestAlertConventions:
    """Every alert follows the mixin conventions: CamelCase name with one prefix, severity,
    summary, description, and a runbook_url that points at a heading of monitoring/README.md."""

    def test_rules_file_is_a_plain_groups_file(self) -> None:
        rules = load_rules()
        assert set(rules) == {"groups"}
        assert all(group["name"].startswith("node-ping.") for group in rules["groups"])

    def test_there_are_alerts_for_every_failure_the_project_watches(self) -> None:
        assert set(alert_rules()) >= {
            "NodePingPacketLoss", "NodePingNodeUnreachable", "NodePingNodeCannotReachPeers",
            "NodePingNodeIntermittentLoss",
            "NodePingHighLatency", "NodePingExternalTargetUnreachable", "NodePingTextfileStale",
            "NodePingNoRecentSuccess", "NodePingErrors", "NodePingPodNodeUnreachable", "NodePingPodPacketLoss",
            "NodePingNodeMtuBlackHole", "NodePingMtuBlackHole",
        }

    @pytest.mark.parametrize("name", sorted(alert_rules()))
    def test_name_labels_and_annotations(self, name: str) -> None:
        rule = alert_rules()[name]
        assert re.fullmatch(r"NodePing(?:[A-Z][a-z0-9]*)+", name), name
        assert rule["labels"]["severity"] in SEVERITIES
        for key in ("summary", "description", "runbook_url"):
            assert str(rule["annotations"].get(key, "")).strip(), f"{name} has no {key}"
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name} fires without a `for` duration"

    @pytest.mark.parametrize("name", sorted(alert_rules()))
    def test_runbook_is_a_readme_heading(self, name: str) -> None:
        url = alert_rules()[name]["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "monitoring/README.md"
        assert anchor == github_anchor(name), "the runbook heading is the alert's name"
        assert anchor in readme_anchors(), f"monitoring/README.md has no heading '### {name}'"

    @pytest.mark.parametrize("name", sorted(alert_rules()))
    def test_only_contract_metrics(self, name: str) -> None:
        used = metric_names(alert_expressions()[name])
        assert used, f"found no metric in {name}"
        assert used <= METRIC_CONTRACT, f"{name} uses metrics outside the contract: {used - METRIC_CONTRACT}"

    def test_silencing_alerts_come_first_in_the_same_group(self) -> None:
        """A rule sees another rule's ALERTS in the same evaluation only if that rule is earlier in the group."""
        assert assert_silencers_come_first(load_rules()["groups"]) >= 10


class TestUnitTestCoverage:
    """The promtool unit tests check every alert both firing and staying quiet."""

    @staticmethod
    def _cases() -> list[dict[str, Any]]:
        tests = yaml.safe_load(RULES_TEST_FILE.read_text(encoding="utf-8"))["tests"]
        return [case for test in tests for case in test.get("alert_rule_test", [])]

    @pytest.mark.parametrize("name", sorted(alert_rules()))
    def test_alert_is_tested_firing_and_not_firing(self, name: str) -> None:
        cases = [case for case in self._cases() if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in cases), f"no test where {name} fires"
        assert any(not case.get("exp_alerts") for case in cases), f"no test where {name} stays quiet"

    def test_tests_only_name_existing_alerts(self) -> None:
        assert {case["alertname"] for case in self._cases()} <= set(alert_rules())
