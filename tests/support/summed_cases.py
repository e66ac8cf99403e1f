"""Faults at 24 nodes in 3 zones and 6 racks, each with the verdicts diagnose must give: the cases
on which the summed path (`pushdown`), with and without the recording rules, must name what the
whole matrix names (tests/test_diagnose_pushdown.py, tests/test_diagnose_recorded.py)."""

from __future__ import annotations

from node_ping.diagnose.analysis import Thresholds
from tests.support.promdata import isolated, receive_loss

NODES = [f"node-{i}" for i in range(1, 25)]
ZONE_OF = {node: f"zone-{i % 3 + 1}" for i, node in enumerate(NODES)}
RACK_OF = {node: f"rack-{i % 6 + 1}" for i, node in enumerate(NODES)}
PLACES = {node: (ZONE_OF[node], RACK_OF[node]) for node in NODES}
THRESHOLDS = Thresholds(node_loss_ratio=0.01)


def between(a: set[str], b: set[str], loss: float) -> dict[tuple[str, str], float]:
    return {(s, d): loss for s in NODES for d in NODES if s != d and ((s in a and d in b) or (s in b and d in a))}


def zone(name: str) -> set[str]:
    return {node for node, z in ZONE_OF.items() if z == name}


def rack(name: str) -> set[str]:
    return {node for node, r in RACK_OF.items() if r == name}


EVERYONE = set(NODES)
CASES: dict[str, tuple[dict[tuple[str, str], float], list[tuple[str, tuple[str, ...]]]]] = {
    "healthy": ({}, [("healthy", tuple(NODES))]),
    "node cut off": (isolated(NODES, "node-5"), [("node-isolated", ("node-5",))]),
    "node losing 20 % of what it receives": (receive_loss(NODES, "node-9", 0.2),
                                             [("node-cannot-receive", ("node-9",))]),
    # Each cell below the 5 % threshold: found by pooling node-9's column, fetched whole; its zone's
    # other members are not blamed.
    "node losing 3 % of what it receives": (receive_loss(NODES, "node-9", 0.03),
                                            [("node-cannot-receive", ("node-9",))]),
    "zone cut off": (between(zone("zone-2"), EVERYONE - zone("zone-2"), 1.0),
                     [("zone-cut-off", tuple(sorted(zone("zone-2"), key=lambda n: int(n.split("-")[1]))))]),
    "lossy zone pair": (between(zone("zone-1"), zone("zone-3"), 0.2), [("zone-pair-lossy", ())]),
    "rack cut off": (between(rack("rack-4"), EVERYONE - rack("rack-4"), 1.0),
                     [("rack-cut-off", tuple(sorted(rack("rack-4"), key=lambda n: int(n.split("-")[1]))))]),
    "one link": ({("node-2", "node-7"): 0.3, ("node-7", "node-2"): 0.3}, [("link", ("node-2", "node-7"))]),
}
