"""Stopping the real processes tests start (node-exporter, Prometheus, node-ping, responders)."""

from __future__ import annotations

import subprocess
from typing import Any


def stop(process: subprocess.Popen[Any], grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, and always reap: no test leaves a process behind."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
