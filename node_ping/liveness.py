"""A health file for `node-ping health --max-age` (a liveness probe): touched while a long-running
command's loop works, each problem with it logged once, and its recovery once.

Used by discover (from its reconcile loop, while every watch loop runs) and by
`diagnose --publish-events` (after every loop).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class HealthFile:
    """Touches `path` (if any); says once what keeps it from being touched, and once when it is again."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._problem: str | None = None

    def touch(self) -> bool:
        """Touch the file; False (the reason logged once) if it cannot be touched. True without a path."""
        if self.path is None:
            return True
        try:
            self.path.touch()
        except OSError as err:
            self.problem(f"cannot touch the health file {self.path}: {err.strerror or err}; the liveness "
                         "probe will fail")
            return False
        self.problem(None)
        return True

    def problem(self, problem: str | None) -> None:
        """Log `problem` if it is new; None: all is well again (said once, after a problem)."""
        if problem is not None and problem != self._problem:
            log.error("%s", problem)
        elif problem is None and self._problem is not None:
            log.info("health file %s: touched again", self.path)
        self._problem = problem
