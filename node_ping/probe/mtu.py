"""The MTU probe: a few don't-fragment pings per node target, of exactly the configured IP packet size.

Small pings pass a path whose MTU is too small (a vSwitch port or VLAN at 1400, a tunnel): only
packets of full size vanish, and TCP connections hang after their handshake. So every cycle, beside
the small pings, each node target gets a few pings with don't-fragment set and a payload that makes
IP packets of exactly `--mtu` bytes. They run in fping processes of their own, alongside the main
one, so they neither lengthen the cycle nor spoil its report when they fail.

Don't-fragment is fping's `-M`, which sets IP_MTU_DISCOVER=IP_PMTUDISC_DO on its IPv4 socket and
IPV6_MTU_DISCOVER=IPV6_PMTUDISC_DO on its IPv6 one (fping 5.1, seen with strace). Routers never
fragment IPv6, but the sending kernel would, down to its own interface MTU or a path MTU learnt from
a Packet Too Big: IPV6_PMTUDISC_DO makes it refuse instead (EMSGSIZE), so a too-small path shows
as loss for IPv6 as for IPv4, never as a pass made of fragments. fping cannot set IPV6_DONTFRAG,
which is not needed for that.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from node_ping.probe import fping

IPV4_OVERHEAD = 20 + 8
IPV6_OVERHEAD = 40 + 8
"""IP header plus ICMP echo header: what fping's `-b` payload lacks of the IP packet."""

OFF = 0
IPV4_MIN, IPV6_MIN, IP_MAX = 68, 1280, 65_535
"""The smallest MTU each IP version allows every link (RFC 791, RFC 8200), and the largest packet."""

SHARE = 0.1
MAX_PINGS = 3
"""MTU pings per target per cycle: a tenth of the small ones, at least 1, at most 3 ("a few": they
prove a path, they do not measure loss finely)."""

TIMEOUT_CAP_MS = 2000
"""fping's own cap on the wait for a reply with -C; the main run waits min(period, this)."""


def parse_mtu(text: str) -> int:
    """`--mtu`'s value: 0 (off) or an IP packet size IP allows; ValueError saying what would be accepted."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of bytes") from None
    if value != OFF and not IPV4_MIN <= value <= IP_MAX:
        raise ValueError(f"{value} is not an IP packet size: use 0 (off) or {IPV4_MIN} to {IP_MAX} bytes "
                         f"({IPV6_MIN} or more for IPv6 targets)")
    return value


def pings(count: int) -> int:
    """MTU pings per target per cycle for `count` small ones."""
    return min(MAX_PINGS, max(1, int(count * SHARE)))


def probed(address: str, mtu: int) -> bool:
    """Whether an address is MTU-probed at this size: IPv6 needs at least its minimum MTU (every
    IPv6 link carries 1280 bytes, so a smaller probe proves nothing)."""
    return mtu != OFF and (mtu >= IPV6_MIN or ipaddress.ip_address(address.split("%", maxsplit=1)[0]).version == 4)


def argvs(addresses: Sequence[str], mtu: int, count: int, period_ms: int, binary: str) -> list[list[str]]:
    """The MTU fping command lines: one per IP version (fping's `-b` is one size for all its targets),
    each split like the main run. Their pings are spread over the main run's length, and each waits
    for its replies no longer than the main run does, so they end before it."""
    if mtu == OFF:
        return []
    n = pings(count)
    spread_ms = max(1, count * period_ms // n)
    timeout_ms = min(period_ms, TIMEOUT_CAP_MS)
    per_run = fping.max_targets_per_run(period_ms)
    result = []
    for version, overhead in ((4, IPV4_OVERHEAD), (6, IPV6_OVERHEAD)):
        chosen = [a for a in addresses if ipaddress.ip_address(a.split("%")[0]).version == version and probed(a, mtu)]
        options = ["-M", "-b", str(mtu - overhead), "-t", str(timeout_ms)]
        result += [fping.build_argv(chosen[i:i + per_run], n, spread_ms, binary, options)
                   for i in range(0, len(chosen), per_run)]
    return result
