"""`node-ping discover`: settings, command line and start-up of the node-discovery controller.

One replica for the whole cluster watches the Node objects and keeps the `nodes.json` key of one
ConfigMap equal to the exporter's target list (see `discover_controller` for how, and
`discover_nodes` for what it writes). The `kubernetes` package is imported only when the command
runs, so `node-ping --help` stays fast and the exporter image does not need it.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node_ping import __version__
from node_ping.discover.nodes import (
    DEFAULT_ADDRESS_TYPES,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    MAX_DNS_LABEL,
    MAX_DNS_SUBDOMAIN,
    parse_address_types,
    parse_label_selector,
)
from node_ping.settings import SettingsError, env
from node_ping.signals import stop_on_signals

log = logging.getLogger(__name__)

# Where Kubernetes mounts the pod's own namespace, next to its service account token.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# What the API server would answer with 422 Invalid is refused at start instead (exit 2): a controller
# that is refused on every write retries forever. A ConfigMap name is a DNS subdomain of RFC 1123, a
# namespace a DNS label (apimachinery's NameIsDNSSubdomain and ValidateNamespaceName).
def check_configmap_name(name: str) -> None:
    """SettingsError with the rule unless the API server would accept `name` for a ConfigMap."""
    if not (len(name) <= MAX_DNS_SUBDOMAIN and DNS_SUBDOMAIN.fullmatch(name)):
        raise SettingsError(
            f"--configmap / NODE_PING_CONFIGMAP {name!r} is not a valid ConfigMap name: use at most "
            f"{MAX_DNS_SUBDOMAIN} characters, lower-case letters, digits, '-' and '.', starting and ending with a "
            "letter or digit (an RFC 1123 DNS subdomain, e.g. node-ping-nodes)")


def check_namespace(name: str) -> None:
    """SettingsError with the rule unless `name` is a valid namespace name."""
    if not (len(name) <= MAX_DNS_LABEL and DNS_LABEL.fullmatch(name)):
        raise SettingsError(
            f"--namespace / POD_NAMESPACE {name!r} is not a valid namespace name: use at most {MAX_DNS_LABEL} "
            "characters, lower-case letters, digits and '-', starting and ending with a letter or digit "
            "(an RFC 1123 DNS label, e.g. monitoring)")


@dataclass(frozen=True)
class DiscoverSettings:
    """What the controller needs; the timing fields have production defaults and exist for tests."""

    namespace: str
    configmap: str
    address_types: tuple[str, ...] = DEFAULT_ADDRESS_TYPES
    # Label selector of the Nodes to list (the nodes the exporter DaemonSet runs on); None: all of them.
    node_selector: str | None = None
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
        check_namespace(self.namespace)
        check_configmap_name(self.configmap)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--namespace", default=env("POD_NAMESPACE"),
        help="namespace of the ConfigMap (env POD_NAMESPACE; default: the namespace of the --kubeconfig's "
             "current context, else the pod's own namespace)")
    add("--configmap", default=env("NODE_PING_CONFIGMAP"),
        help="name of the ConfigMap whose nodes.json key this keeps up to date; created if missing "
             "(env NODE_PING_CONFIGMAP; required)")
    add("--address-types", default=env("NODE_PING_ADDRESS_TYPES", ",".join(DEFAULT_ADDRESS_TYPES)),
        help="node address types to use, most preferred first (env NODE_PING_ADDRESS_TYPES; default %(default)s)")
    add("--node-selector", default=env("NODE_PING_NODE_SELECTOR", ""),
        help="label selector of the Nodes to ping, as kubectl -l takes it, e.g. kubernetes.io/os=linux: the "
             "nodes the exporter runs on (env NODE_PING_NODE_SELECTOR; default: every Node)")
    add("--kubeconfig", type=Path, default=None,
        help="kubeconfig file, for running it by hand (default: the pod's service account)")
    add("-v", "--verbose", action="store_true", help="log every retry and every ConfigMap event")


def settings_from_args(args: argparse.Namespace, namespace_file: Path = NAMESPACE_FILE) -> DiscoverSettings:
    """Validate the command line once; SettingsError names the flag and the fix."""
    if not args.configmap:
        raise SettingsError("set the ConfigMap to keep up to date: --configmap or NODE_PING_CONFIGMAP")
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        raise SettingsError(f"--kubeconfig {args.kubeconfig} does not exist or is not a file")
    namespace = args.namespace
    if not namespace and args.kubeconfig is not None:
        namespace = kubeconfig_namespace(args.kubeconfig)
    if not namespace:
        try:
            namespace = namespace_file.read_text(encoding="utf-8").strip()
        except OSError:
            raise SettingsError(f"set the namespace: --namespace, POD_NAMESPACE or a namespace in the kubeconfig's "
                                f"current context (outside a pod, {namespace_file} does not exist to fall back "
                                f"on)") from None
    return DiscoverSettings(namespace=namespace, configmap=args.configmap,
                            address_types=parse_address_types(args.address_types),
                            node_selector=parse_label_selector(args.node_selector))


def kubeconfig_namespace(kubeconfig: Path) -> str | None:
    """The namespace of the kubeconfig's current context, which kubectl would use; None if it names none."""
    try:
        from kubernetes import config  # noqa: PLC0415  (see the module docstring)

        _, current = config.list_kube_config_contexts(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    except Exception:  # a missing package, an unreadable or invalid file: run() reports it in full
        return None
    namespace = current.get("context", {}).get("namespace") if isinstance(current, dict) else None
    return namespace if isinstance(namespace, str) and namespace else None


def core_api(kubeconfig: Path | None) -> Any:
    """A CoreV1Api for the kubeconfig file, or for the pod's service account when there is none."""
    from kubernetes import client, config  # noqa: PLC0415  (see the module docstring)

    configuration = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration,  # type: ignore[no-untyped-call]
                                persist_config=False)
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.CoreV1Api(client.ApiClient(configuration))


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except SettingsError as err:
        log.error("node-ping discover: %s", err)
        return 2
    try:
        from node_ping.discover.controller import Discovery  # noqa: PLC0415  (see the module docstring)
    except ImportError as err:
        log.error("node-ping discover needs the kubernetes package (%s): pip install 'node-ping[discover]'", err)
        return 2
    try:
        api = core_api(args.kubeconfig)
    except Exception as err:  # ConfigException, OSError, YAML errors: all mean "fix the config"
        source = args.kubeconfig or "the pod's service account (not running in a pod? use --kubeconfig)"
        log.error("node-ping discover: cannot load the Kubernetes client configuration from %s: %s", source, err)
        return 2
    # urllib3 logs a warning for each of its quick retries and the client logs whole response bodies at
    # debug level; the controller logs each failure and recovery once itself.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("kubernetes").setLevel(logging.INFO)
    stop = stop_on_signals()
    log.info("node-ping %s discover starting: %s", __version__, settings)
    Discovery(api, settings, stop).run()
    log.info("node-ping discover stopped")
    return 0
