"""The discovery controller: Nodes in the API server -> the nodes.json key of one ConfigMap.

Three threads of control, one job each:
  - nodes: one list + watch of all Nodes for the whole cluster (or of those the label selector
    picks: the nodes the exporter runs on), kept in a cache of targets. Nodes stay plain JSON
    dicts (never client models) and live only until turned into targets, one list page at a time,
    so memory follows the target count, not the size of Node objects. A watch that expires
    (410 Gone) leads to a fresh list; a watch that ends or breaks resumes from the last
    resourceVersion seen, so nothing is missed and nothing is listed twice without need.
  - configmap: a watch of the ConfigMap itself (field selector metadata.name=<name>), so an edit or
    deletion by someone else is noticed at once and put right.
  - reconcile (the caller's thread): whenever the cache or the ConfigMap may have moved, it renders
    the desired text, reads the ConfigMap and writes it only if the bytes differ; every write makes
    the kubelet update the volume in every exporter pod, so no write without a change.
Every API failure is retried with exponential backoff up to a cap, logged once when a loop starts
failing and once when it works again. Stopping closes the open watch connections, so the process
ends within a second or two of SIGTERM instead of after the watch timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from node_ping.discover.command import DiscoverSettings
from node_ping.discover.nodes import (
    needs_write,
    node_name,
    node_target,
    render_nodes_json,
    summarize_change,
    validate_nodes_json,
)
from node_ping.targets import NodeTarget

log = logging.getLogger(__name__)

DATA_KEY = "nodes.json"
LABELS = {"app.kubernetes.io/name": "node-ping", "app.kubernetes.io/managed-by": "node-ping-discover"}
# Writes that lose the optimistic-concurrency race this often in a row are retried with backoff.
MAX_CONFLICTS = 5
# How often the reconcile loop looks at the stop Event while nothing happens.
_POLL_SECONDS = 0.2
# How long stopping waits for the watch threads before leaving them to process exit.
_STOP_GRACE_SECONDS = 3.0
# A watch that ends sooner than this without a single event is treated as a failure (as client-go
# does), so a proxy that closes every watch at once gets backoff rather than a tight loop.
_SHORT_WATCH_SECONDS = 1.0


class ShortWatch(ConnectionError):
    """The server ended a watch at once without sending anything."""


class WriteConflicts(Exception):
    """The ConfigMap changed between reading and writing it, MAX_CONFLICTS times in a row.

    Busy co-writers, not a bug: the reconcile loop backs off and tries again like after an outage.
    """


def http_status(err: BaseException) -> int | None:
    return err.status if isinstance(err, ApiException) else None


def describe(err: BaseException) -> str:
    """A short, log-friendly account of an API failure: the status and the API server's own sentence.

    For a 403 that sentence names the missing permission ("... cannot watch resource "nodes" ..."),
    which is what a reader needs to fix the RBAC.
    """
    if isinstance(err, ApiException):
        text = f"HTTP {err.status} {err.reason or ''}".strip()
        try:
            message = json.loads(err.body or "").get("message")
        except (ValueError, AttributeError):
            message = None
        return f"{text}: {message[:300]}" if isinstance(message, str) and message else text
    if isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason is not None:
        return f"{type(err.reason).__name__}: {err.reason}"
    return f"{type(err).__name__}: {err}"


class RawWatch:
    """One watch request, its events kept as the API server's JSON: {"type": ..., "object": dict}.

    Not kubernetes.watch.Watch: by default it turns every event into a model (a V1Node for each
    Node status update, thousands a minute in a big cluster), and its `deserialize=False` mode in
    client 37 drops the event's `raw_object` key, then looks that key up on an ERROR event, so the
    410 Gone of an expired watch surfaces as a KeyError instead of a status.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response: Any = None  # urllib3.HTTPResponse while the request is open
        self._stopped = False

    def events(self, func: Callable[..., Any], **kwargs: Any) -> Iterator[dict[str, Any]]:
        """The events of `func(watch=True, **kwargs)`; an ERROR event is raised as an ApiException."""
        response = func(watch=True, _preload_content=False, **kwargs)
        with self._lock:
            self._response = response
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stopped:
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiException(status=status.get("code"),
                                       reason=f"{status.get('reason')}: {status.get('message')}")
                yield event
        finally:
            with self._lock:
                self._response = None
            response.close()
            response.release_conn()

    def stop(self) -> None:
        """End `events` from another thread by shutting down the socket its read blocks in."""
        with self._lock:
            self._stopped = True
            response = self._response
        sock = getattr(getattr(response, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)


class Backoff:
    """Retry pacing and logging for one loop: one warning when it starts failing, one line when it works again."""

    def __init__(self, what: str, settings: DiscoverSettings, stop: threading.Event) -> None:
        self.what = what
        self.initial = settings.backoff_initial_seconds
        self.cap = settings.backoff_max_seconds
        self.stop = stop
        self.failures = 0

    def delay(self) -> float:
        return float(min(self.cap, self.initial * 2 ** max(0, self.failures - 1)))

    def failed(self, err: BaseException) -> None:
        """Log the failure (the first one loudly) and wait before the next attempt, or until stopped."""
        self.failures += 1
        if self.failures == 1:
            # Anything that is not an API or network error is a bug: keep going, but show where.
            expected = isinstance(err, ApiException | urllib3.exceptions.HTTPError | OSError | ValueError
                                  | WriteConflicts)
            log.warning("%s failed: %s; retrying with backoff (at most %gs apart), quietly until it works again",
                        self.what, describe(err), self.cap, exc_info=not expected)
        else:
            log.debug("%s failed again (%d in a row): %s", self.what, self.failures, describe(err))
        self.stop.wait(self.delay())

    def succeeded(self) -> None:
        if self.failures:
            log.info("%s works again after %d failed attempts", self.what, self.failures)
            self.failures = 0


@dataclass(frozen=True)
class Status:
    """A consistent look at the controller from outside (tests, debugging)."""

    nodes_synced: bool
    nodes_resource_version: str | None
    desired: str | None  # the nodes.json text the cluster calls for; None before the first list
    stored: str | None  # the nodes.json text last confirmed in the ConfigMap; None if not known
    writes: int


class Discovery:
    """Keep ConfigMap <namespace>/<configmap> key nodes.json equal to the cluster's nodes until `stop` is set."""

    def __init__(self, api: Any, settings: DiscoverSettings, stop: threading.Event) -> None:
        self._api = api  # kubernetes.client.CoreV1Api
        self._settings = settings
        self._stop = stop
        self._where = f"ConfigMap {settings.namespace}/{settings.configmap}"
        self._lock = threading.Lock()
        self._wake = threading.Event()  # the cache or the ConfigMap may have moved
        self._watches: set[RawWatch] = set()
        # Guarded by _lock:
        self._targets: dict[str, NodeTarget] = {}
        self._unaddressed: set[str] = set()  # nodes left out for want of an address, logged once each
        self._nodes_synced = False
        self._nodes_rv: str | None = None
        self._stored: str | None = None
        self._writing: str | None = None  # the text of a write in flight: its watch echo is no news
        self._suspect = True  # the ConfigMap may not hold _stored: read it before deciding
        self._writes = 0
        # Used by the reconcile thread only:
        self._reported_problems: tuple[str, ...] = ()

    # -- the whole controller ------------------------------------------------------------------

    def run(self) -> None:
        """Run until the stop Event is set; never raises for API trouble."""
        threads = [threading.Thread(target=self._nodes_loop, name="discover-nodes", daemon=True),
                   threading.Thread(target=self._configmap_loop, name="discover-configmap", daemon=True)]
        for thread in threads:
            thread.start()
        try:
            self._reconcile_loop()
        finally:
            self._stop.set()
            self._join(threads)

    def status(self) -> Status:
        with self._lock:
            desired = render_nodes_json(self._targets.values()) if self._nodes_synced else None
            return Status(self._nodes_synced, self._nodes_rv, desired, self._stored, self._writes)

    def _join(self, threads: list[threading.Thread]) -> None:
        # A watch blocks in a socket read; Watch.stop() shuts that socket down. It is repeated because
        # a watch that was just being opened has no socket to shut yet.
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            with self._lock:
                watches = list(self._watches)
            for open_watch in watches:
                open_watch.stop()
            for thread in threads:
                thread.join(0.05)
        for thread in threads:
            if thread.is_alive():
                log.warning("thread %s still waits for the API server; leaving it to process exit", thread.name)

    def _stream(self, func: Callable[..., Any], **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Watch events of `func`, one server-side-limited watch, stoppable from another thread."""
        if self._stop.is_set():
            return
        stream = RawWatch()
        with self._lock:
            self._watches.add(stream)
        try:
            timeout = self._settings.watch_timeout_seconds
            read_timeout = timeout + 30  # past the server's own end of the watch: a dead connection
            started = time.monotonic()
            events = 0
            for event in stream.events(func, timeout_seconds=timeout, allow_watch_bookmarks=True,
                                       _request_timeout=(self._settings.request_timeout[0], read_timeout), **kwargs):
                events += 1
                yield event
            if not events and time.monotonic() - started < _SHORT_WATCH_SECONDS and not self._stop.is_set():
                raise ShortWatch("the API server ended the watch at once without an event")
        finally:
            with self._lock:
                self._watches.discard(stream)

    # -- nodes: list + watch into the cache ----------------------------------------------------

    def _nodes_loop(self) -> None:
        backoff = Backoff("watching Nodes", self._settings, self._stop)
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list_nodes()
                    backoff.succeeded()
                # With a label selector, the API server reports a Node relabelled out of it as DELETED.
                for event in self._stream(self._api.list_node, resource_version=resource_version,
                                          label_selector=self._settings.node_selector):
                    backoff.succeeded()
                    resource_version = self._node_event(event)
                backoff.succeeded()
            except Exception as err:  # the loop must outlive anything the API does
                if self._stop.is_set():
                    break
                if http_status(err) == 410 and resource_version is not None:
                    # The server no longer has history that old: only a fresh list is complete.
                    log.info("Node watch expired at resourceVersion %s; listing all Nodes again", resource_version)
                    resource_version = None
                    continue
                backoff.failed(err)  # then resume the watch from where it broke

    def _list_nodes(self) -> str:
        """List all Nodes (in pages) into the cache; return the list's resourceVersion to watch from."""
        targets: dict[str, NodeTarget] = {}
        unaddressed: set[str] = set()
        listed = 0
        token: str | None = None
        while True:
            count, metadata = self._list_page(token, targets, unaddressed)
            listed += count
            token = metadata.get("continue")
            if not token:
                break
        resource_version = str(metadata.get("resourceVersion", ""))
        with self._lock:
            first = not self._nodes_synced
            before = self._targets
            newly_unaddressed = unaddressed - self._unaddressed
            self._targets = targets
            self._unaddressed = unaddressed
            self._nodes_synced = True
            self._nodes_rv = resource_version
        for name in sorted(newly_unaddressed):
            self._log_unaddressed(name)
        if first:
            selected = f" with labels {self._settings.node_selector}" if self._settings.node_selector else ""
            log.info("listed %d Nodes%s, %d of them with a usable address", listed, selected, len(targets))
        else:
            self._log_differences(before, targets)
        if first or before != targets:
            self._wake.set()
        return resource_version

    def _list_page(self, token: str | None, targets: dict[str, NodeTarget],
                   unaddressed: set[str]) -> tuple[int, dict[str, Any]]:
        """One page of the Node list into `targets` and `unaddressed`: (its item count, its list metadata).

        The page's Node objects die when this returns. Whole Nodes carry images, conditions and
        managedFields, tens of KB of Python objects each: every page of a large cluster held at once
        would outgrow the container's memory limit.
        """
        response = self._api.list_node(limit=self._settings.page_size, _continue=token,
                                       label_selector=self._settings.node_selector,
                                       _request_timeout=self._settings.request_timeout, _preload_content=False)
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        items = body.get("items") or []
        for node in items:
            try:
                name = node_name(node)
            except ValueError:
                log.warning("ignoring a Node without metadata.name in the list")
                continue
            target = node_target(node, self._settings.address_types)
            if target is not None:
                targets[name] = target
            else:
                unaddressed.add(name)
        return len(items), body.get("metadata") or {}

    def _node_event(self, event: Mapping[str, Any]) -> str:
        """Apply one watch event to the cache; return its resourceVersion."""
        kind = event["type"]
        node = event["object"]
        resource_version = str(node["metadata"]["resourceVersion"])
        if kind != "BOOKMARK":
            try:
                name = node_name(node)
            except ValueError:
                log.warning("ignoring a %s event for a Node without metadata.name", kind)
            else:
                target = None if kind == "DELETED" else node_target(node, self._settings.address_types)
                self._set_node(name, target, deleted=kind == "DELETED")
        with self._lock:
            self._nodes_rv = resource_version
        return resource_version

    def _log_unaddressed(self, name: str) -> None:
        log.info("Node %s has no address of type %s yet; leaving it out until it has one",
                 name, " or ".join(self._settings.address_types))

    def _set_node(self, name: str, target: NodeTarget | None, deleted: bool) -> None:
        with self._lock:
            before = self._targets.pop(name, None)
            newly_unaddressed = target is None and not deleted and name not in self._unaddressed
            if target is not None:
                self._targets[name] = target
            if newly_unaddressed:
                self._unaddressed.add(name)
            elif target is not None or deleted:
                self._unaddressed.discard(name)
        if newly_unaddressed:
            self._log_unaddressed(name)
        if before != target:
            self._log_differences({name: before} if before else {}, {name: target} if target else {})
            self._wake.set()

    @staticmethod
    def _log_differences(before: Mapping[str, NodeTarget], after: Mapping[str, NodeTarget]) -> None:
        for name in sorted(before.keys() | after.keys()):
            old, new = before.get(name), after.get(name)
            if old == new:
                continue
            if new is None:
                log.info("Node %s left the target list", name)
            else:
                zone = f" in zone {new.zone}" if new.zone else ""
                log.info("Node %s %s: %s%s", name, "joined" if old is None else "now", new.address, zone)

    # -- configmap: notice edits and deletions by others ---------------------------------------

    def _configmap_loop(self) -> None:
        backoff = Backoff(f"watching {self._where}", self._settings, self._stop)
        resource_version: str | None = None  # None: the server first replays the current object
        selector = f"metadata.name={self._settings.configmap}"
        while not self._stop.is_set():
            try:
                for event in self._stream(self._api.list_namespaced_config_map, namespace=self._settings.namespace,
                                          field_selector=selector, resource_version=resource_version):
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
        text = None if kind == "DELETED" else (configmap.get("data") or {}).get(DATA_KEY)
        with self._lock:
            if kind != "DELETED" and text is not None and text in (self._stored, self._writing):
                return  # the echo of our own write, or a change to keys we do not own
            self._suspect = True
        log.debug("%s: %s event; checking it", self._where, kind)
        self._wake.set()

    # -- reconcile: write nodes.json when, and only when, it must change -----------------------

    def _reconcile_loop(self) -> None:
        backoff = Backoff(f"updating {self._where}", self._settings, self._stop)
        next_resync = time.monotonic() + self._settings.resync_seconds
        while not self._stop.is_set():
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
        with self._lock:
            if not self._nodes_synced:
                return  # never write before the first list: an empty list would blind every exporter
            desired = render_nodes_json(self._targets.values())
            count = len(self._targets)
            if not self._suspect and not needs_write(self._stored, desired):
                return
        self._report_problems(desired)
        for _attempt in range(MAX_CONFLICTS):
            with self._lock:
                self._suspect = False  # an event after this read marks it again
            current = self._read()
            stored = (current.data or {}).get(DATA_KEY) if current is not None else None
            if current is not None and not needs_write(stored, desired):
                with self._lock:
                    self._stored = desired
                return
            with self._lock:
                self._writing = desired
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
                self._stored = desired
                self._writing = None
                self._writes += 1
            log.info("%s %s: nodes.json lists %d nodes (%s)", "created" if current is None else "updated",
                     self._where, count, summarize_change(stored, desired))
            return
        raise WriteConflicts(f"{self._where} changed under every one of {MAX_CONFLICTS} writes in a row")

    def _report_problems(self, desired: str) -> None:
        """Warn (once per distinct set) about entries the exporter would skip, e.g. two nodes with one IP."""
        problems = validate_nodes_json(desired)
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

    def _create(self, text: str) -> None:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=self._settings.configmap, namespace=self._settings.namespace,
                                         labels=dict(LABELS)),
            data={DATA_KEY: text})
        self._api.create_namespaced_config_map(self._settings.namespace, body,
                                               _request_timeout=self._settings.request_timeout)

    def _replace(self, current: Any, text: str) -> None:
        # The object as read, so other keys, labels and annotations survive, and its
        # resourceVersion makes the API server refuse (409) if anyone wrote in between.
        current.data = {**(current.data or {}), DATA_KEY: text}
        current.metadata.labels = {**(current.metadata.labels or {}), **LABELS}
        self._api.replace_namespaced_config_map(self._settings.configmap, self._settings.namespace, current,
                                                _request_timeout=self._settings.request_timeout)
