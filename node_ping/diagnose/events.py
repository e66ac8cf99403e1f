"""Verdicts as Kubernetes Events on the Nodes they blame, where `kubectl describe node` and event
exporters show them, one Event per fault for as long as it lasts.

An Event is made as the kubelet makes its Node events, so kubectl finds it the same way: kubectl
lists the events of every namespace whose involvedObject is kind Node, name and uid the node's name
(the kubelet's convention: a Node reference carries its name as uid) and namespace empty
(kubectl's `searchEvents`, pkg/describe/describe.go). The API server takes such an Event only in
the namespace `default` (or none): core/v1 validation refuses it anywhere else ("does not match
event.namespace"); that is where the kubelet's are too.

Least privilege: only create and patch on events, no get, list or watch. So an Event's name is a
function of its fault (kind, node and, for a pair, the peer), and what the API server holds is
learnt from the answers:
  - a fault seen again in the next diagnosis: patch count, lastTimestamp and message;
  - a fault new to this process: create; 409 AlreadyExists (an Event of an earlier process, or of an
    earlier spell of the fault) is patched, continued if it was last seen recently, else begun anew
    (count 1, a new firstTimestamp);
  - a patch answered 404 (the Event expired or was deleted): created again.
A fault absent from a diagnosis has ended: nothing is sent, its Event ages out by the API server's
event TTL (1 h by default). A failed diagnosis changes nothing here.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from node_ping import kube
from node_ping.diagnose.verdicts import Verdict

log = logging.getLogger(__name__)

NAMESPACE = "default"
"""The only namespace the API server takes an Event about a Node in (see the module docstring)."""
REASON_PREFIX = "NodePing"
COMPONENT = "node-ping"
"""source.component and reportingComponent: kubectl describe shows it in the From column."""
LABELS = {"app.kubernetes.io/name": "node-ping", "app.kubernetes.io/component": "diagnose"}

MAX_MESSAGE_BYTES = 1024
"""events.k8s.io's limit on a note (counted in bytes, as Go counts a string); core/v1 has none, but
an exporter that forwards to the newer API would cut or refuse a longer one."""
MAX_REASON_CHARS = 128
MAX_INSTANCE_CHARS = 128
MAX_NAME_CHARS = 253
"""An Event's name is a DNS subdomain of at most 253 characters; node names may be that long too."""
_DIGEST_CHARS = 16

REQUEST_TIMEOUT_S = (5.0, 15.0)
"""(connect, read) of every call: a hung API server costs a loop this much, never more per call."""

_NOT_NAME = re.compile(r"[^a-z0-9.-]+")


@dataclass(frozen=True)
class Fault:
    """One fault on one node: what keeps its Event the same while it lasts."""

    kind: str
    node: str
    peers: tuple[str, ...] = ()  # the other node, for a verdict about a pair (a link)

    @property
    def reason(self) -> str:
        """NodePing + the kind in CamelCase: node-isolated -> NodePingNodeIsolated, link -> NodePingLink."""
        words = re.split(r"[^A-Za-z0-9]+", self.kind)
        return (REASON_PREFIX + "".join(word[:1].upper() + word[1:] for word in words))[:MAX_REASON_CHARS]

    @property
    def event_name(self) -> str:
        """`<node>.node-ping-<hash of the fault>`: a valid name of at most 253 characters, the same
        for the same fault in every process. The node's name is cut (and its odd characters
        replaced) when it must be; the hash keeps faults apart."""
        digest = hashlib.sha256("\0".join((self.kind, self.node, *self.peers)).encode()).hexdigest()[:_DIGEST_CHARS]
        suffix = f".{COMPONENT}-{digest}"
        prefix = _NOT_NAME.sub("-", self.node.lower())[:MAX_NAME_CHARS - len(suffix)]
        # Every label must start and end with a letter or digit.
        prefix = ".".join(label.strip("-") for label in prefix.split(".") if label.strip("-"))
        return f"{prefix}{suffix}" if prefix else suffix[1:]


def faults(verdict: Verdict) -> list[Fault]:
    """The faults of one verdict: one per node it blames, a pair's naming the other node."""
    if len(verdict.nodes) == 2:  # a pair: a link's two ends
        a, b = verdict.nodes
        return [Fault(verdict.kind, a, (b,)), Fault(verdict.kind, b, (a,))]
    return [Fault(verdict.kind, node) for node in verdict.nodes]


def too_broad(verdict: Verdict, cluster_nodes: int) -> bool:
    """A verdict about the cluster, not about the nodes it lists: a cluster-wide kind, or one that
    blames more than two nodes and more than half of the cluster. Published on no Node (an Event on
    every Node says nothing `kubectl describe node` can help with); logged instead."""
    blamed = len(verdict.nodes)
    return verdict.kind.endswith("cluster-wide") or (blamed > 2 and blamed > cluster_nodes / 2)


def truncate(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`message` in at most `limit` UTF-8 bytes, cut at a character and marked with an ellipsis."""
    data = message.encode()
    if len(data) <= limit:
        return message
    return data[:limit - len("…".encode())].decode(errors="ignore") + "…"


def timestamp(at: float) -> datetime:
    """An Event's time: whole seconds (metav1.Time), UTC."""
    return datetime.fromtimestamp(int(at), UTC)


@dataclass
class _Published:
    """What the API server holds of one fault's Event, as far as its answers said."""

    count: int
    first: datetime


class _Abort(Exception):
    """The API server cannot take Events now (unreachable, 5xx, 403): the rest of the loop waits."""


class Publisher:
    """Publishes each diagnosis's faults (see the module docstring). `continue_within_s`: an existing
    Event last seen this recently continues (a restart of node-ping); older ones begin anew."""

    def __init__(self, api: Any, continue_within_s: float, namespace: str = NAMESPACE,
                 instance: str | None = None) -> None:
        self._api = api
        self._namespace = namespace
        self._instance = (instance or socket.gethostname())[:MAX_INSTANCE_CHARS]
        self._continue_within_s = continue_within_s
        self._active: dict[Fault, _Published] = {}
        self._ended: dict[Fault, float] = {}  # fault -> when it was last seen, while that is recent
        self._broad: set[str] = set()  # kinds of verdicts published on no node, logged when they appear

    def publish(self, verdicts: Sequence[Verdict], cluster_nodes: int, at: float,
                stop: threading.Event | None = None) -> int:
        """Publish one successful diagnosis made at unix time `at`; the number of Events written."""
        current: dict[Fault, str] = {}
        broad: set[str] = set()
        for verdict in verdicts:
            if not verdict.is_fault:
                continue
            if too_broad(verdict, cluster_nodes):
                broad.add(verdict.kind)
                if verdict.kind not in self._broad:  # its numbers change from loop to loop: once per spell
                    log.warning("not published on Nodes (about the cluster, not %d nodes): [%s] %s",
                                len(verdict.nodes), verdict.kind, verdict.message)
                continue
            for fault in faults(verdict):
                current.setdefault(fault, truncate(verdict.message))
        self._broad = broad
        for fault in [fault for fault in self._active if fault not in current]:
            del self._active[fault]
            self._ended[fault] = at
            log.info("fault over: %s on node %s", fault.reason, fault.node)
        self._ended = {fault: seen for fault, seen in self._ended.items() if at - seen <= self._continue_within_s}
        written = 0
        try:
            for fault, message in current.items():
                if stop is not None and stop.is_set():
                    break
                written += self._one(fault, message, timestamp(at))
        except _Abort as err:
            log.error("cannot write Events now, %d of %d left for the next loop: %s",
                      len(current) - written, len(current), err)
        for fault in self._active:
            self._ended.pop(fault, None)
        return written

    # -- one Event ---------------------------------------------------------------------------------

    def _one(self, fault: Fault, message: str, now: datetime) -> int:
        """Write `fault`'s Event; 1 if written, 0 if the API server refused this one Event."""
        known = self._active.get(fault)
        try:
            if known is not None:
                self._continue(fault, known, message, now)
            else:
                self._begin(fault, message, now)
        except Exception as err:
            status = kube.http_status(err)
            if status is None and not kube.no_answer(err):
                raise  # a bug, not the API server's doing: the loop logs it with its traceback
            if status is None or status == 403 or status >= 500:
                raise _Abort(kube.describe(err)) from None
            log.error("Event %s/%s (%s on node %s) refused: %s", self._namespace, fault.event_name, fault.reason,
                      fault.node, kube.describe(err))
            return 0
        return 1

    def _continue(self, fault: Fault, known: _Published, message: str, now: datetime) -> None:
        count = known.count + 1
        try:
            self._patch(fault, {"count": count, "lastTimestamp": now.isoformat(), "message": message})
        except Exception as err:
            if kube.http_status(err) != 404:
                raise
            self._create(fault, message, now, count, known.first)  # expired or deleted: made again
        known.count = count
        log.debug("%s on node %s goes on (x%d)", fault.reason, fault.node, count)

    def _begin(self, fault: Fault, message: str, now: datetime) -> None:
        try:
            self._create(fault, message, now, 1, now)
            published = _Published(1, now)
        except Exception as err:
            if kube.http_status(err) != 409:
                raise
            published = self._adopt(fault, message, now)
        self._active[fault] = published
        log.info("published Warning %s on node %s (x%d): %s", fault.reason, fault.node, published.count, message)

    def _adopt(self, fault: Fault, message: str, now: datetime) -> _Published:
        """The Event exists already: continue it if it was last seen recently by an earlier process,
        else begin it anew. What it holds is read from a patch's answer (no permission to get)."""
        if fault not in self._ended:
            stored = self._patch(fault, {"message": message})
            last = stored.last_timestamp
            if last is not None and stored.first_timestamp is not None and stored.count:
                age = (now - (last if last.tzinfo else last.replace(tzinfo=UTC))).total_seconds()
                if age <= self._continue_within_s:
                    count = int(stored.count) + 1
                    self._patch(fault, {"count": count, "lastTimestamp": now.isoformat()})
                    first = stored.first_timestamp
                    return _Published(count, first if first.tzinfo else first.replace(tzinfo=UTC))
        # Over and now back: the same Event, begun anew.
        self._patch(fault, self._fields(fault, message, now, 1, now))
        return _Published(1, now)

    # -- the API calls -----------------------------------------------------------------------------

    def _fields(self, fault: Fault, message: str, now: datetime, count: int, first: datetime) -> dict[str, Any]:
        """What a new spell of the fault sets in its Event (JSON names), all but what never changes."""
        return {
            "reason": fault.reason, "message": message, "type": "Warning", "count": count,
            "firstTimestamp": first.isoformat(), "lastTimestamp": now.isoformat(),
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
        }

    def _create(self, fault: Fault, message: str, now: datetime, count: int, first: datetime) -> None:
        from kubernetes import client  # noqa: PLC0415  (only with --publish-events: see node_ping.kube)

        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=fault.event_name, namespace=self._namespace, labels=dict(LABELS)),
            involved_object=client.V1ObjectReference(kind="Node", name=fault.node, uid=fault.node, namespace=""),
            reason=fault.reason, message=message, type="Warning", count=count, first_timestamp=first,
            last_timestamp=now, source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT, reporting_instance=self._instance)
        self._api.create_namespaced_event(self._namespace, body, _request_timeout=REQUEST_TIMEOUT_S)

    def _patch(self, fault: Fault, patch: dict[str, Any]) -> Any:
        # A dict goes as a strategic merge patch, as the kubelet's event recorder sends its own.
        return self._api.patch_namespaced_event(fault.event_name, self._namespace, patch,
                                                _request_timeout=REQUEST_TIMEOUT_S)
