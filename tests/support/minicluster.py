"""A mini cluster on one machine: node-ping, node-exporter and Prometheus with node-ping's alert rules,
wired as in a real cluster, at 1 s resolution, for the end-to-end test.

```
namespace <node> (netlab host)      node-ping run --count 5 --period-ms 200 (1 s cycles), probing every
                                    other node's bridge address and the external targets
    │ writes <workdir>/<node>/textfile/node-ping_<node>.prom
    │ with pod_network=True, also node-ping run --path pod, probing every other node's pod0 address
    │ (netlab.add_pod_network), writes node-ping-pod_<node>.prom beside it
host namespace, 127.0.0.1           one prometheus-node-exporter per node, reading that directory;
                                    one prometheus scraping them all and evaluating the rules every 1 s
```

node-exporter runs in the host namespace on loopback because it only reads files: that way Prometheus
reaches every node's exporter whatever the test does to a node's network, so a node that is cut off
still reports what it sees (all its pings lost), as the exporter on a real cut-off node writes its file.

The rules' windows and `for:` durations are minutes long; `short_rules()` turns them into seconds and
keeps every threshold, so a fault fires its alert within seconds.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from node_ping import contract
from tests.support import netlab
from tests.support.exporters import NODE_EXPORTER, node_exporter
from tests.support.processes import NODE_PING
from tests.support.processes import stop as stop_process
from tests.support.promdata import running_prometheus
from tests.support.promtools import RULES_FILE, run_promtool

REPO = Path(__file__).resolve().parents[2]

COUNT, PERIOD_MS = 5, 200
"""Pings per target per cycle and their spacing: 1 s cycles, as fast as node-exporter is scraped."""

WINDOW = "20s"
"""Replaces the rules' `[5m]`, `[10m]` and `[1h]`: twenty 1 s cycles, 100 pings per pair, enough to
tell 30 % loss from the 5 % threshold beyond doubt."""

FOR_S = 5
"""Replaces the rules' `for: 5m` (five rule evaluations); the others keep their ratio to it, so
an alert that waits longer than another still does: `for: 15m` becomes 15 s, `for: 2m` 2 s, and
`for: 30s` the shortest wait there is here, one second."""

SCRAPE_INTERVAL = "1s"

T = TypeVar("T")

Sample = tuple[dict[str, str], float]
AlertKey = tuple[str, tuple[tuple[str, str], ...]]
"""An alert's name and the labels that say what it is about (all but alertname and severity)."""


def available() -> str | None:
    """None if the cluster can be built here, else the reason (for pytest.skip)."""
    for tool in ("prometheus", "promtool", NODE_EXPORTER):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages prometheus, prometheus-node-exporter)"
    return netlab.available()


def short_rules(text: str) -> str:
    """The rules file with its minute- and hour-long range windows and `for:` durations shortened,
    thresholds kept."""
    shortened, windows = re.subn(r"\[\d+[mh]\]", f"[{WINDOW}]", text)

    def scaled(match: re.Match[str]) -> str:
        seconds = int(match.group(2)) * (60 if match.group(3) == "m" else 1)
        return f"{match.group(1)}{max(1, FOR_S * seconds // 300)}s"

    shortened, fors = re.subn(r"(?m)^([ \t]*for:[ \t]*)(\d+)([ms])[ \t]*$", scaled, shortened)
    if not windows or not fors or re.search(r"\[\d+[mh]\]|for:\s*\d+[mh]", shortened):
        raise ValueError(f"the rules changed shape: {windows} windows and {fors} `for:` shortened, "
                         "or a duration in minutes or hours is left; update short_rules()")
    return shortened


def alert_key(name: str, **labels: str) -> AlertKey:
    return name, tuple(sorted(labels.items()))


def format_key(key: AlertKey) -> str:
    return key[0] + "{" + ", ".join(f"{k}={v}" for k, v in key[1]) + "}"


@dataclass(frozen=True)
class Alert:
    key: AlertKey
    state: str  # pending or firing
    active_at: str


class PromQLError(Exception):
    """Prometheus refused a query or an API call; the message has its error."""


class PrometheusAPI:
    """The few calls of Prometheus's HTTP API the test makes."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _get(self, path: str, **params: str) -> Any:
        address = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(address, timeout=10) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise PromQLError(f"{path} {params}: HTTP {err.code}: {err.read().decode(errors='replace')}") from None
        if reply.get("status") != "success":
            raise PromQLError(f"{path} {params}: {reply}")
        return reply["data"]

    def query(self, promql: str) -> list[Sample]:
        """The instant vector (or scalar, as one sample without labels) of `promql` now."""
        data = self._get("/api/v1/query", query=promql)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise PromQLError(f"{promql}: expected an instant vector, got {data['resultType']}")
        return [(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]

    def alerts(self) -> list[Alert]:
        """Every pending or firing alert."""
        return [
            Alert(alert_key(item["labels"]["alertname"],
                            **{k: v for k, v in item["labels"].items() if k not in ("alertname", "severity")}),
                  item["state"], item.get("activeAt", ""))
            for item in self._get("/api/v1/alerts")["alerts"]
        ]

    def pair_values(self, promql: str) -> dict[tuple[str, str], float]:
        """Samples of a per-pair query by (source_node, destination_node)."""
        return {(labels["source_node"], labels["destination_node"]): value for labels, value in self.query(promql)}


def pair_loss(window: str = WINDOW, metrics: tuple[contract.Metric, contract.Metric] | None = None) -> str:
    """Loss per pair over `window`, written as in the rules and the dashboard; `metrics` (sent,
    received) those of another path than the host network's small pings, e.g. NODE.mtu_metrics."""
    sent, received = metrics or (contract.NODE.packets_sent, contract.NODE.packets_received)
    return (f"1 - sum by (source_node, destination_node) (increase({received.name}[{window}]))"
            f" / (sum by (source_node, destination_node) (increase({sent.name}[{window}])) > 0)")


@dataclass
class MiniCluster:
    nodes: Mapping[str, netlab.Host]
    external: Mapping[str, netlab.Host]
    prometheus: PrometheusAPI
    workdir: Path
    rules: Path  # the shortened rules Prometheus evaluates
    logs: Mapping[str, Path]  # node-ping's log per node (and per pod prober, "<node> pod")
    pod_network: bool = False  # a pod prober runs beside each node's host prober

    def pairs(self) -> set[tuple[str, str]]:
        return {(s, d) for s in self.nodes for d in self.nodes if s != d}

    def alert_expressions(self) -> dict[str, str]:
        """The PromQL of every alert as Prometheus evaluates it here (shortened windows), by alert name."""
        groups = yaml.safe_load(self.rules.read_text(encoding="utf-8"))["groups"]
        return {rule["alert"]: str(rule["expr"]).strip() for group in groups for rule in group["rules"]
                if "alert" in rule}

    def cut_off(self, name: str) -> None:
        """Drop every packet into and out of the node (loopback aside): its network is gone, its
        processes keep running."""
        self.nodes[name].nft("""
table inet nodeping_test
delete table inet nodeping_test
table inet nodeping_test {
  chain input { type filter hook input priority 0; policy drop; iif lo accept; }
  chain output { type filter hook output priority 0; policy drop; oif lo accept; }
}
""")

    def diagnose(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`node-ping diagnose` against this cluster's Prometheus, as a user runs it."""
        return subprocess.run([*NODE_PING, "diagnose", "--prometheus", self.prometheus.url,
                               "--range", WINDOW, *args],
                              capture_output=True, text=True, timeout=60, check=False, cwd=REPO)

    def dump(self) -> str:
        """What Prometheus and the exporters show now, for a failure message."""
        lines = ["", "--- alerts (pending and firing):"]
        try:
            lines += [f"  {a.state:8} {format_key(a.key)} since {a.active_at}"
                      for a in sorted(self.prometheus.alerts(), key=lambda a: a.key)] or ["  none"]
            loss = self.prometheus.pair_values(pair_loss())
            lines.append(f"--- loss per pair over {WINDOW} ({len(loss)} of {len(self.pairs())} pairs have data):")
            lines += [f"  {s} -> {d}: {value:.1%}" for (s, d), value in sorted(loss.items())]
            paths = [("MTU-size pings", contract.NODE.mtu_metrics)]
            paths += [("pod network", (contract.POD.packets_sent, contract.POD.packets_received))] \
                if self.pod_network else []
            for title, metrics in paths:
                lossy = {pair: value for pair, value in self.prometheus.pair_values(pair_loss(WINDOW, metrics)).items()
                         if value > 0}
                lines.append(f"--- {title}: pairs with loss over {WINDOW}:")
                lines += [f"  {s} -> {d}: {value:.1%}" for (s, d), value in sorted(lossy.items())] or ["  none"]
            lines.append("--- scrape targets (up):")
            lines += [f"  {labels.get('node')} {labels.get('instance')}: {value:g}"
                      for labels, value in self.prometheus.query("up")]
            ages = self.prometheus.query(f"time() - {contract.LAST_SUCCESS.name}")
            errors = {labels["source_node"]: value
                      for labels, value in self.prometheus.query(f"sum by (source_node) ({contract.ERRORS.name})")}
            lines.append("--- node-ping per node: seconds since its last completed cycle, errors counted:")
            # With pod_network, the pod prober's own series (path="pod") beside the host prober's.
            lines += [f"  {labels['source_node']}{' ' + labels[contract.PATH] if labels.get(contract.PATH) else ''}: "
                      f"{age:.1f} s, {errors.get(labels['source_node'], 0):g} errors"
                      for labels, age in sorted(ages, key=lambda sample: (sample[0]["source_node"],
                                                                          sample[0].get(contract.PATH, "")))]
        except (PromQLError, OSError) as err:
            lines.append(f"  Prometheus did not answer: {err}")
        for name, log in self.logs.items():
            tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
            lines.append(f"--- node-ping log of {name} (last {len(tail)} lines):")
            lines += [f"  {line}" for line in tail]
        return "\n".join(lines)

    def wait_until(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll `check` until it returns something other than None; fail after `timeout` seconds
        with `what` and the cluster's state."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {timeout:g} s waiting for {what}{self.dump()}")
            time.sleep(0.5)


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process)


def _node_ping(stack: contextlib.ExitStack, host: netlab.Host, name: str, *, nodes_json: Path, external_json: Path,
               textfile_dir: Path, log: Path, args: Sequence[str] = ()) -> None:
    argv = host.cmd(*NODE_PING, "run", "--node-name", name, "--textfile-dir", str(textfile_dir),
                    "--config", str(nodes_json), "--external-config", str(external_json),
                    "--count", str(COUNT), "--period-ms", str(PERIOD_MS), *args)
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    stack.callback(_stop, process)


def prometheus_config(rules: Path, exporters: Mapping[str, str]) -> str:
    """Scrape every node's node-exporter and evaluate the rules, every second."""
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                   "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules)],
        "scrape_configs": [{
            "job_name": "node",
            "static_configs": [
                {"targets": [urllib.parse.urlsplit(url).netloc], "labels": {"node": name}}
                for name, url in exporters.items()
            ],
        }],
    }
    return json.dumps(config, indent=2)  # JSON is YAML


@contextlib.contextmanager
def start(lab: netlab.Lab, node_names: Sequence[str], external_names: Sequence[str],
          workdir: Path, *, pod_network: bool = False) -> Iterator[MiniCluster]:
    """Run the cluster on `lab`'s hosts (named `<prefix><name>`) until the block ends; everything it
    started is stopped, in reverse order, however the block ends. The lab itself is the caller's.

    With `pod_network`, each node also runs the pod prober (`--path pod`) on the nodes' pod0
    addresses, as the pod-network DaemonSet does: call netlab.add_pod_network(lab) first."""
    hosts = {host.name.removeprefix(lab.prefix): host for host in lab.hosts}
    nodes = {name: hosts[name] for name in node_names}
    external = {name: hosts[name] for name in external_names}
    nodes_json, external_json = workdir / "nodes.json", workdir / "external.json"
    nodes_json.write_text(json.dumps([{"name": name, "ipAddress": host.ipv4} for name, host in nodes.items()]))
    external_json.write_text(json.dumps([{"name": name, "host": host.ipv4} for name, host in external.items()]))
    pods_json = workdir / "pods.json"
    pods_json.write_text(json.dumps([{"name": name, "ipAddress": host.pod_ipv4} for name, host in nodes.items()]))
    rules = workdir / "node-ping.rules.short.yaml"
    rules.write_text(short_rules(RULES_FILE.read_text(encoding="utf-8")), encoding="utf-8")
    checked = run_promtool("check", "rules", str(rules))
    if checked.returncode != 0:
        raise RuntimeError(f"promtool check rules {rules} failed:\n{checked.stdout}{checked.stderr}")

    with contextlib.ExitStack() as stack:
        exporters, logs = {}, {}
        for name, host in nodes.items():
            textfile_dir = workdir / name / "textfile"
            textfile_dir.mkdir(parents=True)
            exporters[name] = stack.enter_context(node_exporter(textfile_dir))
            logs[name] = workdir / name / "node-ping.log"
            _node_ping(stack, host, name, nodes_json=nodes_json, external_json=external_json,
                       textfile_dir=textfile_dir, log=logs[name])
            if pod_network:
                # Same namespace and textfile directory as the host prober: they take turns at
                # fping (probe/lock.py) and write their own files, as the two DaemonSets do.
                logs[f"{name} pod"] = workdir / name / "node-ping-pod.log"
                _node_ping(stack, host, name, nodes_json=pods_json, external_json=external_json,
                           textfile_dir=textfile_dir, log=logs[f"{name} pod"], args=("--path", "pod"))
        url = stack.enter_context(running_prometheus(workdir / "prometheus",
                                                     config=prometheus_config(rules, exporters)))
        yield MiniCluster(nodes, external, PrometheusAPI(url), workdir, rules, logs, pod_network)
