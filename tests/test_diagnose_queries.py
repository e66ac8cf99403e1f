"""The queries against a real Prometheus whose history was backfilled with promtool (see
tests/support/promdata.py): the whole command, from the matrix Prometheus computes to the verdicts
and the exit code; and --range agreeing with Prometheus on what a duration is."""

from __future__ import annotations

import json
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping

import pytest

from node_ping import contract
from node_ping.diagnose import queries
from node_ping.diagnose.promql import pair_queries
from node_ping.diagnose.wording import iso
from tests.support import promdata
from tests.support.diagnosis import LOSS_TITLE, diagnose_cmd
from tests.support.promdata import Mesh, isolated, receive_loss, send_loss


class TestQueries:
    """Every metric a query names is one of the contract's."""

    def test_metric_names_come_from_the_contract(self) -> None:
        promql = [*pair_queries(contract.NODE, "15m").values(),
                  *pair_queries(contract.EXTERNAL, "15m").values(),
                  *queries.FRESHNESS_QUERIES.values(), queries.cycling_query(90), queries.errors_query("15m")]
        words = {word for text in promql for word in re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", text)}
        names = words - {contract.SOURCE, contract.NODE.destination, contract.EXTERNAL.destination, "clamp_max"}
        assert names == {contract.NODE.packets_sent.name, contract.NODE.packets_received.name,
                         contract.NODE.rtt_sum.name, contract.EXTERNAL.packets_sent.name,
                         contract.EXTERNAL.packets_received.name, contract.EXTERNAL.rtt_sum.name,
                         contract.LAST_SUCCESS.name, contract.CYCLE_NOMINAL.name, contract.CYCLES.name,
                         contract.ERRORS.name}


NAMES = [f"worker-{i}" for i in range(1, 6)]


class TestAgainstPrometheus:
    """The whole command against a real Prometheus holding half an hour of synthetic node-ping history."""

    def run(self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str], mesh: Mesh,
            *argv: str) -> tuple[int, str, str]:
        end = int(time.time())
        url = prometheus_with(promdata.openmetrics(mesh, end))
        return diagnose_cmd(capsys, "--prometheus", url, "--time", str(end), *argv)

    def test_healthy(self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        end = int(time.time())
        url = prometheus_with(promdata.openmetrics(Mesh(NAMES, external=["dns"]), end))
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url)  # no --time: now, as a person runs it
        assert code == 0
        assert "* [healthy] healthy: 5 nodes (20 pairs) and 1 external target below 5.0% loss" in out
        assert not re.search(r"\d!", out)  # no cell marked bad

    def test_node_dropping_incoming(self, capsys: pytest.CaptureFixture[str],
                                    prometheus_with: Callable[[str], str]) -> None:
        code, out, _ = self.run(capsys, prometheus_with, Mesh(NAMES, loss=receive_loss(NAMES, "worker-3", 0.3)))
        assert code == 1
        lines = out.splitlines()
        assert lines[2] == ("* [node-cannot-receive] node worker-3 cannot receive from most peers: "
                            "pings to it are lost from 4 of 4 peers (30.0%)")
        assert len([line for line in lines if line.startswith("* ")]) == 1
        # The evidence: worker-3's column is marked in every row but its own.
        header = lines.index(LOSS_TITLE)
        columns = lines[header + 1].split()
        assert columns == NAMES
        for row in lines[header + 2:header + 7]:
            name, *cells = row.split()
            assert cells[2] == ("." if name == "worker-3" else "30.0!")
            assert all("!" not in cell for i, cell in enumerate(cells) if i != 2)

    def test_node_cut_off(self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        code, out, _ = self.run(capsys, prometheus_with, Mesh(NAMES, loss=isolated(NAMES, "worker-5")))
        assert code == 1
        assert "* [node-isolated] node worker-5 is isolated: it cannot send to or receive from most peers" in out
        assert out.count("* [") == 1

    def test_bad_pair(self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        mesh = Mesh(NAMES, loss={("worker-1", "worker-4"): 0.2, ("worker-4", "worker-1"): 0.1})
        code, out, _ = self.run(capsys, prometheus_with, mesh)
        assert code == 1
        assert "* [link] link worker-1<->worker-4 only: pings from worker-1 lose 20.0%, from worker-4 10.0%\n" in out
        assert out.count("* [") == 1

    def test_external_loss_on_one_node(self, capsys: pytest.CaptureFixture[str],
                                       prometheus_with: Callable[[str], str]) -> None:
        mesh = Mesh(NAMES, external=["dns", "web"],
                    external_loss={("worker-2", "dns"): 1.0, ("worker-2", "web"): 1.0})
        code, out, _ = self.run(capsys, prometheus_with, mesh)
        assert code == 1
        assert "* [external-node] external connectivity lost on node worker-2: dns 100.0%, web 100.0% loss" in out

    def test_json_for_scripts(self, capsys: pytest.CaptureFixture[str],
                              prometheus_with: Callable[[str], str]) -> None:
        mesh = Mesh(NAMES, loss={**receive_loss(NAMES, "worker-3", 0.3), ("worker-1", "worker-5"): 0.5})
        code, out, _ = self.run(capsys, prometheus_with, mesh, "--output", "json")
        assert code == 1
        document = json.loads(out)
        assert document["healthy"] is False
        assert [(v["kind"], v["nodes"]) for v in document["verdicts"]] == [
            ("node-cannot-receive", ["worker-3"]), ("link", ["worker-1", "worker-5"])]
        evidence = document["verdicts"][0]["evidence"]
        assert {e["source"] for e in evidence} == {"worker-1", "worker-2", "worker-4", "worker-5"}
        assert {e["loss_percent"] for e in evidence} == {30.0}
        cells: Mapping[tuple[str, str], dict[str, object]] = {
            (c["source"], c["destination"]): c for c in document["matrix"]}
        assert len(cells) == 20
        assert cells[("worker-1", "worker-5")]["loss_percent"] == 50.0
        assert cells[("worker-1", "worker-5")]["sent"] == 1800  # 60 scrapes of 30 pings in 15 minutes
        assert cells[("worker-2", "worker-1")]["rtt_avg_ms"] == pytest.approx(promdata.DEFAULT_RTT_MS)

    def test_thresholds_from_flags(self, capsys: pytest.CaptureFixture[str],
                                   prometheus_with: Callable[[str], str]) -> None:
        mesh = Mesh(NAMES, loss={("worker-1", "worker-4"): 0.1}, rtt_ms={("worker-2", "worker-3"): 30.0})
        code, out, _ = self.run(capsys, prometheus_with, mesh, "--loss-threshold", "20", "--latency-threshold", "40")
        assert (code, out.count("* [healthy]")) == (0, 1)

    def test_no_node_ping_data(self, capsys: pytest.CaptureFixture[str],
                               prometheus_with: Callable[[str], str]) -> None:
        url = prometheus_with(promdata.unrelated_openmetrics(int(time.time())))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url)
        assert (code, out) == (2, "")
        assert f"Prometheus at {url} has no node-ping data for the 15m before" in err
        assert contract.NODE.packets_sent.name in err

    def test_counters_not_growing(self, capsys: pytest.CaptureFixture[str],
                                  prometheus_with: Callable[[str], str]) -> None:
        code, out, err = self.run(capsys, prometheus_with, Mesh(NAMES, pings_per_step=0))
        assert (code, out) == (2, "")
        assert "node-ping's counters in Prometheus at" in err
        assert "the exporters have not completed a cycle in that time" in err

    def test_data_outside_the_range(self, capsys: pytest.CaptureFixture[str],
                                    prometheus_with: Callable[[str], str]) -> None:
        end = int(time.time())
        url = prometheus_with(promdata.openmetrics(Mesh(NAMES), end))
        code, _, err = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end - 3 * 3600))
        assert code == 2
        assert "has no node-ping data for the 15m before" in err

    def test_exporters_stopped_before_the_end_are_stale_not_healthy(
            self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        """Every prober stopped 10 minutes ago; node-exporter still serves their last textfiles, so
        the samples are fresh but the counters flat."""
        code, out, _ = self.run(capsys, prometheus_with, Mesh(NAMES, stopped=dict.fromkeys(NAMES, 600)))
        assert code == 1
        assert [line for line in out.splitlines() if line.startswith("* [")] == [
            f"* [node-stale] node {node} stopped reporting 10m before the end of the range (its last successful "
            "node-ping cycle), while its old numbers are still scraped: check its node-ping pod and its logs; its "
            "row is left out" for node in NAMES]
        assert "Packet loss %" not in out

    def test_old_numbers_of_a_stopped_exporter_are_not_shown_as_current(
            self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        """worker-2 lost half its pings until its prober stopped 10 minutes ago: that is history."""
        end = int(time.time())
        mesh = Mesh(NAMES, loss=send_loss(NAMES, "worker-2", 0.5), stopped={"worker-2": 600})
        url = prometheus_with(promdata.openmetrics(mesh, end))
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end))
        assert code == 1
        assert [line.split("]")[0] for line in out.splitlines() if line.startswith("* [")] == ["* [node-stale"]
        assert "* [node-stale] node worker-2 stopped reporting 10m before the end of the range" in out
        lines = out.splitlines()
        header = lines.index(LOSS_TITLE)
        assert lines[header + 1].split() == NAMES
        assert [line.split()[0] for line in lines[header + 2:header + 6]] == ["worker-1", "worker-3", "worker-4",
                                                                             "worker-5"]
        assert "50.0" not in out
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end), "--output", "json")
        document = json.loads(out)
        assert (code, document["healthy"], document["stale_nodes"]) == (1, False, {"worker-2": 600.0})
        assert "worker-2" not in {cell["source"] for cell in document["matrix"]}

    def test_node_gone_mid_range_while_peers_lose_everything_to_it(
            self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        """worker-3's own series end 10 minutes before the end (the node is down); its older samples
        are still in the range, so it is not 'silent' in the old sense, but it must be named."""
        mesh = Mesh(NAMES, loss=receive_loss(NAMES, "worker-3", 1.0), gone={"worker-3": 600})
        code, out, _ = self.run(capsys, prometheus_with, mesh)
        assert code == 1
        assert [line.split(":")[0] for line in out.splitlines() if line.startswith("* [")] == [
            "* [node-cannot-receive] node worker-3 cannot receive from most peers",
            "* [node-stale] node worker-3 stopped reporting before the end of the range"]

    def test_restarted_exporter_without_its_pair_series_is_not_stale(
            self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        """worker-2's exporter restarted 7 minutes ago and has exported no pair series since (HTTP mode
        until a first cycle, or nothing to probe), but its own metrics are scraped and succeed: no fault."""
        code, out, _ = self.run(capsys, prometheus_with, Mesh(NAMES, restarted={"worker-2": 420}))
        assert code == 0, out
        assert "* [healthy] healthy: 5 nodes (20 pairs) below" in out

    @pytest.mark.parametrize("restarted", [False, True], ids=["pair series still served", "restarted since"])
    def test_failing_prober_is_named_with_its_errors(self, capsys: pytest.CaptureFixture[str],
                                                     prometheus_with: Callable[[str], str], restarted: bool) -> None:
        """worker-2's prober runs and is scraped, but every cycle for 10 minutes failed (fping missing):
        the advice is its errors and its log, not its pod or its node-exporter."""
        end = int(time.time())
        mesh = Mesh(NAMES, failing={"worker-2": 600}, restarted={"worker-2": 600} if restarted else {})
        url = prometheus_with(promdata.openmetrics(mesh, end))
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end))
        assert code == 1
        assert [line for line in out.splitlines() if line.startswith("* [")] == [
            "* [node-stale] node worker-2's prober runs and is scraped, but none of its cycles succeeded in the 10m "
            'before the end of the range: see node_ping_errors_total{source_node="worker-2"} (fping +40 in the '
            "range) and its log; its row is left out"]
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end), "--output", "json")
        document = json.loads(out)
        assert (code, document["stale_nodes"]) == (1, {"worker-2": 600.0})
        assert document["probers"]["worker-2"]["state"] == "failing"
        assert document["probers"]["worker-2"]["errors"]["fping"] == pytest.approx(40, abs=1)
        # Over a range with no success at all, it is silent rather than stale: the same advice.
        code, out, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end), "--range", "5m")
        assert code == 1
        assert [line for line in out.splitlines() if line.startswith("* [")] == [
            "* [node-silent] node worker-2's prober runs and is scraped but has produced no ping data (other nodes "
            "ping it): none of its cycles succeeded in the 10m before the end of the range; see "
            'node_ping_errors_total{source_node="worker-2"} (fping +20 in the range) and its log']

    def test_node_gone_for_the_whole_range_has_no_data_at_all(
            self, capsys: pytest.CaptureFixture[str], prometheus_with: Callable[[str], str]) -> None:
        mesh = Mesh(NAMES, gone={"worker-4": 1200})
        code, out, _ = self.run(capsys, prometheus_with, mesh)
        assert code == 1
        assert [line for line in out.splitlines() if line.startswith("* [")] == [
            "* [node-silent] node worker-4 reports no node-ping data at all (other nodes ping it): check that its "
            "node-ping pod runs and that Prometheus scrapes its node-exporter"]

    @pytest.mark.parametrize("after_last_scrape", [0, 12], ids=["one sample in the range", "none in the range"])
    def test_range_shorter_than_two_scrapes(self, capsys: pytest.CaptureFixture[str],
                                            prometheus_with: Callable[[str], str], after_last_scrape: int) -> None:
        end = int(time.time())
        url = prometheus_with(promdata.openmetrics(Mesh(NAMES), end))
        code, out, err = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end + after_last_scrape),
                                      "--range", "10s")
        assert (code, out) == (2, "")
        assert err == (f"node-ping diagnose: Prometheus at {url} has node-ping series, but the 10s before "
                       f"{iso(end + after_last_scrape)} holds fewer than two samples of each, "
                       "and increase() needs two: widen --range to at least two scrape intervals "
                       "(e.g. --range 1m for 15 s or 30 s scrapes).\n")
        code, _, _ = diagnose_cmd(capsys, "--prometheus", url, "--time", str(end + after_last_scrape),
                                  "--range", "30s")
        assert code == 0


# Durations to try on Prometheus itself: the edges of its syntax and range, then random strings of
# numbers and units in any order.
DURATION_EDGES = ["15m", "1h30m", "500ms", "1y2w3d4h5m6s7ms", "05m", "1m0s", "0s", "0ms", "0m0s", "0", "",
                  "5m5m", "30m1h", "1h1h", "ms5", "1.5h", "1H", " 15m", "\t15m\n", "1h 30m", "-5m", "1000000000y",
                  "292y", "293y", "106751d23h47m16s854ms", "106751d23h47m16s855ms", "9223372036854ms",
                  "9223372036855ms", "99999999999999999999s"]


def random_durations(count: int) -> list[str]:
    rng = random.Random(20240501)  # noqa: S311 -- test cases, not secrets; fixed seed: the same every run
    numbers = ["0", "1", "7", "15", "90", "292", "293", "106752", "2562048"]
    units = ["y", "w", "d", "h", "m", "s", "ms"]
    return ["".join(f"{rng.choice(numbers)}{rng.choice(units)}" for _ in range(rng.randint(1, 3)))
            for _ in range(count)]


class TestRangeFlag:
    """--range takes exactly what Prometheus takes in a range selector (the refusals themselves
    are in test_diagnose_command)."""

    def test_agrees_with_prometheus(self, capsys: pytest.CaptureFixture[str],
                                    prometheus_with: Callable[[str], str]) -> None:
        at = int(time.time())
        url = prometheus_with(promdata.unrelated_openmetrics(at))
        disagreements = []
        for text in dict.fromkeys([*DURATION_EDGES, *random_durations(60)]):
            query = urllib.parse.urlencode({"query": f"increase(x[{text}])", "time": str(at)})
            try:
                with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10):
                    prometheus_takes = True
            except urllib.error.HTTPError as err:
                assert err.code == 400
                prometheus_takes = False
            code, _, err_text = diagnose_cmd(capsys, "--prometheus", url, "--time", str(at), "--range", text)
            we_take = "Invalid value for '--range'" not in err_text
            assert code == 2  # no node-ping data, or the flag refused
            if we_take != prometheus_takes:
                disagreements.append((text, prometheus_takes, err_text))
        assert disagreements == []
