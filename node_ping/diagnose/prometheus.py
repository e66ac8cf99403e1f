"""Instant queries against Prometheus's HTTP API (or anything serving it under the URL), over httpx.

The headers the user gave (tokens, a Mimir tenant) go with every request; user:password@ in the URL
becomes HTTP basic authentication. Credentials never appear in any output: the URL is shown without
them, headers by name only. Redirects are reported, not followed, so credentials go only where the
URL points. Warnings in Prometheus's answers (a partial response from Thanos, say) are kept for the
user: the data may be incomplete.

--timeout is a deadline for the whole request (connect, headers, body): a watchdog shuts the
connection's socket when it passes, so a server that sends a byte now and then cannot hold
diagnose for longer. The answer is read as a stream, at most MAX_ANSWER_BYTES of it, and turned
into samples item by item: neither the whole body nor its whole JSON tree is ever held.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import re
import socket
import sys
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from node_ping import __version__
from node_ping.diagnose.address import Address, redact

Sample = tuple[dict[str, str], float]
"""One element of an instant vector: its labels and its value."""

_QUERY_PATH = "/api/v1/query"
_MAX_DETAIL = 500  # characters of an error or warning text Prometheus sent
# The largest answer is one sample per probed pair. 5,000 nodes in zone topology probe up to 336
# peers each (docs/scale.md): 1.68 million samples of about 225 bytes each with two 63-character
# node names ({"metric":{"destination_node":...,"source_node":...},"value":[1700000000.123,"..."]}),
# 378 MB. 512 MiB leaves a third again of that.
MAX_ANSWER_BYTES = 512 * 1024 * 1024
_MAX_VALUE_CHARS = 1024 * 1024  # one JSON value other than the result list: a sample, the warnings
_CHUNK_BYTES = 64 * 1024
_ERROR_BODY_BYTES = 4096  # of an error answer, enough for its reason
_TRACED = ("connection.connect_tcp.complete", "connection.start_tls.complete")


class PrometheusError(Exception):
    """Why Prometheus gave no usable answer; the message says what to check."""


class Prometheus:
    """Instant queries at given times; `warnings` collects what the answers warned of, each once."""

    def __init__(self, address: Address, timeout: float, headers: Mapping[str, str] | None = None) -> None:
        self._settings = (address, timeout, dict(headers or {}))
        sent = dict(headers or {})
        if address.basic_auth and any(name.lower() == "authorization" for name in sent):
            raise ValueError("basic authentication and an Authorization header both given")
        self.url = address.url
        self.timeout = timeout
        self.warnings: list[str] = []
        self._stream: Any = None  # the network stream last connected: the one a request in flight uses
        self._expired = False
        self._in_flight = False
        self._watch = threading.Lock()  # between a request ending and its watchdog firing
        # Names only, for messages about refused credentials.
        self._credentials = sorted({*sent, *(["Authorization"] if address.basic_auth else [])})
        self._client = httpx.Client(
            auth=httpx.BasicAuth(*address.basic_auth) if address.basic_auth else None,
            # identity: a compressed answer is expanded a chunk at a time, and one small chunk can
            # expand to hundreds of MB (a gzip bomb) before the size cap sees it.
            headers={"Accept": "application/json", "Accept-Encoding": "identity",
                     "User-Agent": f"node-ping/{__version__}", **sent},
            timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def fork(self) -> Prometheus:
        """Another client with the same address, deadline and headers, sharing these warnings: one
        per thread, for queries Prometheus answers side by side."""
        twin = Prometheus(*self._settings)
        twin.warnings = self.warnings
        return twin

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def query(self, promql: str, at: float) -> list[Sample]:
        """The instant vector of `promql` at unix time `at`, its NaN and infinite values left out."""
        self._expired = False
        watchdog = threading.Timer(self.timeout, self._expire)
        watchdog.daemon = True
        with self._watch:
            self._in_flight = True
        watchdog.start()
        try:
            with self._client.stream("GET", f"{self.url}{_QUERY_PATH}", params={"query": promql, "time": f"{at:.3f}"},
                                     extensions={"trace": self._trace}) as response:
                chunks = self._capped(response.iter_bytes(_CHUNK_BYTES))
                if not response.is_success:
                    raise PrometheusError(self._http_error(response, _head(chunks)))
                return self._vector(chunks)
        except PrometheusError:
            if self._expired:  # a body cut off by the watchdog reads as malformed
                raise PrometheusError(self._no_answer()) from None
            raise
        except httpx.TimeoutException:
            raise PrometheusError(self._no_answer()) from None
        except httpx.RemoteProtocolError as err:
            if self._expired:
                raise PrometheusError(self._no_answer()) from None
            raise PrometheusError(f"the server at {self.url} does not answer like an HTTP server "
                                  f"({type(err).__name__}); is --prometheus the right address?") from None
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            if self._expired:
                raise PrometheusError(self._no_answer()) from None
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: {_reason(err)}") from None
        finally:
            watchdog.cancel()
            with self._watch:  # a watchdog that fires late must not cut the next request's connection
                self._in_flight = False

    def _no_answer(self) -> str:
        return (f"cannot reach Prometheus at {self.url}: no answer within {self.timeout:g} s "
                "(raise --timeout, or check the address)")

    def _trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's trace hook: remember the connection's stream, for the watchdog to cut."""
        if event in _TRACED:
            self._stream = info.get("return_value")

    def _expire(self) -> None:
        """The request's deadline passed: shut its socket, which ends the read that waits on it."""
        with self._watch:
            if not self._in_flight:
                return
            self._expired = True
            sock = self._stream.get_extra_info("socket") if self._stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _capped(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        total = 0
        for chunk in chunks:
            total += len(chunk)
            if total > MAX_ANSWER_BYTES:
                raise PrometheusError(
                    f"Prometheus at {self.url} answered a query with more than {MAX_ANSWER_BYTES >> 20} MiB, more than "
                    "diagnose reads (5,000 nodes in zone topology need about 400 MiB). The answer holds one sample "
                    "per probed pair of nodes whatever --range, so a shorter --range does not help: check that "
                    "--prometheus points at Prometheus itself, or probe fewer pairs (chart value topology.mode: "
                    "zone).")
            yield chunk

    def _http_error(self, response: httpx.Response, body: bytes) -> str:
        try:
            detail = json.loads(body).get("error")
        except (ValueError, AttributeError):
            detail = None
        status, reason = response.status_code, response.reason_phrase
        if status in (401, 403):
            return self._refused(status, reason, detail or _first_line(body, _content_type(response)))
        if 300 <= status < 400:
            target = urllib.parse.urljoin(str(response.request.url), response.headers.get("Location", ""))
            return (f"the server at {self.url} redirects {_QUERY_PATH} to {redact(target).partition('?')[0]} "
                    f"(HTTP {status}); node-ping does not follow redirects, so that headers and credentials "
                    "go only where --prometheus points: give the address it redirects to as --prometheus "
                    "(if that is a login page, see --header and --bearer-token-file)")
        if detail:  # Prometheus itself, refusing the query
            return f"Prometheus at {self.url} rejected the query (HTTP {status}): {detail}"
        return (f"the server at {self.url} answered HTTP {status} {reason} to {_QUERY_PATH}: "
                "is --prometheus Prometheus's base URL (e.g. http://prometheus.monitoring:9090)?")

    def _refused(self, status: int, reason: str, detail: str | None) -> str:
        what = f"HTTP {status} {reason}" + (f": {detail}" if detail else "")
        if self._credentials:
            hint = (f"check the credentials sent (headers {', '.join(self._credentials)}) and set the right ones "
                    "with --header / --bearer-token-file")
        else:
            hint = ("it wants credentials: set --header (e.g. 'Authorization: Bearer <token>', or "
                    "'X-Scope-OrgID: <tenant>' for Mimir) / --bearer-token-file, or user:password@ in the URL")
        return f"Prometheus at {self.url} refused the request ({what}); {hint}"

    def _vector(self, chunks: Iterator[bytes]) -> list[Sample]:
        not_prometheus = PrometheusError(
            f"the server at {self.url} answered {_QUERY_PATH}, but not like Prometheus; is --prometheus "
            "Prometheus's base URL (e.g. http://prometheus.monitoring:9090)?")
        try:
            reply = _read_reply(_JsonStream(chunks))
        except ValueError:
            raise not_prometheus from None
        # An error answer has no data: its status and error come first, or it reads as "not Prometheus".
        if reply.get("status") == "error":
            detail = str(reply.get("error") or reply.get("errorType") or "no reason given")[:_MAX_DETAIL]
            raise PrometheusError(f"Prometheus at {self.url} answered the query with an error: {detail}")
        if reply.get("status") != "success" or not isinstance(reply.get("data"), dict):
            raise not_prometheus
        self._note_warnings(reply.get("warnings"))
        data = reply["data"]
        result = data.get("result")
        if data.get("resultType") != "vector" or not isinstance(result, _Result) or result.malformed:
            raise not_prometheus
        return result.samples

    def _note_warnings(self, warnings: object) -> None:
        """Keep the warnings of a successful answer (Thanos's partial response, say): the data may
        be incomplete, and the user must know."""
        if not isinstance(warnings, list):
            return
        for warning in warnings:
            text = str(warning)[:_MAX_DETAIL]
            if text not in self.warnings:
                self.warnings.append(text)


def _reason(err: Exception) -> str:
    """Why a request failed, in words; the OS's own words for the rest (DNS, resets)."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or "Connection refused" in str(cause):
            return "connection refused (is Prometheus running there, and is the port right?)"
        cause = cause.__cause__ or cause.__context__
    return str(err) or type(err).__name__


def _content_type(response: httpx.Response) -> str:
    """The media type alone, lower-cased; text/plain when missing or malformed, as email.message reads it."""
    media = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return media if media.count("/") == 1 else "text/plain"


def _first_line(body: bytes, content_type: str) -> str | None:
    """A short plain-text error body (Mimir's "no org id"), for the message; None for anything else."""
    if content_type != "text/plain":
        return None
    lines = body.decode("utf-8", "replace").strip().splitlines()
    return lines[0][:200] if lines else None


def _head(chunks: Iterator[bytes]) -> bytes:
    """The first _ERROR_BODY_BYTES of a body, the rest left unread."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= _ERROR_BODY_BYTES:
            break
    return head[:_ERROR_BODY_BYTES]


@dataclass
class _Result:
    """An answer's data.result, read item by item: the finite samples, and whether any item was no sample."""

    samples: list[Sample] = field(default_factory=list)
    malformed: bool = False

    def add(self, item: Any) -> None:
        try:
            # Interned: the same few thousand node names recur in every sample.
            labels = {sys.intern(str(k)): sys.intern(str(v)) for k, v in item["metric"].items()}
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            self.malformed = True
            return
        if math.isfinite(value):
            self.samples.append((labels, value))


_BLANKS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class _JsonStream:
    """JSON read off a stream of byte chunks one value at a time; only the text not yet parsed is
    held. Anything that is not JSON, or one value longer than _MAX_VALUE_CHARS, raises ValueError."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._at = 0
        self._ended = False

    def _fill(self) -> bool:
        """Append the next chunk to the unparsed text; False at the end of the stream."""
        if self._ended:
            return False
        chunk = next(self._chunks, None)
        self._ended = chunk is None
        self._text = self._text[self._at:] + self._utf8.decode(chunk or b"", final=self._ended)
        self._at = 0
        if len(self._text) > _MAX_VALUE_CHARS + _CHUNK_BYTES:
            raise ValueError("one JSON value is too long")
        return True

    def peek(self) -> str:
        """The next character other than a blank, '' at the end."""
        while True:
            self._at = _BLANKS.match(self._text, self._at).end()  # type: ignore[union-attr]  # * matches always
            if self._at < len(self._text):
                return self._text[self._at]
            if not self._fill():
                return ""

    def take(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(f"expected {char!r}")
        self._at += 1

    def value(self) -> Any:
        """The next whole JSON value."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._text, self._at)
            except ValueError:
                if self._fill():
                    continue  # cut off by the chunk's end, or not JSON: more text tells
                raise
            if end == len(self._text) and self._fill():
                continue  # a number at the chunk's end may go on in the next one
            self._at = end
            return value

    def members(self) -> Iterator[str]:
        """The keys of the object that comes next; the caller reads each one's value before the next key."""
        self.take("{")
        if self.peek() == "}":
            self.take("}")
            return
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise ValueError("an object key that is no string")
            self.take(":")
            yield key
            if self.peek() != ",":
                self.take("}")
                return
            self.take(",")

    def items(self, into: _Result) -> None:
        """The array that comes next, each item added to `into` as soon as it is read."""
        self.take("[")
        if self.peek() == "]":
            self.take("]")
            return
        while True:
            into.add(self.value())
            if self.peek() != ",":
                self.take("]")
                return
            self.take(",")


def _read_reply(stream: _JsonStream) -> dict[str, Any]:
    """An answer's top-level members, with data.result as a _Result; the rest as JSON values."""
    reply: dict[str, Any] = {}
    for key in stream.members():
        if key != "data" or stream.peek() != "{":
            reply[key] = stream.value()
            continue
        data: dict[str, Any] = {}
        for name in stream.members():
            if name == "result" and stream.peek() == "[":
                data[name] = _Result()
                stream.items(data[name])
            else:
                data[name] = stream.value()
        reply[key] = data
    if stream.peek() != "":
        raise ValueError("text after the answer")
    return reply
