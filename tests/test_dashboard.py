"""Tests of monitoring/node-ping-dashboard.json: the node-mixin conventions (datasource variable,
stable uid, tags, a unit on every panel), PromQL that promtool parses and that uses only the metric
contract, and the numbers the main panels show for a made-up cluster.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from node_ping.contract import EXTERNAL, MTU, NODE, SOURCE, Metric
from tests.support import promdata
from tests.support.promdata import Mesh, query_range
from tests.support.promtools import (
    GRAFANA_DEFAULTS,
    METRIC_CONTRACT,
    check_expressions,
    dashboard_queries,
    dashboard_targets,
    iter_panels,
    load_dashboard,
    metric_names,
    promql_test,
    substitute,
    worst,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana unit ids the dashboard may use; a typo here would show raw numbers without a unit.
KNOWN_UNITS = {"percentunit", "ms", "s", "short", "cps"}


def panels() -> list[dict[str, Any]]:
    return list(iter_panels(load_dashboard()["panels"]))


def data_panels() -> list[dict[str, Any]]:
    return [panel for panel in panels() if panel["type"] != "row"]


def panel(title: str) -> dict[str, Any]:
    (found,) = [p for p in panels() if p["title"] == title]
    return found


def variable(name: str) -> dict[str, Any]:
    variables: list[dict[str, Any]] = load_dashboard()["templating"]["list"]
    (found,) = [v for v in variables if v["name"] == name]
    return found


class TestDashboardModel:
    """The dashboard follows the node-mixin conventions and its layout is sound."""

    def test_identity(self) -> None:
        board = load_dashboard()
        assert board["uid"] == "node-ping"
        assert board["title"] == "node-ping"
        assert "node-ping" in board["tags"]
        assert board["time"]["from"].startswith("now-")

    def test_datasource_variable(self) -> None:
        ds = variable("datasource")
        assert ds["type"] == "datasource"
        assert ds["query"] == "prometheus"

    def test_every_panel_and_query_uses_the_datasource_variable(self) -> None:
        for p in data_panels():
            assert p["datasource"] == DATASOURCE, p["title"]
            for target in p["targets"]:
                assert target["datasource"] == DATASOURCE, p["title"]
        for name in ("source", "destination", "external"):
            assert variable(name)["datasource"] == DATASOURCE

    @pytest.mark.parametrize("name", ["source", "destination", "external"])
    def test_node_variables_are_multi_with_all(self, name: str) -> None:
        var = variable(name)
        assert var["type"] == "query"
        assert var["multi"] is True
        assert var["includeAll"] is True
        assert var["allValue"] == ".*"
        match = re.fullmatch(r"label_values\((\w+)(?:\{.*\})?, *(\w+)\)", var["query"]["query"])
        assert match, var["query"]
        assert match.group(1) in METRIC_CONTRACT

    def test_every_panel_has_a_unit(self) -> None:
        for p in data_panels():
            unit = p["fieldConfig"]["defaults"].get("unit")
            assert unit in KNOWN_UNITS, f"panel {p['title']!r} has unit {unit!r}"
            for override in p["fieldConfig"]["overrides"]:
                for prop in override["properties"]:
                    if prop["id"] == "unit":
                        assert prop["value"] in KNOWN_UNITS, p["title"]

    def test_ids_and_titles_are_unique(self) -> None:
        ids = [p["id"] for p in panels()]
        assert len(ids) == len(set(ids))
        titles = [p["title"] for p in data_panels()]
        assert len(titles) == len(set(titles))

    def test_panels_fit_the_grid_without_overlapping(self) -> None:
        def check(group: list[dict[str, Any]]) -> None:
            boxes = [(p["title"], p["gridPos"]) for p in group]
            for title, g in boxes:
                assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, title
            for i, (t1, a) in enumerate(boxes):
                for t2, b in boxes[i + 1:]:
                    apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                             or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
                    assert apart, f"{t1!r} overlaps {t2!r}"

        top = load_dashboard()["panels"]
        check(top)
        for row in top:
            if row["type"] == "row" and row["collapsed"]:
                check(row["panels"])


class TestSections:
    """The panels a user looks for are there and set up to show what they promise."""

    def test_pair_table_is_sorted_worst_first(self) -> None:
        for title in ("Pairs, worst first", "External targets, worst first"):
            table = panel(title)
            assert table["type"] == "table"
            assert table["options"]["sortBy"] == [{"displayName": "Loss", "desc": True}]
            renamed = table["transformations"][1]["options"]["renameByName"]
            assert {"Loss", "Average RTT", "Max RTT"} <= set(renamed.values())
            assert all(t["instant"] and "$__range" in t["expr"] for t in table["targets"])

    @pytest.mark.parametrize(("title", "column"), [
        ("Packet loss matrix (source → destination)", "destination_node"),
        ("Average RTT matrix (source → destination)", "destination_node"),
        ("External packet loss matrix (source → target)", "destination_name"),
    ])
    def test_matrices_put_sources_in_rows_and_destinations_in_columns(self, title: str, column: str) -> None:
        matrix = panel(title)
        (grouping,) = [t for t in matrix["transformations"] if t["id"] == "groupingToMatrix"]
        assert grouping["options"]["rowField"] == "source_node"
        assert grouping["options"]["columnField"] == column
        defaults = matrix["fieldConfig"]["defaults"]
        assert defaults["custom"]["cellOptions"]["type"] == "color-background"
        assert len(defaults["thresholds"]["steps"]) >= 3

    def test_a_row_repeats_per_source_node(self) -> None:
        """One row per selected source, closed: Grafana queries a closed row's panels only when it is
        opened, so a thousand sources cost a thousand row headers, not three thousand graphs."""
        top = load_dashboard()["panels"]
        (index,) = [i for i, p in enumerate(top) if p.get("repeat") == "source"]
        row = top[index]
        assert row["type"] == "row"
        assert row["collapsed"] is True
        assert index + 1 == len(top) or top[index + 1]["type"] == "row", "panels of the row left outside it"
        assert len(row["panels"]) >= 2
        for p in row["panels"]:
            assert p["targets"]
            assert all('source_node=~"$source"' in t["expr"] for t in p["targets"]), p["title"]

    def test_external_targets_section(self) -> None:
        targets = [t for t in dashboard_targets() if f"{EXTERNAL.prefix}_" in t.expr]
        assert len(targets) >= 5
        assert all(f'{EXTERNAL.destination}=~"$external"' in t.expr for t in targets)



def graph_targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of every graph panel."""
    return [(p, t) for p in data_panels() if p["type"] == "timeseries" for t in p["targets"]]


SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\{([^{}]*)\}")


class TestBoundedGraphs:
    """However many nodes, no graph draws more than the worst k series its description names: k per
    selection, and k per source in the per-source rows (each repeat has one source)."""

    def test_every_graph_draws_only_its_worst_k(self) -> None:
        """`value and on (L) topk(k, rank)` keeps at most one series of `value` per L-labels in the
        ranking's k. That holds when every aggregation in both parts is `by (L)` and every metric
        selector is aggregated (so `value` has one series per L-labels), and neither part adds series
        with `or`, `and` or `unless`."""
        for p, target in graph_targets():
            key = f"{p['title']} [{target['refId']}]"
            parts = worst(target["expr"])
            assert parts is not None, f"{key} does not draw only its worst series"
            assert 1 <= parts.k <= 10, key
            assert re.search(rf"\b{parts.k}\b", p["description"]), f"{key}: the description does not say {parts.k}"
            for part in (parts.value, parts.rank):
                assert not re.search(r"\b(?:and|or|unless|without|topk|bottomk)\b", part), key
                groupings = re.findall(r"\bby \(([^)]*)\)", part)
                assert {frozenset(g.replace(" ", "").split(",")) for g in groupings} == {parts.on}, key
                assert len(groupings) == len(SELECTOR.findall(part)), f"{key}: a selector is not aggregated"
            assert "@ end()" in parts.rank, key

    def test_variables_still_filter_the_graphs(self) -> None:
        """Both what is drawn and how it is picked follow the source and destination selectors."""
        for p, target in graph_targets():
            for name, matchers in SELECTOR.findall(target["expr"]):
                if name == "node_textfile_mtime_seconds":
                    continue  # node-exporter's own metric has no node-ping labels
                assert f'{SOURCE}=~"$source"' in matchers, p["title"]
                if name.startswith(f"{NODE.prefix}_"):
                    assert f'{NODE.destination}=~"$destination"' in matchers, p["title"]
                if name.startswith(f"{EXTERNAL.prefix}_"):
                    assert f'{EXTERNAL.destination}=~"$external"' in matchers, p["title"]

    def test_one_row_per_source_draws_k_per_source(self) -> None:
        (row,) = [p for p in panels() if p.get("repeat") == "source"]
        for p in row["panels"]:
            for target in p["targets"]:
                parts = worst(target["expr"])
                assert parts is not None and SOURCE not in parts.on, p["title"]

class TestQueries:
    """Every query parses, uses the metric contract, and works from counters over Grafana's windows."""

    def test_promtool_parses_every_query(self, tmp_path: Path) -> None:
        queries = dashboard_queries()
        assert len(queries) >= 20
        result = check_expressions(queries, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_only_contract_metrics(self) -> None:
        for key, expr in dashboard_queries().items():
            used = metric_names(expr)
            assert used, f"found no metric in {key}"
            assert used <= METRIC_CONTRACT, f"{key} uses metrics outside the contract: {used - METRIC_CONTRACT}"

    def test_every_variable_has_a_value(self) -> None:
        for target in dashboard_targets():
            assert "$" not in substitute(target.expr), target.key
        with pytest.raises(KeyError, match=r"\$nosuch"):
            substitute("up{node=~\"$nosuch\"}")
        assert substitute('label_replace(up, "a", "$1", "b", "(.*)")') == 'label_replace(up, "a", "$1", "b", "(.*)")'

    def test_windows_follow_the_dashboard(self) -> None:
        """No hard-coded window: tables cover $__range; graphs draw at $__rate_interval and pick the
        series they draw over the whole $__range, once, at its end."""
        for target in dashboard_targets():
            for window, at in re.findall(r"\[([^\]]*)\]( @ end\(\))?", target.expr):
                if target.instant:
                    assert (window, at) == ("$__range", ""), target.key
                else:
                    assert (window, at) in {("$__rate_interval", ""), ("$__range", " @ end()"),
                                            ("$__range:$__interval", " @ end()")}, target.key

    def test_counters_are_only_read_through_rate_or_increase(self) -> None:
        """Raw counter values jump back on every exporter restart; only their rate means anything."""
        for target in dashboard_targets():
            for match in re.finditer(r"(\w+)\(\s*\w+_total\b", target.expr):
                assert match.group(1) in {"rate", "increase"}, target.key
            assert len(re.findall(r"\w+_total\b", target.expr)) == len(
                re.findall(r"(?:rate|increase)\(\s*\w+_total\b", target.expr)), target.key


# A made-up cluster, scraped every minute for 10 minutes (60 pings a minute per pair):
# a->b loses 25% at 2 ms, b->a loses nothing at 1 ms, c->b loses everything (sending half as many),
# a->c loses 50% and its exporter restarted at 6m (counters back to 0), a->gone is no longer probed
# (flat counters), and node a loses half of its pings to the external target "dns".
def pair(metric: Metric, source: str, destination: str) -> str:
    """The series of a node pair's metric."""
    return f'{metric.name}{{{SOURCE}="{source}", {NODE.destination}="{destination}"}}'


def external(metric: Metric, source: str, name: str, host: str = "192.0.2.53") -> str:
    """The series of an external target's metric."""
    return f'{metric.name}{{{SOURCE}="{source}", {EXTERNAL.destination}="{name}", {EXTERNAL.address}="{host}"}}'


SENT, RECEIVED, RTT_SUM, RTT_MAX = NODE.packets_sent, NODE.packets_received, NODE.rtt_sum, NODE.rtt_max
CLUSTER = {
    pair(SENT, "a", "b"): "0+60x10",
    pair(RECEIVED, "a", "b"): "0+45x10",
    pair(RTT_SUM, "a", "b"): "0+90x10",
    pair(RTT_MAX, "a", "b"): "2 3 9 2 2 2 2 2 2 2 2",
    pair(SENT, "b", "a"): "0+60x10",
    pair(RECEIVED, "b", "a"): "0+60x10",
    pair(RTT_SUM, "b", "a"): "0+60x10",
    pair(RTT_MAX, "b", "a"): "1x10",
    pair(SENT, "c", "b"): "0+30x10",
    pair(RECEIVED, "c", "b"): "0+0x10",
    pair(RTT_SUM, "c", "b"): "0+0x10",
    pair(SENT, "a", "c"): "0+60x5 0+60x4",
    pair(RECEIVED, "a", "c"): "0+30x5 0+30x4",
    pair(RTT_SUM, "a", "c"): "0+30x5 0+30x4",
    pair(SENT, "a", "gone"): "600+0x10",
    pair(RECEIVED, "a", "gone"): "600+0x10",
    external(EXTERNAL.packets_sent, "a", "dns"): "0+60x10",
    external(EXTERNAL.packets_received, "a", "dns"): "0+30x10",
    external(EXTERNAL.packets_sent, "b", "dns"): "0+60x10",
    external(EXTERNAL.packets_received, "b", "dns"): "0+60x10",
}
WHOLE_RUN = {**GRAFANA_DEFAULTS, "__range": "10m", "__rate_interval": "10m"}


def pairs(values: dict[tuple[str, str], float], dest_label: str = "destination_node") -> list[dict[str, Any]]:
    return [{"labels": f'{{source_node="{s}", {dest_label}="{d}"}}', "value": v} for (s, d), v in values.items()]


class TestPanelValues:
    """The numbers a user reads off the main panels, computed by promtool on a made-up cluster."""

    def check(self, tmp_path: Path, expected: dict[str, list[dict[str, Any]]],
              values: dict[str, str] = WHOLE_RUN) -> None:
        queries = dashboard_queries(values)
        cases = [{"expr": queries[key], "eval_time": "10m", "exp_samples": samples}
                 for key, samples in expected.items()]
        result = promql_test(tmp_path, CLUSTER, cases)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_pair_table(self, tmp_path: Path) -> None:
        """Loss and average RTT per pair survive a restart; an unprobed pair has no row."""
        loss = pairs({("a", "b"): 0.25, ("b", "a"): 0, ("c", "b"): 1, ("a", "c"): 0.5})
        self.check(tmp_path, {
            "Pairs, worst first [A]": loss,
            "Pairs, worst first [B]": pairs({("a", "b"): 2, ("b", "a"): 1, ("a", "c"): 1}),
            "Pairs, worst first [C]": pairs({("a", "b"): 9, ("b", "a"): 1}),
            "Pairs, worst first [D]": pairs({("a", "b"): 600, ("b", "a"): 600, ("c", "b"): 300,
                                             ("a", "c"): 540}),
            "Packet loss matrix (source → destination) [A]": loss,
            "Average RTT matrix (source → destination) [A]": pairs({("a", "b"): 2, ("b", "a"): 1,
                                                                     ("a", "c"): 1}),
        })

    def test_overview_stats(self, tmp_path: Path) -> None:
        self.check(tmp_path, {
            "Pairs with loss over 5% [A]": [{"labels": "{}", "value": 3}],
            "Worst pair loss [A]": [{"labels": "{}", "value": 1}],
            "Firing node-ping alerts [A]": [{"labels": "{}", "value": 0}],
        })

    def test_loss_to_each_destination_adds_up_packets(self, tmp_path: Path) -> None:
        """b answers 450 of the 900 pings from a and c together: 50% loss (the mean of 25% and 100% is not it)."""
        self.check(tmp_path, {
            "Packet loss to each destination [A]": [
                {"labels": '{destination_node="a"}', "value": 0},
                {"labels": '{destination_node="b"}', "value": 0.5},
                {"labels": '{destination_node="c"}', "value": 0.5},
            ],
        })

    def test_source_variable_filters_the_table(self, tmp_path: Path) -> None:
        self.check(tmp_path, {
            "Pairs, worst first [A]": pairs({("a", "b"): 0.25, ("a", "c"): 0.5}),
        }, values={**WHOLE_RUN, "source": "a"})

    def test_external_table(self, tmp_path: Path) -> None:
        self.check(tmp_path, {
            "External targets, worst first [A]": pairs({("a", "dns"): 0.5, ("b", "dns"): 0}, "destination_name"),
        })


# A cluster of a few hundred nodes, its last 3 minutes backfilled into a real Prometheus. node-000
# loses 4%, 8%, ... 60% to node-001 .. node-015; node-001 .. node-015 answer node-000's pings
# in 2, 3, ... 16 ms; node-001 .. node-015 lose 4% .. 60% to the external target "dns"; node-101
# .. node-115 fail every cycle for the last 15 .. 225 s. Later nodes cycle later, use more CPU and
# see fewer node targets (promdata.dashboard_openmetrics).
SCALE_NODES = [f"node-{i:03}" for i in range(300)]
LOSSY = range(1, 16)
SCALE_MESH = Mesh(
    SCALE_NODES,
    loss={("node-000", f"node-{j:03}"): 0.04 * j for j in LOSSY},
    rtt_ms={(f"node-{j:03}", "node-000"): 1.0 + j for j in LOSSY},
    external=["dns"],
    external_loss={(f"node-{j:03}", "dns"): 0.04 * j for j in LOSSY},
    failing={f"node-{100 + j:03}": 15 * j for j in LOSSY},
)
# node-000 also runs a pod-network prober and the MTU probes (the others do not, to keep the data
# small): its pods lose 4% .. 60% to node-016 .. node-030 (its host pings there lose nothing),
# and its MTU-size pings 4% .. 60% to node-031 .. node-045.
POD_LOSS = {("node-000", f"node-{15 + j:03}"): 0.04 * j for j in LOSSY}
MTU_LOSS = {("node-000", f"node-{30 + j:03}"): 0.04 * j for j in LOSSY}
WORST_POD = [f"node-{15 + j:03}" for j in LOSSY][-10:]
WORST_MTU = [f"node-{30 + j:03}" for j in LOSSY][-10:]
SCALE_MINUTES = 3
STEP_S = 15
WORST = [f"node-{j:03}" for j in LOSSY][-10:]  # the 10 of node-001 .. node-015 with the most of it
LAST = SCALE_NODES[-10:]


@dataclass(frozen=True)
class Graphs:
    """A real Prometheus holding SCALE_MESH's history, and Grafana's variables for the whole of it."""

    url: str
    end: int

    def query(self, expr: str, **variables: str) -> list[dict[str, Any]]:
        values = {**GRAFANA_DEFAULTS, "__range": f"{SCALE_MINUTES}m", "__interval": f"{STEP_S}s", **variables}
        return query_range(self.url, substitute(expr, values), self.end - SCALE_MINUTES * 60, self.end, STEP_S)

    def series(self, expr: str, **variables: str) -> list[dict[str, str]]:
        """The label sets of the series Grafana would draw."""
        return [series["metric"] for series in self.query(expr, **variables)]

    def values(self, expr: str, **variables: str) -> list[list[float]]:
        """Each series' values over the range."""
        return [[float(value) for _at, value in series["values"]] for series in self.query(expr, **variables)]


@pytest.fixture(scope="class")
def graphs() -> Iterator[Graphs]:
    reason = promdata.available()
    if reason:
        pytest.skip(reason)
    end = int(time.time())
    with tempfile.TemporaryDirectory(prefix="node-ping-dashboard-") as root:
        data = Path(root) / "tsdb"
        promdata.backfill(promdata.dashboard_openmetrics(SCALE_MESH, end, SCALE_MINUTES, spread_from=["node-000"],
                                                         pod_loss=POD_LOSS, mtu_loss=MTU_LOSS, paths_from=["node-000"]),
                          data)
        with promdata.running_prometheus(data) as url:
            yield Graphs(url, end)


def row_source(p: dict[str, Any]) -> dict[str, str]:
    """The variables of the panel's first repeat: the per-source row of node-000."""
    return {"source": "node-000"} if "$source" in p["title"] else {}


@pytest.mark.slow
class TestGraphsAtScale:
    """At 300 nodes (89,700 pairs) every graph, as Grafana asks for it over the whole range, draws
    only its worst k series, and they are the worst ones."""

    def test_each_graph_draws_at_most_k_of_many(self, graphs: Graphs) -> None:
        for p, target in graph_targets():
            key = f"{p['title']} [{target['refId']}]"
            parts = worst(target["expr"])
            assert parts is not None, key
            (counted,) = graphs.values(f"count({parts.value})", **row_source(p))
            assert max(counted) > parts.k, f"{key}: only {max(counted)} series to choose from"
            drawn = graphs.series(target["expr"], **row_source(p))
            assert 0 < len(drawn) <= parts.k, f"{key}: {len(drawn)} series"

    @pytest.mark.parametrize(("title", "label", "expected"), [
        ("Packet loss per pair", "destination_node", WORST),
        ("Packet loss to each destination", "destination_node", WORST),
        ("Packet loss from $source", "destination_node", WORST),
        ("Average RTT per pair", "source_node", WORST),
        ("Average RTT from each source", "source_node", WORST),
        ("External packet loss", "source_node", WORST),
        ("Errors", "source_node", [f"node-{100 + j:03}" for j in LOSSY][-10:]),
        ("Cycle lateness", "source_node", LAST),
        ("CPU used", "source_node", LAST),
        ("Targets", "source_node", LAST),
        ("Pod packet loss per pair", "destination_node", WORST_POD),
        ("Pod packet loss to each destination", "destination_node", WORST_POD),
        ("MTU-size packet loss per pair", "destination_node", WORST_MTU),
        ("Pod MTU-size packet loss per pair", "destination_node", WORST_POD),
    ])
    def test_the_worst_are_drawn(self, graphs: Graphs, title: str, label: str, expected: list[str]) -> None:
        p = panel(title)
        drawn = graphs.series(p["targets"][0]["expr"], **row_source(p))
        assert sorted(series[label] for series in drawn) == expected

    @pytest.mark.parametrize("row", ["Pod network", "MTU probe"])
    def test_pod_and_mtu_rows_show_data(self, graphs: Graphs, row: str) -> None:
        """Every query of the pod-network and MTU rows returns series once those probers run."""
        (found,) = [p for p in panels() if p["title"] == row]
        assert found["type"] == "row" and found["collapsed"] is True  # queried only when opened
        for p in found["panels"]:
            for target in p["targets"]:
                assert graphs.series(target["expr"]), f"{p['title']} [{target['refId']}] returns nothing"

    def test_host_and_pod_loss_side_by_side(self, graphs: Graphs) -> None:
        """A pair losing 60% between pods reads 60% pod loss beside 0% host loss, and the MTU table
        names the size with both losses of the pair."""
        pod = panel("Pod network pairs, worst first")["targets"]
        pair = {"source": "node-000", "destination": "node-030"}
        assert graphs.values(pod[0]["expr"], **pair)[0][-1] == pytest.approx(0.6)
        assert graphs.values(pod[1]["expr"], **pair)[0][-1] == pytest.approx(0.0)
        mtu = panel("MTU result per pair, worst first")["targets"]
        pair = {"source": "node-000", "destination": "node-045"}
        (size,) = graphs.series(mtu[1]["expr"], **pair)
        assert size[MTU] == promdata.MTU_BYTES
        assert graphs.values(mtu[0]["expr"], **pair)[0][-1] == pytest.approx(0.6)
        assert graphs.values(mtu[1]["expr"], **pair)[0][-1] == pytest.approx(0.0)

    def test_variables_narrow_the_choice(self, graphs: Graphs) -> None:
        """Picking nodes picks among them: node-000 to node-001 .. node-005 only, though other pairs lose more."""
        drawn = graphs.series(panel("Packet loss per pair")["targets"][0]["expr"],
                              source="node-000", destination="node-00[1-5]")
        assert sorted(series["destination_node"] for series in drawn) == [f"node-00{j}" for j in range(1, 6)]
