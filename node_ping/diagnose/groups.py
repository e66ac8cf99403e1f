"""Faults of whole groups of nodes: a partition, a zone or rack cut off or lossy, a lossy zone pair (pure).

Data centres fail in groups: a rack's switch, a zone's uplink, the link between two zones. Read
node by node, such a fault becomes dozens of node verdicts or a "cluster-wide" one. So the bad cells
are first read per block: all pairs from one group to another (or inside one), where a group is a
zone, a rack, or, when the nodes carry neither, a side of the loss itself (the nodes that still
reach each other). A block is bad when most of its measured pairs are; a verdict names the groups
and says how the rest behaves. The cells a group verdict explains are left out of the node and link
verdicts that follow (`analysis`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from node_ping.diagnose.matrix import Block, Counts, Pair, Place, natural_key

PARTITION = "partition"
GROUP_CUT = "group-cut-off"
GROUP_LOSSY = "group-lossy"
GROUP_PAIR = "group-pair-lossy"
GROUP_KINDS = (PARTITION, GROUP_CUT, GROUP_LOSSY, GROUP_PAIR)

BAD_BLOCK_SHARE = 0.8
"""A block is bad when at least this share of its measured pairs is: a switch fault hits every pair
behind it, while a few bad pairs in a block are links of their own."""
HEALTHY_INSIDE_SHARE = 0.2
"""A group is healthy inside when at most this share of its own pairs is bad."""
CUT_LOSS = 0.9
"""A block losing this much or more is cut, not lossy: nothing useful gets through."""


@dataclass(frozen=True)
class GroupFault:
    """One fault of whole groups: `kind` one of GROUP_KINDS, `by` what the groups are ("zone", "rack"
    or "side"), `groups` {name: members} of the groups it is about, `blamed` the groups it blames (none
    for a partition: neither side is to blame), `cells` the bad cells it explains, `blocks` the
    blocks behind it ((from group, to group) -> Block), `inside` the blocks inside each named group."""

    kind: str
    by: str
    groups: Mapping[str, tuple[str, ...]]
    blamed: tuple[str, ...]
    cells: frozenset[Pair]
    blocks: Mapping[tuple[str, str], Block]
    inside: Mapping[str, Block]
    sides: tuple[tuple[str, ...], ...] = ()  # a partition's sides, each a tuple of group names

    @property
    def blamed_nodes(self) -> tuple[str, ...]:
        return tuple(sorted((n for g in self.blamed for n in self.groups[g]), key=natural_key))


def groupings(nodes: Sequence[str], places: Mapping[str, Place]) -> list[tuple[str, dict[str, str]]]:
    """The groupings the nodes carry: ("zone", node -> zone), then ("rack", node -> rack), each only
    when it makes two groups or more and covers every node (a partial labelling would put the
    unlabelled nodes in one made-up group)."""
    found = []
    for by in ("zone", "rack"):
        of = {node: getattr(places.get(node, Place()), by) for node in nodes}
        if all(of.values()) and len(set(of.values())) >= 2:
            found.append((by, {node: str(group) for node, group in of.items()}))
    return found


def sides(nodes: Sequence[str], cells: Iterable[Pair], bad: AbstractSet[Pair]) -> dict[str, str]:
    """The structure of the loss itself: node -> side, the sides being the sets of nodes that reach
    each other (both directions of a measured pair not bad), found as connected components.
    Needs every measured cell: a pair not fetched would read as missing."""
    good: dict[str, set[str]] = {node: set() for node in nodes}
    for a, b in cells:
        if (a, b) not in bad and (b, a) not in bad and a in good and b in good:
            good[a].add(b)
            good[b].add(a)
    return {node: f"side-{index}" for index, part in enumerate(_components(nodes, good), 1) for node in part}


def mesh_sides(nodes: Sequence[str], bad: AbstractSet[Pair]) -> dict[str, str]:
    """`sides` for a full mesh whose good cells are not at hand: every pair is measured, so the nodes
    that reach each other are the components of the complement of the bad pairs, found in
    O(nodes + bad pairs) by walking the nodes not yet reached."""
    blocked: dict[str, set[str]] = {node: set() for node in nodes}
    for a, b in bad:
        if a in blocked and b in blocked:
            blocked[a].add(b)
            blocked[b].add(a)
    unreached = set(nodes)
    side: dict[str, str] = {}
    for start in nodes:
        if start not in unreached:
            continue
        label = f"side-{len(set(side.values())) + 1}"
        unreached.discard(start)
        stack = [start]
        while stack:
            node = stack.pop()
            side[node] = label
            reach = unreached - blocked[node]
            unreached -= reach
            stack.extend(reach)
    return side


def _mesh_blocks(of: Mapping[str, str], cells: Mapping[Pair, Counts],
                 bad: AbstractSet[Pair]) -> dict[tuple[str, str], Block]:
    """Blocks of a full mesh from its bad cells alone: every pair measured, the others good."""
    size: dict[str, int] = {}
    for group in of.values():
        size[group] = size.get(group, 0) + 1
    found = blocks_of(of, {p: cells[p] for p in bad if p in cells}, bad)
    per_pair = max((c.sent for c in cells.values()), default=0.0)
    out = {}
    for a, size_a in size.items():
        for b, size_b in size.items():
            pairs = size_a * (size_b - (a == b))
            block = found.get((a, b), Block())
            if pairs:
                out[(a, b)] = Block(pairs, block.bad, block.sent + (pairs - block.measured) * per_pair, block.lost)
    return out


def blocks_of(of: Mapping[str, str], cells: Mapping[Pair, Counts],
              bad: AbstractSet[Pair]) -> dict[tuple[str, str], Block]:
    """Every block of a grouping, summed from the cells."""
    blocks: dict[tuple[str, str], Block] = {}
    for pair, counts in cells.items():
        if pair[0] in of and pair[1] in of:
            key = (of[pair[0]], of[pair[1]])
            blocks[key] = blocks.get(key, Block()).add(counts, pair in bad)
    return blocks


def _components(groups: Sequence[str], linked: Mapping[str, set[str]]) -> list[list[str]]:
    """The connected components of `linked`, each in natural order, in the order of their first member."""
    seen: set[str] = set()
    out = []
    for start in groups:
        if start in seen:
            continue
        part, stack = [], [start]
        while stack:
            group = stack.pop()
            if group in seen:
                continue
            seen.add(group)
            part.append(group)
            stack.extend(linked[group] - seen)
        out.append(sorted(part, key=natural_key))
    return out


class _Grouping:
    """The blocks of one grouping, and the questions `find` asks of them."""

    def __init__(self, by: str, of: Mapping[str, str], blocks: Mapping[tuple[str, str], Block],
                 bad: AbstractSet[Pair]) -> None:
        self.by, self.of, self.blocks, self.bad = by, of, blocks, bad
        members: dict[str, list[str]] = {}
        for node, group in of.items():
            members.setdefault(group, []).append(node)
        self.names = sorted(members, key=natural_key)
        self.groups = {g: tuple(sorted(members[g], key=natural_key)) for g in self.names}

    def block(self, a: str, b: str) -> Block:
        return self.blocks.get((a, b), Block())

    def _bad(self, a: str, b: str) -> bool:
        block = self.block(a, b)
        return block.measured > 0 and block.bad >= BAD_BLOCK_SHARE * block.measured

    def between(self, a: str, b: str) -> bool:
        return self._bad(a, b) or self._bad(b, a)

    def cut(self, a: str, b: str) -> bool:
        """Pings get through neither way: what was measured of each direction is nearly all lost."""
        ways = [(a, b), (b, a)]
        return any(self.block(*w).measured for w in ways) and all(
            self.block(*w).measured == 0 or (self._bad(*w) and self.block(*w).loss_ratio >= CUT_LOSS) for w in ways)

    def healthy_inside(self, g: str) -> bool:
        inner = self.block(g, g)
        return inner.measured == 0 or inner.bad <= HEALTHY_INSIDE_SHARE * inner.measured

    def both_ways(self, g: str) -> list[tuple[str, str]]:
        return [(g, h) for h in self.names if h != g] + [(h, g) for h in self.names if h != g]

    def fine_among(self, groups: Sequence[str]) -> bool:
        return not any(self.between(h, k) for i, h in enumerate(groups) for k in groups[i + 1:])

    def fault(self, kind: str, named: Sequence[str], blamed: Sequence[str], keys: Sequence[tuple[str, str]],
              parts: Sequence[Sequence[str]] = ()) -> GroupFault:
        wanted = set(keys)
        cells = frozenset(p for p in self.bad if p[0] in self.of and p[1] in self.of
                          and (self.of[p[0]], self.of[p[1]]) in wanted)
        return GroupFault(kind, self.by, {g: self.groups[g] for g in named}, tuple(blamed), cells,
                          {k: self.block(*k) for k in keys if self.block(*k).measured},
                          {g: self.block(g, g) for g in named}, tuple(tuple(p) for p in parts))

    def partition(self) -> list[GroupFault]:
        """Cut blocks first: the groups that still reach each other make the sides."""
        reach = {g: {h for h in self.names if h != g and not self.cut(g, h)} for g in self.names}
        parts = _components(self.names, reach)
        # A side of a single node is an isolated node: the node verdicts name it better.
        if len(parts) < 2 or any(sum(len(self.groups[g]) for g in p) < 2 for p in parts):
            return []
        cross = [(a, b) for p in parts for q in parts if p is not q for a in p for b in q]
        small = [p[0] for p in parts if len(p) == 1 and len(self.groups[p[0]]) >= 2]
        if len(parts) > 2 and len(small) == len(parts) - 1:
            # Several groups, each cut off alone, from a rest that still holds together: one verdict each.
            return [self.fault(GROUP_CUT, self.names, (g,), self.both_ways(g)) for g in small]
        if len(parts) == 2 and len(self.names) >= 3 and len(small) == 1:
            # One group against the others, which still reach each other: that group is cut off.
            return [self.fault(GROUP_CUT, self.names, small, self.both_ways(small[0]))]
        # An even split, two sides of several groups, three or more sides: neither side is to blame.
        return [self.fault(PARTITION, self.names, (), cross, parts)]

    def lossy_groups(self) -> list[GroupFault]:
        """A group bad towards every other group (two at least), while those are fine among
        themselves: cut off, or lossy (inside too, when its own pairs are bad)."""
        found = []
        for g in self.names:
            others = [h for h in self.names if h != g]
            if (len(others) < 2 or len(self.groups[g]) < 2 or not all(self.between(g, h) for h in others)
                    or not self.fine_among(others)):
                continue
            kind = GROUP_CUT if all(self.cut(g, h) for h in others) else GROUP_LOSSY
            inner = [] if self.healthy_inside(g) else [(g, g)]
            found.append(self.fault(kind, self.names, (g,), self.both_ways(g) + inner))
        return found

    def lossy_pair(self, bad_pairs: Sequence[tuple[str, str]]) -> list[GroupFault]:
        """One pair of groups bad between them only, each healthy inside: the link between the two."""
        if len(bad_pairs) != 1:
            return []
        a, b = bad_pairs[0]
        if not (self.healthy_inside(a) and self.healthy_inside(b)):
            return []
        return [self.fault(GROUP_PAIR, (a, b), (), [(a, b), (b, a)])]


def find(by: str, of: Mapping[str, str], blocks: Mapping[tuple[str, str], Block],
         bad: AbstractSet[Pair]) -> list[GroupFault]:
    """The group faults of one grouping (see the module's docstring); none when the bad blocks do not
    make a group's story (then nodes and links tell it)."""
    grouping = _Grouping(by, of, blocks, bad)
    names = grouping.names
    bad_pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if grouping.between(a, b)]
    if not bad_pairs:
        return []
    return grouping.partition() or grouping.lossy_groups() or grouping.lossy_pair(bad_pairs)


def group_faults(nodes: Sequence[str], places: Mapping[str, Place], cells: Mapping[Pair, Counts],
                 bad: AbstractSet[Pair], *, complete: bool, full_mesh: bool = False,
                 blocks: Mapping[str, Mapping[tuple[str, str], Block]] | None = None) -> list[GroupFault]:
    """The group faults the bad cells show, by zone, else by rack, else (with every cell at hand) by
    the sides of the loss itself (also without every cell at hand when `full_mesh` says every pair is
    measured). `blocks` gives a grouping's blocks summed elsewhere (in PromQL), bad
    pairs counted, when `cells` holds only the bad ones."""
    for by, of in groupings(nodes, places):
        summed = (blocks or {}).get(by)
        # Summed in Prometheus, the blocks come with their bad pairs counted there (by the threshold).
        merged = dict(summed) if summed is not None else blocks_of(of, cells, bad)
        found = find(by, of, merged, bad)
        if found:
            return found
    if (complete or full_mesh) and len(nodes) >= 4:
        of = sides(nodes, cells, bad) if complete else mesh_sides(nodes, bad)
        # Sides only make a story when there are two or more of at least two nodes each: a side of one
        # is an isolated node, which the node verdicts name better.
        sizes = [sum(1 for s in of.values() if s == label) for label in set(of.values())]
        if sum(size >= 2 for size in sizes) >= 2 and all(size >= 2 for size in sizes):
            blocks_found = blocks_of(of, cells, bad) if complete else _mesh_blocks(of, cells, bad)
            return [f for f in find("side", of, blocks_found, bad) if f.kind == PARTITION]
    return []
