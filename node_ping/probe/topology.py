"""Choose which nodes this node probes (pure).

`full`: every other node, N² series per metric for the cluster. `zone`: every node of the own
zone (topology.kubernetes.io/zone), plus, from every other zone, only the nodes that rank this
node among their top k by rendezvous hashing. Ranking from the destination's side guarantees that
every node is probed by at least k peers of every other zone (all of them, if the zone is smaller),
and the choice moves as little as possible when nodes come and go.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

from node_ping.targets import NodeTarget

MODES = ("full", "zone")


def _score(destination: str, source: str) -> bytes:
    return hashlib.blake2b(f"{destination}\0{source}".encode(), digest_size=8).digest()


def select_peers(source: str, nodes: Sequence[NodeTarget], mode: str, peers_per_zone: int) -> list[NodeTarget]:
    """The targets `source` should probe, in the order they were listed."""
    others = [node for node in nodes if node.name != source]
    if mode == "full":
        return others
    if mode != "zone":
        raise ValueError(f"unknown topology mode {mode!r}; use one of {', '.join(MODES)}")
    chosen = _zone_peers(source, tuple(nodes), peers_per_zone)
    return [node for node in others if node.name in chosen]


@lru_cache(maxsize=4)
def _zone_peers(source: str, nodes: tuple[NodeTarget, ...], k: int) -> frozenset[str]:
    """Cached on the node list: recomputed only when a node joins, leaves or moves."""
    zone_of = {node.name: node.zone or "" for node in nodes}
    own_zone = zone_of.get(source, "")
    zone_mates = sorted(name for name, zone in zone_of.items() if zone == own_zone)
    chosen: set[str] = set()
    for node in nodes:
        if node.name == source:
            continue
        if zone_of[node.name] == own_zone:
            chosen.add(node.name)
            continue
        # Would `node` pick `source` among the k nodes of source's zone that it ranks highest?
        my_score = _score(node.name, source)
        better = 0
        for mate in zone_mates:
            if mate != source and _score(node.name, mate) > my_score:
                better += 1
                if better >= k:
                    break
        if better < k:
            chosen.add(node.name)
    return frozenset(chosen)


def cluster_plan(nodes: Sequence[NodeTarget], peers_per_zone: int) -> dict[str, frozenset[str]]:
    """Who probes whom in `zone` mode, for the whole cluster at once (for benchmarks and checks).

    Same rule as `select_peers`, computed from the destination's side in N² hashes instead of
    N times N·zone-size.
    """
    zones: dict[str, list[str]] = {}
    for node in nodes:
        zones.setdefault(node.zone or "", []).append(node.name)
    plan: dict[str, set[str]] = {node.name: set() for node in nodes}
    for destination in nodes:
        own_zone = destination.zone or ""
        for zone, members in zones.items():
            if zone == own_zone:
                chosen = [m for m in members if m != destination.name]
            else:
                chosen = sorted(members, key=lambda m: _score(destination.name, m), reverse=True)[:peers_per_zone]
            for source in chosen:
                plan[source].add(destination.name)
    return {source: frozenset(targets) for source, targets in plan.items()}
