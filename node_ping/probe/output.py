"""fping's stderr as it comes: its report lines kept within bounds its command line justifies.

An fping (or something in its place) that writes without end cannot take node-ping's memory with
it: a line longer than a report line can be is dropped whole, never cut into a shorter report, and
report lines beyond one per target are dropped too; the last few other lines are kept for an error
message.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence

from node_ping.probe.report import parse_report

REPORT_ADDRESS_ROOM, REPORT_SAMPLE_ROOM, REPORT_SPARE_LINES = 256, 12, 16
"""Bytes a report line may take: an address and " : ", then per sample "-" or an RTT such as
" 1234.567"; and report lines kept beyond one per target (fping never writes more)."""

MESSAGE_LINES, MESSAGE_CHARS = 3, 300
"""The last lines of fping's other output kept for an error message, each cut to this length."""

_MAYBE_REPORT = re.compile(rb"\s*\S+\s+:\s+[-\d]")
"""Cheap first look at a line; parse_report decides. Rejects "duplicate for [0], ..." and the like."""


class Stderr:
    """fping's stderr as it comes: report lines kept up to bounds taken from its command line (a
    longer line is dropped whole, never cut into a shorter report), the last few other lines kept
    for an error message, the rest counted and dropped."""

    def __init__(self, argv: Sequence[str]) -> None:
        targets = len(argv) - argv.index("--") - 1 if "--" in argv else 1
        try:
            count = int(argv[argv.index("-C") + 1])
        except (ValueError, IndexError):
            count = 1
        self.max_line = REPORT_ADDRESS_ROOM + REPORT_SAMPLE_ROOM * count
        self.max_total = self.max_line * (targets + REPORT_SPARE_LINES)
        self.lines: list[str] = []
        self.kept = 0
        self.messages: deque[str] = deque(maxlen=MESSAGE_LINES)
        self.dropped_lines = 0
        self.cut_reports = 0
        self._partial = bytearray()
        self._overlong = False

    def feed(self, chunk: bytes) -> None:
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            self._hold(piece)
            self._end_line()
        self._hold(rest)

    def close(self) -> None:
        """End of output. A last line without a newline may have been cut off: a message at most."""
        if self._partial.strip() and not self._overlong:
            self.messages.append(self._partial[:MESSAGE_CHARS].decode("utf-8", "replace").strip())
        self._partial.clear()

    def _hold(self, piece: bytes) -> None:
        if self._overlong:
            return
        self._partial += piece
        if len(self._partial) > self.max_line:
            self._partial.clear()
            self._overlong = True

    def _end_line(self) -> None:
        line, overlong = bytes(self._partial), self._overlong
        self._partial.clear()
        self._overlong = False
        if overlong:
            self.cut_reports += 1  # perhaps a report, perhaps not: it cannot be read whole either way
            return
        text = line.decode("utf-8", "replace").strip()
        if _MAYBE_REPORT.match(line) and parse_report(text + "\n"):
            if self.kept + len(text) + 1 <= self.max_total:
                self.lines.append(text)
                self.kept += len(text) + 1
            else:
                self.cut_reports += 1
        elif text:
            self.dropped_lines += 1
            self.messages.append(text[:MESSAGE_CHARS])

    @property
    def report(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)
