"""Pure part of `node-ping discover`: Node objects -> nodes.json entries -> the exact nodes.json text.

Nothing here talks to the API server. Nodes arrive as the JSON dicts the API server sends (the
`status.addresses[].type` a reader knows from `kubectl get node -o yaml`), so the tests can write
them as literals and the controller never has to deserialize whole Node models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from node_ping.targets import ConfigError, NodeTarget, normalise_ip, parse_nodes

ZONE_LABEL = "topology.kubernetes.io/zone"
CONFIGMAP_LIMIT_BYTES = 1024 * 1024
"""The most the API server accepts in one ConfigMap: the values of its data and binaryData together."""


def node_name(node: Mapping[str, Any]) -> str:
    name = (node.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("Node object without metadata.name")
    return name


def pick_address(node: Mapping[str, Any], address_types: Sequence[str]) -> str | None:
    """The node's address of the most preferred type, normalised; None if it has none yet.

    Within one type the first usable address wins: on dual-stack nodes the kubelet lists the
    primary IP family first.
    """
    addresses = (node.get("status") or {}).get("addresses") or []
    for wanted in address_types:
        for entry in addresses:
            if not isinstance(entry, Mapping) or entry.get("type") != wanted:
                continue
            try:
                return normalise_ip(str(entry.get("address", "")))
            except ValueError:
                continue  # a malformed address of this type; another one may still do
    return None


def label(node: Mapping[str, Any], key: str | None) -> str | None:
    """The value of the node's label `key`; None if `key` is None or the label is absent or empty."""
    if key is None:
        return None
    value = ((node.get("metadata") or {}).get("labels") or {}).get(key)
    return value if isinstance(value, str) and value else None


def node_target(node: Mapping[str, Any], address_types: Sequence[str],
                rack_label: str | None = None) -> NodeTarget | None:
    """One Node object -> its nodes.json entry, or None while it has no usable address.

    Readiness is deliberately ignored: a NotReady node is exactly the one worth probing.
    """
    address = pick_address(node, address_types)
    if address is None:
        return None
    return NodeTarget(name=node_name(node), address=address, zone=label(node, ZONE_LABEL),
                      rack=label(node, rack_label))


def render_nodes_json(targets: Iterable[NodeTarget]) -> str:
    """The nodes.json text for these targets: sorted by name, fixed layout, so equal sets give equal bytes.

    One compact entry per line: a ConfigMap holds at most CONFIGMAP_LIMIT_BYTES, and indenting
    cost 17 bytes an entry, 23 with a zone (some 900 nodes fewer fit, at 63-character names and
    IPv6 addresses); a line each keeps a change to one node one line in a diff, for a byte an entry.
    pods.json is written the same way (see `node_ping.discover.pods`).
    """
    entries: list[str] = []
    for target in sorted(targets, key=lambda t: t.name):
        entry = {"name": target.name, "ipAddress": target.address}
        if target.zone is not None:
            entry["zone"] = target.zone
        if target.rack is not None:
            entry["rack"] = target.rack
        entries.append(json.dumps(entry, sort_keys=True, separators=(",", ":")))
    return "[\n" + ",\n".join(entries) + "\n]\n" if entries else "[]\n"


def oversize(text: str, count: int, other_bytes: int = 0, key: str = "nodes.json") -> str | None:
    """Why the API server would refuse a ConfigMap holding `text` (listing `count` nodes) as `key`
    beside `other_bytes` of other keys, as one sentence; None when it fits."""
    size = len(text.encode())
    if size + other_bytes <= CONFIGMAP_LIMIT_BYTES:
        return None
    others = f", {size + other_bytes:,} with the ConfigMap's other keys" if other_bytes else ""
    return (f"{key} for {count:,} nodes is {size:,} bytes{others}, more than the {CONFIGMAP_LIMIT_BYTES:,} bytes "
            "(1 MiB) the API server accepts in a ConfigMap: not writing it, so the exporters keep the node list "
            "last written. Probe fewer nodes (--node-selector)"
            + (", or move the other keys out of this ConfigMap." if other_bytes else "."))


def validate_nodes_json(text: str, source: str = "nodes.json") -> tuple[str, ...]:
    """Read `text` back with the exporter's own loader; the entries it would skip, as sentences."""
    return parse_nodes(text, source).problems


def needs_write(stored: str | None, desired: str) -> bool:
    """True when the ConfigMap (None: missing, or without nodes.json) does not already hold `desired`.

    Compared byte for byte: every write makes the kubelet rewrite the volume in every exporter pod,
    so an unchanged node set must never cause one, and a hand-edited copy must be put back.
    """
    return stored != desired


def summarize_change(stored: str | None, desired: str) -> str:
    """One phrase for the log line of a write: how the node list changes, e.g. "1 added, 1 changed"."""
    new = {t.name: t for t in parse_nodes(desired).targets}
    if stored is None:
        return "new"
    try:
        old = {t.name: t for t in parse_nodes(stored).targets}
    except ConfigError:
        return "replacing unreadable content"
    added = len(new.keys() - old.keys())
    removed = len(old.keys() - new.keys())
    changed = sum(1 for name in new.keys() & old.keys() if new[name] != old[name])
    parts = [f"{count} {what}" for count, what in ((added, "added"), (removed, "removed"), (changed, "changed"))
             if count]
    return ", ".join(parts) or "same nodes, layout restored"
