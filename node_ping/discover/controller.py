"""The discovery controller: Nodes (and the pod-network prober's Pods) in the API server -> the
nodes.json (and pods.json) key of one ConfigMap.

Three threads of control, one job each, and a fourth with --pod-selector:
  - nodes: one list + watch of the Nodes, kept in a cache of targets (`node_ping.discover.cache`).
  - pods: one list + watch of the prober pods in discover's own namespace, the same way.
  - configmap: a watch of the ConfigMap itself (field selector metadata.name=<name>), so an edit or
    deletion by someone else is noticed at once and put right.
  - reconcile (the caller's thread): whenever a cache or the ConfigMap may have moved, it renders
    the desired texts, reads the ConfigMap and writes it only if the bytes differ; every write makes
    the kubelet update the volume in every exporter pod, so no write without a change.
Every API failure is retried with exponential backoff up to a cap, logged once when a loop starts
failing and once when it works again. Stopping closes the open watch connections, so the process
ends within a second or two of SIGTERM instead of after the watch timeout.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from node_ping.discover.cache import NodeCache, PodCache
from node_ping.discover.config import DiscoverSettings
from node_ping.discover.liveness import Heartbeat
from node_ping.discover.nodes import needs_write, oversize, render_nodes_json, summarize_change, validate_nodes_json
from node_ping.discover.pods import pod_targets
from node_ping.discover.watch import ApiTrouble, Backoff, Watches, http_status

log = logging.getLogger(__name__)

DATA_KEY = "nodes.json"
PODS_KEY = "pods.json"
LABELS = {"app.kubernetes.io/name": "node-ping", "app.kubernetes.io/managed-by": "node-ping-discover"}
# Writes that lose the optimistic-concurrency race this often in a row are retried with backoff.
MAX_CONFLICTS = 5
# How often the reconcile loop looks at the stop Event while nothing happens.
_POLL_SECONDS = 0.2
# How long stopping waits for the watch threads before leaving them to process exit.
_STOP_GRACE_SECONDS = 3.0


class WriteConflicts(ApiTrouble):
    """The ConfigMap changed between reading and writing it, MAX_CONFLICTS times in a row.

    Busy co-writers, not a bug: the reconcile loop backs off and tries again like after an outage.
    """


@dataclass(frozen=True)
class Status:
    """A consistent look at the controller from outside (tests, debugging)."""

    nodes_synced: bool
    nodes_resource_version: str | None
    desired: str | None  # the nodes.json text the cluster calls for; None before the first list
    stored: str | None  # the nodes.json text last confirmed in the ConfigMap; None if not known
    writes: int
    # The same for pods.json; all None/False without --pod-selector.
    pods_synced: bool = False
    pods_resource_version: str | None = None
    pods_desired: str | None = None
    pods_stored: str | None = None


class Discovery:
    """Keep ConfigMap <namespace>/<configmap> key nodes.json equal to the cluster's nodes (and key
    pods.json to the prober pods, with a pod selector) until `stop` is set."""

    def __init__(self, api: Any, settings: DiscoverSettings, stop: threading.Event) -> None:
        self._api = api  # kubernetes.client.CoreV1Api
        self._settings = settings
        self._stop = stop
        self._where = f"ConfigMap {settings.namespace}/{settings.configmap}"
        self._lock = threading.Lock()
        self._wake = threading.Event()  # the cache or the ConfigMap may have moved
        self._watches = Watches(stop, settings.watch_timeout_seconds, settings.request_timeout[0])
        self._nodes = NodeCache(api, settings, stop, self._watches, self._wake)
        self._pods = PodCache(api, settings, stop, self._watches, self._wake) if settings.pod_selector else None
        self._heartbeat = Heartbeat(settings.health_file)
        # Guarded by _lock (key -> text, for the keys this controller owns):
        self._stored: dict[str, str] = {}
        self._writing: dict[str, str] | None = None  # the texts of a write in flight: its watch echo is no news
        self._suspect = True  # the ConfigMap may not hold _stored: read it before deciding
        self._writes = 0
        # Used by the reconcile thread only:
        self._reported_problems: tuple[str, ...] = ()
        self._reported_oversize: str | None = None

    # -- the whole controller ------------------------------------------------------------------

    def run(self) -> None:
        """Run until the stop Event is set. Never raises for API trouble, with one exception:
        cache.SelectorRefused when the first list of Nodes or Pods is refused for its label selector."""
        threads = [threading.Thread(target=self._nodes.run, name="discover-nodes", daemon=True),
                   threading.Thread(target=self._configmap_loop, name="discover-configmap", daemon=True)]
        if self._pods is not None:
            threads.append(threading.Thread(target=self._pods.run, name="discover-pods", daemon=True))
        for thread in threads:
            thread.start()
        self._heartbeat.watch(threads)
        try:
            self._reconcile_loop()
        finally:
            self._stop.set()
            self._join(threads)
        for cache in (self._nodes, self._pods):
            if cache is not None and cache.refused is not None:
                raise cache.refused

    def status(self) -> Status:
        with self._lock:  # the caches' locks are only ever taken inside this one, never around it
            nodes = self._nodes.snapshot()
            pods = self._pods.snapshot() if self._pods is not None else None
            stored, writes = dict(self._stored), self._writes
        desired = self._desired()
        return Status(nodes.synced, nodes.resource_version, desired.get(DATA_KEY), stored.get(DATA_KEY), writes,
                      pods_synced=pods is not None and pods.synced,
                      pods_resource_version=pods.resource_version if pods is not None else None,
                      pods_desired=desired.get(PODS_KEY), pods_stored=stored.get(PODS_KEY))

    def _desired(self) -> dict[str, str]:
        """Key -> the text the cluster calls for, for each key whose first list is complete: never a
        text before it, since an empty list would blind every exporter."""
        nodes = self._nodes.snapshot()
        if not nodes.synced:
            return {}
        desired = {DATA_KEY: render_nodes_json(nodes.items)}
        pods = self._pods.snapshot() if self._pods is not None else None
        if pods is not None and pods.synced:
            desired[PODS_KEY] = render_nodes_json(pod_targets(pods.items, nodes.items))
        return desired

    def _backoff(self, what: str) -> Backoff:
        return Backoff(what, self._stop, initial=self._settings.backoff_initial_seconds,
                       cap=self._settings.backoff_max_seconds)

    def _join(self, threads: list[threading.Thread]) -> None:
        # A watch blocks in a socket read; Watch.stop() shuts that socket down. It is repeated because
        # a watch that was just being opened has no socket to shut yet.
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            self._watches.stop_all()
            for thread in threads:
                thread.join(0.05)
        for thread in threads:
            if thread.is_alive():
                log.warning("thread %s still waits for the API server; leaving it to process exit", thread.name)

    # -- configmap: notice edits and deletions by others ---------------------------------------

    def _configmap_loop(self) -> None:
        backoff = self._backoff(f"watching {self._where}")
        resource_version: str | None = None  # None: the server first replays the current object
        selector = f"metadata.name={self._settings.configmap}"
        while not self._stop.is_set():
            try:
                for event in self._watches.stream(self._api.list_namespaced_config_map,
                                                  namespace=self._settings.namespace, field_selector=selector,
                                                  resource_version=resource_version):
                    backoff.succeeded()
                    resource_version = str(event["object"]["metadata"]["resourceVersion"])
                    self._configmap_event(event["type"], event["object"])
                backoff.succeeded()
            except Exception as err:  # the loop must outlive anything the API does
                if self._stop.is_set():
                    break
                if http_status(err) == 410 and resource_version is not None:
                    resource_version = None  # start over: the server first replays the current object
                    continue
                backoff.failed(err)

    def _configmap_event(self, kind: str, configmap: Mapping[str, Any]) -> None:
        if kind == "BOOKMARK":
            return
        data = {} if kind == "DELETED" else (configmap.get("data") or {})

        def holds(texts: Mapping[str, str] | None) -> bool:
            return bool(texts) and all(data.get(key) == text for key, text in (texts or {}).items())

        with self._lock:
            if holds(self._stored) or holds(self._writing):
                return  # the echo of our own write, or a change to keys we do not own
            self._suspect = True
        log.debug("%s: %s event; checking it", self._where, kind)
        self._wake.set()

    # -- reconcile: write nodes.json when, and only when, it must change -----------------------

    def _reconcile_loop(self) -> None:
        backoff = self._backoff(f"updating {self._where}")
        next_resync = time.monotonic() + self._settings.resync_seconds
        while not self._stop.is_set():
            self._heartbeat.beat()
            if not self._wake.wait(_POLL_SECONDS):
                if time.monotonic() < next_resync:
                    continue
                with self._lock:
                    self._suspect = True
            if self._stop.is_set():
                break
            next_resync = time.monotonic() + self._settings.resync_seconds
            if self._stop.wait(self._settings.settle_seconds):
                break
            self._wake.clear()
            try:
                self._reconcile()
                backoff.succeeded()
            except Exception as err:  # the loop must outlive anything the API does
                if self._stop.is_set():
                    break
                with self._lock:
                    self._suspect = True  # whatever made it look is still unchecked
                backoff.failed(err)
                self._wake.set()

    def _reconcile(self) -> None:
        desired = self._desired()
        if not desired:
            return  # never write before the first list: an empty list would blind every exporter
        with self._lock:
            if not self._suspect and not _differs(self._stored, desired):
                return
        self._report_problems(desired)
        for _attempt in range(MAX_CONFLICTS):
            with self._lock:
                self._suspect = False  # an event after this read marks it again
            current = self._read()
            data = (current.data or {}) if current is not None else {}
            stored = {key: data[key] for key in desired if key in data}
            if current is not None and not _differs(stored, desired):
                with self._lock:
                    self._stored = dict(desired)
                return
            # The API server would refuse it (422) on every retry; the ConfigMap keeps what it holds.
            problem = self._oversize(desired, _other_bytes(current, desired))
            if problem != self._reported_oversize and problem is not None:
                log.error("%s: %s", self._where, problem)
            self._reported_oversize = problem
            if problem is not None:
                return
            with self._lock:
                self._writing = dict(desired)
            try:
                if current is None:
                    self._create(desired)
                else:
                    self._replace(current, desired)
            except Exception as err:
                with self._lock:
                    self._writing = None
                # 409: someone else wrote it (or created it) since we read it; 404: deleted since.
                if http_status(err) not in (404, 409):
                    raise
                log.info("%s changed while being written (HTTP %s); reading it again", self._where, http_status(err))
                continue
            with self._lock:
                self._stored = dict(desired)
                self._writing = None
                self._writes += 1
            changes = "; ".join(f"{key} lists {_count(text)} nodes ({summarize_change(stored.get(key), text)})"
                                for key, text in desired.items() if needs_write(stored.get(key), text))
            log.info("%s %s: %s", "created" if current is None else "updated", self._where, changes)
            return
        raise WriteConflicts(f"{self._where} changed under every one of {MAX_CONFLICTS} writes in a row")

    @staticmethod
    def _oversize(desired: Mapping[str, str], other_bytes: int) -> str | None:
        """Why the API server would refuse these keys together (the first one that does not fit beside the rest)."""
        sizes = {key: len(text.encode()) for key, text in desired.items()}
        for key, text in desired.items():
            problem = oversize(text, _count(text), other_bytes + sum(sizes.values()) - sizes[key], key)
            if problem is not None:
                return problem
        return None

    def _report_problems(self, desired: Mapping[str, str]) -> None:
        """Warn (once per distinct set) about entries the exporter would skip, e.g. two nodes with one IP."""
        problems = tuple(problem for key, text in desired.items()
                         for problem in validate_nodes_json(text, key))
        if problems and problems != self._reported_problems:
            for problem in problems:
                log.warning("the exporter will skip an entry: %s", problem)
        self._reported_problems = problems

    def _read(self) -> Any:
        try:
            return self._api.read_namespaced_config_map(self._settings.configmap, self._settings.namespace,
                                                        _request_timeout=self._settings.request_timeout)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def _create(self, texts: Mapping[str, str]) -> None:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=self._settings.configmap, namespace=self._settings.namespace,
                                         labels=dict(LABELS)),
            data=dict(texts))
        self._api.create_namespaced_config_map(self._settings.namespace, body,
                                               _request_timeout=self._settings.request_timeout)

    def _replace(self, current: Any, texts: Mapping[str, str]) -> None:
        # The object as read, so other keys, labels and annotations survive, and its
        # resourceVersion makes the API server refuse (409) if anyone wrote in between.
        current.data = {**(current.data or {}), **texts}
        current.metadata.labels = {**(current.metadata.labels or {}), **LABELS}
        self._api.replace_namespaced_config_map(self._settings.configmap, self._settings.namespace, current,
                                                _request_timeout=self._settings.request_timeout)


def _differs(stored: Mapping[str, str], desired: Mapping[str, str]) -> bool:
    return any(needs_write(stored.get(key), text) for key, text in desired.items())


def _count(text: str) -> int:
    """The entries of a text render_nodes_json wrote: one a line between the brackets."""
    return text.count("\n") - 2 if text != "[]\n" else 0


def _other_bytes(configmap: Any, owned: Mapping[str, str]) -> int:
    """What the ConfigMap's keys other than the `owned` ones count against the API server's size limit."""
    if configmap is None:
        return 0
    size = sum(len(value.encode()) for key, value in (configmap.data or {}).items() if key not in owned)
    for value in (configmap.binary_data or {}).values():
        try:
            size += len(base64.b64decode(value))
        except (binascii.Error, ValueError):
            size += len(value)
    return size
