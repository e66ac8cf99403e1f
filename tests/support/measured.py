"""Running a command to its end within a time bound, and how much memory it took at its peak.

The peak is the command's ru_maxrss. Linux carries ru_maxrss across fork and exec: a process that
pytest starts inherits pytest's own peak (hundreds of MB late in a run). So the command is started
by a small launcher process instead, whose peak is that of a bare interpreter; the launcher reports
the command's exit status and peak.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

_LAUNCHER = """\
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}")
"""


@dataclasses.dataclass(frozen=True)
class Finished:
    code: int
    stdout: str
    stderr: str
    peak_rss_bytes: int  # the command's own high-water mark of resident memory


def run_measured(argv: Sequence[str], within_s: float) -> Finished:
    """Run `argv` (its first element a path) to its end; if it has not ended within `within_s`, it
    is killed (with its launcher) and TimeoutError raised."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch, "report")
        process = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(report), *argv], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = process.communicate(timeout=within_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise TimeoutError(f"{argv!r} still ran after {within_s:g} s") from None
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        code, peak = report.read_text(encoding="utf-8").split()
        return Finished(int(code), out.decode(), err.decode(), int(peak))
