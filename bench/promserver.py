"""The real promtool and prometheus for benchmarks, and processes measured one at a time.

`measured()` runs a command with a timeout and reports its wall time, exit code and peak RSS (from
wait4, so the figure is that process's own, not the largest of all children so far).
`backfill()` turns an OpenMetrics file into TSDB blocks with `promtool tsdb create-blocks-from
openmetrics`; `running_prometheus()` serves a TSDB directory on a free loopback port with the query
limits given, and stops it however the block ends. The tests have their own copy of the last two
(tests/support/promdata.py): benchmarks do not import tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# No scrape jobs: the backfilled data is all the TSDB holds, and nothing is fetched from anywhere.
CONFIG = "global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\n"
READY_TIMEOUT_S = 120.0  # opening the index of millions of series takes a while
STOP_GRACE_S = 30.0
_POLL_S = 0.05


def missing_tools() -> str | None:
    """None if prometheus and promtool are installed, else what is missing."""
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package prometheus)"
    return None


@dataclass(frozen=True)
class Measured:
    """One finished process: exit code (None: killed at its timeout), wall time, peak RSS."""

    returncode: int | None
    wall_s: float
    peak_rss_mb: float
    stderr: str


def measured(argv: Sequence[str], timeout_s: float, *, stdout: Path | None = None, cwd: Path | None = None,
             env: Mapping[str, str] | None = None) -> Measured:
    """Run `argv` (in `cwd` and `env`, if given) to its end or `timeout_s`, stdout to the file
    `stdout` (or nowhere), stderr kept."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(stdout.open("wb")) if stdout else subprocess.DEVNULL
        err = stack.enter_context(tempfile.TemporaryFile())
        process = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True, cwd=cwd, env=env)
        status: int | None = None
        try:
            status, usage = _wait4(process.pid, started + timeout_s)
        finally:
            if status is None:  # its time is up, or ours (SIGTERM): kill its session, reap it for its usage
                os.killpg(process.pid, signal.SIGKILL)
                _pid, _status, usage = os.wait4(process.pid, 0)
        code = None if status is None else os.waitstatus_to_exitcode(status)
        process.returncode = -signal.SIGKILL if code is None else code  # reaped here, not by Popen
        wall = time.monotonic() - started
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return Measured(code, wall, usage.ru_maxrss / 1024, stderr)


def _wait4(pid: int, deadline: float) -> tuple[int | None, resource.struct_rusage]:
    while True:
        reaped, status, usage = os.wait4(pid, os.WNOHANG)
        if reaped == pid:
            return status, usage
        if time.monotonic() >= deadline:
            return None, usage
        time.sleep(_POLL_S)


def backfill(source: Path, data_dir: Path, timeout_s: float) -> Measured:
    """`promtool tsdb create-blocks-from openmetrics` of `source` into `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # promtool keeps its head in a temp dir, left behind when it is killed: put it where we clean up.
    scratch = data_dir.parent / f"{data_dir.name}.promtool-tmp"
    scratch.mkdir(exist_ok=True)
    try:
        result = measured(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(data_dir)],
                          timeout_s, env={**os.environ, "TMPDIR": str(scratch)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if result.returncode != 0:
        what = "timed out" if result.returncode is None else f"exited {result.returncode}"
        raise RuntimeError(f"promtool {what} after {result.wall_s:.0f} s: {result.stderr[-2000:]}")
    return result


def directory_size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


@dataclass(frozen=True)
class Server:
    """A running prometheus: its base URL and process id."""

    url: str
    pid: int
    query_log: Path

    def slowest(self, since: int, count: int) -> list[tuple[float, str]]:
        """The `count` slowest queries (seconds, PromQL) logged after byte `since` of the query log."""
        with self.query_log.open("rb") as log:
            log.seek(since)
            entries = [json.loads(line) for line in log if line.strip()]
        timed = [(float(e.get("stats", {}).get("timings", {}).get("evalTotalTime", 0.0)), str(e["params"]["query"]))
                 for e in entries if "params" in e]
        return sorted(timed, reverse=True)[:count]

    def query_log_size(self) -> int:
        return self.query_log.stat().st_size if self.query_log.exists() else 0

    def peak_rss_mb(self) -> float:
        """The process's resident-set high-water mark so far (VmHWM)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024  # type: ignore[union-attr]

    def handler_totals(self, handler: str) -> dict[str, float]:
        """Prometheus's own count, size and time of the responses of one HTTP handler, from /metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as response:  # noqa: S310 - our http URL
            text = response.read().decode()
        totals = {}
        for name, key in (("prometheus_http_response_size_bytes_sum", "bytes"),
                          ("prometheus_http_response_size_bytes_count", "responses"),
                          ("prometheus_http_request_duration_seconds_sum", "seconds")):
            match = re.search(rf'^{name}{{handler="{re.escape(handler)}"}} (\S+)$', text, re.MULTILINE)
            totals[key] = float(match.group(1)) if match else 0.0
        return totals


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:  # noqa: S310 - our http URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def limits(max_samples: int, timeout_s: int) -> list[str]:
    """The query limits prometheus runs with: a full-mesh matrix query loads tens of millions of samples."""
    return [f"--query.max-samples={max_samples}", f"--query.timeout={timeout_s}s"]


@contextlib.contextmanager
def running_prometheus(data_dir: Path, flags: Sequence[str]) -> Iterator[Server]:
    """prometheus on 127.0.0.1 over `data_dir` with `flags` until the block ends. The config and log
    go next to `data_dir`; the process is stopped however the block ends."""
    config = data_dir.parent / f"{data_dir.name}.prometheus.yml"
    # Every query with its timings, so a slow diagnose shows which of its queries is slow.
    query_log = data_dir.parent / f"{data_dir.name}.queries.log"
    config.write_text(CONFIG + f"  query_log_file: {json.dumps(str(query_log))}\n")
    log_file = data_dir.parent / f"{data_dir.name}.prometheus.log"
    for _attempt in range(3):  # another process may take the free port before prometheus binds it
        url = f"http://127.0.0.1:{_free_port()}"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
                 f"--web.listen-address={url.removeprefix('http://')}", "--log.level=warn", *flags],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while process.poll() is None and time.monotonic() < deadline and not _ready(url):
                time.sleep(0.2)
            if process.poll() is None and _ready(url):
                yield Server(url, process.pid, query_log)
                return
            if "address already in use" in log_file.read_text(errors="replace"):
                continue
            raise RuntimeError(f"prometheus did not become ready; its log:\n{log_file.read_text(errors='replace')}")
        finally:
            _stop(process)
    raise RuntimeError("prometheus found no free port in three tries")
