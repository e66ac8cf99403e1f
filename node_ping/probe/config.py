"""The prober's settings: each declared once (flag, env var, default, limits, help), and the frozen
dataclass of one prober's values, validated once at start-up."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click

from node_ping.contract import PATHS, POD, POD_PATH
from node_ping.probe.mtu import parse_mtu
from node_ping.probe.textfile import MAX_NAME_BYTES
from node_ping.probe.topology import MODES
from node_ping.settings import Parsed, PositiveNumber, Setting, SettingsError

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


def parse_listen_address(text: str) -> ListenAddress:
    """`:9797` (every interface), `0.0.0.0:9797`, `[::1]:9797` -> host and port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SettingsError(f"listen address {text!r} must look like :9797, 127.0.0.1:9797 or [::1]:9797")
    return ListenAddress(host.strip("[]") or EVERY_INTERFACE, int(port_text))


_PATH = click.Path(path_type=Path)

NODE_NAME = Setting("--node-name", env="MY_NODE_NAME",
                    help="This node's name (in Kubernetes, from the downward API: spec.nodeName).")
CONFIG = Setting("--config", env="NODE_PING_CONFIG", default=Path("/config/nodes.json"), type=_PATH,
                 help="JSON list of {name, ipAddress[, zone]}: the nodes to probe.")
EXTERNAL_CONFIG = Setting("--external-config", env="NODE_PING_EXTERNAL_CONFIG", default=Path("/config/external.json"),
                          type=_PATH, help="JSON list of {name, host}; a missing file means none.")
COUNT = Setting("--count", env="NODE_PING_COUNT", default=30, type=click.IntRange(1, 10_000),
                help="Pings per target per cycle.")
PERIOD_MS = Setting("--period-ms", env="NODE_PING_PERIOD_MS", default=1000, type=click.IntRange(1, 3_600_000),
                    help="Milliseconds between two pings to one target.")
TOPOLOGY = Setting("--topology", env="NODE_PING_TOPOLOGY", default="full", type=click.Choice(MODES),
                   help="full: probe every node; zone: every node of the own zone plus k per other zone.")
PEERS_PER_ZONE = Setting("--peers-per-zone", env="NODE_PING_PEERS_PER_ZONE", default=3, type=click.IntRange(min=1),
                         help="k for --topology zone.")
MTU = Setting("--mtu", env="NODE_PING_MTU", default=1500, type=Parsed("bytes", parse_mtu), metavar="BYTES",
              help="IP packet size to prove on the path to every node: a few don't-fragment pings of exactly "
                   "this size per node and cycle; 0 turns them off.")
PATH = Setting("--path", env="NODE_PING_PATH", default=PATHS[0], type=click.Choice(PATHS),
               help="node: probe the nodes' own addresses (host network); pod: probe the pod-network probers "
                    f"listed in --config and export {POD.prefix}_* instead.")
FPING = Setting("--fping", env="NODE_PING_FPING", default="fping", help="The fping binary.")
VERBOSE = Setting("--verbose", short="-v", is_flag=True, help="Log every cycle.")
TEXTFILE_DIR = Setting("--textfile-dir", env="PROMETHEUS_TEXTFILE_DIR", type=_PATH,
                       help="node-exporter's textfile collector directory.")
PREFIX = Setting("--prefix", env="PROMETHEUS_TEXTFILE_PREFIX", default="node-ping_",
                 help="Textfile name prefix: the file is <prefix><node name>.prom (with --path pod, "
                      "node-ping-pod_ unless set).")
POD_PREFIX = "node-ping-pod_"
"""The pod prober's prefix unless one is set: its file must not be the host prober's, nor match its
<prefix>*.prom clean-up (nor the other way round)."""
CYCLES = Setting("--cycles", type=click.IntRange(min=1), help="Stop after N cycles (default: run forever).")
LISTEN_ADDRESS = Setting("--listen-address", env="NODE_PING_LISTEN_ADDRESS",
                         type=Parsed("address", parse_listen_address, ListenAddress),
                         help="Also serve /metrics over HTTP: :9797 (every interface, IPv4 and IPv6), "
                              "127.0.0.1:9797 or [::1]:9797.")
HEALTH_FILE = Setting("--health-file", env="NODE_PING_HEALTH_FILE", type=_PATH,
                      help="Touched after every successful cycle, for `node-ping health`.")
EXAMPLES = Path(__file__).parents[1] / "examples"
EXAMPLE_COUNT, EXAMPLE_PERIOD_MS = 5, 200
"""`once --example` is quick unless --count / --period-ms (or their env vars) say otherwise."""
EXAMPLE = Setting("--example", is_flag=True,
                  help="Probe the built-in loopback example (127.0.0.1, 127.0.0.2, ::1, localhost).")
MAX_AGE = Setting("--max-age", required=True, type=PositiveNumber(noun="number of seconds"),
                  help="Seconds since the last successful cycle.")

PROBE_SETTINGS = (NODE_NAME, CONFIG, EXTERNAL_CONFIG, COUNT, PERIOD_MS, MTU, PATH, TOPOLOGY, PEERS_PER_ZONE, FPING,
                  VERBOSE)
"""What `run` and `once` share."""
RUN_SETTINGS = (*PROBE_SETTINGS, TEXTFILE_DIR, PREFIX, CYCLES, LISTEN_ADDRESS, HEALTH_FILE)
ONCE_SETTINGS = (*PROBE_SETTINGS, EXAMPLE)
HEALTH_SETTINGS = (HEALTH_FILE, MAX_AGE)


@dataclass(frozen=True)
class Settings:
    node_name: str
    textfile_dir: Path | None
    prefix: str = PREFIX.default
    config_path: Path = CONFIG.default
    external_config_path: Path = EXTERNAL_CONFIG.default
    count: int = COUNT.default
    period_ms: int = PERIOD_MS.default
    cycles: int | None = None
    listen: ListenAddress | None = None
    health_file: Path | None = None
    topology: str = TOPOLOGY.default
    peers_per_zone: int = PEERS_PER_ZONE.default
    fping: str = FPING.default
    mtu: int = MTU.default
    path: str = PATH.default

    @property
    def pod_path(self) -> bool:
        """The pod-network prober: the pod family, self metrics marked path="pod", no external targets."""
        return self.path == POD_PATH

    @property
    def nominal_cycle_s(self) -> float:
        return self.count * self.period_ms / 1000

    @property
    def fping_timeout_s(self) -> float:
        """Hard limit for one fping run: generous, but a hung fping cannot stall the loop for ever."""
        return self.nominal_cycle_s * 1.5 + 10

    def __post_init__(self) -> None:
        if not self.node_name:
            raise SettingsError(f"the node name is missing: set {NODE_NAME.env} or {NODE_NAME.flag} "
                                "(in Kubernetes, from the downward API: spec.nodeName)")
        if not _NODE_NAME.match(self.node_name) or len(self.node_name) > 253:
            raise SettingsError(f"Invalid value for {NODE_NAME.hint}: {self.node_name!r} is not a valid Kubernetes "
                                "node name (letters, digits, '-', '.', '_'; it becomes part of a file name)")
        if self.textfile_dir is not None and len(f"{self.prefix}{self.node_name}.prom".encode()) > MAX_NAME_BYTES:
            longest = min(MAX_PREFIX, MAX_NAME_BYTES - len(".prom") - len(self.node_name.encode()))
            fix = (f"use a --prefix of at most {longest} characters" if longest >= 1 else
                   "serve the metrics with --listen-address instead of a textfile: no prefix is short enough")
            raise SettingsError(f"the textfile name {self.prefix}<node name>.prom would be longer than the "
                                f"{MAX_NAME_BYTES} bytes file systems allow ({len(self.node_name)}-character node "
                                f"name): {fix}")
        if len(self.prefix) > MAX_PREFIX:
            raise SettingsError(f"Invalid value for {PREFIX.hint}: it is {len(self.prefix)} characters long; at "
                                f"most {MAX_PREFIX}")
        if not _PREFIX.match(self.prefix):
            raise SettingsError(f"Invalid value for {PREFIX.hint}: {self.prefix!r} must be non-empty and use only "
                                "letters, digits, '_', '-' and '.': node-ping removes <prefix>*.prom at start-up, "
                                "and an empty or wildcard prefix would delete other exporters' files")
        for setting, value in ((COUNT, self.count), (PERIOD_MS, self.period_ms), (TOPOLOGY, self.topology),
                               (PEERS_PER_ZONE, self.peers_per_zone), (CYCLES, self.cycles), (MTU, self.mtu),
                               (PATH, self.path)):
            if value is not None:
                setting.check(value)
