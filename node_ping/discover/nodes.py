"""Pure part of `node-ping discover`: Node objects -> nodes.json entries -> the exact nodes.json text.

Nothing here talks to the API server. Nodes arrive as the JSON dicts the API server sends (the
`status.addresses[].type` a reader knows from `kubectl get node -o yaml`), so the tests can write
them as literals and the controller never has to deserialize whole Node models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from node_ping.settings import SettingsError
from node_ping.targets import ConfigError, NodeTarget, normalise_ip, parse_nodes

ZONE_LABEL = "topology.kubernetes.io/zone"
DEFAULT_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
# Hostname, InternalDNS and ExternalDNS hold names, but nodes.json needs IP addresses (fping -A
# reports by address), so only the two IP address types can be chosen.
ADDRESS_TYPES = ("InternalIP", "ExternalIP")

# Kubernetes' rules for names (RFC 1123) and labels, as apimachinery's validation applies them.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(rf"{DNS_LABEL.pattern}(\.{DNS_LABEL.pattern})*")
MAX_DNS_LABEL = 63
MAX_DNS_SUBDOMAIN = 253
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_MAX_LABEL_NAME = 63
# A label selector's tokens as the API server's lexer splits it: an operator or parenthesis, or a
# run of anything else (keys, values, and the words `in` and `notin`).
_SELECTOR_TOKEN = re.compile(r"\s*(!=|==|=|!|,|\(|\)|<|>|[^\s!=,()<>]+)")
_SELECTOR_SYMBOLS = {"!=", "==", "=", "!", ",", "(", ")", "<", ">"}
_SELECTOR_EXAMPLE = "kubernetes.io/os=linux or kubernetes.io/os in (linux),!example.com/no-ping"


def parse_address_types(text: str, source: str = "--address-types / NODE_PING_ADDRESS_TYPES") -> tuple[str, ...]:
    """`"InternalIP,ExternalIP"` -> ("InternalIP", "ExternalIP"); SettingsError with the fix if unusable."""
    canonical = {name.lower(): name for name in ADDRESS_TYPES}
    chosen: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name = canonical.get(item.lower())
        if name is None:
            raise SettingsError(f"{source}: {item!r} is not an address type node-ping can use; "
                                f"list one or more of {', '.join(ADDRESS_TYPES)}, most preferred first")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise SettingsError(f"{source} is empty; list one or more of {', '.join(ADDRESS_TYPES)}, "
                            "most preferred first")
    return tuple(chosen)


def parse_label_selector(text: str, source: str = "--node-selector / NODE_PING_NODE_SELECTOR") -> str | None:
    """A label selector of Nodes as `kubectl get nodes -l` takes it; None when blank (every Node).

    Checked the way the API server's parser (labels.Parse) checks it, so a typo stops the start with
    exit 2 instead of an HTTP 400 on every list until someone reads the log. Returned as written:
    the API server does the selecting.
    """
    tokens = [match.group(1) for match in _SELECTOR_TOKEN.finditer(text)]
    if not tokens:
        return None
    _SelectorChecker(text, tokens, source).check()
    return text.strip()


class _SelectorChecker:
    """Walks a selector's tokens by labels.Parse's grammar: requirements separated by commas."""

    def __init__(self, text: str, tokens: list[str], source: str) -> None:
        self.text, self.tokens, self.source = text, tokens, source
        self.position = 0

    def fail(self, problem: str) -> NoReturn:
        raise SettingsError(f"{self.source} {self.text!r}: {problem}; write it as for kubectl get nodes -l, "
                            f"e.g. {_SELECTOR_EXAMPLE}")

    def take(self) -> str | None:
        self.position += 1
        return self.tokens[self.position - 1] if self.position <= len(self.tokens) else None

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def check(self) -> None:
        while True:
            self.requirement()
            separator = self.take()
            if separator is None:
                return
            if separator != ",":
                self.fail(f"expected ',' between requirements, found {separator!r}")

    def requirement(self) -> None:
        first = self.take()
        if first == "!":  # the label is absent
            self.key(self.take())
            return
        self.key(first)
        operator = self.peek()
        if operator in (None, ","):  # the label is present
            return
        self.take()
        if operator in ("=", "==", "!="):
            if self.peek() not in (None, ","):  # `key=` selects the empty value
                self.value(self.take() or "")
        elif operator in ("in", "notin"):
            self.value_list(operator)
        elif operator in ("<", ">"):
            if not re.fullmatch(r"-?[0-9]+", self.take() or ""):
                self.fail(f"{operator!r} needs a whole number")
        else:
            self.fail(f"unexpected {operator!r} after the key {first!r}")

    def key(self, token: str | None) -> None:
        if token is None or token in _SELECTOR_SYMBOLS:
            self.fail(f"expected a label key, found {'the end' if token is None else repr(token)}")
        prefix, slash, name = token.rpartition("/")
        if slash and not (len(prefix) <= MAX_DNS_SUBDOMAIN and DNS_SUBDOMAIN.fullmatch(prefix)):
            self.fail(f"{token!r} is not a label key: its prefix must be a DNS subdomain (lower case)")
        if not (len(name) <= _MAX_LABEL_NAME and _LABEL_NAME.fullmatch(name)):
            self.fail(f"{token!r} is not a label key: the name must be at most {_MAX_LABEL_NAME} letters, "
                      "digits, '-', '_' and '.', starting and ending with a letter or digit")

    def value(self, token: str) -> None:
        if token in _SELECTOR_SYMBOLS or not (len(token) <= _MAX_LABEL_NAME and _LABEL_NAME.fullmatch(token)):
            self.fail(f"{token!r} is not a label value: at most {_MAX_LABEL_NAME} letters, digits, '-', '_' "
                      "and '.', starting and ending with a letter or digit")

    def value_list(self, operator: str) -> None:
        if self.take() != "(":
            self.fail(f"expected '(' after {operator!r}")
        values = [""]  # `in (a,)` holds a and the empty value, as the API server reads it
        while (found := self.take()) != ")":
            if found is None:
                self.fail("missing ')'")
            elif found == ",":
                values.append("")
            elif values[-1]:
                self.fail(f"expected ',' or ')' after {values[-1]!r}, found {found!r}")
            else:
                self.value(found)
                values[-1] = found
        if values == [""]:
            self.fail(f"{operator!r} needs at least one value")


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


def node_target(node: Mapping[str, Any], address_types: Sequence[str]) -> NodeTarget | None:
    """One Node object -> its nodes.json entry, or None while it has no usable address.

    Readiness is deliberately ignored: a NotReady node is exactly the one worth probing.
    """
    address = pick_address(node, address_types)
    if address is None:
        return None
    labels = (node.get("metadata") or {}).get("labels") or {}
    zone = labels.get(ZONE_LABEL)
    return NodeTarget(name=node_name(node), address=address,
                      zone=zone if isinstance(zone, str) and zone else None)


def render_nodes_json(targets: Iterable[NodeTarget]) -> str:
    """The nodes.json text for these targets: sorted by name, fixed layout, so equal sets give equal bytes."""
    entries: list[dict[str, str]] = []
    for target in sorted(targets, key=lambda t: t.name):
        entry = {"name": target.name, "ipAddress": target.address}
        if target.zone is not None:
            entry["zone"] = target.zone
        entries.append(entry)
    return json.dumps(entries, sort_keys=True, indent=2) + "\n"


def validate_nodes_json(text: str) -> tuple[str, ...]:
    """Read `text` back with the exporter's own loader; the entries it would skip, as sentences."""
    return parse_nodes(text, "nodes.json").problems


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
