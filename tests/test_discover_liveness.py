"""discover's health file: touched from the reconcile loop while every loop runs, and no longer once
a loop has ended (a restart helps then); API trouble alone does not stop it."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_ping.discover import liveness
from node_ping.discover.liveness import Heartbeat


@pytest.fixture
def loop() -> Iterator[threading.Thread]:
    """A thread standing for a watch loop: it runs until its Event is set."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="discover-nodes", daemon=True)
    thread.start()
    thread.done = done  # type: ignore[attr-defined]
    yield thread
    done.set()
    thread.join(5)


class TestHeartbeat:
    """What the liveness probe sees through the file."""

    def test_touched_while_every_loop_runs(self, tmp_path: Path, loop: threading.Thread) -> None:
        health = tmp_path / "health"
        heartbeat = Heartbeat(health)
        heartbeat.watch([loop])
        heartbeat.beat()
        assert health.exists()

    def test_at_most_every_few_seconds(self, tmp_path: Path, loop: threading.Thread) -> None:
        health = tmp_path / "health"
        heartbeat = Heartbeat(health)
        heartbeat.watch([loop])
        heartbeat.beat()
        os.utime(health, (1, 1))
        heartbeat.beat()  # within TOUCH_EVERY_S of the first: not touched again
        assert health.stat().st_mtime == 1

    def test_no_longer_touched_once_a_loop_ended(self, tmp_path: Path, loop: threading.Thread,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
        monkeypatch.setattr(liveness, "TOUCH_EVERY_S", 0.0)
        health = tmp_path / "health"
        heartbeat = Heartbeat(health)
        heartbeat.watch([loop])
        heartbeat.beat()
        os.utime(health, (1, 1))
        loop.done.set()  # type: ignore[attr-defined]
        loop.join(5)
        with caplog.at_level(logging.ERROR):
            heartbeat.beat()
            heartbeat.beat()
        assert health.stat().st_mtime == 1
        assert [r.getMessage() for r in caplog.records].count(
            f"the loop discover-nodes ended: no longer touching {health}, so the liveness probe restarts "
            "discover") == 1

    def test_an_unwritable_file_is_said_once(self, tmp_path: Path, loop: threading.Thread,
                                             monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
        monkeypatch.setattr(liveness, "TOUCH_EVERY_S", 0.0)
        heartbeat = Heartbeat(tmp_path / "absent" / "health")
        heartbeat.watch([loop])
        with caplog.at_level(logging.ERROR):
            for _ in range(3):
                heartbeat.beat()
                time.sleep(0.01)
        assert len([r for r in caplog.records if "cannot touch the health file" in r.getMessage()]) == 1

    def test_without_a_file_nothing_is_written(self, tmp_path: Path, loop: threading.Thread) -> None:
        heartbeat = Heartbeat(None)
        heartbeat.watch([loop])
        heartbeat.beat()
        assert list(tmp_path.iterdir()) == []
