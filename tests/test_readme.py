"""README.md says what the code does: its env vars, metric names and chart values are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

from node_ping.probe.config import RUN_SETTINGS
from node_ping.probe.export import Snapshot, TargetRow, render
from node_ping.probe.report import summarize

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


class TestReadme:
    """The tables users copy from."""

    def test_configuration_env_vars_and_flags_exist(self) -> None:
        """Every row of the table is a declared setting of `run`, with its env var, and every
        declared setting with an env var has a row."""
        table = section("Configuration")
        rows = re.findall(r"^\| (?:`([A-Z_]+)`)? ?\| `(--[a-z-]+)` \|", table, flags=re.MULTILINE)
        declared = {(setting.env or "", setting.flag) for setting in RUN_SETTINGS if setting.flag != "--verbose"}
        assert set(rows) == declared

    def test_every_metric_in_the_tables_is_exported(self) -> None:
        text = render(Snapshot(source_node="n", nodes=(TargetRow(("a", "10.0.0.1"), 1, 1, 1.0, summarize([1.0])),),
                               external=(TargetRow(("b", "h"), 1, 1, 1.0, summarize([1.0])),),
                               cycle_duration_s=1.0, probe_duration_s=1.0, cycle_nominal_s=1.0, last_success_ts=1.0))
        exported = set(re.findall(r"^# TYPE (\S+)", text, flags=re.MULTILINE))
        exported |= {name + "_total" for name in exported}
        documented = set(re.findall(r"^\| `([a-z_]+)(?:\{[a-z]+\})?` \|", section("Metrics"), flags=re.MULTILINE))
        assert documented and documented <= exported, documented - exported
        external = {name.replace("kube_node_ping_", "external_ping_") for name in documented
                    if name.startswith("kube_node_ping_") and "exceptions" not in name}
        assert external <= exported

    def test_chart_value_rows_match_the_charts_readme(self) -> None:
        chart_rows = set((ROOT / "charts/node-ping/README.md").read_text().splitlines())
        rows = [line for line in section("Deploy with Helm").splitlines() if line.startswith("| `")]
        assert len(rows) > 10
        assert [row for row in rows if row not in chart_rows] == []
