"""A stand-in for the Kubernetes API server, for tests: Nodes, ConfigMaps and Pods over real HTTP on 127.0.0.1.

The real API server cannot run on the test machine, so this stand-in speaks just enough of the REST
API for the real `kubernetes` client to use it unchanged, with the behaviour a controller has to survive:
  - one resourceVersion counter for every change, as etcd keeps it;
  - list (with limit/continue pages; a continue token goes stale, 410, once anything changed);
  - watch (?watch=1): chunked JSON lines ADDED/MODIFIED/DELETED/BOOKMARK, from a resourceVersion,
    or, without one, first the current objects as synthetic ADDED events; timeoutSeconds ends it;
    a resourceVersion older than the kept history (see `compact`) is answered the way real servers
    do it, an ERROR event with code 410 in a 200 stream, or (`expired_as_http`) a plain HTTP 410;
  - ConfigMaps: get, create (409 AlreadyExists), replace (409 Conflict on a stale resourceVersion),
    delete, and a watch filtered by fieldSelector=metadata.name=<name>;
  - Pods: list and watch, per namespace (/api/v1/namespaces/<ns>/pods) or across all of them
    (/api/v1/pods), changed by tests only (`put_pod`, `delete_pod`), as the kubelet and the
    DaemonSet controller would;
  - fieldSelector: `path=value`, `path==value` and `path!=value` requirements joined by commas, on
    metadata.name, metadata.namespace, spec.nodeName and status.phase (what the real server
    offers for Pods; it offers metadata.name and metadata.namespace for every kind);
  - labelSelector on lists and watches, only as key=value requirements joined by commas (the rest
    of the syntax is the real API server's to judge); anything else is answered as the API server
    answers a selector it cannot parse: HTTP 400 with a Status whose message gives the reason.
    Watches follow the API server's rule: an object whose labels move it out of the selection
    arrives as DELETED, one that moves in as ADDED;
  - core/v1 Events as a publisher with RBAC for create and patch only sees them: create (409
    AlreadyExists; 422 for a Node's Event outside the namespace default, as core/v1 validation
    answers), patch (merge and strategic merge patches, 404 NotFound), and HTTP 403 Forbidden for
    every other verb and for events.k8s.io; tests read them with `events()` and `node_events()`,
    the latter selecting as `kubectl describe node` does;
  - faults: every request answered with an error status, connections dropped or left hanging
    (`fault`), open watches cut (`drop_watches`), and another writer slipping in just before the
    next ConfigMap update (`edit_before_next_put`).
Every request is recorded in `requests` so tests can count, for instance, ConfigMap writes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]
_END, _CUT = -1, -2  # how a watch stream stops: an orderly end, or a cut connection


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    status: int  # 0: the connection was dropped without an answer


@dataclass(frozen=True)
class _Event:
    resource_version: int
    collection: str  # "nodes", "configmaps/<namespace>" or "pods/<namespace>"
    type: str
    object: Obj
    previous: Obj | None = None  # for MODIFIED, the object before: label-selected watches need it


FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase")
"""The fields a fieldSelector may name here."""


def in_collection(wanted: str, collection: str) -> bool:
    """Whether an object of `collection` ("pods/<ns>") is in what a request asks for: that
    collection, or "pods" for Pods in every namespace."""
    return wanted == collection or collection.startswith(f"{wanted}/")


def _field(obj: Obj, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


@dataclass(frozen=True)
class _Selector:
    """What one list or watch asks for: fieldSelector (FIELDS with =, == or !=) and labelSelector
    (only key=value requirements)."""

    fields: tuple[tuple[str, bool, str], ...] = ()  # (path, equal?, value)
    labels: tuple[tuple[str, str], ...] = ()  # (key, value): the label must be there with that value

    @classmethod
    def parse(cls, field_selector: str | None, label_selector: str | None) -> _Selector:
        """ValueError with the API server's kind of message for what this stand-in does not understand."""
        fields: list[tuple[str, bool, str]] = []
        text = (field_selector or "").strip()
        for part in text.split(",") if text else ():
            match = re.fullmatch(r"\s*([A-Za-z.]+)\s*(!=|==|=)\s*(\S*)\s*", part)
            if match is None or match[1] not in FIELDS:
                raise ValueError(f'"{part.strip()}" is not a known field selector: only '
                                 f'"{", ".join(FIELDS)}"')
            fields.append((match[1], match[2] != "!=", match[3]))
        requirements: list[tuple[str, str]] = []
        text = (label_selector or "").strip()
        for part in text.split(",") if text else ():
            match = re.fullmatch(r"\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*=\s*([-A-Za-z0-9_.]*)\s*", part)
            if match is None:
                raise ValueError(f"unable to parse requirement: {part.strip()!r} is not key=value")
            requirements.append((match[1], match[2]))
        return cls(tuple(fields), tuple(requirements))

    def matches(self, obj: Obj) -> bool:
        if not all((_field(obj, path) == value) is equal for path, equal, value in self.fields):
            return False
        labels = obj["metadata"].get("labels") or {}
        return all(key in labels and labels[key] == value for key, value in self.labels)

    def watch_event(self, event: _Event) -> Obj | None:
        """`event` as a watch with this selector receives it, or None if it does not."""
        now = self.matches(event.object)
        before = event.previous is not None and self.matches(event.previous)
        if event.type != "MODIFIED" or now == before:
            return {"type": event.type, "object": copy.deepcopy(event.object)} if now else None
        if now:
            return {"type": "ADDED", "object": copy.deepcopy(event.object)}
        assert event.previous is not None
        gone = copy.deepcopy(event.previous)  # the object as last selected, at the change's resourceVersion
        gone["metadata"]["resourceVersion"] = event.object["metadata"]["resourceVersion"]
        return {"type": "DELETED", "object": gone}


def make_node(name: str, internal_ip: str | None = None, external_ip: str | None = None, *,
              zone: str | None = None, ready: bool = True, hostname: bool = True,
              addresses: list[tuple[str, str]] | None = None, labels: dict[str, str] | None = None) -> Obj:
    """A Node object as an API server returns it (only the fields that matter here)."""
    listed = list(addresses or [])
    if internal_ip:
        listed.append(("InternalIP", internal_ip))
    if external_ip:
        listed.append(("ExternalIP", external_ip))
    if hostname:
        listed.append(("Hostname", name))
    node_labels = {"kubernetes.io/hostname": name, **(labels or {})}
    if zone is not None:
        node_labels["topology.kubernetes.io/zone"] = zone
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": node_labels},
        "spec": {},
        "status": {
            "addresses": [{"type": kind, "address": address} for kind, address in listed],
            "conditions": [{"type": "Ready", "status": "True" if ready else "Unknown",
                            "reason": "KubeletReady" if ready else "NodeStatusUnknown"}],
        },
    }


def make_pod(name: str, node: str | None, ip: str | None, *, namespace: str = "monitoring",
             labels: dict[str, str] | None = None, phase: str = "Running", ready: bool = True,
             ips: list[str] | None = None, created: str = "2024-01-01T00:00:00Z", deleting: bool = False) -> Obj:
    """A Pod object as an API server returns it (only the fields that matter here): scheduled on
    `node` (None: not yet), with `ip` as status.podIP and `ips` (default: [ip]) as status.podIPs."""
    metadata: Obj = {"name": name, "namespace": namespace, "labels": dict(labels or {}),
                     "creationTimestamp": created}
    if deleting:
        metadata["deletionTimestamp"] = "2024-01-02T00:00:00Z"
    status: Obj = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": each} for each in (ips or [ip])]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"nodeName": node} if node else {}, "status": status}


def _status(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class FakeKubeAPI:
    """The fake API server. Use as a context manager; `url` is what a client's `host` should be."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rv = 1
        self._nodes: dict[str, Obj] = {}
        self._configmaps: dict[tuple[str, str], Obj] = {}
        self._pods: dict[tuple[str, str], Obj] = {}
        self._history: list[_Event] = []
        self._kube_events: dict[tuple[str, str], Obj] = {}  # core/v1 Events, kept out of the watch history
        self._compacted = 0  # watches from a resourceVersion older than this get 410
        self._closing = False
        self._fault: str | int | None = None  # None, an HTTP status, "drop" or "hang"
        self._before_put: Callable[[], None] | None = None
        self._fail_next: dict[tuple[str, str], tuple[int, int, str]] = {}  # (method, path) -> (status, times, message)
        self._connections: set[socket.socket] = set()
        self._watch_connections: set[socket.socket] = set()
        self._latest: dict[str, int] = {}  # per collection, the resourceVersion of its last change
        self.expired_as_http = False
        self.expired_answers = 0  # watches told 410 Gone, either way
        self.watches_end_at_once = False  # like a misbehaving proxy: every watch ends right after it starts
        self.requests: list[Request] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.api = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-kube-api", daemon=True)

    # -- life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> FakeKubeAPI:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._server.shutdown()
        self._shut(set(self._connections))
        self._server.server_close()  # joins every handler thread
        self._thread.join()

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    # -- the cluster, as seen and changed by everyone else ---------------------------------------

    @property
    def resource_version(self) -> str:
        with self._cond:
            return str(self._rv)

    def latest_node_change(self) -> int:
        """The resourceVersion of the last change to any Node."""
        with self._cond:
            return self._latest.get("nodes", 0)

    def put_node(self, node: Obj) -> None:
        """Add a Node or change it (as the kubelet does when it reports status)."""
        name = node["metadata"]["name"]
        with self._cond:
            self._store("nodes", self._nodes, name, copy.deepcopy(node))

    def load_nodes(self, nodes: list[Obj]) -> None:
        """Add many Nodes at once, kept as given (no copies, no watch history), for large-cluster tests.

        The objects may share their bulky parts (images, managedFields): the server then stays small
        while every client still receives and parses each Node in full. Don't change them afterwards.
        """
        with self._cond:
            for node in nodes:
                node["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp="2024-01-01T00:00:00Z",
                                        resourceVersion=str(self._next_rv()))
                self._nodes[node["metadata"]["name"]] = node
            self._compacted = self._rv  # as if the history before now were long compacted away
            self._latest["nodes"] = self._rv
            self._cond.notify_all()

    def delete_node(self, name: str) -> None:
        with self._cond:
            self._remove("nodes", self._nodes, name)

    def node_names(self) -> list[str]:
        with self._cond:
            return sorted(self._nodes)

    def put_pod(self, pod: Obj) -> None:
        """Add a Pod or change it (as the scheduler, the kubelet and the DaemonSet controller do)."""
        metadata = pod["metadata"]
        key = (metadata["namespace"], metadata["name"])
        with self._cond:
            self._store(f"pods/{key[0]}", self._pods, key, copy.deepcopy(pod))

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._cond:
            self._remove(f"pods/{namespace}", self._pods, (namespace, name))

    def latest_pod_change(self, namespace: str) -> int:
        """The resourceVersion of the last change to any Pod of `namespace`."""
        with self._cond:
            return self._latest.get(f"pods/{namespace}", 0)

    def configmap(self, namespace: str, name: str) -> Obj | None:
        with self._cond:
            found = self._configmaps.get((namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def put_configmap(self, configmap: Obj) -> None:
        """Create or overwrite a ConfigMap regardless of its resourceVersion, like someone's `kubectl apply`."""
        metadata = configmap["metadata"]
        key = (metadata["namespace"], metadata["name"])
        with self._cond:
            self._store(f"configmaps/{key[0]}", self._configmaps, key, copy.deepcopy(configmap))

    def delete_configmap(self, namespace: str, name: str) -> None:
        with self._cond:
            self._remove(f"configmaps/{namespace}", self._configmaps, (namespace, name))

    def events(self, namespace: str | None = None) -> list[Obj]:
        """The core/v1 Events stored, of `namespace` or of all, by namespace and name."""
        with self._cond:
            return [copy.deepcopy(event) for key, event in sorted(self._kube_events.items())
                    if namespace is None or key[0] == namespace]

    def node_events(self, node: str) -> list[Obj]:
        """The Events `kubectl describe node <node>` shows: of every namespace, with the field selector
        kubectl's searchEvents builds from the kubelet's Node reference (kind Node, name and uid the
        node's name, namespace empty)."""
        wanted = {"kind": "Node", "name": node, "uid": node, "namespace": ""}
        return [event for event in self.events()
                if all((event.get("involvedObject") or {}).get(key, "") == value for key, value in wanted.items())]

    def delete_event(self, namespace: str, name: str) -> None:
        """Remove an Event, as the API server does when its TTL (1 h by default) runs out."""
        with self._cond:
            self._kube_events.pop((namespace, name), None)

    def compact(self) -> None:
        """Forget the change history, like etcd compaction: watches from an older resourceVersion get 410."""
        with self._cond:
            self._history.clear()
            self._compacted = self._rv
            self._cond.notify_all()

    # -- faults --------------------------------------------------------------------------------

    def fault(self, kind: str | int | None) -> None:
        """Answer every request with HTTP `kind`, or "drop" the connection, or "hang"; None heals.

        Starting a fault also cuts the open watches, as a restarting API server does.
        """
        with self._cond:
            self._fault = kind
            self._cond.notify_all()
        if kind is not None:
            self.drop_watches()

    @contextmanager
    def outage(self, kind: str | int) -> Iterator[None]:
        self.fault(kind)
        try:
            yield
        finally:
            self.fault(None)

    def fail_next(self, method: str, path: str, status: int, times: int = 1,
                  message: str = "fake failure of one request") -> None:
        """Answer the next `times` requests `method path` (watches aside) with HTTP `status` and `message`."""
        with self._cond:
            self._fail_next[(method, path)] = (status, times, message)

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream."""
        with self._cond:
            connections = set(self._watch_connections)
            self._watch_connections.clear()  # tells their handlers to give up
            self._cond.notify_all()
        self._shut(connections)

    def edit_before_next_put(self, edit: Callable[[FakeKubeAPI], None]) -> None:
        """Run `edit(self)` just before the next ConfigMap update is applied, as a concurrent writer would."""
        with self._cond:
            self._before_put = lambda: edit(self)

    def count(self, method: str, path: str, status: int | None = None, watch: bool | None = None) -> int:
        with self._cond:
            return sum(1 for r in self.requests
                       if r.method == method and r.path == path and (status is None or r.status == status)
                       and (watch is None or (r.query.get("watch") in ("1", "true")) == watch))

    # -- internals (called with self._cond held) -------------------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _store(self, collection: str, objects: dict[Any, Obj], key: Any, obj: Obj) -> Obj:
        metadata = obj.setdefault("metadata", {})
        existing = objects.get(key)
        metadata["uid"] = existing["metadata"]["uid"] if existing else str(uuid.uuid4())
        # A new object keeps a creationTimestamp a test gave it (make_pod's), so "the newest" is up to the test.
        metadata["creationTimestamp"] = (existing["metadata"]["creationTimestamp"] if existing
                                         else metadata.get("creationTimestamp")
                                         or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        metadata["resourceVersion"] = str(self._next_rv())
        objects[key] = obj
        # `existing` is out of the store now, and stored objects are never changed in place.
        self._record(collection, "MODIFIED" if existing else "ADDED", obj, previous=existing)
        return obj

    def _remove(self, collection: str, objects: dict[Any, Obj], key: Any) -> Obj | None:
        obj = objects.pop(key, None)
        if obj is not None:
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._next_rv())
            self._record(collection, "DELETED", obj)
        return obj

    def _record(self, collection: str, kind: str, obj: Obj, previous: Obj | None = None) -> None:
        self._history.append(_Event(self._rv, collection, kind, copy.deepcopy(obj), previous))
        self._latest[collection] = self._rv
        self._cond.notify_all()

    @staticmethod
    def _shut(connections: set[socket.socket]) -> None:
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the other side
                connection.shutdown(socket.SHUT_RDWR)


def _kind(collection: str) -> str:
    return {"nodes": "Node", "pods": "Pod"}.get(collection.split("/", maxsplit=1)[0], "ConfigMap")


_EVENTS_PATH = re.compile(r"/api/v1/(?:namespaces/(?P<ns>[^/]+)/)?events(?:/(?P<name>[^/]+))?"
                          r"|/apis/events\.k8s\.io/[^/]+/(?:namespaces/[^/]+/)?events(?:/[^/]+)?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PATCH_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")


def _merge(target: Obj, patch: Obj) -> Obj:
    """RFC 7386 merge patch (which a strategic merge patch of an Event's plain fields amounts to)."""
    merged = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _event_invalid(namespace: str, event: Obj) -> str | None:
    """What core/v1 validation says of an Event without eventTime in `namespace`, or None: its
    involvedObject's namespace must be the Event's, and one without (a Node's) goes in default."""
    involved = (event.get("involvedObject") or {}).get("namespace") or ""
    if involved != namespace and not (involved == "" and namespace == "default"):
        name = event["metadata"].get("name")
        return f'Event "{name}" is invalid: involvedObject.namespace: Invalid value: "{involved}": does not match ' \
               "event.namespace"
    return None


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(), so a test leaves none behind.
    daemon_threads = False
    block_on_close = True
    api: FakeKubeAPI


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked watches, like the real API server
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test output stays readable; `api.requests` has the record

    def setup(self) -> None:
        super().setup()
        with self.server.api._cond:
            self.server.api._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.api._cond:
            self.server.api._connections.discard(self.connection)
            self.server.api._watch_connections.discard(self.connection)
        with contextlib.suppress(OSError):  # the connection was cut on purpose
            super().finish()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def api(self) -> FakeKubeAPI:
        return self.server.api

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self._method, self._path, self._query = method, url.path, query
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if self._injected_failure():
            return
        parts = url.path.strip("/").split("/")
        try:
            if parts == ["api", "v1", "nodes"] and method == "GET":
                self._collection("nodes")
            elif parts == ["api", "v1", "pods"] and method == "GET":
                self._collection("pods")
            elif len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods" \
                    and method == "GET":
                self._collection(f"pods/{parts[3]}")
            elif len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "configmaps":
                if method == "GET":
                    self._collection(f"configmaps/{parts[3]}")
                elif method == "POST":
                    self._create_configmap(parts[3], body or {})
                else:
                    self._send(405, _status(405, "MethodNotAllowed", method))
            elif len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "configmaps":
                self._configmap(parts[3], parts[5], body)
            elif _EVENTS_PATH.fullmatch(url.path):
                self._kube_event(url.path, body)
            else:
                self._send(404, _status(404, "NotFound", f"no route {url.path}"))
        except OSError:
            self.close_connection = True  # the client went away (or a test cut the connection)

    def _injected_failure(self) -> bool:
        """Answer (or not) as the current fault says; True if the request is dealt with."""
        api = self.api
        with api._cond:
            fault = api._fault
        if fault in ("drop", "hang"):
            self._log(0)
            if fault == "hang":
                with api._cond:
                    api._cond.wait_for(lambda: api._fault != "hang" or api._closing)
            self.close_connection = True
            FakeKubeAPI._shut({self.connection})
            return True
        if isinstance(fault, int):
            self._send(fault, _status(fault, "InternalError", "fake outage"))
            return True
        if self._query.get("watch") in ("1", "true"):
            return False
        key = (self._method, self._path)
        with api._cond:
            status, times, message = api._fail_next.pop(key, (0, 0, ""))
            if times > 1:
                api._fail_next[key] = (status, times - 1, message)
        if times:
            self._send(status, _status(status, HTTPStatus(status).phrase.replace(" ", ""), message))
        return bool(times)

    def _log(self, status: int) -> None:
        with self.api._cond:
            self.api.requests.append(Request(self._method, self._path, self._query, status))

    def _send(self, code: int, obj: Obj | bytes) -> None:
        self._log(code)
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # -- collections: list and watch -----------------------------------------------------------

    def _objects(self, collection: str, selector: _Selector) -> list[Obj]:
        if collection == "nodes":
            objects = list(self.api._nodes.values())
        elif collection.startswith("pods"):
            objects = [o for (ns, _), o in self.api._pods.items() if in_collection(collection, f"pods/{ns}")]
        else:
            namespace = collection.split("/", 1)[1]
            objects = [o for (ns, _), o in self.api._configmaps.items() if ns == namespace]
        return sorted((o for o in objects if selector.matches(o)), key=lambda o: o["metadata"]["name"])

    def _collection(self, collection: str) -> None:
        try:
            selector = _Selector.parse(self._query.get("fieldSelector"), self._query.get("labelSelector"))
        except ValueError as err:
            self._send(400, _status(400, "BadRequest", str(err)))
            return
        if self._query.get("watch") in ("1", "true"):
            self._watch(collection, selector)
            return
        kind = f"{_kind(collection)}List"
        with self.api._cond:
            objects = self._objects(collection, selector)
            rv = self.api._rv
            start = 0
            token = self._query.get("continue")
            if token:
                token_rv, _, offset = token.partition(":")
                if int(token_rv) != rv:  # a real server keeps the snapshot a while; this one not at all
                    self._send(410, _status(410, "Expired", "continue token expired"))
                    return
                start = int(offset)
            limit = int(self._query.get("limit") or 0) or len(objects)
            metadata: Obj = {"resourceVersion": str(rv)}
            if start + limit < len(objects):
                metadata["continue"] = f"{rv}:{start + limit}"
            # Encoded under the lock instead of copied: as cheap as it gets for a page of big Nodes.
            body = json.dumps({"kind": kind, "apiVersion": "v1", "metadata": metadata,
                               "items": objects[start:start + limit]}).encode()
        self._send(200, body)

    def _watch(self, collection: str, selector: _Selector) -> None:
        begun = self._watch_start(collection, selector)
        if begun is None:
            return  # answered with a plain HTTP 410
        pending, since = begun
        deadline = time.monotonic() + float(self._query.get("timeoutSeconds") or 1800)
        bookmarks = self._query.get("allowWatchBookmarks") in ("1", "true")
        self._log(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.api.watches_end_at_once:
            since = _END
        while True:
            for event in pending:
                self._chunk(json.dumps(event).encode() + b"\n")
            if since == _END:
                break
            pending, since = self._watch_wait(collection, selector, since, deadline, bookmarks)
            if since == _CUT:
                self.close_connection = True
                return  # cut by drop_watches(): no orderly end of the stream
        self._chunk(b"")
        with self.api._cond:
            self.api._watch_connections.discard(self.connection)

    def _watch_start(self, collection: str, selector: _Selector) -> tuple[list[Obj], int] | None:
        """The first events of a watch and the resourceVersion it stands at; None if answered with HTTP 410."""
        api = self.api
        since_text = self._query.get("resourceVersion") or ""
        with api._cond:
            if since_text not in ("", "0") and int(since_text) < api._compacted:
                message = f"too old resource version: {since_text} ({api._compacted})"
                api.expired_answers += 1
                if api.expired_as_http:
                    self._send(410, _status(410, "Expired", message))
                    return None
                return [{"type": "ERROR", "object": _status(410, "Expired", message)}], _END
            api._watch_connections.add(self.connection)
            if since_text in ("", "0"):  # no resourceVersion: the current objects first, as ADDED
                current = self._objects(collection, selector)
                return [{"type": "ADDED", "object": copy.deepcopy(o)} for o in current], api._rv
            return [], int(since_text)

    def _watch_wait(self, collection: str, selector: _Selector, since: int, deadline: float,
                    bookmarks: bool) -> tuple[list[Obj], int]:
        """Wait for changes after `since`: (events, new resourceVersion), or _END / _CUT for how the stream ends."""
        api = self.api
        with api._cond:
            api._cond.wait_for(lambda: api._closing or api._rv > since or time.monotonic() >= deadline
                               or self.connection not in api._watch_connections,
                               timeout=max(0.0, deadline - time.monotonic()))
            if self.connection not in api._watch_connections:
                return [], _CUT
            if api._closing:
                return [], _END
            if time.monotonic() >= deadline:
                bookmark = {"type": "BOOKMARK", "object": {"kind": _kind(collection), "apiVersion": "v1",
                                                           "metadata": {"resourceVersion": str(since)}}}
                return [bookmark] if bookmarks else [], _END
            if since < api._compacted:  # history gone under an open watch: the server ends it with 410
                api.expired_answers += 1
                message = f"too old resource version: {since} ({api._compacted})"
                return [{"type": "ERROR", "object": _status(410, "Expired", message)}], _END
            seen = (selector.watch_event(e) for e in api._history
                    if e.resource_version > since and in_collection(collection, e.collection))
            return [event for event in seen if event is not None], api._rv

    # -- single ConfigMaps ---------------------------------------------------------------------

    def _create_configmap(self, namespace: str, body: Obj) -> None:
        name = (body.get("metadata") or {}).get("name")
        if not name:
            self._send(422, _status(422, "Invalid", "metadata.name: Required value"))
            return
        with self.api._cond:
            if (namespace, name) in self.api._configmaps:
                answer = 409, _status(409, "AlreadyExists", f'configmaps "{name}" already exists')
            else:
                body["metadata"]["namespace"] = namespace
                body.setdefault("apiVersion", "v1")
                body.setdefault("kind", "ConfigMap")
                stored = self.api._store(f"configmaps/{namespace}", self.api._configmaps, (namespace, name), body)
                answer = 201, copy.deepcopy(stored)
        self._send(*answer)

    def _configmap(self, namespace: str, name: str,
                   body: Obj | None) -> None:
        api = self.api
        key = (namespace, name)
        if self._method == "PUT":
            with api._cond:
                before_put, api._before_put = api._before_put, None
            if before_put is not None:
                before_put()
        missing = 404, _status(404, "NotFound", f'configmaps "{name}" not found')
        with api._cond:
            current = api._configmaps.get(key)
            if self._method == "GET":
                answer = (200, copy.deepcopy(current)) if current is not None else missing
            elif self._method == "DELETE":
                answer = (200, _status(200, "", "deleted")) if current is not None else missing
                api._remove(f"configmaps/{namespace}", api._configmaps, key)
            elif self._method == "PUT":
                metadata = (body or {}).get("metadata") or {}
                wanted_rv = metadata.get("resourceVersion")
                if current is None:
                    answer = missing
                elif metadata.get("name") != name:
                    answer = 400, _status(400, "BadRequest", "the name of the object does not match the URL")
                elif wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
                    answer = 409, _status(409, "Conflict", f'Operation cannot be fulfilled on configmaps "{name}": '
                                          "the object has been modified; please apply your changes to the latest "
                                          "version and try again")
                else:
                    assert body is not None
                    metadata["namespace"] = namespace
                    stored = api._store(f"configmaps/{namespace}", api._configmaps, key, body)
                    answer = 200, copy.deepcopy(stored)
            else:
                answer = 405, _status(405, "MethodNotAllowed", self._method)
        self._send(*answer)

    # -- core/v1 Events, with the RBAC of a publisher: create and patch in any namespace, nothing else --

    def _kube_event(self, path: str, body: Obj | None) -> None:
        match = _EVENTS_PATH.fullmatch(path)
        assert match is not None
        namespace, name = match["ns"], match["name"]
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(self._method)
        if self._method == "GET":
            verb = "get" if name else "watch" if self._query.get("watch") in ("1", "true") else "list"
        elif self._method == "DELETE":
            verb = "delete" if name else "deletecollection"
        allowed = path.startswith("/api/v1/namespaces/") and (verb, bool(name)) in (("create", False), ("patch", True))
        if not allowed:
            group = "events.k8s.io" if path.startswith("/apis/") else ""
            where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
            self._send(403, _status(403, "Forbidden", f'events is forbidden: User "system:serviceaccount:monitoring:'
                                    f'node-ping" cannot {verb} resource "events" in API group "{group}" {where}'))
        elif verb == "create":
            self._create_kube_event(namespace, body or {})
        else:
            self._patch_kube_event(namespace, name, body)

    def _create_kube_event(self, namespace: str, body: Obj) -> None:
        metadata = body.setdefault("metadata", {})
        name = metadata.get("name") or ""
        if metadata.get("namespace", namespace) != namespace:
            answer = 400, _status(400, "BadRequest", "the namespace of the provided object does not match the "
                                  "namespace sent on the request")
        elif not (len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name)):
            answer = 422, _status(422, "Invalid", f'Event "{name}" is invalid: metadata.name: Invalid value: '
                                  f'"{name}": a lowercase RFC 1123 subdomain of at most 253 characters')
        elif (invalid := _event_invalid(namespace, body)) is not None:
            answer = 422, _status(422, "Invalid", invalid)
        else:
            with self.api._cond:
                if (namespace, name) in self.api._kube_events:
                    answer = 409, _status(409, "AlreadyExists", f'events "{name}" already exists')
                else:
                    metadata.update(namespace=namespace, uid=str(uuid.uuid4()),
                                    resourceVersion=str(self.api._next_rv()),
                                    creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                    stored = {"apiVersion": "v1", "kind": "Event", **body}
                    self.api._kube_events[(namespace, name)] = stored
                    answer = 201, copy.deepcopy(stored)
        self._send(*answer)

    def _patch_kube_event(self, namespace: str, name: str, body: Obj | None) -> None:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type not in _PATCH_TYPES or not isinstance(body, dict):
            self._send(415, _status(415, "UnsupportedMediaType", f"the body of the request was in an unknown "
                                    f"format - accepted media types include: {', '.join(_PATCH_TYPES)}"))
            return
        with self.api._cond:
            current = self.api._kube_events.get((namespace, name))
            if current is None:
                answer = 404, _status(404, "NotFound", f'events "{name}" not found')
            else:
                patched = _merge(current, body)
                patched["metadata"].update(name=name, namespace=namespace, uid=current["metadata"]["uid"],
                                           resourceVersion=str(self.api._next_rv()))
                invalid = _event_invalid(namespace, patched)
                if invalid is not None:
                    answer = 422, _status(422, "Invalid", invalid)
                else:
                    self.api._kube_events[(namespace, name)] = patched
                    answer = 200, copy.deepcopy(patched)
        self._send(*answer)
