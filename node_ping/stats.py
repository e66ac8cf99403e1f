"""Summarise one cycle's samples of one target (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from node_ping.parse import Sample


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
