"""A real Prometheus with made-up node-ping history, for tests that query it.

`openmetrics()` writes the counters a mesh of exporters would have produced over the last half
hour (one sample per 15 s scrape, 30 pings per target per scrape), with chosen loss and RTT per
pair, and each exporter's own metrics (last success, nominal cycle, cycles and errors); a prober
can stop (counters flat, textfile still served), vanish (no samples), fail every cycle (its cycle
and error counters go on) or restart without its pair series some time before the end.
`backfill()` turns that into TSDB blocks with `promtool tsdb create-blocks-from openmetrics`;
`running_prometheus()` starts `prometheus` on a free loopback port over that directory and stops it
afterwards. The last one takes any config, so end-to-end tests that scrape node-exporter reuse it.
`dashboard_openmetrics()` adds the gauges and counters only the dashboard's graphs read, and
`query_range()` asks for a graph's series as Grafana does.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node_ping import contract
from node_ping.contract import ERROR_KINDS
from node_ping.diagnose.matrix import Counts, Matrix
from tests.support.ports import free_port
from tests.support.processes import stop as stop_process

Pair = tuple[str, str]

STEP_S = 15
PINGS_PER_STEP = 30
DEFAULT_RTT_MS = 0.4

# No scrape jobs: the test's data is all the TSDB holds, and nothing is fetched from anywhere.
MINIMAL_CONFIG = "global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\n"

_READY_TIMEOUT_S = 60


def available() -> str | None:
    """None if prometheus and promtool are installed, else the reason (for pytest.skip)."""
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package prometheus)"
    return None


@dataclass(frozen=True)
class Mesh:
    """Who pings whom, and how badly. Loss is the share of pings lost (0.3 = 30 %) per
    (source, destination); pairs not named lose nothing and answer in DEFAULT_RTT_MS."""

    nodes: Sequence[str]
    loss: Mapping[Pair, float] = field(default_factory=dict)
    rtt_ms: Mapping[Pair, float] = field(default_factory=dict)
    external: Sequence[str] = ()  # external target names; every node pings each
    external_loss: Mapping[Pair, float] = field(default_factory=dict)  # (node, target)
    pings_per_step: int = PINGS_PER_STEP  # 0: exporters that export but no longer complete cycles
    # node -> seconds before the end when its prober stopped: from then on its counters are flat and
    # its last success frozen, but node-exporter still serves them (its samples go on).
    stopped: Mapping[str, int] = field(default_factory=dict)
    # node -> seconds before the end when its own series end (the node or its node-exporter down);
    # peers keep pinging it, with the loss given in `loss`.
    gone: Mapping[str, int] = field(default_factory=dict)
    # node -> seconds before the end of its last successful cycle, after which every cycle fails
    # (fping missing, say): its pair counters are flat and its last success frozen, but its cycles
    # and its fping errors go on counting, and all of it is still scraped.
    failing: Mapping[str, int] = field(default_factory=dict)
    # node -> seconds before the end when its exporter restarted: its pair series end there and its
    # own metrics start over (cycles and errors from 0, last success the restart time until a cycle
    # succeeds), as in HTTP mode until a first successful cycle, or when it has nothing to probe.
    restarted: Mapping[str, int] = field(default_factory=dict)
    # node -> (zone, rack), exported as each node's contract.NODE_INFO; none when empty.
    places: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    # The MTU probe (3 pings of `mtu` bytes per step and pair) and the pod-network prober (the pod
    # family, all pairs), each with its own loss per pair; neither exported when None.
    mtu_loss: Mapping[Pair, float] | None = None
    pod_loss: Mapping[Pair, float] | None = None
    mtu: int = 1500

    def node_pairs(self) -> list[Pair]:
        return [(s, d) for s in self.nodes for d in self.nodes if s != d]

    def external_pairs(self) -> list[Pair]:
        return [(s, t) for s in self.nodes for t in self.external]


def receive_loss(nodes: Sequence[str], node: str, ratio: float) -> dict[Pair, float]:
    """Pings to `node` from every peer lose `ratio`: its column is bad."""
    return {(peer, node): ratio for peer in nodes if peer != node}


def send_loss(nodes: Sequence[str], node: str, ratio: float) -> dict[Pair, float]:
    """Pings from `node` to every peer lose `ratio`: its row is bad."""
    return {(node, peer): ratio for peer in nodes if peer != node}


def isolated(nodes: Sequence[str], node: str) -> dict[Pair, float]:
    """`node` loses every ping it sends and every ping sent to it: cut off."""
    return {**send_loss(nodes, node, 1.0), **receive_loss(nodes, node, 1.0)}


def everywhere(nodes: Sequence[str], ratio: float) -> dict[Pair, float]:
    """Every pair loses `ratio`."""
    return {(s, d): ratio for s in nodes for d in nodes if s != d}


STEPS_IN_15M = 60
"""What increase(...[15m]) sees of the 15 s samples."""


def matrix_of(mesh: Mesh, drop: Callable[[Pair], bool] = lambda _pair: False) -> Matrix:
    """The matrix Prometheus gives for the mesh over 15 minutes, the cells `drop` names left out."""
    def counts(loss: float, rtt: float) -> Counts:
        received = PINGS_PER_STEP - round(PINGS_PER_STEP * loss)
        return Counts(PINGS_PER_STEP * STEPS_IN_15M, received * STEPS_IN_15M, received * STEPS_IN_15M * rtt)

    nodes = {pair: counts(mesh.loss.get(pair, 0.0), mesh.rtt_ms.get(pair, DEFAULT_RTT_MS))
             for pair in mesh.node_pairs() if not drop(pair)}
    external = {pair: counts(mesh.external_loss.get(pair, 0.0), 12.0) for pair in mesh.external_pairs()}
    return Matrix(nodes, external)


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}"


@dataclass(frozen=True)
class _Life:
    """Which steps (indexes of scrapes, 0 the first) one exporter lived through."""

    cycled: int  # the last step at which its prober completed a successful cycle
    scraped: int  # the last step at which Prometheus scraped it
    ran: int | None = None  # the last step at which its prober ran a cycle; None: `cycled`
    paired: int | None = None  # the last step at which its pair series were scraped; None: `scraped`
    failed_from: int | None = None  # the first step whose cycle failed, if any
    restarted: int | None = None  # the step at which it restarted, if it did

    def started(self, step: int) -> int:
        """The step at which the exporter scraped at `step` started."""
        return self.restarted if self.restarted is not None and step >= self.restarted else 0

    def last_success(self, step: int) -> int:
        """The step of its last success as scraped at `step`: its start-up until a first one."""
        return max(self.started(step), min(step, self.cycled))

    def cycles(self, step: int) -> int:
        """Cycles run by the exporter scraped at `step`, since it started."""
        ran = self.cycled if self.ran is None else self.ran
        return max(0, min(step, ran) - self.started(step))

    def errors(self, step: int) -> int:
        """Failed cycles of the exporter scraped at `step`, since it started."""
        if self.failed_from is None:
            return 0
        ran = self.cycled if self.ran is None else self.ran
        return max(0, min(step, ran) - max(self.failed_from, self.started(step) + 1) + 1)


def _life(mesh: Mesh, node: str, steps: int) -> _Life:
    last = steps - 1
    scraped = last - mesh.gone.get(node, 0) // STEP_S
    ran = min(scraped, last - mesh.stopped.get(node, 0) // STEP_S)
    # Its last success is `failing` seconds before the end, as `stopped`'s; the next cycle fails.
    failed_from = last - mesh.failing[node] // STEP_S + 1 if node in mesh.failing else None
    restarted = last - mesh.restarted[node] // STEP_S if node in mesh.restarted else None
    cycled = ran if failed_from is None else min(ran, failed_from - 1)
    if mesh.pings_per_step == 0:
        cycled = ran = -1  # it exports, but completes no cycle
    paired = scraped if restarted is None else min(scraped, restarted - 1)
    return _Life(cycled, scraped, ran, paired, failed_from, restarted)


def _series(name: str, labels: str, per_step: float, steps: int, end: int, *,
            life: _Life | None = None) -> list[str]:
    start = end - (steps - 1) * STEP_S
    life = life or _Life(steps - 1, steps - 1)
    paired = life.scraped if life.paired is None else life.paired
    return [f"{name}{labels} {per_step * max(0, min(i, life.cycled)):g} {start + i * STEP_S}"
            for i in range(paired + 1)]


def _family(family: contract.PingFamily, label_sets: Sequence[tuple[str, float, float]], steps: int, end: int,
            pings: int, *, lives: Sequence[_Life] | None = None) -> list[str]:
    """sent, received and RTT-sum counters for (labels, loss, rtt) per target, `pings` sent per
    step, each target's exporter living as `lives` says (all the time if None). OpenMetrics wants
    each family in one block and each series' samples together in time order."""
    lines = []
    for metric, what in ((family.packets_sent, "sent"), (family.packets_received, "received"),
                         (family.rtt_sum, "rtt")):
        lines.append(f"# TYPE {metric.base} {metric.kind.value}")
        for index, (labels, loss, rtt) in enumerate(label_sets):
            received = pings - round(pings * loss)
            per_step = {"sent": pings, "received": received, "rtt": received * rtt}[what]
            lines += _series(metric.name, labels, per_step, steps, end,
                             life=lives[index] if lives else None)
    return lines


def _own_gauges(mesh: Mesh, steps: int, end: int) -> list[str]:
    """Each exporter's own metrics as node-ping writes them: last-success time (its start-up until a
    first cycle succeeds), nominal cycle (one cycle per scrape here), cycles run, and errors by kind
    (a failed cycle counts as an fping error)."""
    start = end - (steps - 1) * STEP_S
    lives = {node: _life(mesh, node, steps) for node in mesh.nodes}
    families: list[tuple[contract.Metric, list[tuple[dict[str, str], Callable[[_Life, int], float]]]]] = [
        (contract.LAST_SUCCESS, [({}, lambda life, i: start + life.last_success(i) * STEP_S)]),
        (contract.CYCLE_NOMINAL, [({}, lambda _life, _i: STEP_S)]),
        (contract.CYCLES, [({}, _Life.cycles)]),
        (contract.ERRORS,
         [({"kind": kind}, _Life.errors if kind == contract.FPING_ERROR else lambda _life, _i: 0)
          for kind in ERROR_KINDS]),
    ]
    lines = []
    if mesh.places:
        info = contract.NODE_INFO
        lines.append(f"# TYPE {info.base} {info.kind.value}")
        for node, life in lives.items():
            zone, rack = mesh.places.get(node, ("", ""))
            lines += [f"{info.name}{_labels(source_node=node, zone=zone, rack=rack)} 1 {start + i * STEP_S}"
                      for i in range(life.scraped + 1)]
    for metric, series in families:
        lines.append(f"# TYPE {metric.base} {metric.kind.value}")
        sample = metric.name
        for labels, value in series:
            for node, life in lives.items():
                lines += [f"{sample}{_labels(source_node=node, **labels)} {value(life, i)} {start + i * STEP_S}"
                          for i in range(life.scraped + 1)]
    return lines


def node_ip(mesh: Mesh, node: str) -> str:
    return f"10.0.0.{mesh.nodes.index(node) + 1}"


def openmetrics(mesh: Mesh, end: int, minutes: int = 30) -> str:
    """The counters Prometheus would have scraped from the mesh's exporters, up to unix time `end`."""
    steps = minutes * 60 // STEP_S + 1
    node_sets = [
        (_labels(source_node=s, destination_node=d, destination_node_ip_address=node_ip(mesh, d)),
         mesh.loss.get((s, d), 0.0), mesh.rtt_ms.get((s, d), DEFAULT_RTT_MS))
        for s, d in mesh.node_pairs()
    ]
    external_sets = [
        (_labels(source_node=s, destination_name=t, destination_host=f"{t}.example"),
         mesh.external_loss.get((s, t), 0.0), 12.0)
        for s, t in mesh.external_pairs()
    ]
    lines = _family(contract.NODE, node_sets, steps, end, mesh.pings_per_step,
                    lives=[_life(mesh, s, steps) for s, _ in mesh.node_pairs()])
    if external_sets:
        lines += _family(contract.EXTERNAL, external_sets, steps, end, mesh.pings_per_step,
                         lives=[_life(mesh, s, steps) for s, _ in mesh.external_pairs()])
    if mesh.pod_loss is not None:
        pod_sets = [(_labels(source_node=s, destination_node=d, destination_pod_ip_address=f"10.244.0.{i + 1}"),
                     mesh.pod_loss.get((s, d), 0.0), DEFAULT_RTT_MS) for i, (s, d) in enumerate(mesh.node_pairs())]
        lines += _family(contract.POD, pod_sets, steps, end, mesh.pings_per_step)
    if mesh.mtu_loss is not None:
        lines += _mtu_family(mesh, mesh.mtu_loss, steps, end)
    lines += _own_gauges(mesh, steps, end)
    return "\n".join([*lines, "# EOF"]) + "\n"


MTU_PINGS_PER_STEP = 3


def _mtu_family(mesh: Mesh, loss: Mapping[Pair, float], steps: int, end: int) -> list[str]:
    lines = []
    for index, metric in enumerate(contract.NODE.mtu_metrics):  # sent, then received
        lines.append(f"# TYPE {metric.base} {metric.kind.value}")
        for s, d in mesh.node_pairs():
            labels = _labels(source_node=s, destination_node=d, destination_node_ip_address=node_ip(mesh, d),
                             mtu=str(mesh.mtu))
            lost = round(MTU_PINGS_PER_STEP * loss.get((s, d), 0.0)) if index else 0
            lines += _series(metric.name, labels, MTU_PINGS_PER_STEP - lost, steps, end)
    return lines


def unrelated_openmetrics(end: int, minutes: int = 30) -> str:
    """Some other exporter's data: a Prometheus that is fine but knows nothing of node-ping."""
    steps = minutes * 60 // STEP_S + 1
    lines = ["# TYPE node_load1 gauge", *_series("node_load1", _labels(instance="a:9100"), 0.0, steps, end)]
    return "\n".join([*lines, "# EOF"]) + "\n"


def backfill(text: str, data_dir: Path) -> None:
    """Write `text` (OpenMetrics) as TSDB blocks into `data_dir`, where prometheus will load them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    source = data_dir.parent / f"{data_dir.name}.om"
    source.write_text(text)
    try:
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(data_dir)],
                       check=True, capture_output=True, text=True, timeout=120)
    finally:
        source.unlink()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, grace_s=15)


@contextlib.contextmanager
def running_prometheus(data_dir: Path, config: str = MINIMAL_CONFIG) -> Iterator[str]:
    """Run prometheus on 127.0.0.1 over `data_dir` until the block ends; yields its base URL.

    The config file and log go next to `data_dir`. The process is stopped however the block ends.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    config_file = data_dir.parent / f"{data_dir.name}.prometheus.yml"
    config_file.write_text(config)
    log_file = data_dir.parent / f"{data_dir.name}.prometheus.log"
    for _attempt in range(3):  # another process may take the free port before prometheus binds it
        url = f"http://127.0.0.1:{free_port()}"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                ["prometheus", f"--config.file={config_file}", f"--storage.tsdb.path={data_dir}",
                 f"--web.listen-address={url.removeprefix('http://')}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + _READY_TIMEOUT_S
            while process.poll() is None and time.monotonic() < deadline and not _ready(url):
                time.sleep(0.1)
            if process.poll() is None and _ready(url):
                yield url
                return
            if "address already in use" in log_file.read_text(errors="replace"):
                continue
            raise RuntimeError(f"prometheus did not become ready; its log:\n{log_file.read_text(errors='replace')}")
        finally:
            _stop(process)
    raise RuntimeError("prometheus found no free port in three tries")


def vector(*samples: tuple[Mapping[str, str], float]) -> bytes:
    """Prometheus's answer to an instant query, as its HTTP API sends it."""
    result = [{"metric": dict(labels), "value": [0, str(value)]} for labels, value in samples]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


TEXTFILE_DIR = "/var/lib/node-exporter/textfile"


MTU_BYTES = "1500"
"""The `mtu` label of the MTU probes' counters in `paths_openmetrics`."""


def paths_openmetrics(mesh: Mesh, end: int, minutes: int, *, pod_loss: Mapping[Pair, float],
                      mtu_loss: Mapping[Pair, float], sources: Sequence[str] | None = None) -> list[str]:
    """The pod-network probers' counters (`pod_loss` per pair, as `Mesh.loss`; the pod MTU probe
    loses the same) and the host MTU probe's (`mtu_loss` per pair), for the node pairs of the mesh
    from `sources` (None: all), as OpenMetrics lines without the closing `# EOF`. The MTU probes
    send as many pings as the small ones here (node-ping sends a few), so that their losses rank as
    finely."""
    steps = minutes * 60 // STEP_S + 1
    pairs = [(s, d) for s, d in mesh.node_pairs() if sources is None or s in sources]
    lives = [_life(mesh, s, steps) for s, _ in pairs]
    pod_sets = [(_labels(source_node=s, destination_node=d, destination_pod_ip_address=f"10.244.{i}.2"),
                 pod_loss.get((s, d), 0.0), DEFAULT_RTT_MS)
                for s, d in pairs for i in [mesh.nodes.index(d)]]
    lines = _family(contract.POD, pod_sets, steps, end, mesh.pings_per_step, lives=lives)
    mtu = mesh.pings_per_step
    for family, losses in ((contract.NODE, mtu_loss), (contract.POD, pod_loss)):
        for metric in family.mtu_metrics:
            lines.append(f"# TYPE {metric.base} {metric.kind.value}")
            for index, (s, d) in enumerate(pairs):
                address = node_ip(mesh, d) if family is contract.NODE else f"10.244.{mesh.nodes.index(d)}.2"
                labels = _labels(**{contract.SOURCE: s, family.destination: d, family.address: address,
                                    contract.MTU: MTU_BYTES})
                per_step = mtu if metric == family.mtu_packets_sent else mtu - round(mtu * losses.get((s, d), 0.0))
                lines += _series(metric.name, labels, per_step, steps, end, life=lives[index])
    return lines


def dashboard_openmetrics(mesh: Mesh, end: int, minutes: int = 30, spread_from: Sequence[str] = (), *,
                          pod_loss: Mapping[Pair, float] | None = None, mtu_loss: Mapping[Pair, float] | None = None,
                          paths_from: Sequence[str] | None = None) -> str:
    """`openmetrics(mesh)` and the rest of what the dashboard's graphs read: per-cycle RTT max and
    mdev from each node in `spread_from` to every peer, and per exporter its cycle lateness, targets
    by kind, CPU counters and node-exporter's mtime of its textfile (written with each successful
    cycle). Nodes differ by their place in `mesh.nodes`, so that rankings have one answer: the
    later a node, the later its cycles, the more CPU it uses and the fewer node targets it sees.
    With `pod_loss` or `mtu_loss` (even empty), the pod path and the MTU probes as well, from the
    nodes in `paths_from` (None: every node; see `paths_openmetrics`)."""
    steps = minutes * 60 // STEP_S + 1
    start = end - (steps - 1) * STEP_S
    lives = {node: _life(mesh, node, steps) for node in mesh.nodes}

    def per_step(name: str, labels: str, values: Sequence[float]) -> list[str]:
        return [f"{name}{labels} {value:g} {start + i * STEP_S}" for i, value in enumerate(values)]

    def scrapes(life: _Life) -> range:
        return range(life.scraped + 1)

    lines: list[str] = []
    for metric, factor in ((contract.NODE.rtt_max, 2.0), (contract.NODE.rtt_mdev, 0.1)):
        lines.append(f"# TYPE {metric.base} {metric.kind.value}")
        for s in spread_from:
            for d in (peer for peer in mesh.nodes if peer != s):
                rtt = mesh.rtt_ms.get((s, d), DEFAULT_RTT_MS) * factor
                pair = _labels(source_node=s, destination_node=d, destination_node_ip_address=node_ip(mesh, d))
                lines += per_step(metric.name, pair, [rtt for _ in scrapes(lives[s])])
    own: list[tuple[contract.Metric, dict[str, str], Callable[[int, int, _Life], float]]] = [
        (contract.CYCLE_LATENESS, {}, lambda index, _i, _life: 0.01 * index),
        (contract.TARGETS, {"kind": "node"}, lambda index, _i, _life: max(0, len(mesh.nodes) - 1 - index)),
        (contract.TARGETS, {"kind": "external"}, lambda _index, _i, _life: len(mesh.external)),
        (contract.OWN_CPU, {}, lambda index, i, life: 0.01 * (index + 1) * life.cycles(i)),
        (contract.FPING_CPU, {}, lambda index, i, life: 0.02 * (index + 1) * life.cycles(i)),
    ]
    for metric in dict.fromkeys(metric for metric, _labels_of, _value in own):
        lines.append(f"# TYPE {metric.base} {metric.kind.value}")
        for same, labels, value in own:
            if same is not metric:
                continue
            for index, (node, life) in enumerate(lives.items()):
                lines += per_step(metric.name, _labels(source_node=node, **labels),
                                  [value(index, i, life) for i in scrapes(life)])
    lines.append("# TYPE node_textfile_mtime_seconds gauge")
    for node, life in lives.items():
        lines += per_step("node_textfile_mtime_seconds", _labels(file=f"{TEXTFILE_DIR}/node-ping_{node}.prom"),
                          [start + life.last_success(i) * STEP_S for i in scrapes(life)])
    if pod_loss is not None or mtu_loss is not None:
        lines += paths_openmetrics(mesh, end, minutes, pod_loss=pod_loss or {}, mtu_loss=mtu_loss or {},
                                   sources=paths_from)
    text = openmetrics(mesh, end, minutes).removesuffix("# EOF\n")
    return text + "\n".join([*lines, "# EOF"]) + "\n"


def query_range(url: str, expr: str, start: float, end: float, step_s: int) -> list[dict[str, Any]]:
    """The series ({"metric": labels, "values": [[time, "value"], ...]}) a range query returns, as
    Grafana's graphs ask for them."""
    body = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step_s}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/query_range", data=body, timeout=60) as response:
        answer = json.load(response)
    if answer.get("status") != "success" or answer["data"]["resultType"] != "matrix":
        raise RuntimeError(f"unexpected answer to {expr!r}: {answer}")
    return list(answer["data"]["result"])
