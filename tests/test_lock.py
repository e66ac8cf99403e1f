"""The fping lock cannot be used to blind the prober: a name held by another user is passed over.

Each test runs real `node-ping once` processes in a network namespace of its own, where a process
of uid 65534 (nobody) holds the lock's names as any user on a node could. Without the check,
node-ping waits for that holder until its cycle fails, and measures nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from node_ping import contract
from node_ping.probe import lock
from tests.support import netlab
from tests.support.exposition import families
from tests.support.processes import NODE_PING, REPO
from tests.support.squatter import squatting

NOBODY = 65534
COUNT = 3
NODES = [{"name": "lo2", "ipAddress": "127.0.0.2"}, {"name": "lo6", "ipAddress": "::1"}]


def once(host: netlab.Host, workdir: Path, *, count: int = COUNT, unshare_pid: bool = False) -> list[str]:
    """argv of `node-ping once` as node "a" in `host`, probing NODES over its loopback."""
    (workdir / "nodes.json").write_text(json.dumps(NODES))
    pid_namespace = ["unshare", "--pid", "--fork"] if unshare_pid else []
    return host.cmd(*pid_namespace, *NODE_PING, "once", "--node-name", "a", "--config", str(workdir / "nodes.json"),
                    "--external-config", str(workdir / "none.json"), "--count", str(count), "--period-ms", "20")


def assert_measured(returncode: int, out: str, err: str, count: int = COUNT) -> None:
    assert returncode == 0, err
    series = families(out)
    for name in (contract.NODE.packets_sent.name, contract.NODE.packets_received.name):
        assert {labels["destination_node"]: value for labels, value in series[name]} == \
            {"lo2": count, "lo6": count}, (name, err)
    (fping_errors,) = [v for labels, v in series[contract.ERRORS.name] if labels["kind"] == contract.FPING_ERROR]
    assert fping_errors == 0, err


def squatter_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "WARNING" in line and f"held by uid {NOBODY}" in line]


@pytest.mark.netns
class TestNamesHeldByAnotherUser:
    """Probing goes on whoever holds the names, and the log says who held them."""

    @pytest.mark.parametrize("listen", [False, True], ids=["bound", "listening"])
    @pytest.mark.parametrize("addresses", [(lock.LOCK_ADDRESS,), (lock.QUEUE_ADDRESS,),
                                           (lock.QUEUE_ADDRESS, lock.LOCK_ADDRESS)],
                             ids=["lock", "queue", "both"])
    def test_once_still_measures(self, lab_factory: Callable[[list[str]], netlab.Lab], tmp_path: Path,
                                 addresses: tuple[str, ...], listen: bool) -> None:
        (a,) = lab_factory(["a"]).hosts
        with squatting(a.cmd(), addresses, uid=NOBODY, listen=listen) as squatter:
            result = subprocess.run(once(a, tmp_path), capture_output=True, text=True, timeout=60, check=False,
                                    cwd=REPO)
        assert_measured(result.returncode, result.stdout, result.stderr)
        lines = squatter_lines(result.stderr)
        assert set(re.findall(r"the name @(\S+)", "\n".join(lines))) == {address[1:] for address in addresses}, \
            result.stderr
        # Its pid is known when it listens (SO_PEERCRED), its uid always (the socket's owner).
        pid = f"pid {squatter.pid}," if listen else "pid unknown"
        assert all(pid in line for line in lines), (pid, result.stderr)

    def test_two_node_pings_still_take_turns_with_the_lock_squatted(
            self, lab_factory: Callable[[list[str]], netlab.Lab], tmp_path: Path) -> None:
        """The queue, held through the run, keeps them apart: one waits for the other's fping."""
        (a,) = lab_factory(["a"]).hosts
        count = 25
        with squatting(a.cmd(), (lock.LOCK_ADDRESS,), uid=NOBODY, listen=False):
            processes = [subprocess.Popen(once(a, tmp_path, count=count, unshare_pid=True), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
            try:
                outputs = [process.communicate(timeout=60) for process in processes]
            finally:
                for process in processes:
                    process.kill()
                    process.wait()
        for (out, err), process in zip(outputs, processes, strict=True):
            assert_measured(process.returncode, out, err, count)
        assert any("another node-ping runs in this network namespace" in err for _, err in outputs), outputs

