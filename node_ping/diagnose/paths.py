"""Faults of the other paths, told apart from the host network's (pure): packets of the MTU size lost
while small pings pass (a path MTU too small: switch port, VLAN, tunnel), and pods that cannot reach
each other while their hosts can (the pod network, CNI). A pair whose small host pings are lossy too
is left to the host verdicts: it is not a path of its own that fails."""

from __future__ import annotations

from collections.abc import Callable, Collection
from collections.abc import Set as AbstractSet

from node_ping.diagnose.explain import explain
from node_ping.diagnose.matrix import Pair, PathCells, natural_key
from node_ping.diagnose.stats import above
from node_ping.diagnose.verdicts import PATH_KINDS, Evidence, Verdict
from node_ping.diagnose.wording import loss_span, pct

MTU, POD = "mtu", "pod"


def _mtu_words(mtu: str) -> Callable[[str, str], str]:
    size = f"packets of {mtu or 'the MTU'} bytes"
    cause = f"a path MTU below {mtu or 'the MTU'}"

    def words(scope: str, what: str) -> str:
        if scope == "node":
            return (f"{size} to and from node {what} are lost while small ones pass: {cause} at {what} "
                    "(its switch port, VLAN or tunnel)")
        if scope == "link":
            return f"{size} are lost between {what} while small ones pass: {cause} (switch port, VLAN, tunnel)"
        return (f"{size} are lost on {what} while small ones pass: the network's MTU is below "
                f"{mtu or 'the MTU'}; set --mtu to what it carries (e.g. 1450 on VXLAN overlays, 1400 on a "
                "Hetzner vSwitch) or fix the switches")
    return words


def _pod_words(scope: str, what: str) -> str:
    if scope == "node":
        return (f"pods on {what} cannot reach pods on most other nodes, or they it, while the hosts reach "
                f"each other: the pod network (CNI) on {what}, not the switch")
    if scope == "link":
        return f"pods on {what} cannot reach each other while the hosts do: the pod network (CNI), not the switch"
    return (f"the pod network loses packets on {what} while the hosts reach each other: the CNI as a whole "
            "(its agents, overlay or routes), not the switch")


def path_verdicts(path: str, cells: PathCells, nodes: Collection[str], host_lossy: AbstractSet[Pair], *,
                  loss_ratio: float, background: float) -> list[Verdict]:
    """The verdicts of one path: its lossy cells (significantly above the background) whose host pair
    is not lossy, read as nodes, links or the whole cluster like the host matrix."""
    bad = {pair for pair, counts in cells.cells.items()
           if counts.loss_ratio >= loss_ratio and above(counts, background) and pair not in host_lossy}
    if not bad:
        return []
    ordered = sorted({n for pair in cells.cells for n in pair} | set(nodes), key=natural_key)
    found = explain(ordered, cells.cells, bad, cells.sizes)
    words = _mtu_words(cells.mtu) if path == MTU else _pod_words

    def evidence(pairs: Collection[Pair]) -> tuple[Evidence, ...]:
        return tuple(Evidence(s, d, round(cells.cells[(s, d)].loss_ratio * 100, 3), None)
                     for s, d in sorted(pairs, key=lambda p: (natural_key(p[0]), natural_key(p[1]))))

    def span(pairs: Collection[Pair]) -> str:
        return loss_span([cells.cells[p].loss_ratio for p in pairs])

    pairs = sum(size for (direction, _), size in cells.sizes.items() if direction == "send") or len(cells.cells)
    if found.cluster_wide:
        what = f"{len(bad)} of {pairs} pairs ({span(bad)})"
        return [Verdict(PATH_KINDS[(path, "cluster-wide")], tuple(ordered), words("cluster-wide", what), evidence(bad),
                        summary={"bad_pairs": len(bad), "pairs": pairs})]
    verdicts = []
    for node in sorted(found.send | found.receive, key=natural_key):
        mine = [p for p in bad if node in p and ((p[0] == node and node in found.send)
                                                 or (p[1] == node and node in found.receive))]
        peers = found.size(node, "send") + found.size(node, "receive")
        message = f"{words('node', node)} ({len(mine)} of {peers} pairs with its peers lose {span(mine)})"
        verdicts.append(Verdict(PATH_KINDS[(path, "node")], (node,), message, evidence(mine),
                                summary={"bad_pairs": len(mine), "pairs": peers}))
    for a, b in found.links:
        measured = [p for p in ((a, b), (b, a)) if p in cells.cells]
        directions = ", ".join(f"{s}->{d} {pct(cells.cells[(s, d)].loss_ratio)}" for s, d in measured)
        verdicts.append(Verdict(PATH_KINDS[(path, "link")], (a, b), f"{words('link', f'{a} and {b}')} ({directions})",
                                evidence(measured), summary={"worst_loss_percent": round(
                                    max(cells.cells[p].loss_ratio for p in measured) * 100, 3)}))
    return verdicts
