"""Loss judged with statistics: a small steady loss every peer sees is a node; a few lost pings of a
small sample are nothing; a node's loss range leaves out what another verdict explains."""

from __future__ import annotations

import random

import pytest

from node_ping.diagnose.analysis import HEALTHY, NODE_ISOLATED, NODE_RECEIVE, Thresholds, diagnose
from node_ping.diagnose.matrix import Counts, Matrix, Pair
from node_ping.diagnose.stats import upper_tail
from tests.support.promdata import Mesh, isolated, matrix_of, receive_loss

CLI = Thresholds(node_loss_ratio=0.01)  # what `node-ping diagnose` passes by default
PINGS = 900  # one ping a second over the default 15 minutes


def noisy(size: int, seed: int, extra: dict[Pair, float], pings: int = PINGS) -> Matrix:
    """Every pair loses 0-0.5 % at random (a seeded draw per ping), plus `extra` where named."""
    rng = random.Random(seed)  # noqa: S311  (a reproducible mesh, not a secret)
    nodes = [f"node-{i}" for i in range(1, size + 1)]
    cells = {}
    for pair in ((s, d) for s in nodes for d in nodes if s != d):
        rate = rng.uniform(0.0, 0.005) + extra.get(pair, 0.0)
        lost = sum(rng.random() < rate for _ in range(pings))
        cells[pair] = Counts(pings, pings - lost, (pings - lost) * 0.4)
    return Matrix(cells)


@pytest.mark.parametrize(("size", "seed"), [(8, 1), (8, 7), (30, 2), (30, 11), (100, 3)])
def test_a_node_losing_2_percent_from_every_peer_is_named(size: int, seed: int) -> None:
    nodes = [f"node-{i}" for i in range(1, size + 1)]
    [verdict] = diagnose(noisy(size, seed, receive_loss(nodes, "node-5", 0.02)), CLI)
    assert (verdict.kind, verdict.nodes) == (NODE_RECEIVE, ("node-5",))
    assert f"{size - 1} of {size - 1} peers agree" in verdict.message
    assert 1.5 <= verdict.summary["pooled_loss_percent"] <= 3.5
    assert verdict.summary["pooled_sent"] == (size - 1) * PINGS


@pytest.mark.parametrize(("size", "seed"), [(8, 5), (30, 13), (100, 17)])
def test_background_noise_alone_is_healthy(size: int, seed: int) -> None:
    assert [v.kind for v in diagnose(noisy(size, seed, {}), CLI)] == [HEALTHY]


def test_without_a_node_threshold_only_cells_count() -> None:
    nodes = [f"node-{i}" for i in range(1, 9)]
    assert [v.kind for v in diagnose(noisy(8, 1, receive_loss(nodes, "node-5", 0.02)))] == [HEALTHY]


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_a_few_lost_pings_of_30_are_no_finding(seed: int) -> None:
    """2 of 30 lost is 6.7 %, above the 5 % threshold, but chance at 1 % background."""
    rng = random.Random(seed)  # noqa: S311  (a reproducible mesh, not a secret)
    nodes = [f"n{i}" for i in range(1, 11)]
    cells = {(s, d): Counts(30, 30) for s in nodes for d in nodes if s != d}
    for pair in rng.sample(sorted(cells), 6):
        cells[pair] = Counts(30, 28)
    assert [v.kind for v in diagnose(Matrix(cells), CLI)] == [HEALTHY]


def test_many_lost_pings_of_30_are_still_a_fault() -> None:
    nodes = [f"n{i}" for i in range(1, 6)]
    cells = {(s, d): Counts(30, 30 if d != "n3" else 20) for s in nodes for d in nodes if s != d}
    assert [(v.kind, v.nodes) for v in diagnose(Matrix(cells), CLI)] == [(NODE_RECEIVE, ("n3",))]


def test_a_30_percent_node_next_to_an_isolated_one_reads_30_percent() -> None:
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    verdicts = diagnose(matrix_of(Mesh(nodes, loss={**receive_loss(nodes, "n3", 0.3), **isolated(nodes, "n4")})),
                        CLI)
    assert [(v.kind, v.nodes) for v in verdicts] == [(NODE_RECEIVE, ("n3",)), (NODE_ISOLATED, ("n4",))]
    assert verdicts[0].message.endswith("(30.0%)")
    assert {e.source for e in verdicts[0].evidence} == {"n1", "n2", "n5"}


def test_upper_tail_matches_the_exact_sum() -> None:
    # P(X >= 2 | 30, 0.01) = 1 - 0.99^30 - 30 * 0.01 * 0.99^29
    assert upper_tail(2, 30, 0.01) == pytest.approx(1 - 0.99**30 - 30 * 0.01 * 0.99**29, rel=1e-9)
    assert upper_tail(0, 30, 0.01) == 1.0
    assert upper_tail(360, 18000, 0.01) < 1e-20
