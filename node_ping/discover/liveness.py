"""discover's liveness: a file touched while every loop of the controller still runs, for
`node-ping health --max-age` (the chart's liveness probe).

API trouble does not stop the touching: the loops retry it themselves, and a restart would not help.
What does: a watch loop that ended, or a reconcile loop stuck beyond its own time limits. Touching
the file and saying what keeps it from being touched is `node_ping.liveness`'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from node_ping.liveness import HealthFile

TOUCH_EVERY_S = 5.0
"""How often the file is touched while all is well; `--max-age` must be well above it and above the
longest wait of a loop (a backoff of at most 30 s, a request of at most 35 s)."""


class Heartbeat:
    """Touches `path` (if any) from the reconcile loop while every thread in `threads` is alive."""

    def __init__(self, path: Path | None) -> None:
        self._file = HealthFile(path)
        self._threads: Sequence[threading.Thread] = ()
        self._last = -TOUCH_EVERY_S

    def watch(self, threads: Sequence[threading.Thread]) -> None:
        """The loops that must all run for discover to be alive."""
        self._threads = tuple(threads)

    def beat(self) -> None:
        """Touch the file, at most every TOUCH_EVERY_S, unless a watched loop has ended."""
        now = time.monotonic()
        if self._file.path is None or now - self._last < TOUCH_EVERY_S:
            return
        ended = [thread.name for thread in self._threads if not thread.is_alive()]
        if ended:
            self._file.problem(f"the loop {', '.join(ended)} ended: no longer touching {self._file.path}, so the "
                               "liveness probe restarts discover")
            return
        if self._file.touch():
            self._last = now
