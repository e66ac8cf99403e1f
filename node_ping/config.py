"""Settings of one node-ping process: a frozen dataclass, validated once at start-up."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from node_ping.textfile import MAX_NAME_BYTES
from node_ping.topology import MODES


def env(name: str, default: str | None = None) -> str | None:
    """An env var's value; unset and empty both mean `default` (Kubernetes renders unset values as "")."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


class SettingsError(Exception):
    """A setting that cannot work; the message names the flag or env var and the fix."""


_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+$")
MAX_PREFIX = 200
"""Leaves a temp file's name room for the whole prefix (so clean-up finds it) and a random token."""
_NODE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")


EVERY_INTERFACE = ""
"""The host of a listen address given as `:PORT`: every interface, IPv6 and IPv4."""


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int


@dataclass(frozen=True)
class Settings:
    node_name: str
    textfile_dir: Path | None
    prefix: str = "node-ping_"
    config_path: Path = Path("/config/nodes.json")
    external_config_path: Path = Path("/config/external.json")
    count: int = 30
    period_ms: int = 1000
    cycles: int | None = None
    listen: ListenAddress | None = None
    health_file: Path | None = None
    topology: str = "full"
    peers_per_zone: int = 3
    fping: str = "fping"

    @property
    def nominal_cycle_s(self) -> float:
        return self.count * self.period_ms / 1000

    @property
    def fping_timeout_s(self) -> float:
        """Hard limit for one fping run: generous, but a hung fping cannot stall the loop for ever."""
        return self.nominal_cycle_s * 1.5 + 10

    def __post_init__(self) -> None:
        if not self.node_name:
            raise SettingsError("the node name is missing: set MY_NODE_NAME or --node-name "
                                "(in Kubernetes, from the downward API: spec.nodeName)")
        if not _NODE_NAME.match(self.node_name) or len(self.node_name) > 253:
            raise SettingsError(f"node name {self.node_name!r} is not a valid Kubernetes node name "
                                "(letters, digits, '-', '.', '_'; it becomes part of a file name)")
        if self.textfile_dir is not None and len(f"{self.prefix}{self.node_name}.prom".encode()) > MAX_NAME_BYTES:
            longest = min(MAX_PREFIX, MAX_NAME_BYTES - len(".prom") - len(self.node_name.encode()))
            fix = (f"use a --prefix of at most {longest} characters" if longest >= 1 else
                   "serve the metrics with --listen-address instead of a textfile: no prefix is short enough")
            raise SettingsError(f"the textfile name {self.prefix}<node name>.prom would be longer than the "
                                f"{MAX_NAME_BYTES} bytes file systems allow ({len(self.node_name)}-character node "
                                f"name): {fix}")
        if len(self.prefix) > MAX_PREFIX:
            raise SettingsError(f"--prefix / PROMETHEUS_TEXTFILE_PREFIX is {len(self.prefix)} characters long; at "
                                f"most {MAX_PREFIX}")
        if not _PREFIX.match(self.prefix):
            raise SettingsError(f"--prefix / PROMETHEUS_TEXTFILE_PREFIX {self.prefix!r} must be non-empty and use "
                                "only letters, digits, '_', '-' and '.': node-ping removes <prefix>*.prom at "
                                "start-up, and an empty or wildcard prefix would delete other exporters' files")
        if not 1 <= self.count <= 10_000:
            raise SettingsError(f"--count / NODE_PING_COUNT {self.count} must be between 1 and 10000")
        if not 1 <= self.period_ms <= 3_600_000:
            raise SettingsError(f"--period-ms / NODE_PING_PERIOD_MS {self.period_ms} must be between 1 and 3600000")
        if self.cycles is not None and self.cycles < 1:
            raise SettingsError(f"--cycles {self.cycles} must be at least 1")
        if self.topology not in MODES:
            raise SettingsError(f"--topology / NODE_PING_TOPOLOGY {self.topology!r} must be one of: {', '.join(MODES)}")
        if self.peers_per_zone < 1:
            raise SettingsError(f"--peers-per-zone / NODE_PING_PEERS_PER_ZONE {self.peers_per_zone} must be at least 1")


def parse_listen_address(text: str) -> ListenAddress:
    """`:9797` (every interface), `0.0.0.0:9797`, `[::1]:9797` -> host and port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SettingsError(f"listen address {text!r} must look like :9797, 127.0.0.1:9797 or [::1]:9797")
    return ListenAddress(host.strip("[]") or EVERY_INTERFACE, int(port_text))
