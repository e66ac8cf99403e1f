"""The discovery controller's caches: one list + watch per kind of object, kept as what it becomes.

`ListWatch` is the loop, written once: Nodes (all of them, or those the label selector picks: the
nodes the exporter runs on) become nodes.json targets, and the pod-network prober's Pods in
discover's own namespace become `ProberPod`s for pods.json. Objects stay plain JSON dicts (never
client models) and live only until converted, one list page at a time, so memory follows the
target count, not the size of Node objects. A watch that expires (410 Gone) leads to a fresh list;
a watch that ends or breaks resumes from the last resourceVersion seen, so nothing is missed and
nothing is listed twice without need.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from node_ping.discover import config
from node_ping.discover.config import DiscoverSettings
from node_ping.discover.nodes import node_name as object_name
from node_ping.discover.nodes import node_target
from node_ping.discover.pods import ProberPod, prober_pod
from node_ping.discover.watch import Backoff, Watches, describe, http_status
from node_ping.settings import Setting
from node_ping.targets import NodeTarget

log = logging.getLogger(__name__)

# What the API server answers a list whose label selector it cannot parse or accept.
_REFUSED = (400, 422)

V = TypeVar("V")


class SelectorRefused(Exception):
    """The API server refused a label selector on the first list: a setting to fix, not an outage to
    wait out (every later list would be refused the same way). `setting` is the one that gave it."""

    def __init__(self, selector: str, reason: str, setting: Setting = config.NODE_SELECTOR) -> None:
        super().__init__(f"the API server refuses the label selector {selector!r}: {reason}")
        self.selector = selector
        self.reason = reason
        self.setting = setting


@dataclass(frozen=True)
class Snapshot(Generic[V]):
    synced: bool  # the first list is complete: before it, the items are not the cluster's
    resource_version: str | None  # of the last list or watch event applied
    items: tuple[V, ...]


class ListWatch(Generic[V]):
    """One kind of object, listed then watched, kept as name -> V by `run` (a thread of its own);
    `wake` is set whenever they change. A subclass says what to list and what each object becomes."""

    kind = "object"  # for log lines: "Node", "Pod"
    usable = "usable"  # for the log line of the first list: what the objects kept are
    selector_setting: Setting = config.NODE_SELECTOR

    def __init__(self, api: Any, settings: DiscoverSettings, stop: threading.Event, watches: Watches,
                 wake: threading.Event, *, selector: str | None) -> None:
        self._api = api  # kubernetes.client.CoreV1Api
        self._settings = settings
        self._stop = stop
        self._watches = watches
        self._wake = wake
        self._selector = selector
        self.refused: SelectorRefused | None = None  # why `run` stopped the controller, if it did
        self._lock = threading.Lock()
        # Guarded by _lock:
        self._items: dict[str, V] = {}
        self._left_out: set[str] = set()  # objects left out (convert gave None), logged once each
        self._synced = False
        self._rv: str | None = None

    # -- what a subclass says ----------------------------------------------------------------------

    def _list(self, **kwargs: Any) -> Any:
        """The API's list call (also used to watch, with watch=True)."""
        raise NotImplementedError

    def _convert(self, obj: Mapping[str, Any]) -> V | None:
        """What an object becomes in the cache; None leaves it out (and `_left_out_log` says so once)."""
        raise NotImplementedError

    def _left_out_log(self, name: str) -> None:
        """Say why the object `name` is left out; called once each time it comes to be left out."""

    def _log_differences(self, before: Mapping[str, V], after: Mapping[str, V]) -> None:
        """Say what changed between two states of the cache."""

    # -- the loop ----------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot[V]:
        with self._lock:
            return Snapshot(self._synced, self._rv, tuple(self._items.values()))

    def run(self) -> None:
        """List, then watch, until the stop Event is set; never raises (see `refused`)."""
        backoff = Backoff(f"watching {self.kind}s", self._stop, initial=self._settings.backoff_initial_seconds,
                          cap=self._settings.backoff_max_seconds)
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list_all()
                    backoff.succeeded()
                # With a label selector, the API server reports an object relabelled out of it as DELETED.
                for event in self._watches.stream(self._list, resource_version=resource_version,
                                                  label_selector=self._selector):
                    backoff.succeeded()
                    resource_version = self._event(event)
                backoff.succeeded()
            except Exception as err:  # the loop must outlive anything the API does
                if self._stop.is_set():
                    break
                if self._refuses_selector(err):
                    break
                if http_status(err) == 410 and resource_version is not None:
                    # The server no longer has history that old: only a fresh list is complete.
                    log.info("%s watch expired at resourceVersion %s; listing all %ss again", self.kind,
                             resource_version, self.kind)
                    resource_version = None
                    continue
                backoff.failed(err)  # then resume the watch from where it broke

    def _refuses_selector(self, err: BaseException) -> bool:
        """True, and the controller stopping, if `err` refuses the selector before any list worked.

        Later a 400 is retried like any failure: the selector worked, so something else is wrong.
        """
        with self._lock:
            first = not self._synced
        if not (first and self._selector and http_status(err) in _REFUSED):
            return False
        self.refused = SelectorRefused(self._selector, describe(err), self.selector_setting)
        self._stop.set()
        self._wake.set()
        return True

    def _list_all(self) -> str:
        """List all objects (in pages) into the cache; return the list's resourceVersion to watch from."""
        items: dict[str, V] = {}
        left_out: set[str] = set()
        listed = 0
        token: str | None = None
        while True:
            count, metadata = self._list_page(token, items, left_out)
            listed += count
            token = metadata.get("continue")
            if not token:
                break
        resource_version = str(metadata.get("resourceVersion", ""))
        with self._lock:
            first = not self._synced
            before = self._items
            newly_left_out = left_out - self._left_out
            self._items = items
            self._left_out = left_out
            self._synced = True
            self._rv = resource_version
        for name in sorted(newly_left_out):
            self._left_out_log(name)
        if first:
            selected = f" with labels {self._selector}" if self._selector else ""
            log.info("listed %d %ss%s, %d of them %s", listed, self.kind, selected, len(items), self.usable)
        else:
            self._log_differences(before, items)
        if first or before != items:
            self._wake.set()
        return resource_version

    def _list_page(self, token: str | None, items: dict[str, V], left_out: set[str]) -> tuple[int, dict[str, Any]]:
        """One page of the list into `items` and `left_out`: (its item count, its list metadata).

        The page's objects die when this returns. Whole Nodes carry images, conditions and
        managedFields, tens of KB of Python objects each: every page of a large cluster held at once
        would outgrow the container's memory limit.
        """
        response = self._list(limit=self._settings.page_size, _continue=token, label_selector=self._selector,
                              _request_timeout=self._settings.request_timeout, _preload_content=False)
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        objects = body.get("items") or []
        for obj in objects:
            try:
                name = object_name(obj)
            except ValueError:
                log.warning("ignoring a %s without metadata.name in the list", self.kind)
                continue
            item = self._convert(obj)
            if item is not None:
                items[name] = item
            else:
                left_out.add(name)
        return len(objects), body.get("metadata") or {}

    def _event(self, event: Mapping[str, Any]) -> str:
        """Apply one watch event to the cache; return its resourceVersion."""
        kind = event["type"]
        obj = event["object"]
        resource_version = str(obj["metadata"]["resourceVersion"])
        if kind != "BOOKMARK":
            try:
                name = object_name(obj)
            except ValueError:
                log.warning("ignoring a %s event for a %s without metadata.name", kind, self.kind)
            else:
                item = None if kind == "DELETED" else self._convert(obj)
                self._set(name, item, deleted=kind == "DELETED")
        with self._lock:
            self._rv = resource_version
        return resource_version

    def _set(self, name: str, item: V | None, deleted: bool) -> None:
        with self._lock:
            before = self._items.pop(name, None)
            newly_left_out = item is None and not deleted and name not in self._left_out
            if item is not None:
                self._items[name] = item
            if newly_left_out:
                self._left_out.add(name)
            elif item is not None or deleted:
                self._left_out.discard(name)
        if newly_left_out:
            self._left_out_log(name)
        if before != item:
            self._log_differences({name: before} if before else {}, {name: item} if item else {})
            self._wake.set()


class NodeCache(ListWatch[NodeTarget]):
    """The targets of the selected Nodes (all of them, or those --node-selector picks)."""

    kind = "Node"
    usable = "with a usable address"
    selector_setting = config.NODE_SELECTOR

    def __init__(self, api: Any, settings: DiscoverSettings, stop: threading.Event, watches: Watches,
                 wake: threading.Event) -> None:
        super().__init__(api, settings, stop, watches, wake, selector=settings.node_selector)

    def _list(self, **kwargs: Any) -> Any:
        return self._api.list_node(**kwargs)

    def _convert(self, obj: Mapping[str, Any]) -> NodeTarget | None:
        return node_target(obj, self._settings.address_types, self._settings.rack_label)

    def _left_out_log(self, name: str) -> None:
        log.info("Node %s has no address of type %s yet; leaving it out until it has one",
                 name, " or ".join(self._settings.address_types))

    def _log_differences(self, before: Mapping[str, NodeTarget], after: Mapping[str, NodeTarget]) -> None:
        for name in sorted(before.keys() | after.keys()):
            old, new = before.get(name), after.get(name)
            if old == new:
                continue
            if new is None:
                log.info("Node %s left the target list", name)
            else:
                place = "".join(f" in {what} {value}" for what, value in (("zone", new.zone), ("rack", new.rack))
                                if value)
                log.info("Node %s %s: %s%s", name, "joined" if old is None else "now", new.address, place)


class PodCache(ListWatch[ProberPod]):
    """The running pod-network prober pods: those --pod-selector picks in discover's own namespace
    only (a namespaced list and watch, which a namespaced Role allows)."""

    kind = "Pod"
    usable = "running with an IP"
    selector_setting = config.POD_SELECTOR

    def __init__(self, api: Any, settings: DiscoverSettings, stop: threading.Event, watches: Watches,
                 wake: threading.Event) -> None:
        super().__init__(api, settings, stop, watches, wake, selector=settings.pod_selector)

    def _list(self, **kwargs: Any) -> Any:
        return self._api.list_namespaced_pod(self._settings.namespace, **kwargs)

    def _convert(self, obj: Mapping[str, Any]) -> ProberPod | None:
        return prober_pod(obj)

    def _left_out_log(self, name: str) -> None:
        # Every pod passes through Pending and Terminating: worth a line only when looking closely.
        log.debug("Pod %s is not (or no longer) a running prober with an IP; leaving it out", name)

    def _log_differences(self, before: Mapping[str, ProberPod], after: Mapping[str, ProberPod]) -> None:
        for name in sorted(before.keys() | after.keys()):
            old, new = before.get(name), after.get(name)
            if new is None:
                log.info("Pod %s left the pod list", name)
            elif old is None or old.addresses != new.addresses or old.node != new.node:
                log.info("Pod %s on node %s %s: %s", name, new.node, "joined" if old is None else "now",
                         ", ".join(new.addresses))
