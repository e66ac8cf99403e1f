"""`node-ping diagnose --publish-events`: diagnose every --interval until SIGTERM or SIGINT, and publish
each fault as a Warning Event on the Nodes it blames (`node_ping.diagnose.events` says how).

Each loop is the one-shot diagnosis over the range ending now (the command passes it in), then the
Events. Nothing ends the loop but a stop signal: Prometheus unreachable or without data, or the API
server refusing, is one log line and the next loop tries again; a failed diagnosis publishes nothing
and ends no fault. The health file is touched after every loop, for `node-ping health --max-age`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node_ping import __version__, kube
from node_ping.diagnose import config
from node_ping.diagnose.events import NAMESPACE, Publisher
from node_ping.diagnose.prometheus import PrometheusError
from node_ping.diagnose.render import Report
from node_ping.liveness import HealthFile
from node_ping.settings import EXIT_USAGE, SettingsError
from node_ping.signals import stop_on_signals

log = logging.getLogger(__name__)

STOP_GRACE_S = 2.0
"""A request in flight when SIGTERM comes (a Prometheus query, an Event write) gets this long, then
the process ends (exit 0): a half-made diagnosis is worth nothing, and API writes are atomic."""

CONTINUE_SLACK_S = 60.0
"""An Event found when node-ping (re)starts continues if it was last seen within two intervals and
this much (a restart); older, the fault is taken to have ended in between, and it begins anew."""


@dataclass(frozen=True)
class PublishSettings:
    """The loop's own settings; the diagnosis's are the one-shot's."""

    interval_s: int
    namespace: str
    kubeconfig: Path | None = None
    health_file: Path | None = None


def settings_from(values: Mapping[str, Any]) -> PublishSettings:
    """The command's values -> the loop's settings; SettingsError naming the flag, the env var and the fix."""
    if values["time"] is not None:
        raise SettingsError(f"{config.TIME.flag} cannot be used with {config.PUBLISH_EVENTS.flag}: each diagnosis "
                            "ends at the time it is made")
    namespace = (values["events_namespace"] or "").strip()
    if not namespace:
        raise SettingsError(f"set the namespace to write the Events in: {config.EVENTS_NAMESPACE.flag} or "
                            f"{config.EVENTS_NAMESPACE.env}, as {NAMESPACE} (the only one the API server takes "
                            "Events about Nodes in)")
    if namespace != NAMESPACE:
        raise SettingsError(f"Invalid value for {config.EVENTS_NAMESPACE.hint}: {namespace!r}: the API server takes "
                            f"Events about Nodes only in the namespace {NAMESPACE} (core/v1 validation: "
                            f"'does not match event.namespace'); give {config.EVENTS_NAMESPACE.flag} {NAMESPACE} "
                            f"and allow creating and patching events there")
    return PublishSettings(interval_s=int(values["interval"]), namespace=namespace,
                           kubeconfig=values["kubeconfig"], health_file=values["health_file"])


def _logging() -> None:
    """Log lines on stderr, as the other long-running commands write them, without their crash handler
    that prints local variables: diagnose's may hold Prometheus credentials."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # urllib3 warns of each of its quick retries; the loop says once per loop what failed.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("kubernetes").setLevel(logging.INFO)


def serve(values: Mapping[str, Any], diagnose: Callable[[float], Report], prometheus_url: str) -> int:
    """Run the loop until a stop signal: exit 0; 2 for a bad setting or a missing kubernetes package."""
    settings = settings_from(values)
    _logging()
    try:
        api_client = kube.api_client(settings.kubeconfig, config.KUBECONFIG.flag)
    except ImportError as err:
        log.error("node-ping diagnose --publish-events needs the kubernetes package (%s): pip install "
                  "'node-ping[discover]', or run it from the discovery image", err)
        return EXIT_USAGE
    from kubernetes import client  # noqa: PLC0415  (present: api_client loaded it)

    stop = stop_on_signals(grace_s=STOP_GRACE_S)
    log.info("node-ping %s diagnose --publish-events starting: every %d s, from %s, Events in namespace %s",
             __version__, settings.interval_s, prometheus_url, settings.namespace)
    publisher = Publisher(client.CoreV1Api(api_client), 2 * settings.interval_s + CONTINUE_SLACK_S,
                          settings.namespace)
    try:
        run(diagnose, publisher, stop, settings.interval_s, HealthFile(settings.health_file))
    finally:
        api_client.close()
    log.info("node-ping diagnose --publish-events stopped")
    return 0


def run(diagnose: Callable[[float], Report], publisher: Publisher, stop: threading.Event, interval_s: float,
        health: HealthFile) -> None:
    """Diagnose and publish every `interval_s` until `stop` is set; a loop that takes longer is followed
    at once by the next."""
    failing = False
    while not stop.is_set():
        began = time.monotonic()
        failing = _loop(diagnose, publisher, stop, failing)
        health.touch()
        stop.wait(max(0.0, began + interval_s - time.monotonic()))


def _loop(diagnose: Callable[[float], Report], publisher: Publisher, stop: threading.Event, failing: bool) -> bool:
    """One diagnosis and its Events; whether the diagnosis failed."""
    at = time.time()
    try:
        report = diagnose(at)
    except PrometheusError as err:
        log.error("diagnosis failed, no Events written and none ended this time: %s", err)
        return True
    except Exception:  # a bug must not end the loop (nor restart it forever)
        log.exception("diagnosis failed unexpectedly, no Events written and none ended this time")
        return True
    if failing:
        log.info("diagnosis works again")
    for warning in report.warnings:
        log.warning("warning from Prometheus, the data may be incomplete: %s", warning)
    faults = [verdict for verdict in report.verdicts if verdict.is_fault]
    try:
        written = publisher.publish(report.verdicts, len(report.matrix.node_names()), at, stop)
    except Exception:
        log.exception("publishing the Events failed unexpectedly")
        return False
    log.debug("diagnosed %d nodes: %d faults, %d Events written", len(report.matrix.node_names()), len(faults),
              written)
    return False
