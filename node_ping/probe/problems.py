"""What the loop keeps between cycles besides its counters: each target file's last good list, and
problems logged once when they appear or change and once when they clear."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from node_ping.targets import ConfigError, ExternalTarget, NodeTarget, TargetList

log = logging.getLogger(__name__)

K = TypeVar("K", NodeTarget, ExternalTarget)


class Problems:
    """Log a problem once when it appears or changes, and once when it clears: one clear line,
    not one per cycle for as long as the problem lasts."""

    def __init__(self) -> None:
        self._current: dict[str, str] = {}

    def report(self, key: str, message: str | None) -> None:
        previous = self._current.get(key)
        if message is None:
            if previous is not None:
                log.info("%s: resolved", key)
                del self._current[key]
        elif message != previous:
            log.warning("%s", message)
            self._current[key] = message


class LastGood(Generic[K]):
    """A target file, and the last version of it that could be used."""

    def __init__(self, name: str, read: Callable[[], TargetList[K]]) -> None:
        self.name = name
        self._read: Callable[[], TargetList[K]] = read
        self.targets: tuple[K, ...] = ()
        # Read at least once: a cycle probes what it last said (perhaps nothing), not blind.
        self.usable = False

    def _kept(self) -> str:
        return f"; still probing the last good list of {len(self.targets)}" if self.targets else ""

    def load(self, problems: Problems) -> bool:
        """Re-read the file; on failure keep the last good list. True if the file was read without a problem."""
        try:
            loaded = self._read()
        except ConfigError as err:
            problems.report(self.name, f"{err}{self._kept()}")
            return False
        if loaded.problems and not loaded.targets and self.targets:
            # Every entry bad is a broken file, not an empty cluster: do not drop every series.
            problems.report(self.name, f"no usable entry: {some(loaded.problems, sep='; ')}{self._kept()}")
            return False
        problems.report(self.name, None)
        problems.report(f"{self.name} entries", some(loaded.problems, sep="; ") if loaded.problems else None)
        self.targets = loaded.targets
        self.usable = True
        return not loaded.problems


def some(items: Sequence[str], sep: str = ", ", shown: int = 5) -> str:
    """The first few items, and how many more: one readable line even for 5,000 bad entries."""
    more = f"{sep}and {len(items) - shown} more" if len(items) > shown else ""
    return sep.join(items[:shown]) + more
