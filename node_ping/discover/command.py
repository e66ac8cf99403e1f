"""`node-ping discover`: the command line and start-up of the node-discovery controller.

One replica for the whole cluster watches the Node objects and keeps the `nodes.json` key of one
ConfigMap equal to the exporter's target list, and with --pod-selector its `pods.json` key equal to
the pod-network prober's (see `node_ping.discover.controller` for how, `node_ping.discover.nodes`
and `node_ping.discover.pods` for what it writes). The `kubernetes` package is imported only when the
command runs, so `node-ping --help` stays fast and the exporter image does not need it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from node_ping import __version__, kube, logs
from node_ping.discover import config
from node_ping.discover.config import DiscoverSettings
from node_ping.settings import EXIT_USAGE, Command, SettingsError, options
from node_ping.signals import stop_on_signals

log = logging.getLogger(__name__)

# Where Kubernetes mounts the pod's own namespace, next to its service account token.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def settings_from(values: Mapping[str, Any], namespace_file: Path = NAMESPACE_FILE) -> DiscoverSettings:
    """The command's values (as click passes them) -> the settings; SettingsError names the flag and the fix."""
    if not values["configmap"]:
        raise SettingsError(f"set the ConfigMap to keep up to date: {config.CONFIGMAP.flag} or {config.CONFIGMAP.env}")
    kubeconfig: Path | None = values["kubeconfig"]
    namespace = values["namespace"]
    if not namespace and kubeconfig is not None:
        namespace = kubeconfig_namespace(kubeconfig)
    if not namespace:
        try:
            namespace = namespace_file.read_text(encoding="utf-8").strip()
        except OSError:
            raise SettingsError(f"set the namespace: {config.NAMESPACE.flag}, {config.NAMESPACE.env} or a namespace in "
                                f"the kubeconfig's current context (outside a pod, {namespace_file} does not exist to "
                                "fall back on)") from None
    # Blank means every Node (no pod list, no rack); anything else goes to the API server as written,
    # which judges it.
    selector = (values["node_selector"] or "").strip() or None
    pod_selector = (values.get("pod_selector") or "").strip() or None
    return DiscoverSettings(namespace=namespace, configmap=values["configmap"],
                            address_types=values["address_types"], node_selector=selector,
                            rack_label=values.get("rack_label") or None, pod_selector=pod_selector,
                            health_file=values.get("health_file"))


def kubeconfig_namespace(kubeconfig: Path) -> str | None:
    """The namespace of the kubeconfig's current context, which kubectl would use; None if it names none."""
    try:
        from kubernetes import config as kube_config  # noqa: PLC0415  (see the module docstring)

        _, current = kube_config.list_kube_config_contexts(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    except Exception:  # a missing package, an unreadable or invalid file: core_api() reports it in full
        return None
    namespace = current.get("context", {}).get("namespace") if isinstance(current, dict) else None
    return namespace if isinstance(namespace, str) and namespace else None


def core_api(kubeconfig: Path | None) -> Any:
    """A CoreV1Api for the kubeconfig file, or for the pod's service account when there is none;
    SettingsError naming --kubeconfig and the fix when neither can be loaded."""
    from kubernetes import client  # noqa: PLC0415  (see the module docstring)

    return client.CoreV1Api(kube.api_client(kubeconfig, config.KUBECONFIG.flag))


def _logging(verbose: bool) -> None:
    logs.setup(verbose)
    # urllib3 logs a warning for each of its quick retries and the client logs whole response bodies at
    # debug level; the controller logs each failure and recovery once itself.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("kubernetes").setLevel(logging.INFO)


@click.command(cls=Command, help="Keep the nodes.json ConfigMap in step with the cluster's nodes.")
@options(*config.DISCOVER_SETTINGS)
def discover(**values: Any) -> int:
    settings = settings_from(values)
    _logging(values["verbose"])
    try:
        from node_ping.discover.cache import SelectorRefused  # noqa: PLC0415  (see the module docstring)
        from node_ping.discover.controller import Discovery  # noqa: PLC0415
    except ImportError as err:
        log.error("node-ping discover needs the kubernetes package (%s): pip install 'node-ping[discover]'", err)
        return EXIT_USAGE
    api = core_api(values["kubeconfig"])
    stop = stop_on_signals()
    log.info("node-ping %s discover starting: %s", __version__, settings)
    try:
        Discovery(api, settings, stop).run()
    except SelectorRefused as err:
        example = ("pods -l takes it, e.g. app.kubernetes.io/component=pod-prober" if err.setting is config.POD_SELECTOR
                   else "nodes -l takes it, e.g. kubernetes.io/os=linux")
        raise SettingsError(f"Invalid value for {err.setting.hint}: {err}; write it as kubectl get {example}") from None
    log.info("node-ping discover stopped")
    return 0
