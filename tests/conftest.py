"""Shared fixtures: real test hosts (network namespaces), the chart, a bearer token file, the stand-in
API server and discovery controllers run against it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import helm_python as helm
import pytest

from node_ping.probe import lock
from tests.support import netlab, promdata
from tests.support.chart import CHART
from tests.support.diagnosis import SECRET
from tests.support.discovery import Controllers, Running
from tests.support.fake_kube_api import FakeKubeAPI

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


@pytest.fixture
def token_file() -> Iterator[Path]:
    """A bearer token file holding SECRET and a newline, as kubectl or a Secret volume writes it."""
    with tempfile.TemporaryDirectory(prefix="node-ping-diagnose-") as directory:
        path = Path(directory) / "token"
        path.write_text(f"{SECRET}\n")
        yield path


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    """The stand-in for the Kubernetes API server (the real one cannot run here), on 127.0.0.1."""
    with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def controllers(kube: FakeKubeAPI) -> Iterator[Controllers]:
    """Discovery controllers run in threads against `kube`; all stopped and joined at teardown."""
    with Controllers(kube) as running:
        yield running


@pytest.fixture
def start(controllers: Controllers) -> Callable[..., Running]:
    """`start(**settings)` runs a controller in a thread; every one is stopped and joined at teardown."""
    return controllers.start


@pytest.fixture(autouse=True)
def private_fping_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes run inside the test process take fping lock names of their own, so a node-ping running
    on this machine's network (a developer's) does not make them wait. The real names are tested end
    to end, by node-ping processes in network namespaces (test_lock.py, test_netns.py)."""
    tag = f"test-{os.getpid()}"
    monkeypatch.setattr(lock, "LOCK_ADDRESS", f"\0node-ping-{tag}/fping")
    monkeypatch.setattr(lock, "QUEUE_ADDRESS", f"\0node-ping-{tag}/fping-next")


@pytest.fixture
def prometheus_with() -> Iterator[Callable[[str], str]]:
    """`prometheus_with(openmetrics_text)` backfills the text into a fresh TSDB, starts a real
    Prometheus on it and returns its URL. Processes and directories go at teardown."""
    reason = promdata.available()
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="node-ping-diagnose-")))

        def start(text: str) -> str:
            data = root / f"tsdb{len(list(root.iterdir()))}"
            promdata.backfill(text, data)
            return stack.enter_context(promdata.running_prometheus(data))

        yield start
