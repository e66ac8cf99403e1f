"""Read and validate the target lists (nodes.json, external.json).

Both files are re-read every cycle so that ConfigMap updates apply without a restart. A file that
cannot be used at all raises `ConfigError` (the caller keeps its last good list); a single bad entry
is skipped and reported as a problem, so one typo does not blind a whole cluster.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar


class ConfigError(Exception):
    """A target file that cannot be used at all; the message says what to fix."""


@dataclass(frozen=True, order=True)
class NodeTarget:
    """A Kubernetes node to probe, as listed in nodes.json."""

    name: str
    address: str  # normalised IP address, as fping -A prints it
    zone: str | None = None


@dataclass(frozen=True, order=True)
class ExternalTarget:
    """A host outside the cluster, as listed in external.json (an IP address or a DNS name)."""

    name: str
    host: str


T = TypeVar("T", NodeTarget, ExternalTarget)


@dataclass(frozen=True)
class TargetList(Generic[T]):
    """The usable targets of one file, and one sentence for every entry that was skipped."""

    targets: tuple[T, ...]
    problems: tuple[str, ...] = ()


# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def normalise_ip(value: str) -> str:
    """Return the canonical text of an IP address (as fping -A prints it); ValueError if it is none."""
    address = ipaddress.ip_address(value.strip())
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{value!r} is not a valid unicast IPv4 or IPv6 address")
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id and address.scope_id.isdigit():
        # fping reports a link-local target by interface name (%eth0), never by index: its result
        # would never be matched, and the same host could be listed twice unnoticed.
        raise ValueError(f"{value!r} has a numeric zone; name the interface instead, e.g. "
                         f"{str(address).split('%')[0]}%eth0")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _json_type(value: object) -> str:
    """What JSON calls the type of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", str: "string", int: "number", float: "number"}.get(type(value), type(value).__name__)


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _text_field(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {key!r} is missing or not a non-empty string")
    if value.strip().startswith("-"):  # checked on what is returned: " -f" must not slip through
        raise ValueError(f"{where}: {key} {value!r} starts with '-'; rename it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON allows a lone surrogate ("\ud800"); as a label value it would make every write fail.
        raise ValueError(f"{where}: {key} {value!r} is not valid Unicode text; rename it") from None
    return value.strip()


def _node(entry: dict[str, Any], where: str) -> NodeTarget:
    name = _text_field(entry, "name", where)
    raw_address = _text_field(entry, "ipAddress", where)
    if not is_ip(raw_address):
        raise ValueError(f"{where}: ipAddress {raw_address!r} of node {name!r} is not a valid "
                         "unicast IPv4 or IPv6 address")
    try:
        address = normalise_ip(raw_address)
    except ValueError as err:
        raise ValueError(f"{where}: ipAddress of node {name!r}: {err}") from None
    zone = entry.get("zone")
    if zone is not None and not isinstance(zone, str):
        raise ValueError(f"{where}: zone of node {name!r} must be a string or absent")
    return NodeTarget(name=name, address=address, zone=zone or None)


def _external(entry: dict[str, Any], where: str) -> ExternalTarget:
    name = _text_field(entry, "name", where)
    host = _text_field(entry, "host", where)
    if is_ip(host):
        try:
            host = normalise_ip(host)
        except ValueError as err:
            raise ValueError(f"{where}: host of {name!r}: {err}") from None
    elif not _HOSTNAME.match(host):
        raise ValueError(f"{where}: host {host!r} of {name!r} is neither an IP address nor a DNS name")
    return ExternalTarget(name=name, host=host)


def _parse(text: str, source: str, example: str, make: Callable[[dict[str, Any], str], T],
           key: Callable[[T], str]) -> TargetList[T]:
    if not text.strip():
        raise ConfigError(f"{source} is empty; it must hold a JSON list like {example}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source} is not valid JSON ({err.msg} at line {err.lineno} column "
                          f"{err.colno}); it must hold a JSON list like {example}") from None
    except (ValueError, RecursionError) as err:
        # The decoder's limits: numbers of more than 4300 digits, nesting deeper than the stack.
        raise ConfigError(f"{source} cannot be decoded ({err}); it must hold a JSON list like {example}") from None
    if not isinstance(data, list):
        raise ConfigError(f"{source} holds a JSON {_json_type(data)}, not a list; "
                          f"it must look like {example}")
    targets: list[T] = []
    problems: list[str] = []
    seen_names: set[str] = set()
    seen_keys: set[str] = set()
    for index, entry in enumerate(data):
        where = f"{source} entry {index}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not a JSON object like {example[1:-1]}; skipped")
            continue
        try:
            target = make(entry, where)
        except ValueError as err:
            problems.append(f"{err}; skipped")
            continue
        if target.name in seen_names:
            problems.append(f"{where}: name {target.name!r} is listed twice; skipped")
        elif key(target) in seen_keys:
            problems.append(f"{where}: address {key(target)!r} of {target.name!r} is listed twice; skipped")
        else:
            seen_names.add(target.name)
            seen_keys.add(key(target))
            targets.append(target)
    return TargetList(tuple(targets), tuple(problems))


NODES_EXAMPLE = '[{"name": "node-1", "ipAddress": "10.0.0.1"}]'
EXTERNAL_EXAMPLE = '[{"name": "google-dns", "host": "8.8.8.8"}]'


def parse_nodes(text: str, source: str = "nodes.json") -> TargetList[NodeTarget]:
    """Parse the text of nodes.json (pure)."""
    return _parse(text, source, NODES_EXAMPLE, _node, lambda t: t.address)


def parse_external(text: str, source: str = "external.json") -> TargetList[ExternalTarget]:
    """Parse the text of external.json (pure)."""
    return _parse(text, source, EXTERNAL_EXAMPLE, _external, lambda t: t.host)


def _read(path: Path, setting: str) -> str:
    """The file's text; ConfigError with the fix when it cannot be had."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; mount the list there or point {setting} at it") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a file; point {setting} at the JSON file in it "
                          "(a ConfigMap volume holds one file per key)") from None
    except PermissionError:
        raise ConfigError(f"cannot read {path}: permission denied; make it readable for the user node-ping "
                          "runs as") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start} cannot be decoded); save it as UTF-8 "
                          "JSON") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None


def read_nodes(path: Path) -> TargetList[NodeTarget]:
    return parse_nodes(_read(path, "NODE_PING_CONFIG / --config"), str(path))


def read_external(path: Path) -> TargetList[ExternalTarget]:
    """Read external.json; a missing file means no external targets."""
    if not path.exists():
        return TargetList(())
    return parse_external(_read(path, "NODE_PING_EXTERNAL_CONFIG / --external-config"), str(path))
