"""Least privilege, proven with real processes: node-ping as root with every capability dropped but
NET_RAW probes normally; without NET_RAW it fails with an error that names NET_RAW, and its metrics
show the failure (an error count, no ping series, no RTT) rather than a made-up 100 % loss.

Each run happens in a fresh network namespace of its own (loopback only), so its
net.ipv4.ping_group_range can be opened or closed without touching the host's. `setpriv` plays the
container runtime: `--bounding-set` is `capabilities: {drop: [ALL], add: [...]}`, `--no-new-privs`
is `allowPrivilegeEscalation: false`, `--reuid` is `runAsUser`.

Debian's /usr/bin/fping carries the file capability cap_net_raw=ep. Two kernel rules decide what
that means: a binary whose file capability is not in the bounding set cannot be executed at all
(EPERM), and under no_new_privs a non-root process does not gain it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from node_ping import contract
from node_ping.probe.config import Settings
from node_ping.probe.cycle import Prober
from tests.support import netlab
from tests.support.exposition import families
from tests.support.processes import PYTHON

REPO = Path(__file__).parents[1]
NOBODY = 65534
NET_RAW = 1 << 13  # CAP_NET_RAW's bit in /proc/<pid>/status
COUNT = 3
NODES = '[{"name": "self", "ipAddress": "127.0.0.1"}, {"name": "lo2", "ipAddress": "127.0.0.2"}, ' \
        '{"name": "lo6", "ipAddress": "::1"}]'
PING_SERIES = (contract.NODE.packets_sent.name, contract.NODE.packets_received.name,
               contract.NODE.rtt_sum.name, contract.NODE.rtt_min.name, contract.NODE.rtt_max.name,
               contract.NODE.rtt_mdev.name)

Series = dict[str, list[tuple[dict[str, str], float]]]


def fping_version() -> tuple[int, ...]:
    text = subprocess.run(["fping", "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"(\d+)\.(\d+)", text)
    return tuple(int(part) for part in match.groups()) if match else (0,)


def blocked_ancestor(path: Path) -> Path | None:
    """The one directory on the way to `path` that other users cannot enter (e.g. pyenv's /root)."""
    blocked = [p for p in reversed(path.parents) if not os.stat(p).st_mode & stat.S_IXOTH]
    if len(blocked) > 1:
        pytest.skip(f"{path} sits behind several directories other users cannot enter: {blocked}")
    return blocked[0] if blocked else None


@dataclass
class Outcome:
    returncode: int
    log: str
    series: Series
    status: dict[str, str]  # /proc/self/status of a process started exactly like node-ping

    @property
    def effective_caps(self) -> int:
        return int(self.status["CapEff"], 16)

    @property
    def bounding_caps(self) -> int:
        return int(self.status["CapBnd"], 16)

    def by_destination(self, name: str) -> dict[str, float]:
        return {labels["destination_node"]: value for labels, value in self.series.get(name, [])}

    def value(self, name: str, **labels: str) -> float:
        (value,) = [v for found, v in self.series[name] if labels.items() <= found.items()]
        return value


@dataclass
class Sandbox:
    """A network namespace with only loopback, and a directory every user may read."""

    netns: str
    workdir: Path

    def run(self, *, uid: int, bounding: str, no_new_privs: bool, ping_group_range: str) -> Outcome:
        """`node-ping run --cycles 1` under the given uid, capability bounding set and no_new_privs."""
        netlab.sh("ip", "netns", "exec", self.netns, "sysctl", "-qw",
                  f"net.ipv4.ping_group_range={ping_group_range}")
        textfile = self.workdir / "textfile"
        shutil.rmtree(textfile, ignore_errors=True)
        textfile.mkdir()
        textfile.chmod(0o777)
        setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                   f"--bounding-set={bounding}", *(["--no-new-privs"] if no_new_privs else []), "--"]
        python = PYTHON  # the virtualenv's path: its packages, not the machine's
        node_ping = [python, "-m", "node_ping", "run", "--cycles", "1", "--node-name", "self",
                     "--textfile-dir", str(textfile), "--config", str(self.workdir / "nodes.json"),
                     "--external-config", str(self.workdir / "absent.json"),
                     "--count", str(COUNT), "--period-ms", "20"]
        status = [python, "-c", "print(open('/proc/self/status').read())"]
        results = [self._in_sandbox(uid, [*setpriv, *argv]) for argv in (status, node_ping)]
        prom = textfile / "node-ping_self.prom"
        return Outcome(returncode=results[1].returncode, log=results[1].stderr,
                       series=families(prom.read_text()) if prom.exists() else {},
                       status=dict(line.split(":\t", 1) for line in results[0].stdout.splitlines()
                                   if ":\t" in line))

    def _in_sandbox(self, uid: int, argv: list[str]) -> subprocess.CompletedProcess[str]:
        inner = ["ip", "netns", "exec", self.netns, *argv]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        blocked = blocked_ancestor(Path(os.path.realpath(sys.executable))) if uid else None
        if blocked is not None:
            # A private mount namespace in which the blocked directory (pyenv's /root) is an empty
            # tmpfs that anyone may enter, with just the Python installation mounted back into it.
            inside = Path(os.path.realpath(sys.executable)).relative_to(blocked).parts[0]
            hold = self.workdir / "hold"
            hold.mkdir(exist_ok=True)
            script = (f"set -e; mount --bind {blocked / inside} {hold}; "
                      f"mount -t tmpfs -o mode=0755 tmpfs {blocked}; mkdir {blocked / inside}; "
                      f"mount --move {hold} {blocked / inside}; exec \"$@\"")
            inner = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *inner]
        return subprocess.run(inner, capture_output=True, text=True, timeout=60, check=False, cwd=REPO, env=env)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    reason = netlab.available()
    if reason:
        pytest.skip(reason)
    for tool in ("setpriv", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (util-linux)")
    host_range = netlab.sh("sysctl", "-n", "net.ipv4.ping_group_range").stdout
    netns = f"np{os.getpid() % 100000}-priv"
    netlab.remove_leftovers(netns)
    workdir = Path(tempfile.mkdtemp(prefix="node-ping-priv-"))
    try:
        workdir.chmod(0o755)  # the non-root runs read nodes.json from here
        (workdir / "nodes.json").write_text(NODES)
        (workdir / "nodes.json").chmod(0o644)
        netlab.sh("ip", "netns", "add", netns)
        netlab.sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        yield Sandbox(netns, workdir)
    finally:
        netlab.sh("ip", "netns", "delete", netns, check=False)
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
    assert netlab.sh("sysctl", "-n", "net.ipv4.ping_group_range").stdout == host_range


def assert_probed(outcome: Outcome) -> None:
    """Every target answered every ping, and there is no error."""
    assert outcome.returncode == 0, outcome.log
    assert outcome.by_destination(contract.NODE.packets_sent.name) == {"lo2": COUNT, "lo6": COUNT}, outcome.log
    assert outcome.by_destination(contract.NODE.packets_received.name) == {"lo2": COUNT, "lo6": COUNT}
    assert set(outcome.by_destination(contract.NODE.rtt_max.name)) == {"lo2", "lo6"}
    assert outcome.value(contract.ERRORS.name, kind="fping") == 0


def assert_clear_failure(outcome: Outcome, message: str) -> None:
    """A log line that says what to do, an error count, and no ping numbers at all."""
    # The loop survives (no traceback); `--cycles 1` then ends with 1 because its one cycle failed.
    assert outcome.returncode == 1 and "Traceback" not in outcome.log, outcome.log
    warnings = [line for line in outcome.log.splitlines() if "WARNING" in line]
    assert any(message in line and "NET_RAW" in line for line in warnings), outcome.log
    assert outcome.value(contract.ERRORS.name, kind="fping") == 1
    assert outcome.value(contract.EXCEPTIONS.name) == 1
    for name in PING_SERIES:  # no "sent" to imply loss, no 0 ms RTT
        assert name not in outcome.series, (name, outcome.series[name])
    # Never a success: the gauge holds the start-up time, so "no success for 5 minutes" can fire.
    started = datetime.strptime(outcome.log[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the first log line
    assert abs(outcome.value(contract.LAST_SUCCESS.name) - started) < 1
    assert outcome.value(contract.TARGETS.name, kind="node") == 2


@pytest.mark.netns
class TestWithNetRaw:
    """The chart's setting: uid 0, every capability dropped but NET_RAW."""

    @pytest.mark.parametrize("no_new_privs", [True, False], ids=["no-escalation", "escalation-allowed"])
    def test_root_with_only_net_raw_probes(self, sandbox: Sandbox, no_new_privs: bool) -> None:
        outcome = sandbox.run(uid=0, bounding="-all,+net_raw", no_new_privs=no_new_privs, ping_group_range="1 0")
        assert outcome.status["Uid"].split()[0] == "0"
        assert outcome.bounding_caps == NET_RAW and outcome.effective_caps == NET_RAW
        assert_probed(outcome)

    def test_non_root_gets_net_raw_only_from_fpings_file_capability(self, sandbox: Sandbox) -> None:
        # A non-root user has no capability of its own; Debian's fping brings NET_RAW with it, as long
        # as escalation is allowed and NET_RAW is in the bounding set.
        outcome = sandbox.run(uid=NOBODY, bounding="-all,+net_raw", no_new_privs=False, ping_group_range="1 0")
        assert outcome.effective_caps == 0 and outcome.bounding_caps == NET_RAW
        if not os.getxattr("/usr/bin/fping", "security.capability", follow_symlinks=True):
            pytest.skip("this fping has no file capability")
        assert_probed(outcome)


@pytest.mark.netns
class TestWithoutNetRaw:
    """No NET_RAW: node-ping says so, counts an error and exports no ping numbers."""

    @pytest.mark.parametrize(("uid", "no_new_privs"), [(0, True), (0, False), (NOBODY, True)],
                             ids=["root-no-escalation", "root", "non-root"])
    def test_capability_dropped_fping_cannot_even_start(self, sandbox: Sandbox, uid: int,
                                                        no_new_privs: bool) -> None:
        # fping's file capability is not in the bounding set, so the kernel refuses to execute it.
        outcome = sandbox.run(uid=uid, bounding="-all", no_new_privs=no_new_privs, ping_group_range="1 0")
        assert outcome.bounding_caps == 0 and outcome.effective_caps == 0
        assert_clear_failure(outcome, "cannot execute fping: operation not permitted")

    def test_non_root_without_escalation_and_closed_ping_group_range(self, sandbox: Sandbox) -> None:
        # fping starts, but without its file capability (no_new_privs) and without ICMP datagram
        # sockets it cannot open any socket; under -q it exits 4 without a word.
        outcome = sandbox.run(uid=NOBODY, bounding="-all,+net_raw", no_new_privs=True, ping_group_range="1 0")
        assert outcome.effective_caps == 0 and outcome.status["NoNewPrivs"].strip() == "1"
        assert_clear_failure(outcome, "could not open an ICMP socket")

    def test_non_root_with_ping_group_range_uses_datagram_sockets(self, sandbox: Sandbox) -> None:
        # The unprivileged route: ICMP datagram sockets, allowed for the process's group. fping 5.1
        # sends on them but drops every reply (the kernel rewrites the ICMP identifier; fixed in
        # fping 5.2), so without the loopback check this would read as 100 % loss everywhere.
        outcome = sandbox.run(uid=NOBODY, bounding="-all,+net_raw", no_new_privs=True,
                              ping_group_range=f"{NOBODY} {NOBODY}")
        assert outcome.effective_caps == 0
        if fping_version() >= (5, 2):
            assert_probed(outcome)
        else:
            assert_clear_failure(outcome, "not even from 127.0.0.1")


def fake_fping(tmp_path: Path, answering: str) -> str:
    """A stand-in that reports every address after `--` as lost, except `answering`."""
    script = tmp_path / "fping"
    script.write_text(f"""#!/bin/sh
seen=
for a in "$@"; do
  if [ -n "$seen" ]; then
    if [ "$a" = "{answering}" ]; then echo "$a : 0.05 0.04 0.06" >&2; else echo "$a : - - -" >&2; fi
  fi
  [ "$a" = "--" ] && seen=1
done
exit 1
""")
    script.chmod(0o755)
    return str(script)


class TestNoReplyAtAll:
    """The loopback check behind the datagram-socket case, with stand-ins for fping."""

    @pytest.fixture
    def probe(self, tmp_path: Path) -> Callable[[str], tuple[bool, Series]]:
        (tmp_path / "nodes.json").write_text('[{"name": "a", "ipAddress": "10.0.0.2"}, '
                                             '{"name": "b", "ipAddress": "fd00::2"}]')
        (tmp_path / "textfile").mkdir()

        def run(answering: str) -> tuple[bool, Series]:
            prober = Prober(Settings(node_name="self", textfile_dir=tmp_path / "textfile",
                                     config_path=tmp_path / "nodes.json", external_config_path=tmp_path / "x.json",
                                     count=COUNT, period_ms=10, fping=fake_fping(tmp_path, answering)))
            ok = prober.cycle(threading.Event()).ok
            return ok, families((tmp_path / "textfile" / "node-ping_self.prom").read_text())

        return run

    def test_loopback_silent_too_means_fping_cannot_receive(self, probe: Callable[[str], tuple[bool, Series]]) -> None:
        ok, series = probe("nothing")
        assert not ok
        assert {labels["kind"]: v for labels, v in series[contract.ERRORS.name]}["fping"] == 1
        assert contract.NODE.packets_sent.name not in series

    def test_logged_once_while_it_lasts(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        (tmp_path / "nodes.json").write_text('[{"name": "a", "ipAddress": "10.0.0.2"}]')
        prober = Prober(Settings(node_name="self", textfile_dir=None, config_path=tmp_path / "nodes.json",
                                 external_config_path=tmp_path / "x.json", count=COUNT, period_ms=10,
                                 fping=fake_fping(tmp_path, "nothing")))
        with caplog.at_level(logging.INFO, logger="node_ping.probe.cycle"):
            for _ in range(3):
                assert not prober.cycle(threading.Event()).ok
        messages = [record.getMessage() for record in caplog.records]
        assert len([m for m in messages if "not even from 127.0.0.1" in m]) == 1, messages
        assert not [m for m in messages if "resolved" in m], messages

    def test_loopback_answering_means_the_loss_is_real(self, probe: Callable[[str], tuple[bool, Series]]) -> None:
        ok, series = probe("127.0.0.1")
        assert ok
        sent = {labels["destination_node"]: v for labels, v in series[contract.NODE.packets_sent.name]}
        received = {labels["destination_node"]: v for labels, v in series[contract.NODE.packets_received.name]}
        assert sent == {"a": COUNT, "b": COUNT} and received == {"a": 0, "b": 0}
        assert contract.NODE.rtt_min.name not in series
        assert all("127.0.0.1" not in str(labels) for labels, _ in series[contract.NODE.packets_sent.name])

    def test_one_target_answering_is_enough(self, probe: Callable[[str], tuple[bool, Series]]) -> None:
        # Loopback may be filtered on some hosts: as long as anything answers, the numbers stand.
        ok, series = probe("fd00::2")
        assert ok
        received = {labels["destination_node"]: v for labels, v in series[contract.NODE.packets_received.name]}
        assert received == {"a": 0, "b": COUNT}
