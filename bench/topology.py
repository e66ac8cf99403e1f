"""Series budget of `full` versus `zone` topology.

    python -m bench.topology [--nodes 5000] [--zones 20] [--peers-per-zone 3]

Counts, for a cluster of N nodes spread evenly over Z zones, how many targets (and so series: six
per target) one node writes and the whole cluster holds, checks that zone mode still has every node
watched by at least k peers of every other zone, and times one node's own peer selection.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from node_ping.probe.topology import cluster_plan, select_peers
from node_ping.targets import NodeTarget

SERIES_PER_TARGET = 6  # sent, received, rtt sum, min, max, mdev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--zones", type=int, default=20)
    parser.add_argument("--peers-per-zone", type=int, default=3)
    args = parser.parse_args()
    if args.zones < 2 or args.nodes < 2 * args.zones or args.peers_per_zone < 1:
        parser.error("zone mode needs --zones 2 or more, at least two --nodes per zone and --peers-per-zone 1 "
                     "or more")
    n, k = args.nodes, args.peers_per_zone
    nodes = [NodeTarget(f"node-{i:05d}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"zone-{i % args.zones}")
             for i in range(n)]

    started = time.process_time()
    plan = cluster_plan(nodes, k)
    plan_cpu = time.process_time() - started
    started = time.process_time()
    mine = select_peers(nodes[0].name, nodes, "zone", k)
    select_cpu = time.process_time() - started
    if {t.name for t in mine} != plan[nodes[0].name]:
        raise SystemExit("per-node and whole-cluster plans disagree")

    zone_of = {node.name: node.zone for node in nodes}
    watchers: dict[str, Counter[str | None]] = {node.name: Counter() for node in nodes}
    for source, targets in plan.items():
        for target in targets:
            watchers[target][zone_of[source]] += 1
    min_foreign = min(count for name, per_zone in watchers.items()
                      for zone, count in per_zone.items() if zone != zone_of[name])
    per_node = [len(targets) for targets in plan.values()]
    full_targets = n - 1
    zone_total = sum(per_node)
    print(f"# {n} nodes in {args.zones} zones, k = {k}")
    print("| mode | targets per node (avg / max) | series per node | series in the cluster |")
    print("|---|---:|---:|---:|")
    print(f"| full | {full_targets} / {full_targets} | {SERIES_PER_TARGET * full_targets:,} "
          f"| {SERIES_PER_TARGET * full_targets * n:,} |")
    print(f"| zone | {zone_total / n:.0f} / {max(per_node)} | {SERIES_PER_TARGET * zone_total / n:,.0f} "
          f"| {SERIES_PER_TARGET * zone_total:,} |")
    print(f"\nfewest watchers of any node from any other zone: {min_foreign} (k = {k})")
    print(f"one node's peer selection: {select_cpu:.2f} s CPU (only when the node list changes)")
    print(f"whole-cluster plan (benchmark only): {plan_cpu:.1f} s CPU")


if __name__ == "__main__":
    main()
