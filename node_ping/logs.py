"""How the long-running commands (run, once, discover) log: one line format on stderr, and a crash
traceback that shows the values of local variables."""

from __future__ import annotations

import logging
import sys


def setup(verbose: bool) -> None:
    """Log INFO and up (DEBUG with `verbose`) to stderr; make a crash print better_exchook's traceback.

    Not for diagnose, whose locals may hold Prometheus credentials."""
    import better_exchook  # noqa: PLC0415  (only the commands that run for long need it)

    better_exchook.install()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
