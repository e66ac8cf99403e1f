"""Instant queries against Prometheus's HTTP API (or anything serving it under the URL), over httpx.

The headers the user gave (tokens, a Mimir tenant) go with every request; user:password@ in the URL
becomes HTTP basic authentication. Credentials never appear in any output: the URL is shown without
them, headers by name only. Redirects are reported, not followed, so credentials go only where the
URL points. Warnings in Prometheus's answers (a partial response from Thanos, say) are kept for the
user: the data may be incomplete.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Mapping

import httpx

from node_ping import __version__
from node_ping.diagnose.address import Address, redact

Sample = tuple[dict[str, str], float]
"""One element of an instant vector: its labels and its value."""

_QUERY_PATH = "/api/v1/query"
_MAX_DETAIL = 500  # characters of an error or warning text Prometheus sent


class PrometheusError(Exception):
    """Why Prometheus gave no usable answer; the message says what to check."""


class Prometheus:
    """Instant queries at given times; `warnings` collects what the answers warned of, each once."""

    def __init__(self, address: Address, timeout: float, headers: Mapping[str, str] | None = None) -> None:
        sent = dict(headers or {})
        if address.basic_auth and any(name.lower() == "authorization" for name in sent):
            raise ValueError("basic authentication and an Authorization header both given")
        self.url = address.url
        self.timeout = timeout
        self.warnings: list[str] = []
        # Names only, for messages about refused credentials.
        self._credentials = sorted({*sent, *(["Authorization"] if address.basic_auth else [])})
        self._client = httpx.Client(
            auth=httpx.BasicAuth(*address.basic_auth) if address.basic_auth else None,
            headers={"Accept": "application/json", "User-Agent": f"node-ping/{__version__}", **sent},
            timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def query(self, promql: str, at: float) -> list[Sample]:
        """The instant vector of `promql` at unix time `at`, its NaN and infinite values left out."""
        try:
            response = self._client.get(f"{self.url}{_QUERY_PATH}", params={"query": promql, "time": f"{at:.3f}"})
        except httpx.TimeoutException:
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: no answer within {self.timeout:g} s "
                                  "(raise --timeout, or check the address)") from None
        except httpx.RemoteProtocolError as err:
            raise PrometheusError(f"the server at {self.url} does not answer like an HTTP server "
                                  f"({type(err).__name__}); is --prometheus the right address?") from None
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: {_reason(err)}") from None
        if not response.is_success:
            raise PrometheusError(self._http_error(response))
        return self._vector(response.content)

    def _http_error(self, response: httpx.Response) -> str:
        body = response.content[:4096]
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

    def _vector(self, body: bytes) -> list[Sample]:
        not_prometheus = PrometheusError(
            f"the server at {self.url} answered {_QUERY_PATH}, but not like Prometheus; is --prometheus "
            "Prometheus's base URL (e.g. http://prometheus.monitoring:9090)?")
        try:
            reply = json.loads(body)
        except ValueError:
            raise not_prometheus from None
        if not isinstance(reply, dict):
            raise not_prometheus
        # An error answer has no data: its status and error come first, or it reads as "not Prometheus".
        if reply.get("status") == "error":
            detail = str(reply.get("error") or reply.get("errorType") or "no reason given")[:_MAX_DETAIL]
            raise PrometheusError(f"Prometheus at {self.url} answered the query with an error: {detail}")
        if reply.get("status") != "success" or not isinstance(reply.get("data"), dict):
            raise not_prometheus
        self._note_warnings(reply.get("warnings"))
        data = reply["data"]
        if data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
            raise not_prometheus
        samples = []
        for item in data["result"]:
            try:
                labels = {str(k): str(v) for k, v in item["metric"].items()}
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                raise not_prometheus from None
            if math.isfinite(value):
                samples.append((labels, value))
        return samples

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
