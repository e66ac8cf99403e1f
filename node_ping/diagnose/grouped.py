"""Group faults (`groups`) as verdicts: one line each, naming the groups, their size and the evidence
summed, with the members and the cells behind it for --output json (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from node_ping.diagnose.groups import GROUP_CUT, GROUP_LOSSY, GROUP_PAIR, PARTITION, GroupFault
from node_ping.diagnose.matrix import Block, Counts, Pair, natural_pair_key
from node_ping.diagnose.verdicts import GROUP_KINDS, Evidence
from node_ping.diagnose.verdicts import PARTITION as PARTITION_KIND
from node_ping.diagnose.wording import pct

EVIDENCE_CELLS = 200
"""At most this many cells as a group verdict's evidence (the worst first); the summary counts all."""
_NAMED_MEMBERS = 4


def members(nodes: Sequence[str]) -> str:
    """'3 nodes: a, b, c' or '40 nodes: a, b, c, d and 36 more'."""
    shown = ", ".join(nodes[:_NAMED_MEMBERS])
    more = f" and {len(nodes) - _NAMED_MEMBERS} more" if len(nodes) > _NAMED_MEMBERS else ""
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: {shown}{more}"


def _sum(blocks: Sequence[Block]) -> Block:
    return Block(sum(b.measured for b in blocks), sum(b.bad for b in blocks), sum(b.sent for b in blocks),
                 sum(b.lost for b in blocks))


def evidence(fault: GroupFault, cells: Mapping[Pair, Counts]) -> tuple[Evidence, ...]:
    known = [p for p in fault.cells if p in cells]
    worst = sorted(known, key=lambda p: (-cells[p].loss_ratio, natural_pair_key(p)))[:EVIDENCE_CELLS]
    out = []
    for pair in sorted(worst, key=natural_pair_key):
        counts = cells[pair]
        avg = counts.rtt_avg_ms
        out.append(Evidence(pair[0], pair[1], round(counts.loss_ratio * 100, 3),
                            None if avg is None else round(avg, 3)))
    return tuple(out)


def kind_of(fault: GroupFault) -> str:
    if fault.kind == PARTITION:
        return PARTITION_KIND
    what = {GROUP_CUT: "cut-off", GROUP_LOSSY: "lossy", GROUP_PAIR: "pair-lossy"}[fault.kind]
    return GROUP_KINDS[(fault.by, what)]


def message(fault: GroupFault) -> str:
    """The one line a person reads."""
    by = fault.by
    cross = _sum([b for (a, c), b in fault.blocks.items() if a != c])
    inside = [g for g, b in fault.inside.items() if b.measured and b.bad <= 0.2 * b.measured]
    if fault.kind == PARTITION:
        named = [" + ".join(side) + f" ({members([n for g in side for n in fault.groups[g]])})"
                 for side in fault.sides]
        what = "sides" if by == "side" else f"sides ({by}s)"
        healthy = ", each healthy inside" if len(inside) == len(fault.groups) else ""
        return (f"network partition: {len(fault.sides)} {what} cannot reach each other ({pct(cross.loss_ratio)} of "
                f"{cross.sent:,.0f} pings across lost){healthy}: {' | '.join(named)}; look at what joins them "
                "(inter-zone or inter-rack links, routers, firewalls), not at single nodes")
    if fault.kind == GROUP_PAIR:
        a, b = fault.groups
        ways = ", ".join(f"{x}->{y} {pct(blk.loss_ratio)}" for (x, y), blk in sorted(fault.blocks.items()))
        return (f"{by}s {a} and {b} lose {pct(cross.loss_ratio)} of the pings between them ({ways}; "
                f"{cross.bad} of {cross.measured} pairs), while each reaches the other {by}s and itself: "
                f"look at the link between {a} and {b}")
    (group,) = fault.blamed
    nodes = members(fault.groups[group])
    others = len(fault.groups) - 1
    if fault.kind == GROUP_CUT:
        inner = "; inside it pings pass" if group in inside else ""
        return (f"{by} {group} is cut off ({nodes}): {pct(cross.loss_ratio)} of the pings to and from the other "
                f"{others} {by}s are lost ({cross.bad} of {cross.measured} pairs){inner}, while those reach "
                f"each other: look at {group}'s uplink or switch")
    inner_block = fault.inside.get(group, Block())
    inner = (f", and {pct(inner_block.loss_ratio)} inside it" if group not in inside and inner_block.measured
             else "")
    return (f"{by} {group} loses {pct(cross.loss_ratio)} of the pings to and from the other {others} {by}s "
            f"({nodes}; {cross.bad} of {cross.measured} pairs){inner}, while those are fine among themselves: "
            f"look at {group}'s switch or uplink")


def summary(fault: GroupFault) -> dict[str, float]:
    cross = _sum([b for (a, c), b in fault.blocks.items() if a != c])
    return {"groups": len(fault.groups), "nodes": sum(len(m) for m in fault.groups.values()),
            "bad_pairs": cross.bad, "pairs": cross.measured, "loss_percent": round(cross.loss_ratio * 100, 3),
            "evidence_cells": len(fault.cells)}
