"""What `diagnose` answers: the verdict kinds and the verdicts themselves, with the
measured cells behind each (pure data; `analysis` decides them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

HEALTHY = "healthy"
NODE_ISOLATED = "node-isolated"
NODE_RECEIVE = "node-cannot-receive"
NODE_SEND = "node-cannot-send"
LINK = "link"
CLUSTER = "cluster-wide"
LATENCY_NODE = "latency-node"
LATENCY_LINK = "latency-link"
LATENCY_CLUSTER = "latency-cluster-wide"
EXTERNAL_NODE = "external-node"
EXTERNAL_TARGET = "external-target"
EXTERNAL_CLUSTER = "external-cluster-wide"
NODE_SILENT = "node-silent"
NODE_STALE = "node-stale"
NODE_LOSSY = "node-lossy"  # loses part of its pings both ways: not cut off (that is node-isolated)
PARTITION = "partition"
GROUP_KINDS = {  # (by, what) -> kind; `by` is how the groups are known: zone, rack, or the loss's own sides
    (by, what): f"{by}-{what}" for by in ("zone", "rack") for what in ("cut-off", "lossy", "pair-lossy")}

PATH_KINDS = {  # (path, scope) -> kind: the MTU probe's and the pod network's faults
    (path, scope): f"{'mtu' if path == 'mtu' else 'pod-network'}-{scope}"
    for path in ("mtu", "pod") for scope in ("node", "link", "cluster-wide")}
KINDS = (HEALTHY, PARTITION, *GROUP_KINDS.values(), NODE_ISOLATED, NODE_LOSSY, NODE_RECEIVE, NODE_SEND, LINK, CLUSTER,
         LATENCY_NODE, LATENCY_LINK, LATENCY_CLUSTER, *PATH_KINDS.values(), EXTERNAL_NODE, EXTERNAL_TARGET,
         EXTERNAL_CLUSTER, NODE_SILENT, NODE_STALE)


@dataclass(frozen=True)
class Evidence:
    """One measured cell behind a verdict."""

    source: str
    destination: str
    loss_percent: float
    rtt_avg_ms: float | None


@dataclass(frozen=True)
class Verdict:
    """One fault (or the single `healthy` verdict) as a person reads it and a script checks it.

    `kind` is one of KINDS; `nodes` are the nodes it blames (every node for the cluster-wide kinds
    and for healthy; none for a partition, where neither side is to blame); `groups` the zones, racks
    or sides a group verdict is about, with their members; `targets` the external targets, for the
    external kinds; `message` is the sentence to read; `evidence` the measured cells behind it;
    `summary` the numbers in the message under stable keys (which keys depends on the kind).
    """

    kind: str
    nodes: tuple[str, ...]
    message: str
    evidence: tuple[Evidence, ...] = ()
    targets: tuple[str, ...] = ()  # external targets, for the external kinds
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # the group kinds: group -> members
    summary: Mapping[str, float] = field(default_factory=dict)

    @property
    def is_fault(self) -> bool:
        return self.kind != HEALTHY
