"""The discovery controller's settings: each declared once (flag, env var, default, limits, help), and
the frozen dataclass of one controller's values, validated once at start-up.

What the API server would answer with 422 Invalid on every write is refused here instead (exit 2):
a controller that is refused on every write retries forever; so is a rack label key no node can carry
(it would silently give no racks). The label selectors are the exception: the API server itself
judges them, on the first list (see `node_ping.discover.command`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from node_ping.settings import Parsed, Setting

DEFAULT_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
# Hostname, InternalDNS and ExternalDNS hold names, but nodes.json needs IP addresses (fping -A
# reports by address), so only the two IP address types can be chosen.
IP_ADDRESS_TYPES = ("InternalIP", "ExternalIP")

# Kubernetes' rules for names (RFC 1123), as apimachinery's validation applies them: a ConfigMap
# name is a DNS subdomain (NameIsDNSSubdomain), a namespace a DNS label (ValidateNamespaceName).
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(rf"{DNS_LABEL.pattern}(\.{DNS_LABEL.pattern})*")
MAX_DNS_LABEL = 63
MAX_DNS_SUBDOMAIN = 253


def _kubernetes_name(kind: str, pattern: re.Pattern[str], limit: int, rule: str) -> Callable[[str], str]:
    """A check that `name` is one the API server accepts for `kind`; ValueError with the rule if not."""
    def check(name: str) -> str:
        if not (len(name) <= limit and pattern.fullmatch(name)):
            raise ValueError(f"{name!r} is not a valid {kind} name: use at most {limit} characters, {rule}")
        return name

    return check


_namespace = _kubernetes_name("namespace", DNS_LABEL, MAX_DNS_LABEL,
                              "lower-case letters, digits and '-', starting and ending with a letter or digit "
                              "(an RFC 1123 DNS label, e.g. monitoring)")
_configmap_name = _kubernetes_name("ConfigMap", DNS_SUBDOMAIN, MAX_DNS_SUBDOMAIN,
                                   "lower-case letters, digits, '-' and '.', starting and ending with a letter or "
                                   "digit (an RFC 1123 DNS subdomain, e.g. node-ping-nodes)")


# A label key, as apimachinery's IsQualifiedName checks it: an optional DNS-subdomain prefix and '/',
# then a name of at most 63 characters, alphanumeric at both ends, with '-', '_' and '.' inside.
LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def label_key(key: str) -> str:
    """`key` if the API server takes it as a label key, "" (no key) for a blank one; ValueError with the rule if not."""
    key = key.strip()
    if not key:
        return ""
    prefix, slash, name = key.rpartition("/")
    problems = []
    if slash and not (prefix and len(prefix) <= MAX_DNS_SUBDOMAIN and DNS_SUBDOMAIN.fullmatch(prefix)):
        problems.append(f"its prefix {prefix!r} is not a DNS subdomain (lower-case, e.g. example.com)")
    if not (len(name) <= MAX_DNS_LABEL and LABEL_NAME.fullmatch(name)):
        problems.append(f"its name {name!r} is not 1-63 letters, digits, '-', '_' or '.', starting and ending "
                        "with a letter or digit")
    if problems:
        raise ValueError(f"{key!r} is not a label key: {'; '.join(problems)} (e.g. topology.kubernetes.io/rack)")
    return key


def parse_address_types(text: str) -> tuple[str, ...]:
    """`"InternalIP,ExternalIP"` -> ("InternalIP", "ExternalIP"); ValueError with the fix if unusable."""
    canonical = {name.lower(): name for name in IP_ADDRESS_TYPES}
    chosen: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name = canonical.get(item.lower())
        if name is None:
            raise ValueError(f"{item!r} is not an address type node-ping can use; list one or more of "
                             f"{', '.join(IP_ADDRESS_TYPES)}, most preferred first")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError(f"the list is empty; list one or more of {', '.join(IP_ADDRESS_TYPES)}, most preferred first")
    return tuple(chosen)


class _AddressTypes(click.ParamType[tuple[str, ...]]):
    name = "types"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, ...]:
        try:
            return parse_address_types(",".join(value) if isinstance(value, tuple) else str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


NAMESPACE = Setting("--namespace", env="POD_NAMESPACE", type=Parsed("namespace", _namespace),
                    help="Namespace of the ConfigMap (default: the namespace of the --kubeconfig's current context, "
                         "else the pod's own namespace).")
CONFIGMAP = Setting("--configmap", env="NODE_PING_CONFIGMAP", type=Parsed("name", _configmap_name),
                    help="Name of the ConfigMap whose nodes.json key this keeps up to date; created if missing "
                         "(required).")
ADDRESS_TYPES = Setting("--address-types", env="NODE_PING_ADDRESS_TYPES", default=",".join(DEFAULT_ADDRESS_TYPES),
                        type=_AddressTypes(), help="Node address types to use, most preferred first.")
NODE_SELECTOR = Setting("--node-selector", env="NODE_PING_NODE_SELECTOR", metavar="SELECTOR",
                        help="Label selector of the Nodes to ping, as kubectl -l takes it, e.g. "
                             "kubernetes.io/os=linux: the nodes the exporter runs on (default: every Node).")
RACK_LABEL = Setting("--rack-label", env="NODE_PING_RACK_LABEL", metavar="KEY", type=Parsed("key", label_key),
                     help="Node label whose value is the node's rack, written as \"rack\" into nodes.json and "
                          "pods.json (default: none, no racks).")
POD_SELECTOR = Setting("--pod-selector", env="NODE_PING_POD_SELECTOR", metavar="SELECTOR",
                       help="Label selector of the pod-network prober's pods in --namespace: their IPs are written "
                            "as the pods.json key of the same ConfigMap (default: none, no pods.json).")
KUBECONFIG = Setting("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Kubeconfig file, for running it by hand (default: the pod's service account).")
HEALTH_FILE = Setting("--health-file", env="NODE_PING_HEALTH_FILE", type=click.Path(path_type=Path),
                      help="Touched every few seconds while every loop of the controller runs, for `node-ping health`.")
VERBOSE = Setting("--verbose", short="-v", is_flag=True, help="Log every retry and every ConfigMap event.")

DISCOVER_SETTINGS = (NAMESPACE, CONFIGMAP, ADDRESS_TYPES, NODE_SELECTOR, RACK_LABEL, POD_SELECTOR, KUBECONFIG,
                     HEALTH_FILE, VERBOSE)


@dataclass(frozen=True)
class DiscoverSettings:
    """What the controller needs; the timing fields have production defaults and exist for tests."""

    namespace: str
    configmap: str
    address_types: tuple[str, ...] = DEFAULT_ADDRESS_TYPES
    # Label selector of the Nodes to list (the nodes the exporter DaemonSet runs on); None: all of them.
    node_selector: str | None = None
    # Node label holding the node's rack; None: no rack in the entries.
    rack_label: str | None = None
    # Label selector of the pod-network prober's pods in `namespace`; None: no pod list (pods.json).
    pod_selector: str | None = None
    # Touched while the controller's loops run (see liveness.py); None: no liveness file.
    health_file: Path | None = None
    # The API server ends each watch after this long; the controller resumes from the last
    # resourceVersion, so a silently dead connection is noticed within this time.
    watch_timeout_seconds: int = 300
    # (connect, read) for every call that is not a watch.
    request_timeout: tuple[float, float] = (5.0, 30.0)
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    # Re-read the ConfigMap this often even without a watch event: a safety net if its watch is broken.
    resync_seconds: float = 600.0
    # Gather a burst of node events (a node pool scaling up) into one write.
    settle_seconds: float = 0.5
    # Nodes per list request; large clusters are listed in pages like kubectl and client-go do.
    page_size: int = 500

    def __post_init__(self) -> None:
        # The namespace may come from a kubeconfig or the pod's namespace file, not only the flag.
        for setting, value in ((NAMESPACE, self.namespace), (CONFIGMAP, self.configmap),
                               (ADDRESS_TYPES, self.address_types)):
            setting.check(value)
        if self.rack_label is not None:
            RACK_LABEL.check(self.rack_label)
