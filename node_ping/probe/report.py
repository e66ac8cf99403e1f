"""Turn fping's `-q -C` report into samples per address, and those into one cycle's statistics (pure).

With `-C N -q`, fping prints one line per target to stderr once it is done, e.g.
`10.0.0.2 : 0.05 - 0.06`: one field per ping, `-` for a lost one. Anything else on stderr (ICMP
errors, duplicate replies, send errors) is commentary and is ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from node_ping.targets import is_ip, normalise_ip

Sample = float | None
"""Round-trip time of one ping in milliseconds, or None when it was lost."""

_NUMBER = r"\d+(?:\.\d+)?"
_REPORT_LINE = re.compile(
    rf"^(?P<address>\S+)\s+:\s+(?P<samples>(?:-|{_NUMBER})(?:\s+(?:-|{_NUMBER}))*)\s*$"
)


def iter_report(text: str) -> Iterator[tuple[str, tuple[Sample, ...]]]:
    """Yield (normalised address, samples) for every report line in fping's output, in order.

    A last line without its newline may have been cut off (fping killed, pipe closed), so it is
    dropped rather than misread as fewer samples.
    """
    lines = text.split("\n")
    del lines[-1]  # the text after the last newline: empty, or a line that was cut off
    for line in lines:
        match = _REPORT_LINE.match(line.strip())
        if match is None:
            continue
        address = match["address"]
        if is_ip(address):
            try:
                address = normalise_ip(address)
            except ValueError:
                continue  # a multicast or unspecified address is never one of our targets
        yield address, tuple(None if field == "-" else float(field) for field in match["samples"].split())


def parse_report(text: str) -> dict[str, tuple[Sample, ...]]:
    """The samples per (normalised) address in fping's output; the first report of an address wins."""
    reports: dict[str, tuple[Sample, ...]] = {}
    for address, samples in iter_report(text):
        reports.setdefault(address, samples)
    return reports


def complete_reports(text: str, count: int) -> Iterator[tuple[str, tuple[Sample, ...]]]:
    """(address, samples) for every address with a report of exactly `count` samples; the first
    complete report of an address wins. Anything shorter was cut off and is not a measurement."""
    seen: set[str] = set()
    for address, samples in iter_report(text):
        if len(samples) == count and address not in seen:
            seen.add(address)
            yield address, samples


@dataclass(frozen=True)
class CycleStats:
    """What one cycle saw for one target. RTT fields are None when nothing came back:
    a dead link must never read as 0 ms."""

    sent: int
    received: int
    rtt_sum_ms: float
    rtt_min_ms: float | None
    rtt_max_ms: float | None
    rtt_mdev_ms: float | None

    @property
    def loss_ratio(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 0.0


def summarize(samples: Sequence[Sample]) -> CycleStats:
    """Sent, received and RTT statistics; mdev is the population standard deviation."""
    replies = [rtt for rtt in samples if rtt is not None]
    if not replies:
        return CycleStats(len(samples), 0, 0.0, None, None, None)
    total = math.fsum(replies)
    mean = total / len(replies)
    spread = max(replies) - min(replies)
    # Equal samples have no spread; rounding in the mean must not invent one.
    mdev = math.sqrt(math.fsum((rtt - mean) ** 2 for rtt in replies) / len(replies)) if spread else 0.0
    return CycleStats(len(samples), len(replies), total, min(replies), max(replies), mdev)
