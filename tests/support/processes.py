"""Starting and stopping the real processes tests run (node-ping, node-exporter, Prometheus, responders).

node-ping always runs with the project's virtualenv interpreter, never the machine's own Python: a
package installed there by hand would hide a missing install step.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def project_python() -> str:
    """The interpreter of the virtualenv the tests run in (its path, not the base interpreter's it
    links to: only the virtualenv's path finds the virtualenv's packages)."""
    if sys.prefix == sys.base_prefix:
        raise RuntimeError(f"the tests run in {sys.executable}, not in a virtualenv: run them with "
                           "`bash scripts/test.sh`, which uses the project's .venv")
    return sys.executable


PYTHON = project_python()
NODE_PING = (PYTHON, "-m", "node_ping")
"""How tests start node-ping as its own process."""


def stop(process: subprocess.Popen[Any], grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, and always reap: no test leaves a process behind."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def communicate(process: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Wait for the process; its stdout and stderr. `timeout` only bounds a hang: past it the process
    is killed and reaped (and TimeoutExpired raised), so that nothing outlives a failed test."""
    try:
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
