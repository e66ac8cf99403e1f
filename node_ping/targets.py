"""Read and validate the target lists (nodes.json, external.json).

Both files are re-read every cycle so that ConfigMap updates apply without a restart. A file that
cannot be used at all raises `ConfigError` (the caller keeps its last good list); a single bad entry
is skipped and reported as a problem, so one typo does not blind a whole cluster.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import stat
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
    rack: str | None = None


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


_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def normalise_ip(value: str) -> str:
    """Return the canonical text of an IP address (as fping -A prints it); ValueError if it is none,
    or one that fping cannot report on as a target of its own."""
    address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(value.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # Checked as what is probed: ::ffff:224.0.0.1 is the multicast 224.0.0.1.
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast or address == _LIMITED_BROADCAST:
        raise ValueError(f"{value!r} is not a valid unicast IPv4 or IPv6 address")
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        if not address.is_link_local:
            # fping (getaddrinfo) accepts a zone on link-local addresses only: any other reports nothing.
            raise ValueError(f"{value!r} has a zone, which only a link-local address (fe80::/10) takes; "
                             f"remove %{address.scope_id}")
        if address.scope_id.isdigit():
            # fping reports a link-local target by interface name (%eth0), never by index: its result
            # would never be matched, and the same host could be listed twice unnoticed.
            raise ValueError(f"{value!r} has a numeric zone; name the interface instead, e.g. "
                             f"{str(address).split('%')[0]}%eth0")
    return str(address)


def absent_interface(address: str) -> str | None:
    """The interface a link-local address names (fe80::1%eth0) if this host has none by that name.

    fping reports nothing on such a target; an interface can come later (a VPN, a bridge), so
    this is checked whenever the file is read, not once."""
    _, sep, zone = address.partition("%")
    if not sep:
        return None
    try:
        socket.if_nametoindex(zone)
    except (OSError, ValueError):
        return zone
    return None


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
    return NodeTarget(name=name, address=address, zone=_place(entry, "zone", name, where),
                      rack=_place(entry, "rack", name, where))


def _place(entry: dict[str, Any], key: str, name: str, where: str) -> str | None:
    """An optional zone or rack: a string, or absent (empty counts as absent). It becomes a label value."""
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: {key} of node {name!r} must be a string or absent")
    try:
        (value or "").encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: {key} {value!r} of node {name!r} is not valid Unicode text") from None
    return value or None


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


_FILE_TYPES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_a_file(path: Path, mode: int, setting: str) -> ConfigError:
    if stat.S_ISDIR(mode):
        return ConfigError(f"{path} is a directory, not a file; point {setting} at the JSON file in it "
                           "(a ConfigMap volume holds one file per key)")
    kind = next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")
    return ConfigError(f"{path} is {kind}, not a regular file; point {setting} at the JSON file")


def _read_regular(path: Path, setting: str) -> bytes:
    """The bytes of a regular file. Links are followed (a ConfigMap volume is links into ..data/);
    anything else is refused by its type, before it is opened (opening a device can act on it) and
    again on what was opened: reading a FIFO waits for a writer, a device may never end, and either
    would hold up every cycle."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _not_a_file(path, mode, setting)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with open(fd, "rb") as file:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped for something else since the check above
            raise _not_a_file(path, mode, setting)
        return file.read()


class _Missing(ConfigError):
    """The file does not exist (for external.json: no external targets)."""


def _read(path: Path, setting: str) -> str:
    """The file's text; ConfigError with the fix when it cannot be had."""
    try:
        return _read_regular(path, setting).decode("utf-8")
    except FileNotFoundError:
        raise _Missing(f"{path} does not exist; mount the list there or point {setting} at it") from None
    except PermissionError:
        raise ConfigError(f"cannot read {path}: permission denied; make it readable for the user node-ping "
                          "runs as") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start} cannot be decoded); save it as UTF-8 "
                          "JSON") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None


def _on_present_interfaces(loaded: TargetList[T], address_of: Callable[[T], str], source: str) -> TargetList[T]:
    """Skip the link-local targets whose interface this host does not have (now): fping reports
    nothing on them."""
    problems = list(loaded.problems)
    targets = []
    for target in loaded.targets:
        zone = absent_interface(address_of(target))
        if zone is None:
            targets.append(target)
        else:
            problems.append(f"{source}: address {address_of(target)!r} of {target.name!r} names the interface "
                            f"{zone!r}, which this node does not have; skipped while it is absent")
    return TargetList(tuple(targets), tuple(problems))


def read_nodes(path: Path, setting: str) -> TargetList[NodeTarget]:
    """Read nodes.json; `setting` names where its path comes from, for messages that say what to fix."""
    return _on_present_interfaces(parse_nodes(_read(path, setting), str(path)), lambda t: t.address, str(path))


def read_external(path: Path, setting: str) -> TargetList[ExternalTarget]:
    """Read external.json; a missing file means no external targets."""
    try:
        text = _read(path, setting)
    except _Missing:
        return TargetList(())
    return _on_present_interfaces(parse_external(text, str(path)), lambda t: t.host, str(path))
