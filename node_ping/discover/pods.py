"""Pure part of the pod list: the pod-network prober's Pods -> pods.json, one entry per node.

pods.json has the nodes.json format (see `node_ping.discover.nodes.render_nodes_json`): `name` is
the node a prober pod runs on, `ipAddress` that pod's IP, `zone` and `rack` the node's. The pod
prober (`node-ping run --path pod`) reads it as its targets, so each node's pod pings the pods of
the others over the pod network, and their results line up with the host prober's by node name.
Nothing here talks to the API server: Pods arrive as the JSON dicts it sends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from node_ping.targets import NodeTarget, normalise_ip


@dataclass(frozen=True)
class ProberPod:
    """What pods.json needs of one running prober pod."""

    name: str  # the pod's own name
    node: str  # spec.nodeName
    addresses: tuple[str, ...]  # status.podIPs, normalised, the primary (status.podIP) first
    created: str  # metadata.creationTimestamp: RFC 3339 in UTC, so text order is time order
    ready: bool


def _condition(pod: Mapping[str, Any], kind: str) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(isinstance(c, Mapping) and c.get("type") == kind and c.get("status") == "True" for c in conditions)


def _addresses(status: Mapping[str, Any]) -> tuple[str, ...]:
    listed = [entry.get("ip") for entry in status.get("podIPs") or [] if isinstance(entry, Mapping)]
    addresses: list[str] = []
    for text in [status.get("podIP"), *listed]:
        if not isinstance(text, str) or not text:
            continue
        try:
            address = normalise_ip(text)
        except ValueError:
            continue
        if address not in addresses:
            addresses.append(address)
    return tuple(addresses)


def prober_pod(pod: Mapping[str, Any]) -> ProberPod | None:
    """One Pod object -> what pods.json needs of it, or None if it is left out.

    Left out: a pod being deleted (its prober is stopping and its IP may soon be someone else's), one
    not yet scheduled or without an IP yet, and one not Running (Pending, Succeeded, Failed: no
    prober answers there).
    """
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    name, node = metadata.get("name"), spec.get("nodeName")
    if metadata.get("deletionTimestamp") or status.get("phase") != "Running":
        return None
    if not (isinstance(name, str) and name and isinstance(node, str) and node):
        return None
    addresses = _addresses(status)
    if not addresses:
        return None
    return ProberPod(name=name, node=node, addresses=addresses, created=str(metadata.get("creationTimestamp") or ""),
                     ready=_condition(pod, "Ready"))


def _preference(pod: ProberPod) -> tuple[bool, str, str]:
    return pod.ready, pod.created, pod.name


def pick_pods(pods: Iterable[ProberPod]) -> dict[str, ProberPod]:
    """Node name -> the one prober pod that stands for it.

    Two pods claim one node during a rolling update with maxSurge (the old one still Running, the
    new one starting), or when a DaemonSet pod is replaced by hand. The Ready one wins, since its
    prober is up; among equals the newest, since the old one is about to go; the name breaks a tie
    of the same second. Every controller instance picks the same, so restarts change nothing.
    """
    chosen: dict[str, ProberPod] = {}
    for pod in pods:
        current = chosen.get(pod.node)
        if current is None or _preference(pod) > _preference(current):
            chosen[pod.node] = pod
    return chosen


def pick_address(addresses: tuple[str, ...], like: str) -> str:
    """The pod address of the same IP version as `like` (its node's nodes.json address), else the primary.

    On a dual-stack cluster a pod has an IPv4 and an IPv6 address. The one of the node's own family
    is taken so that the host path and the pod path of a pair are measured over the same IP
    version: a loss on one path and not the other is then the pod network's, never IPv4's against
    IPv6's.
    """
    version = ipaddress.ip_address(like.partition("%")[0]).version
    for address in addresses:
        if ipaddress.ip_address(address.partition("%")[0]).version == version:
            return address
    return addresses[0]


def pod_targets(pods: Iterable[ProberPod], nodes: Iterable[NodeTarget]) -> tuple[NodeTarget, ...]:
    """The pods.json entries: one per node of nodes.json that runs a prober pod.

    A pod on a node that nodes.json does not list (outside --node-selector, or without an address
    yet) is left out: both paths probe the same nodes, and that node's zone, rack and address family
    are unknown.
    """
    by_name = {node.name: node for node in nodes}
    targets = []
    for node_name, pod in sorted(pick_pods(pods).items()):
        node = by_name.get(node_name)
        if node is None:
            continue
        targets.append(NodeTarget(name=node_name, address=pick_address(pod.addresses, node.address),
                                  zone=node.zone, rack=node.rack))
    return tuple(targets)
