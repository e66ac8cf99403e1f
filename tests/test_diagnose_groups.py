"""Group faults as a scorer judges them: scenarios of 8 to 300 nodes, full mesh and zone mode, random
background loss of 0-0.5 % and several seeds each; every verdict must name the right culprits once,
blame nobody innocent, and say nothing on a healthy cluster."""

from __future__ import annotations

import pytest

from node_ping.diagnose.analysis import Thresholds, diagnose
from node_ping.diagnose.matrix import Pair
from node_ping.diagnose.render import Report, render_text
from tests.support.scenarios import Cluster, Fault, Scenario, matrix

THRESHOLDS = Thresholds(node_loss_ratio=0.01)
SEEDS = (1, 7, 2026)


def _between(a: set[str], b: set[str], loss: float) -> Fault:
    """Pairs across a and b lose `loss`, both ways."""
    def fault(_c: Cluster, p: Pair) -> float:
        return loss if (p[0] in a and p[1] in b) or (p[0] in b and p[1] in a) else 0.0
    return fault


def _none(_c: Cluster, _p: Pair) -> float:
    return 0.0


def scenarios() -> list[Scenario]:
    out: list[Scenario] = []
    for n in (8, 30, 100, 300):
        full = Cluster(n, zones=4 if n >= 30 else 2, racks_per_zone=3 if n >= 30 else 1)
        nodes = set(full.nodes)
        out.append(Scenario(f"healthy full {n}", full, _none, [("healthy", tuple(full.nodes))]))
        one = {"node-3"}
        out.append(Scenario(f"node isolated full {n}", full, _between(one, nodes - one, 1.0),
                            [("node-isolated", ("node-3",))]))
        out.append(Scenario(f"link full {n}", full, _between({"node-2"}, {"node-5"}, 0.3),
                            [("link", ("node-2", "node-5"))]))
        # An even split of unlabelled nodes: neither side is to blame.
        half = set(full.nodes[: n // 2])
        bare = Cluster(n, labelled=False)
        out.append(Scenario(f"even split, no labels {n}", bare, _between(half, nodes - half, 1.0),
                            [("partition", ())]))
        if n >= 30:
            zone = set(full.members(zone="zone-2"))
            out.append(Scenario(f"zone cut full {n}", full, _between(zone, nodes - zone, 1.0),
                                [("zone-cut-off", tuple(sorted(zone, key=lambda s: int(s.split('-')[1]))))]))
            rack = set(full.members(rack="rack-3-2"))
            out.append(Scenario(f"rack cut full {n}", full, _between(rack, nodes - rack, 1.0),
                                [("rack-cut-off", tuple(sorted(rack, key=lambda s: int(s.split('-')[1]))))]))
            z1, z3 = set(full.members(zone="zone-1")), set(full.members(zone="zone-3"))
            out.append(Scenario(f"lossy zone pair full {n}", full, _between(z1, z3, 0.2), [("zone-pair-lossy", ())]))

            def lossy_rack(c: Cluster, p: Pair, rack: set[str] = rack) -> float:
                return 0.2 if p[0] in rack or p[1] in rack else 0.0
            out.append(Scenario(f"lossy rack full {n}", full, lossy_rack,
                                [("rack-lossy", tuple(sorted(rack, key=lambda s: int(s.split('-')[1]))))]))
            two = set(full.members(zone="zone-1")) | set(full.members(zone="zone-2"))
            out.append(Scenario(f"zones split two and two {n}", full, _between(two, nodes - two, 1.0),
                                [("partition", ())]))
        if n >= 100:
            zoned = Cluster(n, zones=4, racks_per_zone=3, topology="zone")
            zone = set(zoned.members(zone="zone-2"))
            out.append(Scenario(f"zone cut, zone mode {n}", zoned, _between(zone, set(zoned.nodes) - zone, 1.0),
                                [("zone-cut-off", tuple(sorted(zone, key=lambda s: int(s.split('-')[1]))))]))
            out.append(Scenario(f"healthy zone mode {n}", zoned, _none, [("healthy", tuple(zoned.nodes))]))
            out.append(Scenario(f"node isolated zone mode {n}", zoned,
                                _between({"node-7"}, set(zoned.nodes) - {"node-7"}, 1.0),
                                [("node-isolated", ("node-7",))]))

        def small_loss(c: Cluster, p: Pair) -> float:
            return 0.02 if p[1] == "node-4" else 0.0
        if n >= 30:
            out.append(Scenario(f"node losing 2% of what it receives {n}", full, small_loss,
                                [("node-cannot-receive", ("node-4",))]))
    return out


SCENARIOS = scenarios()


# Several seeds up to 100 nodes; one at 300, where each case costs seconds.
CASES = [(s, seed) for s in SCENARIOS for seed in (SEEDS if s.cluster.n <= 100 else (11,))]


@pytest.mark.parametrize(("scenario", "seed"), CASES, ids=[f"{s.name}-{seed}" for s, seed in CASES])
def test_the_right_culprits_named_once(scenario: Scenario, seed: int) -> None:
    verdicts = diagnose(matrix(scenario, seed), THRESHOLDS)
    got = sorted((v.kind, v.nodes) for v in verdicts)
    assert got == sorted(scenario.expected), [v.message for v in verdicts]


def test_partition_says_each_side_is_healthy_inside_and_blames_neither() -> None:
    cluster = Cluster(40, zones=2)
    zone = set(cluster.members(zone="zone-1"))
    scenario = Scenario("split", cluster, _between(zone, set(cluster.nodes) - zone, 1.0), [])
    (verdict,) = diagnose(matrix(scenario, 3), THRESHOLDS)
    assert verdict.kind == "partition" and verdict.nodes == ()
    assert "2 sides (zones) cannot reach each other" in verdict.message
    assert "each healthy inside" in verdict.message
    assert set(verdict.groups) == {"zone-1", "zone-2"}


def test_text_output_is_one_line_per_verdict_at_300_nodes() -> None:
    cluster = Cluster(300, zones=4, racks_per_zone=3)
    rack = set(cluster.members(rack="rack-3-2"))
    scenario = Scenario("rack", cluster, _between(rack, set(cluster.nodes) - rack, 1.0), [])
    cells = matrix(scenario, 5)
    report = Report(cells, diagnose(cells, THRESHOLDS), THRESHOLDS, "15m", 1_700_000_000.0, "http://prometheus:9090")
    text = render_text(report)
    verdict_lines = [line for line in text.splitlines() if line.startswith("* ")]
    assert len(verdict_lines) == 1
    assert verdict_lines[0].startswith("* [rack-cut-off] rack rack-3-2 is cut off (25 nodes: ")
    assert "and 21 more" in verdict_lines[0]
