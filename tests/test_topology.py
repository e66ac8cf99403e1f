"""Who probes whom: full mesh, or zone mode with a guaranteed number of watchers per node."""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest

from node_ping.probe.topology import cluster_plan, select_peers
from node_ping.targets import NodeTarget
from tests.support.processes import PYTHON


def cluster(nodes_per_zone: int, zones: int) -> list[NodeTarget]:
    return [NodeTarget(f"z{z}-n{i}", f"10.{z}.0.{i + 1}", f"zone-{z}")
            for z in range(zones) for i in range(nodes_per_zone)]


def plan_by_select(nodes: list[NodeTarget], k: int) -> dict[str, set[str]]:
    return {n.name: {t.name for t in select_peers(n.name, nodes, "zone", k)} for n in nodes}


class TestFull:
    """The default: every other node."""

    def test_everyone_but_itself(self) -> None:
        nodes = cluster(3, 2)
        assert [t.name for t in select_peers("z0-n1", nodes, "full", 3)] == [
            n.name for n in nodes if n.name != "z0-n1"]

    def test_unknown_mode(self) -> None:
        with pytest.raises(ValueError, match="unknown topology mode"):
            select_peers("a", [], "ring", 3)


class TestZone:
    """Own zone in full, k watchers from every other zone, stable as nodes come and go."""

    def test_own_zone_in_full_and_k_watchers_per_other_zone(self) -> None:
        nodes, k = cluster(12, 4), 3
        plan = plan_by_select(nodes, k)
        zone_of = {n.name: n.zone for n in nodes}
        for node in nodes:
            mates = {n.name for n in nodes if n.zone == node.zone and n.name != node.name}
            assert mates <= plan[node.name]
            watchers = Counter(zone_of[src] for src, targets in plan.items() if node.name in targets)
            for zone in {n.zone for n in nodes} - {node.zone}:
                assert watchers[zone] == k, (node.name, zone, watchers)

    def test_matches_the_whole_cluster_plan(self) -> None:
        nodes = cluster(7, 3)
        assert plan_by_select(nodes, 2) == {src: set(dst) for src, dst in cluster_plan(nodes, 2).items()}

    def test_fewer_series_than_full_mesh(self) -> None:
        nodes = cluster(20, 5)
        zone_total = sum(len(t) for t in plan_by_select(nodes, 3).values())
        assert zone_total == 100 * 19 + 100 * 4 * 3  # own zone + k per other zone, on average
        assert zone_total < 100 * 99 / 2

    def test_small_zone_is_probed_by_all_its_members(self) -> None:
        nodes = [*cluster(6, 1), NodeTarget("lonely", "10.9.0.1", "zone-9")]
        plan = plan_by_select(nodes, 3)
        assert sum("lonely" in targets for targets in plan.values()) == 3
        assert len(plan["lonely"]) == 6  # it is the only candidate of its zone, so every node picks it

    def test_no_zone_labels_means_full_mesh(self) -> None:
        nodes = [NodeTarget(f"n{i}", f"10.0.0.{i + 1}") for i in range(5)]
        assert all(len(t) == 4 for t in plan_by_select(nodes, 1).values())

    def test_a_node_leaving_moves_only_its_own_watch_duties(self) -> None:
        nodes, k = cluster(10, 3), 2
        before = plan_by_select(nodes, k)
        gone = "z1-n4"
        after = plan_by_select([n for n in nodes if n.name != gone], k)
        gained = {src: after[src] - before[src] for src in after if after[src] - before[src]}
        # Each destination `gone` watched in another zone gets one replacement watcher; nothing else moves.
        watched_elsewhere = {d for d in before[gone] if not d.startswith("z1-")}
        assert all(len(new) == 1 for new in gained.values())
        assert sorted(d for new in gained.values() for d in new) == sorted(watched_elsewhere)
        assert all(after[src] == before[src] - {gone} for src in after if src not in gained)

    def test_same_choice_in_every_process(self) -> None:
        """Every node computes its own part; they must agree without talking to each other."""
        code = ("from node_ping.probe.topology import select_peers; from tests.test_topology import cluster; "
                "print(sorted(t.name for t in select_peers('z0-n0', cluster(8, 3), 'zone', 2)))")
        outputs = {subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True,
                                  env={"PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)}
        assert len(outputs) == 1
