"""What /proc says about a process the tests started: its children, whether it still runs, its peak memory."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path


def child_pids(pid: int) -> list[int]:
    """The children of every thread of `pid` (a child belongs to the thread that started it)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # the thread may have ended
            found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def runs(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan's zombie may wait for a busy init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def peak_memory_bytes(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def wait_until(condition: Callable[[], object], seconds: float, what: str) -> None:
    """Poll `condition` until it is true; fail naming `what` after `seconds` (a bound on a hang)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:g} s")
        time.sleep(0.02)
