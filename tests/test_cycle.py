"""Cycles end to end with the real fping on loopback: targets come and go, bad input never stops
the loop, and the file on disk is always a complete, truthful one."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node_ping import contract
from node_ping.probe import cycle, fping
from node_ping.probe.config import ListenAddress, Settings
from node_ping.probe.cycle import Outcome, Prober, run
from node_ping.targets import NodeTarget, TargetList, read_nodes
from tests.support.exposition import families


def write_nodes(path: Path, *pairs: tuple[str, str]) -> None:
    path.write_text(json.dumps([{"name": name, "ipAddress": address} for name, address in pairs]))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "textfile").mkdir()
    return tmp_path


def settings(workdir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "node_name": "self", "textfile_dir": workdir / "textfile", "config_path": workdir / "nodes.json",
        "external_config_path": workdir / "external.json", "count": 3, "period_ms": 10,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def prom(workdir: Path, node: str = "self") -> dict[str, list[tuple[dict[str, str], float]]]:
    return families((workdir / "textfile" / f"node-ping_{node}.prom").read_text())


def destinations(series: dict[str, list[tuple[dict[str, str], float]]], metric: str) -> dict[str, float]:
    return {labels.get("destination_node") or labels["destination_name"]: value
            for labels, value in series.get(metric, [])}


def errors_by_kind(series: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, float]:
    return {labels["kind"]: value for labels, value in series[contract.ERRORS.name]}


class TestTargetsChange:
    """Nodes joining and leaving apply on the next cycle, with no restart."""

    def test_join_and_leave(self, workdir: Path) -> None:
        nodes = workdir / "nodes.json"
        write_nodes(nodes, ("self", "127.0.0.1"), ("a", "127.0.0.2"))
        prober = Prober(settings(workdir))
        stop = threading.Event()
        assert prober.cycle(stop).ok
        assert destinations(prom(workdir), contract.NODE.packets_sent.name) == {"a": 3}

        write_nodes(nodes, ("self", "127.0.0.1"), ("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "::1"))
        assert prober.cycle(stop).ok
        sent = destinations(prom(workdir), contract.NODE.packets_sent.name)
        assert sent == {"a": 6, "b": 3, "c": 3}  # counters accumulate; newcomers start at one cycle

        write_nodes(nodes, ("self", "127.0.0.1"), ("c", "::1"))
        assert prober.cycle(stop).ok
        series = prom(workdir)
        assert destinations(series, contract.NODE.packets_sent.name) == {"c": 6}
        assert destinations(series, contract.NODE.rtt_min.name).keys() == {"c"}
        assert {labels["kind"]: v for labels, v in series[contract.TARGETS.name]} == {"node": 1, "external": 0}

    def test_external_target_sharing_a_node_address_is_probed_once_reported_twice(self, workdir: Path) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        (workdir / "external.json").write_text(json.dumps([{"name": "same", "host": "127.0.0.2"},
                                                           {"name": "lo", "host": "localhost"}]))
        prober = Prober(settings(workdir))
        assert prober.cycle(threading.Event()).ok
        series = prom(workdir)
        assert destinations(series, contract.NODE.packets_received.name) == {"a": 3}
        assert destinations(series, contract.EXTERNAL.packets_received.name) == {"same": 3, "lo": 3}


class TestManyTargets:
    """More targets than one fping process can track are split over several processes."""

    def test_split_over_several_fping_processes(self, workdir: Path) -> None:
        # At a 2 ms period one fping can hold only 11 targets' sequence numbers (see
        # fping.max_targets_per_run), so 30 targets need three processes side by side.
        write_nodes(workdir / "nodes.json", *[(f"n{i}", f"127.0.2.{i + 1}") for i in range(30)])
        prober = Prober(settings(workdir, period_ms=2))
        assert prober.cycle(threading.Event()).ok
        # Every target has a complete report from one of the processes. (Received is not asserted:
        # at a 2 ms period a briefly descheduled fping may rightly count a loopback reply as late.)
        sent = destinations(prom(workdir), contract.NODE.packets_sent.name)
        assert sent == {f"n{i}": 3 for i in range(30)}
        assert prober.snapshot.errors["fping"] == 0


class TestBadInput:
    """Bad input: one log line, an error metric, and probing goes on with the last good list."""

    def test_broken_config_keeps_last_good_list(self, workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
        nodes = workdir / "nodes.json"
        write_nodes(nodes, ("a", "127.0.0.2"))
        prober = Prober(settings(workdir))
        stop = threading.Event()
        assert prober.cycle(stop).ok
        nodes.write_text('[{"name": "a", "ipAddress": ')  # a ConfigMap update cut short
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                prober.cycle(stop)
        series = prom(workdir)
        assert destinations(series, contract.NODE.packets_sent.name) == {"a": 12}
        errors = {labels["kind"]: v for labels, v in series[contract.ERRORS.name]}
        assert errors["config"] == 3
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings  # once, not once per cycle
        assert "not valid JSON" in warnings[0] and "last good list of 1" in warnings[0]

    def test_config_flipping_every_cycle(self, workdir: Path) -> None:
        nodes = workdir / "nodes.json"
        prober = Prober(settings(workdir))
        stop = threading.Event()
        for i in range(6):
            if i % 2:
                nodes.write_text("{}")
            else:
                write_nodes(nodes, ("a", "127.0.0.2"), (f"n{i}", f"127.0.1.{i + 1}"))
            prober.cycle(stop)
        sent = destinations(prom(workdir), contract.NODE.packets_sent.name)
        assert sent == {"a": 18, "n4": 6}

    def test_a_list_of_only_bad_entries_keeps_the_last_good_list(self, workdir: Path) -> None:
        nodes = workdir / "nodes.json"
        write_nodes(nodes, ("a", "127.0.0.2"))
        prober = Prober(settings(workdir))
        prober.cycle(threading.Event())
        nodes.write_text(json.dumps([{"name": "a"}, {"name": "b", "ipAddress": "nonsense"}]))
        prober.cycle(threading.Event())
        assert destinations(prom(workdir), contract.NODE.packets_sent.name) == {"a": 6}
        assert prober.snapshot.errors["config"] == 1

    def test_bad_entries_are_skipped_the_rest_probed(self, workdir: Path) -> None:
        (workdir / "nodes.json").write_text(json.dumps([
            {"name": "a", "ipAddress": "127.0.0.2"}, {"name": "evil", "ipAddress": "-f/etc/passwd"},
            {"name": "dup", "ipAddress": "127.0.0.2"}, {"name": "noaddr"}]))
        prober = Prober(settings(workdir))
        prober.cycle(threading.Event())
        series = prom(workdir)
        assert destinations(series, contract.NODE.packets_sent.name) == {"a": 3}
        assert {labels["kind"]: v for labels, v in series[contract.ERRORS.name]}["config"] == 1

    def test_fping_missing_then_installed(self, workdir: Path) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        good = Prober(settings(workdir))
        assert good.cycle(threading.Event()).ok
        before = prom(workdir)
        broken = settings(workdir, fping="/nonexistent/fping")
        good.settings = broken
        assert not good.cycle(threading.Event()).ok
        after = prom(workdir)
        # The counters of the last good cycle are still there; the error is visible next to them. The
        # RTT gauges describe the last cycle, and this one measured nothing: they are gone until it does.
        assert after[contract.NODE.packets_sent.name] == before[contract.NODE.packets_sent.name]
        assert before[contract.NODE.rtt_min.name] and contract.NODE.rtt_min.name not in after
        assert {labels["kind"]: v for labels, v in after[contract.ERRORS.name]}["fping"] == 1
        assert after[contract.EXCEPTIONS.name][0][1] == 1
        assert after[contract.LAST_SUCCESS.name] == before[contract.LAST_SUCCESS.name]

    def test_dns_outage_keeps_the_external_counters(self, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A resolver outage is a gap in the data, not a target that left: counters go on afterwards."""
        real_getaddrinfo = socket.getaddrinfo
        (workdir / "nodes.json").write_text("[]")
        (workdir / "external.json").write_text(json.dumps([{"name": "lo", "host": "localhost"}]))
        prober = Prober(settings(workdir))
        assert prober.cycle(threading.Event()).ok

        def failing_getaddrinfo(*_args: object, **_kwargs: object) -> list[object]:
            raise socket.gaierror(-3, "Temporary failure in name resolution")

        monkeypatch.setattr(socket, "getaddrinfo", failing_getaddrinfo)
        prober.cycle(threading.Event())
        during = prom(workdir)
        assert destinations(during, contract.EXTERNAL.packets_sent.name) == {"lo": 3}
        assert contract.EXTERNAL.rtt_min.name not in during or not during[contract.EXTERNAL.rtt_min.name]
        assert {labels["kind"]: v for labels, v in during[contract.ERRORS.name]}["dns"] == 1
        monkeypatch.setattr(socket, "getaddrinfo", real_getaddrinfo)
        prober.cycle(threading.Event())
        assert destinations(prom(workdir), contract.EXTERNAL.packets_sent.name) == {"lo": 6}

    def test_slow_dns_is_not_prober_lateness(self, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Lateness is the sign of a starved prober: a slow resolver lengthens the cycle, not that."""
        real_getaddrinfo = socket.getaddrinfo

        def slow_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.5)
            return real_getaddrinfo(*args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        (workdir / "external.json").write_text(json.dumps([{"name": "lo", "host": "localhost"}]))
        assert Prober(settings(workdir, count=1)).cycle(threading.Event()).ok
        series = prom(workdir)
        assert series[contract.CYCLE_DURATION.name][0][1] >= 0.5
        assert series[contract.CYCLE_LATENESS.name][0][1] < 0.3

    def test_an_fping_hung_until_killed_is_late(self, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The worst starvation of all must show, not the last good cycle's lateness."""
        hang = workdir / "fping-hangs"
        hang.write_text("#!/bin/sh\nexec sleep 60\n")
        hang.chmod(0o755)
        # The real limit is 1.5 x nominal + 10 s; half a second keeps the test short.
        monkeypatch.setattr(Settings, "fping_timeout_s", property(lambda _self: 0.5))
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        assert not Prober(settings(workdir, count=1, fping=str(hang))).cycle(threading.Event()).ok
        assert prom(workdir)[contract.CYCLE_LATENESS.name][0][1] >= 0.4

    def test_dns_failure_is_counted_and_other_targets_probed(self, workdir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
        # A resolver that fails stands in for a broken DNS server; no query leaves the machine.
        def failing_getaddrinfo(*_args: object, **_kwargs: object) -> list[object]:
            raise socket.gaierror(-2, "Name or service not known")

        monkeypatch.setattr(socket, "getaddrinfo", failing_getaddrinfo)
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        (workdir / "external.json").write_text(json.dumps([{"name": "web", "host": "example.com"}]))
        Prober(settings(workdir)).cycle(threading.Event())
        series = prom(workdir)
        assert destinations(series, contract.NODE.packets_sent.name) == {"a": 3}
        assert contract.EXTERNAL.packets_sent.name not in series
        assert {labels["kind"]: v for labels, v in series[contract.ERRORS.name]}["dns"] == 1


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a textfile directory that can be filled up or made read-only."""
    import os  # noqa: PLC0415

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mount = tmp_path / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class TestTextfileFaults:
    """A directory that cannot be written never loses the file that is already there."""

    def test_read_only_directory(self, workdir: Path, small_mount: Path) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        prober = Prober(settings(workdir, textfile_dir=small_mount))
        assert prober.cycle(threading.Event()).ok
        good = (small_mount / "node-ping_self.prom").read_text()
        subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
        outcome = prober.cycle(threading.Event())
        # Probing worked, but its result reached nobody: not a success (the liveness probe fails).
        assert outcome.probed and not outcome.published and not outcome.ok
        assert (small_mount / "node-ping_self.prom").read_text() == good
        assert prober.snapshot.errors["write"] == 1
        subprocess.run(["mount", "-o", "remount,rw", str(small_mount)], check=True)
        assert prober.cycle(threading.Event()).ok
        series = families((small_mount / "node-ping_self.prom").read_text())
        assert {labels["kind"]: v for labels, v in series[contract.ERRORS.name]}["write"] == 1
        assert destinations(series, contract.NODE.packets_sent.name) == {"a": 9}

    def test_full_directory(self, workdir: Path, small_mount: Path) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        prober = Prober(settings(workdir, textfile_dir=small_mount))
        assert prober.cycle(threading.Event()).ok
        good = (small_mount / "node-ping_self.prom").read_text()
        filler = small_mount / "other-exporter.prom"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k", "count=64"], check=False,
                       capture_output=True)
        prober.cycle(threading.Event())
        assert (small_mount / "node-ping_self.prom").read_text() == good
        assert sorted(p.name for p in small_mount.iterdir()) == ["node-ping_self.prom", "other-exporter.prom"]
        assert prober.snapshot.errors["write"] == 1
        filler.unlink()
        assert prober.cycle(threading.Event()).ok
        assert contract.ERRORS.name in (small_mount / "node-ping_self.prom").read_text()

    def test_directory_removed_and_recreated(self, workdir: Path) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        textfile = workdir / "textfile"
        prober = Prober(settings(workdir))
        prober.cycle(threading.Event())
        (textfile / "node-ping_self.prom").unlink()
        textfile.rmdir()
        prober.cycle(threading.Event())
        assert prober.snapshot.errors["write"] == 1
        textfile.mkdir()
        prober.cycle(threading.Event())
        assert destinations(prom(workdir), contract.NODE.packets_sent.name) == {"a": 9}


class TestSharedNetworkNamespace:
    def test_taking_turns_is_logged_once_while_it_lasts(self, workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
        """Some turns come at once while another node-ping runs: that is not "resolved". The waits
        are played by a stand-in for fping.run_all; the lock itself is tested in test_fping.py."""
        real_run_all = fping.run_all
        waits = iter([0.5, 0.0, 0.5, 0.0, 0.0, 0.5] + [0.0] * 10)

        def run_all(*args: Any, **kwargs: Any) -> fping.FpingResult:
            return dataclasses.replace(real_run_all(*args, **kwargs), waited_s=next(waits))

        monkeypatch.setattr(fping, "run_all", run_all)
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        prober = Prober(settings(workdir, count=1))
        with caplog.at_level(logging.INFO, logger="node_ping.probe"):
            for _ in range(15):
                prober.cycle(threading.Event())
            messages = [r.getMessage() for r in caplog.records if "network namespace" in r.getMessage()]
            assert len(messages) == 1 and "takes turns" in messages[0]
            prober.cycle(threading.Event())  # the tenth in a row without a wait
        assert caplog.records[-1].getMessage() == "network namespace: resolved"


class TestRun:
    """The loop itself."""

    def test_cycles_limit_and_health_callback(self, workdir: Path) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        beats: list[int] = []
        prober = Prober(settings(workdir, cycles=3))
        assert run(prober, threading.Event(), lambda: beats.append(1)) == 0
        assert prober.snapshot.cycles == 3 and len(beats) == 3

    def test_health_file_touched_and_an_unwritable_one_logged_once(self, workdir: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        good = Prober(settings(workdir, cycles=1, health_file=workdir / "health"))
        assert run(good, threading.Event(), good.touch_health) == 0
        assert (workdir / "health").exists()
        bad = Prober(settings(workdir, cycles=3, period_ms=1, health_file=workdir / "missing" / "health"))
        with caplog.at_level(logging.WARNING):
            assert run(bad, threading.Event(), bad.touch_health) == 0
        warnings = [r.getMessage() for r in caplog.records if "health file" in r.getMessage()]
        assert len(warnings) == 1 and "liveness probe will fail" in warnings[0]

    def test_last_cycle_failing_is_exit_code_1(self, workdir: Path) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        prober = Prober(settings(workdir, cycles=1, fping="/nonexistent/fping"))
        assert run(prober, threading.Event()) == 1

    def test_unwritable_textfile_is_a_failed_cycle_unless_served_over_http(self, workdir: Path) -> None:
        """Nobody sees the write error counter of a file that cannot be written: only the
        liveness probe can tell. With the HTTP endpoint on, the result is still published."""
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        beats: list[int] = []
        missing = workdir / "no-such-dir"
        prober = Prober(settings(workdir, cycles=2, period_ms=1, textfile_dir=missing))
        assert run(prober, threading.Event(), lambda: beats.append(1)) == 1
        assert beats == [] and prober.snapshot.errors["write"] == 2
        served = Prober(settings(workdir, cycles=2, period_ms=1, textfile_dir=missing,
                                 listen=ListenAddress("127.0.0.1", 9)))
        assert run(served, threading.Event(), lambda: beats.append(1)) == 0
        assert beats == [1, 1] and served.snapshot.errors["write"] == 2

    @pytest.mark.parametrize("content", [None, "not json", '{"name": "a"}'], ids=["missing", "not-json", "object"])
    def test_a_node_list_never_read_is_exit_code_1_but_healthy(self, workdir: Path, content: str | None) -> None:
        """`once` on a missing or broken nodes.json probed nothing it was asked to: a script must see
        that. The liveness probe must not: a restart would not fix the ConfigMap."""
        if content is not None:
            (workdir / "nodes.json").write_text(content)
        beats: list[int] = []
        prober = Prober(settings(workdir, cycles=1))
        assert run(prober, threading.Event(), lambda: beats.append(1)) == 1
        assert beats == [1] and prober.snapshot.errors["config"] == 1

    def test_a_broken_list_with_a_last_good_one_is_exit_code_0(self, workdir: Path) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        prober = Prober(settings(workdir, cycles=1))
        assert run(prober, threading.Event()) == 0
        (workdir / "nodes.json").write_text("not json")
        prober.settings = settings(workdir, cycles=1)
        assert run(prober, threading.Event()) == 0  # still probing the last good list
        assert prober.snapshot.errors["config"] == 1
        assert destinations(prom(workdir), contract.NODE.packets_sent.name) == {"a": 6}

    def test_a_bug_in_a_cycle_does_not_end_the_loop(self, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        prober = Prober(settings(workdir, cycles=2, period_ms=1))
        calls = iter([ZeroDivisionError("bug"), None])
        original = prober.cycle

        def flaky(stop: threading.Event) -> Outcome:
            error = next(calls)
            if error:
                raise error
            return original(stop)

        monkeypatch.setattr(prober, "cycle", flaky)
        assert run(prober, threading.Event()) == 0
        # A cycle that failed is a cycle: counted, or a prober failing every time reads as stopped.
        assert prober.snapshot.exceptions == 1 and prober.snapshot.cycles == 2
        assert prober.snapshot.errors[contract.INTERNAL_ERROR] == 1
        # The count reached the file too: that is where an operator sees it.
        assert prom(workdir)[contract.EXCEPTIONS.name] == [({"source_node": "self"}, 1.0)]

    def test_a_bug_in_every_cycle_is_visible_in_the_file(self, workdir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        prober = Prober(settings(workdir, cycles=3, period_ms=1))

        def broken(_stop: threading.Event) -> bool:
            raise KeyError("bug")

        monkeypatch.setattr(prober, "cycle", broken)
        assert run(prober, threading.Event()) == 1
        series = prom(workdir)
        assert series[contract.EXCEPTIONS.name] == [({"source_node": "self"}, 3.0)]
        assert series[contract.CYCLES.name] == [({"source_node": "self"}, 3.0)]
        assert errors_by_kind(series)[contract.INTERNAL_ERROR] == 3


class TestFailedCycles:
    """However a cycle fails, it is counted as a cycle and by kind of error, and the file it leaves
    never passes the previous cycle's RTT gauges off as new: they go, the counters stay."""

    def test_an_fping_that_cannot_be_executed(self, workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        prober = Prober(settings(workdir, cycles=1))
        assert run(prober, threading.Event()) == 0
        before = prom(workdir)
        not_a_program = workdir / "fping"
        not_a_program.write_bytes(b"\x7fELF but not a program")  # executable bit; the kernel refuses it
        not_a_program.chmod(0o755)
        prober.settings = settings(workdir, cycles=1, fping=str(not_a_program))
        with caplog.at_level(logging.WARNING):
            assert run(prober, threading.Event()) == 1
        after = prom(workdir)
        assert before[contract.NODE.rtt_min.name] and contract.NODE.rtt_min.name not in after
        assert contract.NODE.rtt_max.name not in after and contract.NODE.rtt_mdev.name not in after
        assert after[contract.NODE.packets_sent.name] == before[contract.NODE.packets_sent.name]
        assert errors_by_kind(after)[contract.FPING_ERROR] == 1
        assert after[contract.CYCLES.name] == [({"source_node": "self"}, 2.0)]
        assert after[contract.LAST_SUCCESS.name] == before[contract.LAST_SUCCESS.name]
        assert any("Exec format error" in r.getMessage() for r in caplog.records)

    def test_an_unexpected_exception(self, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        (workdir / "external.json").write_text(json.dumps([{"name": "lo", "host": "127.0.0.3"}]))
        prober = Prober(settings(workdir, cycles=1))
        assert run(prober, threading.Event()) == 0
        before = prom(workdir)

        def out_of_memory(*_args: object) -> None:
            raise MemoryError

        # Memory runs out after fping ran, while its report is read.
        monkeypatch.setattr(cycle, "summarize", out_of_memory)
        assert run(prober, threading.Event()) == 1
        after = prom(workdir)
        for family in (contract.NODE, contract.EXTERNAL):  # what a host prober exports
            assert before[family.rtt_min.name], family.prefix
            for gauge in (family.rtt_min, family.rtt_max, family.rtt_mdev):
                assert gauge.name not in after, gauge.name
            assert after[family.packets_sent.name] == before[family.packets_sent.name]
        assert errors_by_kind(after) == {**errors_by_kind(before), contract.INTERNAL_ERROR: 1}
        assert after[contract.CYCLES.name] == [({"source_node": "self"}, 2.0)]
        assert after[contract.EXCEPTIONS.name] == [({"source_node": "self"}, 1.0)]
        assert after[contract.LAST_SUCCESS.name] == before[contract.LAST_SUCCESS.name]


class TestTargetsFpingCannotProbe:
    """One entry fping cannot report on never fails the cycle of the others, nor the liveness probe."""

    def test_such_entries_are_refused_and_the_rest_probed(self, workdir: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
        (workdir / "nodes.json").write_text(json.dumps([
            {"name": "a", "ipAddress": "127.0.0.2"}, {"name": "mapped-any", "ipAddress": "::ffff:0.0.0.0"},
            {"name": "mapped-multicast", "ipAddress": "::ffff:224.0.0.1"},
            {"name": "gone", "ipAddress": "fe80::1%np-absent0"}]))
        beats: list[int] = []
        prober = Prober(settings(workdir, cycles=2, period_ms=1))
        with caplog.at_level(logging.WARNING):
            assert run(prober, threading.Event(), lambda: beats.append(1)) == 0
        assert beats == [1, 1]
        series = prom(workdir)
        assert destinations(series, contract.NODE.packets_sent.name) == {"a": 6}
        # Bad entries every cycle they are there: a config error each, never an fping one.
        assert errors_by_kind(series)[contract.CONFIG_ERROR] == 2 and errors_by_kind(series)[contract.FPING_ERROR] == 0
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                      and "network namespace" not in r.getMessage()]
        assert "'::ffff:0.0.0.0' is not a valid unicast" in warning
        assert "'::ffff:224.0.0.1' is not a valid unicast" in warning
        assert "interface 'np-absent0', which this node does not have" in warning

    def test_a_target_fping_reports_nothing_on_is_named_and_the_rest_stands(
            self, workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
        """The list is read as usual, plus a link-local target whose interface is not there: an entry
        that passed the check when it was read, and whose interface went before fping ran."""
        def with_a_gone_interface(path: Path, setting: str) -> TargetList[NodeTarget]:
            loaded = read_nodes(path, setting)
            return TargetList((*loaded.targets, NodeTarget("gone", "fe80::1%np-absent0")), loaded.problems)

        monkeypatch.setattr(cycle, "read_nodes", with_a_gone_interface)
        write_nodes(workdir / "nodes.json", ("a", "127.0.0.2"))
        beats: list[int] = []
        prober = Prober(settings(workdir, cycles=1))
        with caplog.at_level(logging.WARNING):
            # Not complete (a script running `once` sees it), but healthy: fping itself works.
            assert run(prober, threading.Event(), lambda: beats.append(1)) == 1
        assert beats == [1]
        series = prom(workdir)
        assert destinations(series, contract.NODE.packets_sent.name) == {"a": 3}
        assert destinations(series, contract.NODE.rtt_min.name).keys() == {"a"}
        assert errors_by_kind(series)[contract.FPING_ERROR] == 1
        assert series[contract.EXCEPTIONS.name] == [({"source_node": "self"}, 0.0)]
        assert any("fping reported nothing on node gone (fe80::1%np-absent0)" in r.getMessage()
                   for r in caplog.records)
