"""Shared fixtures: real test hosts (network namespaces) and paths."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import helm_python as helm
import pytest

from tests.support import netlab
from tests.support.chart import CHART

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def lab_factory() -> Iterator[Callable[[list[str]], netlab.Lab]]:
    """Build namespaces on a bridge with `lab_factory(["a", "b"])`; all removed at teardown."""
    reason = netlab.available()
    if reason:
        pytest.skip(reason)
    labs: list[netlab.Lab] = []
    netlab.remove_leftovers(netlab.run_prefix())

    def make(names: list[str]) -> netlab.Lab:
        lab = netlab.build(names)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    """The chart, loaded once per test module."""
    with helm.Chart.load(CHART) as loaded:
        yield loaded
