"""The matrix and each node's own data: counts, natural order, which sources are stale, and what
a node's own metrics say about its prober."""

from __future__ import annotations

from node_ping.diagnose.matrix import (
    PROBER_FAILING,
    PROBER_GONE,
    PROBER_RUNNING,
    PROBER_STOPPED,
    Counts,
    Freshness,
    Prober,
    natural_key,
    probers,
    stale_sources,
)


class TestCounts:
    """Numbers of one pair as increase() gives them."""

    def test_counts_are_clamped(self) -> None:
        """increase() extrapolates, so received can come out a hair above sent: that is no loss."""
        assert Counts(sent=900.0, received=900.4).loss_ratio == 0.0
        assert Counts(sent=900.0, received=0.0, rtt_sum_ms=0.0).rtt_avg_ms is None

    def test_natural_order(self) -> None:
        names = ["node-10", "node-2", "node-1", "node-100", "a", "node-02", "b7c10", "b7c9"]
        assert sorted(names, key=natural_key) == ["a", "b7c9", "b7c10", "node-1", "node-02", "node-2", "node-10",
                                                  "node-100"]


class TestStaleSources:
    """When a prober stops, node-exporter keeps serving its last textfile: fresh samples, flat
    counters. Which sources count as stopped, from what Prometheus holds at the end of the range."""

    AT = 1_700_000_000.0

    def fresh(self, lag: float, nominal: float | None = 30.0, series: bool = True) -> Freshness:
        """A source last scraped 5 s before AT, holding a last success `lag` seconds older than that."""
        scraped = self.AT - 5
        return Freshness(series, scraped - lag, scraped, nominal)

    def test_served_but_frozen_is_stale_with_its_age(self) -> None:
        assert stale_sources(["a"], {"a": self.fresh(600)}, self.AT) == {"a": 605.0}

    def test_working_prober_is_not_stale_whatever_the_scrape_interval(self) -> None:
        """Only the success's age at its scrape counts, so a scrape 4 minutes ago is no sign."""
        scraped = self.AT - 240
        assert stale_sources(["a"], {"a": Freshness(True, scraped - 20, scraped, 30.0)}, self.AT) == {}

    def test_a_late_or_failed_cycle_or_two_is_no_alarm(self) -> None:
        assert stale_sources(["a", "b"], {"a": self.fresh(89), "b": self.fresh(91)}, self.AT) == {"b": 96.0}

    def test_short_cycles_get_a_minute(self) -> None:
        assert stale_sources(["a", "b"], {"a": self.fresh(59, 1.0), "b": self.fresh(61, 1.0)}, self.AT) == {
            "b": 66.0}

    def test_series_gone_at_the_end(self) -> None:
        """The node or its node-exporter is down: neither its pair series nor its own metrics are there."""
        freshness = {"a": Freshness(False, errors={"fping": 3.0})}
        assert stale_sources(["a", "b"], freshness, self.AT) == {"a": None, "b": None}

    def test_pair_series_gone_while_it_starts_or_has_nothing_to_probe(self) -> None:
        """Its own metrics are scraped with a recent start-up or success: a restarted exporter before
        its first cycle ends (in HTTP mode its pair series come with it), or one with no targets."""
        freshness = {"a": self.fresh(20, series=False), "b": self.fresh(0, series=False, nominal=None)}
        assert stale_sources(["a", "b"], freshness, self.AT) == {}

    def test_pair_series_gone_and_no_success_for_long(self) -> None:
        """Restarted, and failing since: the grace is the same as for a frozen last success."""
        freshness = {"a": self.fresh(89, series=False), "b": self.fresh(91, series=False)}
        assert stale_sources(["a", "b"], freshness, self.AT) == {"b": 96.0}

    def test_without_the_gauge_the_series_decide(self) -> None:
        assert stale_sources(["a"], {"a": Freshness(True)}, self.AT) == {}

    def test_before_its_first_cycle_a_prober_is_judged_by_the_others_cycle(self) -> None:
        """Until a first cycle ends there is no nominal gauge; the last success is the start-up time."""
        freshness = {"a": self.fresh(100, nominal=None), "b": self.fresh(10, nominal=60.0)}
        assert stale_sources(["a", "b"], freshness, self.AT) == {}
        freshness = {"a": self.fresh(200, nominal=None), "b": self.fresh(10, nominal=60.0)}
        assert stale_sources(["a", "b"], freshness, self.AT) == {"a": 205.0}


class TestProbers:
    """What a node's own metrics say about its prober: gone, stopped, failing or running."""

    AT = 1_700_000_000.0

    def state(self, seen: Freshness) -> Prober:
        return probers({"a": seen}, self.AT)["a"]

    def test_states(self) -> None:
        scraped = self.AT - 5
        assert self.state(Freshness(True)) == Prober(PROBER_GONE)
        assert self.state(Freshness(False, scraped - 20, scraped, 30.0, cycling=True)) == Prober(PROBER_RUNNING, 25.0)
        assert self.state(Freshness(True, scraped - 600, scraped, 30.0, cycling=False)) == Prober(PROBER_STOPPED, 605.0)
        assert self.state(Freshness(True, scraped - 600, scraped, 30.0, cycling=True, errors={"fping": 20.0})) == \
            Prober(PROBER_FAILING, 605.0, {"fping": 20.0})

    def test_without_a_cycle_counter_an_old_success_is_a_stopped_prober(self) -> None:
        """Exporters older than node_ping_cycles_total: nothing tells a failing prober from a stopped one."""
        scraped = self.AT - 5
        assert self.state(Freshness(True, scraped - 600, scraped, 30.0)).state == PROBER_STOPPED
