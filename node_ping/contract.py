"""The metric and label contract: every metric name, label, help text and error kind, defined once.

The `kube_node_ping_*` and `external_ping_*` names and labels are the 2019 script's public
contract: dashboards and alerts use them, so they never change. Our own metrics follow Prometheus
naming (base units, `_total` for counters). The exporter, diagnose, docs checks and tests all read
the names from here; nothing else spells them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    """A metric's type, as the exposition format names it."""

    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True)
class Metric:
    """One metric: its name as exposed (counters with their `_total`), type, help and labels."""

    base: str  # the family name: what `# TYPE` shows
    kind: Kind
    help: str
    labels: tuple[str, ...]

    @property
    def name(self) -> str:
        """The sample name queries use: counters end in `_total`."""
        return f"{self.base}_total" if self.kind is Kind.COUNTER else self.base


SOURCE = "source_node"
"""The label every series carries: the node that measured."""

CONFIG_ERROR = "config"  # a target file could not be read or has bad entries
FPING_ERROR = "fping"  # fping failed, reported nothing on a target, or received no reply at all
WRITE_ERROR = "write"  # the textfile could not be written
DNS_ERROR = "dns"  # an external host name did not resolve
INTERNAL_ERROR = "internal"  # a cycle ended in an unexpected exception (a bug, no memory left)
ERROR_KINDS = (CONFIG_ERROR, FPING_ERROR, WRITE_ERROR, DNS_ERROR, INTERNAL_ERROR)
"""The `kind` label of node_ping_errors_total. Every kind is exported from the start, so
`increase()` sees the first error."""

TARGET_KINDS = ("node", "external")

_ABSENT_IF_SILENT = "; absent if nothing came back."


@dataclass(frozen=True)
class PingFamily:
    """The six per-target metrics of one kind of target, under one name prefix."""

    prefix: str
    destination: str  # the label naming the destination
    address: str  # the label with its address or host
    what: str  # for help texts: "another node"

    @property
    def labels(self) -> tuple[str, str, str]:
        return SOURCE, self.destination, self.address

    def _metric(self, suffix: str, kind: Kind, help_text: str) -> Metric:
        return Metric(f"{self.prefix}_{suffix}", kind, help_text, self.labels)

    @property
    def packets_sent(self) -> Metric:
        return self._metric("packets_sent", Kind.COUNTER, f"ICMP echo requests sent to {self.what}.")

    @property
    def packets_received(self) -> Metric:
        return self._metric("packets_received", Kind.COUNTER, f"ICMP echo replies received from {self.what}.")

    @property
    def rtt_sum(self) -> Metric:
        return self._metric("rtt_milliseconds", Kind.COUNTER,
                            f"Sum of round-trip times of the replies from {self.what}, in ms.")

    @property
    def rtt_min(self) -> Metric:
        return self._metric("rtt_min", Kind.GAUGE, "Shortest round-trip time of the last cycle, in ms"
                            + _ABSENT_IF_SILENT)

    @property
    def rtt_max(self) -> Metric:
        return self._metric("rtt_max", Kind.GAUGE, "Longest round-trip time of the last cycle, in ms"
                            + _ABSENT_IF_SILENT)

    @property
    def rtt_mdev(self) -> Metric:
        return self._metric("rtt_mdev", Kind.GAUGE,
                            "Standard deviation of the round-trip times of the last cycle, in ms" + _ABSENT_IF_SILENT)

    @property
    def metrics(self) -> tuple[Metric, ...]:
        """All six, in exposition order."""
        return self.packets_sent, self.packets_received, self.rtt_sum, self.rtt_min, self.rtt_max, self.rtt_mdev

    @property
    def mtu_packets_sent(self) -> Metric:
        return Metric(f"{self.prefix}_mtu_packets_sent", Kind.COUNTER,
                      f"Don't-fragment ICMP echo requests of exactly `{MTU}` bytes (IP packet) sent to {self.what}.",
                      (*self.labels, MTU))

    @property
    def mtu_packets_received(self) -> Metric:
        return Metric(f"{self.prefix}_mtu_packets_received", Kind.COUNTER,
                      f"Replies to the `{MTU}`-byte don't-fragment echo requests received from {self.what}.",
                      (*self.labels, MTU))

    @property
    def mtu_metrics(self) -> tuple[Metric, Metric]:
        """The MTU probe's pair, in exposition order."""
        return self.mtu_packets_sent, self.mtu_packets_received


MTU = "mtu"
"""The label of the MTU probe's counters: the IP packet size proven, e.g. "1500"."""

NODE = PingFamily("kube_node_ping", "destination_node", "destination_node_ip_address", "another node")
POD = PingFamily("kube_pod_ping", "destination_node", "destination_pod_ip_address",
                 "another node's pod-network prober")
EXTERNAL = PingFamily("external_ping", "destination_name", "destination_host", "an external host")
FAMILIES = (NODE, POD, EXTERNAL)

PATH = "path"
"""The label that tells a node's two probers apart on their own metrics: absent on the host-network
prober's (so its series stay as they always were), "pod" on the pod-network prober's."""
PATHS = ("node", "pod")
POD_PATH = "pod"


def _own(base: str, kind: Kind, help_text: str, label: str | None = None) -> Metric:
    return Metric(base, kind, help_text, (SOURCE, label) if label else (SOURCE,))


EXCEPTIONS = _own("kube_node_ping_exceptions", Kind.COUNTER, "Cycles that ended in an error.")
ERRORS = _own("node_ping_errors", Kind.COUNTER, f"Errors by kind: {', '.join(ERROR_KINDS)}.", "kind")
CYCLES = _own("node_ping_cycles", Kind.COUNTER, "Probe cycles run, successful or not.")
TARGETS = _own("node_ping_targets", Kind.GAUGE, "Targets probed in the last cycle.", "kind")
CYCLE_DURATION = _own("node_ping_cycle_duration_seconds", Kind.GAUGE, "Wall-clock length of the last cycle.")
CYCLE_NOMINAL = _own("node_ping_cycle_nominal_seconds", Kind.GAUGE, "Nominal cycle length: count x period.")
CYCLE_LATENESS = _own("node_ping_cycle_lateness_seconds", Kind.GAUGE,
                      "How much longer than nominal the last cycle's pings took (DNS look-ups and the write not "
                      "included); large values mean a starved prober.")
LAST_SUCCESS = _own("node_ping_last_success_timestamp_seconds", Kind.GAUGE,
                    "Unix time the last successful cycle ended; until one has, when node-ping started.")
FPING_CPU = _own("node_ping_fping_cpu_seconds", Kind.COUNTER, "CPU time (user+system) used by fping.")
OWN_CPU = _own("node_ping_cpu_seconds", Kind.COUNTER, "CPU time (user+system) used by node-ping itself.")
BUILD_INFO = _own("node_ping_build_info", Kind.GAUGE, "Version of node-ping; always 1.", "version")
ZONE, RACK = "zone", "rack"
NODE_INFO = Metric("node_ping_node_info", Kind.GAUGE,
                   "Where the measuring node sits, from its own entry in nodes.json: its zone and rack (empty "
                   "when unknown); always 1.", (SOURCE, ZONE, RACK))

SELF_METRICS = (EXCEPTIONS, ERRORS, CYCLES, TARGETS, CYCLE_DURATION, CYCLE_NOMINAL, CYCLE_LATENESS, LAST_SUCCESS,
                FPING_CPU, OWN_CPU, BUILD_INFO)
"""The exporter's own metrics, in exposition order."""

ALL_METRICS = (*NODE.metrics, *NODE.mtu_metrics, *POD.metrics, *POD.mtu_metrics, *EXTERNAL.metrics, *SELF_METRICS,
               NODE_INFO)
