"""The --prometheus URL: its credentials split off (user:password@ becomes basic authentication),
checked to be an http(s) base URL, and `redact()` for every message that shows a URL.

Light on purpose: the command checks its flags with it before the HTTP client is even imported.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field


class BadAddress(ValueError):
    """A --prometheus value that cannot be used; the message never shows its credentials."""


def _split_userinfo(url: str) -> tuple[str | None, str]:
    """(the user:password part or None, the URL without it).

    Cut by hand rather than parsed: it must work on URLs too broken to parse, and it takes
    everything up to the last @ before the path's query or fragment, so a password with an
    unescaped @, : or / is removed whole rather than partly shown.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    address_end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, address_end)
    if at < 0:
        return None, url
    return rest[:at], f"{scheme}{sep}{rest[at + 1:]}"


def redact(url: str) -> str:
    """`url` without its user:password@, for every message and report that shows it."""
    return _split_userinfo(url)[1]


@dataclass(frozen=True)
class Address:
    """Where Prometheus is: `url` is the base URL without credentials (what is requested and shown),
    `basic_auth` the (user, password) of a user:password@ in the URL. Its repr leaves them out."""

    url: str
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)


def parse_address(text: str) -> Address:
    """A Prometheus base URL (http:// assumed without a scheme); BadAddress says what is wrong."""
    if "://" not in text:
        text = f"http://{text}"
    userinfo, address = _split_userinfo(text)
    if "?" in address or "#" in address:
        # The query path is appended to the URL, so a query string or fragment would end up in front
        # of it. The URL is not quoted: what follows ? or # may be a token, and a password with an
        # unescaped ? or # would be cut in the wrong place.
        raise BadAddress("it has a query string or fragment (? or #): give the base URL alone, e.g. "
                         "http://prometheus:9090 (a path prefix such as /prometheus is fine); send tokens with "
                         "--header or --bearer-token-file")
    url = address.rstrip("/")
    try:
        parsed = urllib.parse.urlsplit(url)
        valid = parsed.scheme in ("http", "https") and bool(parsed.hostname)
        parsed.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        valid = False
    if not valid:
        raise BadAddress(f"{url!r} is not an http(s) URL; give e.g. http://prometheus:9090")
    if not userinfo:
        return Address(url)
    user, _, password = (urllib.parse.unquote(part) for part in userinfo.partition(":"))
    return Address(url, (user, password))
