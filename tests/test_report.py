"""fping's `-q -C` report -> samples per address, on output captured from real fping runs; samples ->
per-cycle statistics, the numbers operators read on the dashboard."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from node_ping.probe.report import complete_reports, parse_report, summarize

FPING = Path(__file__).parent / "fixtures" / "fping"


def fixture(scenario: str) -> str:
    (path,) = FPING.glob(f"*__{scenario}.txt")
    return path.read_text()


class TestRealOutput:
    """Every scenario of the captured fixtures parses to what fping measured."""

    def test_all_answer(self) -> None:
        report = parse_report(fixture("all-answer"))
        assert sorted(report) == ["10.231.0.2", "10.231.0.3", "10.231.0.4"]
        assert all(len(samples) == 10 and None not in samples for samples in report.values())
        assert report["10.231.0.2"][0] == pytest.approx(0.230)

    def test_lost_samples_are_none_in_place(self) -> None:
        report = parse_report(fixture("loss-50pct-on-b"))
        assert report["10.231.0.2"] == (None, 0.037, None, None, 0.032, 0.013, 0.016, 0.005, 0.024, None)
        assert report["fd00:231::2"].count(None) == 8
        assert None not in report["10.231.0.3"]

    def test_target_that_answered_nothing(self) -> None:
        report = parse_report(fixture("d-down-and-absent-address"))
        for address in ("10.231.0.4", "10.231.0.99", "fd00:231::4"):
            assert report[address] == (None,) * 10
        assert None not in report["10.231.0.2"]

    def test_ipv6(self) -> None:
        report = parse_report(fixture("ipv6"))
        assert sorted(report) == ["fd00:231::2", "fd00:231::3"]
        assert report["fd00:231::3"][-1] == pytest.approx(0.011)

    def test_duplicate_reply_lines_are_not_samples(self) -> None:
        report = parse_report(fixture("duplicates-from-c"))
        assert len(report["10.231.0.3"]) == 10
        assert report["10.231.0.3"][0] == pytest.approx(0.339)

    def test_icmp_error_lines_interleaved(self) -> None:
        report = parse_report(fixture("icmp-unreachable-not-quiet"))
        assert sorted(report) == ["10.231.0.3", "10.232.0.5"]
        assert report["10.232.0.5"] == (None,) * 10


class TestDamagedOutput:
    """Output that was cut off or is not a report never yields wrong numbers."""

    def test_cut_mid_line_drops_the_cut_line(self) -> None:
        text = fixture("all-answer")
        cut = text[: text.index("10.231.0.4") + 25]  # hand-made: the real report cut mid-line
        report = parse_report(cut)
        assert sorted(report) == ["10.231.0.2", "10.231.0.3"]

    def test_cut_after_a_line_keeps_complete_lines(self) -> None:
        lines = fixture("all-answer").splitlines(keepends=True)
        assert sorted(parse_report("".join(lines[:2]))) == ["10.231.0.2", "10.231.0.3"]

    @pytest.mark.parametrize("text", ["", "\n\n", "fping: can't create socket\n", "garbage : x y\n",
                                      "10.0.0.1 : \n", "10.0.0.1 : 1.0 abc\n"])
    def test_no_report(self, text: str) -> None:
        assert parse_report(text) == {}

    def test_addresses_are_normalised(self) -> None:
        assert list(parse_report("FD00:0231:0::0002 : 1.5 -\n")) == ["fd00:231::2"]


class TestCompleteReports:
    """What the loop counts: only reports with every sample, the first complete one per address."""

    def test_short_and_repeated_reports(self) -> None:
        text = "10.0.0.1 : 1.0 -\n10.0.0.2 : 1.0\n10.0.0.2 : 2.0 3.0\n10.0.0.2 : 4.0 5.0\n10.0.0.1 : - -\n"
        assert list(complete_reports(text, 2)) == [("10.0.0.1", (1.0, None)), ("10.0.0.2", (2.0, 3.0))]

    def test_real_fixture(self) -> None:
        assert len(dict(complete_reports(fixture("loss-50pct-on-b"), 10))) == 3
        assert dict(complete_reports(fixture("loss-50pct-on-b"), 11)) == {}


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
