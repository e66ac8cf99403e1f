"""Per-cycle statistics: the numbers operators read on the dashboard."""

from __future__ import annotations

import statistics

import pytest

from node_ping.stats import summarize


class TestSummarize:
    """sent/received/sum/min/max/mdev as defined in the README's metrics table."""

    def test_mixed_samples(self) -> None:
        stats = summarize([1.0, None, 3.0, 2.0])
        assert (stats.sent, stats.received) == (4, 3)
        assert stats.rtt_sum_ms == pytest.approx(6.0)
        assert (stats.rtt_min_ms, stats.rtt_max_ms) == (1.0, 3.0)
        assert stats.rtt_mdev_ms == pytest.approx(statistics.pstdev([1.0, 3.0, 2.0]))
        assert stats.loss_ratio == pytest.approx(0.25)

    def test_nothing_came_back_has_no_rtt(self) -> None:
        """A dead link must not read as a perfect 0 ms link."""
        stats = summarize([None, None, None])
        assert (stats.sent, stats.received, stats.rtt_sum_ms) == (3, 0, 0.0)
        assert stats.rtt_min_ms is None and stats.rtt_max_ms is None and stats.rtt_mdev_ms is None
        assert stats.loss_ratio == 1.0

    def test_equal_samples_have_zero_mdev(self) -> None:
        assert summarize([0.1, 0.1, 0.1]).rtt_mdev_ms == 0.0
