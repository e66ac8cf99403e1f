"""`node-ping diagnose`'s settings, each declared once (flag, env var, default, limits, help), the
click types that check them, and the HTTP headers they add up to.

A value Prometheus or the clock would choke on (a duration PromQL does not parse, a time in
milliseconds, an infinite timeout) is refused here, exit 2, before anything is asked. Messages name
a header by its position or name, never quote it: it may be a token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import click

from node_ping.diagnose.address import Address, parse_address
from node_ping.settings import Parsed, PositiveNumber, Setting, SettingsError

# Prometheus's own duration syntax (prometheus/common model.ParseDuration): each unit at most once,
# largest first. Its value must be above 0 and fit Go's time.Duration in whole milliseconds.
_DURATION = re.compile(r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?"
                       r"(?:([0-9]+)ms)?")
_DURATION_UNITS_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)
_MAX_DURATION_MS = (2**63 - 1) // 1_000_000
# --time must fall in these years (unix seconds): a millisecond value copied from a Grafana URL is
# a thousand times too large, and would otherwise reach Prometheus (or the date formatting) as a
# time tens of thousands of years away.
YEARS = (2000, 2100)
_EARLIEST, _LATEST = (datetime(year, 1, 1, tzinfo=UTC).timestamp() for year in YEARS)
# An hour is longer than any query of node-ping's should take; larger values overflow the socket's
# timeout (inf, 1e10) or make a hung server look like a hung node-ping.
MAX_TIMEOUT_S = 3600.0

# RFC 9110's token: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Printable ASCII, space and tab: anything else (a newline above all) cannot be sent, and the HTTP
# library's own refusal would quote the value, which may be a token.
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]+")
HEADERS_ENV = "NODE_PING_PROMETHEUS_HEADERS"
"""One 'Name: value' per line: header values may hold commas. Read here, not by click, because a
--header replaces only the env's header of the same name rather than all of them."""


class _Duration(click.ParamType[str]):
    """A duration Prometheus accepts in a range selector, checked here so that a typo is a clear
    flag error rather than a PromQL parse error from the server. Blanks around it are dropped, as
    PromQL's lexer drops them."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip(" \t\r\n")
        match = _DURATION.fullmatch(text)
        if not text or match is None:
            self.fail(f"{text!r} is not a Prometheus duration: a number and a unit for each of y, w, d, h, m, s, ms, "
                      "largest first and each at most once, e.g. 15m, 1h or 1h30m", param, ctx)
        total_ms = sum(int(number) * unit for number, unit in zip(match.groups(), _DURATION_UNITS_MS, strict=True)
                       if number)
        if total_ms == 0:
            self.fail(f"{text!r} is no time at all: give a range above 0, e.g. 15m", param, ctx)
        if total_ms > _MAX_DURATION_MS:
            self.fail(f"{text!r} is longer than Prometheus accepts (about 292 years)", param, ctx)
        return text


class _Time(click.ParamType[float]):
    """Unix seconds or RFC 3339 (UTC when it names no zone), between YEARS."""

    name = "time"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value)
        try:
            at = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                self.fail(f"{text!r} is neither unix seconds nor an RFC 3339 time such as 2024-05-01T12:00:00Z",
                          param, ctx)
            at = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        if _EARLIEST <= at < _LATEST:
            return at
        if _EARLIEST <= at / 1000 < _LATEST:
            seconds = f"{at / 1000:.3f}".rstrip("0").rstrip(".")
            self.fail(f"{text!r} looks like milliseconds (as in a Grafana URL); --time takes unix seconds: "
                      f"divide by 1000, i.e. --time {seconds}", param, ctx)
        self.fail(f"{text!r} is not a time between {YEARS[0]} and {YEARS[1]}: give unix seconds or RFC 3339",
                  param, ctx)


PROMETHEUS = Setting("--prometheus", env="NODE_PING_PROMETHEUS_URL", required=True,
                     type=Parsed("url", parse_address, Address), metavar="URL",
                     help="Prometheus base URL, e.g. http://prometheus.monitoring:9090; user:password@ in it is sent "
                          "as basic authentication and never shown.")
RANGE = Setting("--range", default="15m", type=_Duration(), metavar="DURATION",
                help="Look at this much time up to --time.")
TIME = Setting("--time", type=_Time(), metavar="TIME",
               help=f"End of the range: unix seconds (not milliseconds) or RFC 3339, between {YEARS[0]} and "
                    f"{YEARS[1]} (default: now).")
OUTPUT = Setting("--output", default="text", type=click.Choice(("text", "json")),
                 help="text for people, json for scripts.")
LOSS_THRESHOLD = Setting("--loss-threshold", default=5.0, type=PositiveNumber(100.0), metavar="PERCENT",
                         help="A pair losing this share of pings or more is bad: above 0, at most 100.")
NODE_LOSS_THRESHOLD = Setting("--node-loss-threshold", default=1.0, type=PositiveNumber(100.0), metavar="PERCENT",
                              help="A node whose pings to or from every peer, pooled, lose this share or more, "
                                   "significantly above the cluster's background, is bad even when each pair is "
                                   "below --loss-threshold: above 0, at most 100.")
LATENCY_THRESHOLD = Setting("--latency-threshold", default=50.0, type=PositiveNumber(), metavar="MS",
                            help="A pair whose average RTT is this or more is slow.")
HEADER = Setting("--header", multiple=True, metavar="'NAME: VALUE'",
                 help="Send this HTTP header with every request, e.g. 'X-Scope-OrgID: tenant-1' (repeatable; env "
                      f"{HEADERS_ENV}, one header per line; a --header replaces the env's header of the same name).")
BEARER_TOKEN_FILE = Setting("--bearer-token-file", type=click.Path(path_type=Path), metavar="PATH",
                            help="Send 'Authorization: Bearer <the file's content>' with every request.")
TIMEOUT = Setting("--timeout", default=10.0, type=PositiveNumber(MAX_TIMEOUT_S), metavar="SECONDS",
                  help=f"For each HTTP request to Prometheus, at most {MAX_TIMEOUT_S:g}.")

class _Seconds(click.ParamType[int]):
    """Whole seconds from `low` to `high`."""

    name = "seconds"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        if not text.isdigit() or not self.low <= int(text) <= self.high:
            self.fail(f"{text!r} is not a whole number of seconds from {self.low} to {self.high}, e.g. 60", param, ctx)
        return int(text)


# --publish-events: diagnose in a loop and publish each fault as an Event on the Nodes it blames.
PUBLISH_EVENTS = Setting("--publish-events", env="NODE_PING_PUBLISH_EVENTS", is_flag=True,
                         help="Run until stopped: diagnose every --interval and publish each fault as a Warning "
                              "Event on the Nodes it blames, for kubectl describe node (needs the kubernetes "
                              "package, as in the discovery image).")
INTERVAL = Setting("--interval", env="NODE_PING_DIAGNOSE_INTERVAL", default=60, type=_Seconds(1, 3600),
                   metavar="SECONDS", help="With --publish-events: diagnose this often, 1 to 3600.")
EVENTS_NAMESPACE = Setting("--events-namespace", env="POD_NAMESPACE", metavar="NAMESPACE",
                           help="With --publish-events: the namespace to write the Events in; the API server takes "
                                "Events about Nodes only in default (required).")
KUBECONFIG = Setting("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="PATH",
                     help="With --publish-events: kubeconfig file, for running it outside a pod (default: the "
                          "pod's service account).")
HEALTH_FILE = Setting("--health-file", env="NODE_PING_HEALTH_FILE", type=click.Path(path_type=Path),
                      help="With --publish-events: touched after every loop, for `node-ping health`.")
EVENT_SETTINGS = (PUBLISH_EVENTS, INTERVAL, EVENTS_NAMESPACE, KUBECONFIG, HEALTH_FILE)

SETTINGS = (PROMETHEUS, RANGE, TIME, OUTPUT, LOSS_THRESHOLD, NODE_LOSS_THRESHOLD, LATENCY_THRESHOLD,
            HEADER, BEARER_TOKEN_FILE, TIMEOUT, *EVENT_SETTINGS)


def _header(text: str, where: str) -> tuple[str, str]:
    """'Name: value' as (name, value). Messages name the header at most, never quote the text: it
    may be a token typed without its name."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _HEADER_NAME.fullmatch(name):
        raise SettingsError(f"{where} is not 'Name: value' (e.g. 'X-Scope-OrgID: tenant-1' or "
                            "'Authorization: Bearer <token>')")
    if not _HEADER_VALUE.fullmatch(value):
        raise SettingsError(f"header {name} ({where}) has an empty value or characters other than printable ASCII")
    return name, value


def request_headers(flags: Sequence[str], env: str, bearer_token_file: Path | None, *,
                    basic_auth: bool = False) -> dict[str, str]:
    """The headers for every request: `env` (HEADERS_ENV, one per line), then the --header flags,
    which replace an env header of the same name, then the bearer token file. `basic_auth`: the URL
    has user:password@, so no Authorization header may be given too."""
    from_env = [_header(line, f"line {number} of {HEADERS_ENV}")
                for number, line in enumerate(env.splitlines(), 1) if line.strip()]
    from_flags = [_header(text, f"{HEADER.flag} number {number}") for number, text in enumerate(flags, 1)]
    if bearer_token_file is not None:
        if any(name.lower() == "authorization" for name, _ in from_flags):
            raise SettingsError(f"give {BEARER_TOKEN_FILE.flag} or {HEADER.flag} 'Authorization: ...', not both")
        where = f"{BEARER_TOKEN_FILE.flag} {bearer_token_file}"
        try:
            token = bearer_token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "it is not UTF-8 text"
            raise SettingsError(f"cannot read {where}: {reason}") from None
        if not token:
            raise SettingsError(f"{where} is empty")
        from_flags.append(_header(f"Authorization: Bearer {token}", where))
    # Header names are case-insensitive: the last of the same name wins, under the spelling it was given.
    merged = {name.lower(): (name, value) for name, value in [*from_env, *from_flags]}
    if basic_auth and "authorization" in merged:
        raise SettingsError(f"{PROMETHEUS.flag} has user:password@ and an Authorization header is set too; "
                            "give only one of them")
    return dict(merged.values())
