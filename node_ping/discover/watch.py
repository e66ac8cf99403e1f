"""Talking to the API server without dying of it: watches kept as raw JSON, stoppable from another
thread, retry pacing with backoff, and API failures told in a line a reader can act on (the status
and the server's sentence come from `node_ping.kube`, shared with diagnose --publish-events)."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from node_ping.kube import http_status, server_message

# http_status too: cache and controller import it from here.
__all__ = ["ApiTrouble", "Backoff", "RawWatch", "ShortWatch", "Watches", "describe", "http_status"]

log = logging.getLogger(__name__)

# A watch that ends sooner than this without a single event is treated as a failure (as client-go
# does), so a proxy that closes every watch at once gets backoff rather than a tight loop.
_SHORT_WATCH_SECONDS = 1.0
# How far past the server's own end of a watch the client waits for data: a dead connection.
_WATCH_READ_SLACK_SECONDS = 30


class ApiTrouble(Exception):
    """A failure of the API server's or the network's making, not a bug: logged without a traceback."""


class ShortWatch(ConnectionError):
    """The server ended a watch at once without sending anything."""


def describe(err: BaseException) -> str:
    """A short, log-friendly account of an API failure: the status and the API server's own sentence.

    For a 403 that sentence names the missing permission ("... cannot watch resource "nodes" ..."),
    which is what a reader needs to fix the RBAC. Not `node_ping.kube.describe`: an ERROR event of a
    watch may carry no code (a Status omits a zero one), and its ApiException without a status still
    reads "HTTP None <reason>" here, on one line, where that one would print the exception whole.
    """
    if isinstance(err, ApiException):
        text = f"HTTP {err.status} {err.reason or ''}".strip()
        message = server_message(err)
        return f"{text}: {message}" if message else text
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


class Watches:
    """The open watches of one controller: each one ended by the server after `timeout_seconds`, and
    all of them stoppable at once from another thread."""

    def __init__(self, stop: threading.Event, timeout_seconds: int, connect_timeout: float) -> None:
        self._stop = stop
        self._timeout_seconds = timeout_seconds
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._open: set[RawWatch] = set()

    def stream(self, func: Callable[..., Any], **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Watch events of `func`; ShortWatch if the server ends the watch at once without any."""
        if self._stop.is_set():
            return
        stream = RawWatch()
        with self._lock:
            self._open.add(stream)
        try:
            timeout = self._timeout_seconds
            started = time.monotonic()
            events = 0
            for event in stream.events(func, timeout_seconds=timeout, allow_watch_bookmarks=True,
                                       _request_timeout=(self._connect_timeout, timeout + _WATCH_READ_SLACK_SECONDS),
                                       **kwargs):
                events += 1
                yield event
            if not events and time.monotonic() - started < _SHORT_WATCH_SECONDS and not self._stop.is_set():
                raise ShortWatch("the API server ended the watch at once without an event")
        finally:
            with self._lock:
                self._open.discard(stream)

    def stop_all(self) -> None:
        """Stop every watch open now (a watch still being opened has no socket yet: call again)."""
        with self._lock:
            watches = list(self._open)
        for open_watch in watches:
            open_watch.stop()


class Backoff:
    """Retry pacing and logging for one loop: one warning when it starts failing, one line when it works again."""

    def __init__(self, what: str, stop: threading.Event, *, initial: float, cap: float) -> None:
        self.what = what
        self.initial = initial
        self.cap = cap
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
                                  | ApiTrouble)
            log.warning("%s failed: %s; retrying with backoff (at most %gs apart), quietly until it works again",
                        self.what, describe(err), self.cap, exc_info=not expected)
        else:
            log.debug("%s failed again (%d in a row): %s", self.what, self.failures, describe(err))
        self.stop.wait(self.delay())

    def succeeded(self) -> None:
        if self.failures:
            log.info("%s works again after %d failed attempts", self.what, self.failures)
            self.failures = 0
