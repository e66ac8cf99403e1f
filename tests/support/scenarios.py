"""Fault scenarios as a scorer builds them: N nodes in zones and racks, full mesh or zone mode, random
background loss of 0-0.5 % on every pair (binomial, seeded), and one fault on top; with the verdicts a
user expects (the right culprits, each named once, nobody innocent blamed)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from node_ping.diagnose.matrix import Counts, Matrix, Pair, Place
from node_ping.probe.topology import select_peers
from node_ping.targets import NodeTarget

PINGS = 30 * 60  # 30 pings a cycle, 60 cycles: what 15 minutes of 15 s cycles give a pair


def binomial(n: int, p: float, rng: random.Random) -> int:
    """A binomial draw: Poisson (Knuth) for small means, normal for large ones; fast enough for 10^5 pairs."""
    mean = n * p
    if mean <= 0:
        return 0
    if p >= 1:
        return n
    if mean < 30:
        limit, k, product = math.exp(-mean), 0, rng.random()
        while product > limit:
            k += 1
            product *= rng.random()
        return min(k, n)
    return min(n, max(0, round(rng.gauss(mean, math.sqrt(mean * (1 - p))))))


@dataclass(frozen=True)
class Cluster:
    """`n` nodes named node-1.., in `zones` zones and `racks_per_zone` racks per zone (round robin)."""

    n: int
    zones: int = 1
    racks_per_zone: int = 1
    topology: str = "full"
    peers_per_zone: int = 3
    labelled: bool = True  # whether node_ping_node_info tells zone and rack

    @property
    def nodes(self) -> list[str]:
        return [f"node-{i + 1}" for i in range(self.n)]

    def place(self, node: str) -> Place:
        i = int(node.split("-")[1]) - 1
        zone = i % self.zones
        rack = (i // self.zones) % self.racks_per_zone
        return Place(f"zone-{zone + 1}", f"rack-{zone + 1}-{rack + 1}")

    def pairs(self) -> list[Pair]:
        targets = [NodeTarget(node, f"10.0.{i // 250}.{i % 250 + 1}", self.place(node).zone)
                   for i, node in enumerate(self.nodes)]
        return [(source, peer.name) for source in self.nodes
                for peer in select_peers(source, targets, self.topology, self.peers_per_zone)]

    def members(self, *, zone: str | None = None, rack: str | None = None) -> list[str]:
        return [n for n in self.nodes if (zone is None or self.place(n).zone == zone)
                and (rack is None or self.place(n).rack == rack)]


Fault = Callable[[Cluster, Pair], float]
"""The loss a fault adds to one pair (0 for pairs it does not touch)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    cluster: Cluster
    fault: Fault
    expected: list[tuple[str, tuple[str, ...]]]  # (kind, blamed nodes), in any order
    expected_groups: Mapping[str, int] = field(default_factory=dict)  # kind -> how many groups it names


def matrix(scenario: Scenario, seed: int) -> Matrix:
    """The 15-minute matrix Prometheus would give, with the cluster's places as node_ping_node_info says."""
    rng = random.Random(seed)  # noqa: S311 -- seeded test data, not secrets
    cells: dict[Pair, Counts] = {}
    for pair in scenario.cluster.pairs():
        noise = rng.uniform(0.0, 0.005)
        loss = 1 - (1 - noise) * (1 - scenario.fault(scenario.cluster, pair))
        received = PINGS - binomial(PINGS, loss, rng)
        cells[pair] = Counts(PINGS, received, received * 0.4)
    places = {n: scenario.cluster.place(n) for n in scenario.cluster.nodes} if scenario.cluster.labelled else {}
    return Matrix(cells, places=places)
