"""Start a real prometheus-node-exporter that reads a textfile directory, for tests."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.support.ports import free_port, get
from tests.support.processes import stop as stop_process

NODE_EXPORTER = "prometheus-node-exporter"


@contextlib.contextmanager
def node_exporter(textfile_dir: Path, netns: str | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """Yield the /metrics URL of a node-exporter with only the textfile collector enabled."""
    if shutil.which(NODE_EXPORTER) is None:
        raise RuntimeError(f"{NODE_EXPORTER} is not installed (Debian: apt-get install prometheus-node-exporter)")
    port = free_port()
    argv = [NODE_EXPORTER, "--collector.disable-defaults", "--collector.textfile",
            f"--collector.textfile.directory={textfile_dir}", f"--web.listen-address={host}:{port}"]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://{host}:{port}/metrics"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                get(url, timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stderr.read() if process.stderr and process.poll() is not None else ""
                    raise RuntimeError(f"node-exporter did not start: {output}") from None
                time.sleep(0.1)
        yield url
    finally:
        stop_process(process, grace_s=5)
