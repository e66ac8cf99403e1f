"""Made-up node-ping history for a cluster of N nodes, streamed to an OpenMetrics file for promtool.

The series are those of tests/support/promdata.py openmetrics(): per pair the sent, received and
RTT-sum counters (30 pings per target per scrape, counters from 0 at the first scrape), and per node
its last success, nominal cycle, cycles and errors by kind; plus `node_ping_node_info{source_node,
zone, rack}`. Every name comes from node_ping.contract. Unlike promdata, nothing is held in memory:
1,000 nodes in full mesh are about 3 million series and several GB of text, written series by series.

Nodes are node-00000, node-00001, ... in zone-0 .. zone-(Z-1), contiguous blocks of node numbers, and
racks of RACK_SIZE nodes. `full` pairs every node with every other; `zone` pairs them as
node_ping.probe.topology picks them (cluster_plan, the same rule as select_peers, in N² hashes).
Every pair has a background loss drawn from 0-0.5 %, each ping lost at random (so each scrape's loss
is binomial on its 30 pings); the scenario's fault adds to it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from node_ping import contract
from node_ping.probe.topology import cluster_plan, select_peers
from node_ping.targets import NodeTarget

# The scrape shape of tests/support/promdata.py: 30 pings per target per scrape, answered in 0.4 ms.
PINGS_PER_STEP = 30
RTT_MS = 0.4
BACKGROUND_LOSS = 0.005  # each pair's own loss ratio is drawn from 0 to this
RACK_SIZE = 20
BLOCK_S = 7200  # promtool's block length: the history is kept inside one block
SCENARIOS = ("healthy", "node", "zone-cut", "partition", "lossy-zone-pair")
ZONE_PAIR_LOSS = 0.2

Pair = tuple[int, int]


@dataclass(frozen=True)
class Fault:
    """What the scenario broke: the extra loss per pair (source, destination index) and the groups of
    nodes a right diagnosis names (each group whole)."""

    scenario: str
    loss: Callable[[int, int], float]
    groups: tuple[frozenset[str], ...]
    description: str


@dataclass
class Cluster:
    """N nodes in zones and racks, who probes whom, and the scenario's fault."""

    size: int
    zones: int
    topology: str = "full"
    peers_per_zone: int = 3
    names: list[str] = field(init=False)
    zone_index: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.names = [f"node-{i:05d}" for i in range(self.size)]
        self.zone_index = [i * self.zones // self.size for i in range(self.size)]

    def zone(self, node: int) -> str:
        return f"zone-{self.zone_index[node]}"

    def rack(self, node: int) -> str:
        return f"rack-{node // RACK_SIZE}"

    def address(self, node: int) -> str:
        return f"10.{node // 65536}.{node // 256 % 256}.{node % 256}"

    def targets(self) -> list[NodeTarget]:
        return [NodeTarget(name, self.address(i), self.zone(i), self.rack(i)) for i, name in enumerate(self.names)]

    def peers(self) -> list[list[int]]:
        """Per source, the destinations it probes, in node order."""
        if self.topology == "full":
            everyone = list(range(self.size))
            return [everyone[:s] + everyone[s + 1:] for s in range(self.size)]
        targets = self.targets()
        plan = cluster_plan(targets, self.peers_per_zone)
        # cluster_plan promises the rule of select_peers, which the prober runs: check it on one node.
        if {t.name for t in select_peers(self.names[0], targets, "zone", self.peers_per_zone)} != plan[self.names[0]]:
            raise RuntimeError("topology.cluster_plan and select_peers disagree")
        index = {name: i for i, name in enumerate(self.names)}
        return [sorted(index[name] for name in plan[source]) for source in self.names]

    def members(self, zone: int) -> frozenset[str]:
        return frozenset(name for i, name in enumerate(self.names) if self.zone_index[i] == zone)

    def fault(self, scenario: str, seed: int) -> Fault:
        rng = random.Random(f"fault:{seed}")  # noqa: S311 - a reproducible fault
        zones = self.zone_index
        if scenario == "healthy":
            return Fault(scenario, lambda _s, _d: 0.0, (), "no fault")
        if scenario == "node":
            bad = rng.randrange(self.size)
            return Fault(scenario, lambda s, d: 1.0 if bad in (s, d) else 0.0, (frozenset({self.names[bad]}),),
                         f"{self.names[bad]} loses 100 % both ways")
        if scenario == "zone-cut":
            cut = rng.randrange(self.zones)
            return Fault(scenario, lambda s, d: 1.0 if (zones[s] == cut) != (zones[d] == cut) else 0.0,
                         (self.members(cut),), f"zone-{cut} cut off from the other zones")
        if scenario == "partition":
            half = self.size // 2
            return Fault(scenario, lambda s, d: 1.0 if (s < half) != (d < half) else 0.0,
                         (frozenset(self.names[:half]), frozenset(self.names[half:])),
                         f"{self.names[0]}..{self.names[half - 1]} cut off from {self.names[half]}..{self.names[-1]}")
        if scenario == "lossy-zone-pair":
            a, b = rng.sample(range(self.zones), 2)
            return Fault(scenario, lambda s, d: ZONE_PAIR_LOSS if {zones[s], zones[d]} == {a, b} else 0.0,
                         (self.members(a), self.members(b)),
                         f"every pair between zone-{a} and zone-{b} loses {ZONE_PAIR_LOSS:.0%}")
        raise ValueError(f"unknown scenario {scenario!r}; use one of {', '.join(SCENARIOS)}")


def end_time(now: float, history_s: int, step_s: int) -> int:
    """The newest scrape time at or before `now` whose history lies inside one promtool block: a
    history across a block boundary makes promtool read the file once more and Prometheus merge."""
    end = int(now) // step_s * step_s
    if end - history_s < end // BLOCK_S * BLOCK_S:
        end = end // BLOCK_S * BLOCK_S - step_s
    return end


def lost_per_step(ratio: float, steps: int, rng: random.Random) -> list[int]:
    """Pings lost in each of `steps` scrapes when each ping is lost with probability `ratio`:
    binomial per scrape, drawn by jumping from one lost ping to the next (geometric gaps), so a
    clean pair costs one draw."""
    if ratio <= 0:
        return [0] * steps
    if ratio >= 1:
        return [PINGS_PER_STEP] * steps
    counts = [0] * steps
    total, log_keep = steps * PINGS_PER_STEP, math.log1p(-ratio)
    ping = int(math.log(1.0 - rng.random()) / log_keep)
    while ping < total:
        counts[ping // PINGS_PER_STEP] += 1
        ping += 1 + int(math.log(1.0 - rng.random()) / log_keep)
    return counts


@dataclass(frozen=True)
class Written:
    """What the generator wrote."""

    series: int
    samples: int
    size_bytes: int
    pairs: int


class _Writer:
    """Series by series into one file, with the scrape times formatted once."""

    def __init__(self, out: TextIO, start: int, steps: int, step_s: int) -> None:
        self.out, self.steps, self.series, self.samples = out, steps, 0, 0
        self.times = [f" {start + i * step_s}\n" for i in range(steps)]

    def family(self, metric: contract.Metric) -> None:
        self.out.write(f"# TYPE {metric.base} {metric.kind.value}\n")

    def series_of(self, prefix: str, values: Sequence[str]) -> None:
        self.out.write("".join(f"{prefix} {value}{time}" for value, time in zip(values, self.times, strict=True)))
        self.series += 1
        self.samples += self.steps


def _cumulative(per_step: Sequence[float], steps: int) -> list[str]:
    """A counter's values at each scrape: 0 at the first, then adding each step's amount."""
    values, total = ["0"], 0.0
    for amount in per_step[:steps - 1]:
        total += amount
        values.append(f"{total:g}")
    return values


def _pair_rows(cluster: Cluster, peers: list[list[int]], fault: Fault, seed: int,
               steps: int) -> Iterator[tuple[int, int, list[int]]]:
    """(source, destination, lost pings per step) for every pair, the same on every pass: each
    source's random numbers come from its own seed."""
    for source, destinations in enumerate(peers):
        rng = random.Random(f"pairs:{seed}:{source}")  # noqa: S311 - reproducible noise
        for destination in destinations:
            background = rng.uniform(0.0, BACKGROUND_LOSS)
            extra = fault.loss(source, destination)
            yield source, destination, lost_per_step(1 - (1 - background) * (1 - extra), steps - 1, rng)


def write(path: Path, cluster: Cluster, fault: Fault, *, seed: int, end: int, history_s: int,
          step_s: int) -> Written:
    """Write the history of the `history_s` seconds up to unix time `end` (a scrape every `step_s`)."""
    steps = history_s // step_s + 1
    peers = cluster.peers()
    family = contract.NODE
    sources = [f'{{{contract.SOURCE}="{name}",{family.destination}="' for name in cluster.names]
    destinations = [f'{name}",{family.address}="{cluster.address(i)}"}}' for i, name in enumerate(cluster.names)]
    sent = _cumulative([PINGS_PER_STEP] * steps, steps)
    clean = [PINGS_PER_STEP] * (steps - 1)
    clean_received, clean_rtt = sent, _cumulative([PINGS_PER_STEP * RTT_MS] * steps, steps)
    with path.open("w", encoding="ascii", buffering=1 << 22) as out:
        writer = _Writer(out, end - (steps - 1) * step_s, steps, step_s)
        writer.family(family.packets_sent)
        for source, destinations_of in enumerate(peers):
            for destination in destinations_of:
                writer.series_of(f"{family.packets_sent.name}{sources[source]}{destinations[destination]}", sent)
        for metric in (family.packets_received, family.rtt_sum):
            writer.family(metric)
            rtt = metric is family.rtt_sum
            for source, destination, lost in _pair_rows(cluster, peers, fault, seed, steps):
                if not any(lost):
                    values = clean_rtt if rtt else clean_received
                else:
                    received = [got - gone for got, gone in zip(clean, lost, strict=True)]
                    values = _cumulative([r * RTT_MS for r in received] if rtt else received, steps)
                writer.series_of(f"{metric.name}{sources[source]}{destinations[destination]}", values)
        _own_series(writer, cluster, [len(of) for of in peers], (end, steps, step_s))
        out.write("# EOF\n")
    return Written(writer.series, writer.samples, path.stat().st_size, sum(map(len, peers)))


def _own_series(writer: _Writer, cluster: Cluster, targets: Sequence[int], when: tuple[int, int, int]) -> None:
    """Each exporter's own metrics, every cycle a success (as promdata's healthy prober), how many
    nodes it probes (`targets`, by node number), and where it sits (node_info). `when`: end, steps, step_s."""
    end, steps, step_s = when
    start = end - (steps - 1) * step_s
    own: list[tuple[contract.Metric, dict[str, str], list[str]]] = [
        (contract.LAST_SUCCESS, {}, [str(start + i * step_s) for i in range(steps)]),
        (contract.CYCLE_NOMINAL, {}, [str(step_s)] * steps),
        (contract.CYCLES, {}, [str(i) for i in range(steps)]),
        *((contract.ERRORS, {contract.ERRORS.labels[-1]: kind}, ["0"] * steps) for kind in contract.ERROR_KINDS),
    ]
    for metric in dict.fromkeys(metric for metric, _labels, _values in own):
        writer.family(metric)
        for same, labels, values in own:
            if same is metric:
                extra = "".join(f',{key}="{value}"' for key, value in labels.items())
                for name in cluster.names:
                    writer.series_of(f'{metric.name}{{{contract.SOURCE}="{name}"{extra}}}', values)
    writer.family(contract.TARGETS)
    kind = contract.TARGETS.labels[-1]
    for i, name in enumerate(cluster.names):
        target_labels = f'{contract.SOURCE}="{name}",{kind}="node"'
        writer.series_of(f"{contract.TARGETS.name}{{{target_labels}}}", [str(targets[i])] * steps)
    writer.family(contract.NODE_INFO)
    for i, name in enumerate(cluster.names):
        place = f'{contract.SOURCE}="{name}",{contract.ZONE}="{cluster.zone(i)}",{contract.RACK}="{cluster.rack(i)}"'
        writer.series_of(f"{contract.NODE_INFO.name}{{{place}}}", ["1"] * steps)
