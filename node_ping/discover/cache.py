"""The Node side of the discovery controller: one list + watch of the Nodes, kept as a cache of targets.

All Nodes of the cluster, or those the label selector picks (the nodes the exporter runs on). Nodes
stay plain JSON dicts (never client models) and live only until turned into targets, one list page
at a time, so memory follows the target count, not the size of Node objects. A watch that expires
(410 Gone) leads to a fresh list; a watch that ends or breaks resumes from the last resourceVersion
seen, so nothing is missed and nothing is listed twice without need.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node_ping.discover.config import DiscoverSettings
from node_ping.discover.nodes import node_name, node_target
from node_ping.discover.watch import Backoff, Watches, describe, http_status
from node_ping.targets import NodeTarget

log = logging.getLogger(__name__)

# What the API server answers a list whose label selector it cannot parse or accept.
_REFUSED = (400, 422)


class SelectorRefused(Exception):
    """The API server refused the Node label selector on the first list: a setting to fix, not an
    outage to wait out (every later list would be refused the same way)."""

    def __init__(self, selector: str, reason: str) -> None:
        super().__init__(f"the API server refuses the label selector {selector!r}: {reason}")
        self.selector = selector
        self.reason = reason


@dataclass(frozen=True)
class NodesSnapshot:
    synced: bool  # the first list is complete: before it, the targets are not the cluster's
    resource_version: str | None  # of the last list or watch event applied
    targets: tuple[NodeTarget, ...]


class NodeCache:
    """The targets of the selected Nodes, kept current by `run` (a thread of its own); `wake` is set
    whenever they change."""

    def __init__(self, api: Any, settings: DiscoverSettings, stop: threading.Event, watches: Watches,
                 wake: threading.Event) -> None:
        self._api = api  # kubernetes.client.CoreV1Api
        self._settings = settings
        self._stop = stop
        self._watches = watches
        self._wake = wake
        self.refused: SelectorRefused | None = None  # why `run` stopped the controller, if it did
        self._lock = threading.Lock()
        # Guarded by _lock:
        self._targets: dict[str, NodeTarget] = {}
        self._unaddressed: set[str] = set()  # nodes left out for want of an address, logged once each
        self._synced = False
        self._rv: str | None = None

    def snapshot(self) -> NodesSnapshot:
        with self._lock:
            return NodesSnapshot(self._synced, self._rv, tuple(self._targets.values()))

    def run(self) -> None:
        """List, then watch, until the stop Event is set; never raises (see `refused`)."""
        backoff = Backoff("watching Nodes", self._stop, initial=self._settings.backoff_initial_seconds,
                          cap=self._settings.backoff_max_seconds)
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list_nodes()
                    backoff.succeeded()
                # With a label selector, the API server reports a Node relabelled out of it as DELETED.
                for event in self._watches.stream(self._api.list_node, resource_version=resource_version,
                                                  label_selector=self._settings.node_selector):
                    backoff.succeeded()
                    resource_version = self._node_event(event)
                backoff.succeeded()
            except Exception as err:  # the loop must outlive anything the API does
                if self._stop.is_set():
                    break
                if self._refuses_selector(err):
                    break
                if http_status(err) == 410 and resource_version is not None:
                    # The server no longer has history that old: only a fresh list is complete.
                    log.info("Node watch expired at resourceVersion %s; listing all Nodes again", resource_version)
                    resource_version = None
                    continue
                backoff.failed(err)  # then resume the watch from where it broke

    def _refuses_selector(self, err: BaseException) -> bool:
        """True, and the controller stopping, if `err` refuses the selector before any list worked.

        Later a 400 is retried like any failure: the selector worked, so something else is wrong.
        """
        selector = self._settings.node_selector
        with self._lock:
            first = not self._synced
        if not (first and selector and http_status(err) in _REFUSED):
            return False
        self.refused = SelectorRefused(selector, describe(err))
        self._stop.set()
        self._wake.set()
        return True

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
            first = not self._synced
            before = self._targets
            newly_unaddressed = unaddressed - self._unaddressed
            self._targets = targets
            self._unaddressed = unaddressed
            self._synced = True
            self._rv = resource_version
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
            self._rv = resource_version
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

