"""The .prom file in the shared textfile directory: atomic, and only ever our own files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from node_ping.probe.textfile import (
    MAX_NAME_BYTES,
    TEMP_SUFFIX,
    TEMP_TOKEN_CHARS,
    output_path,
    remove_stale,
    temp_prefix,
    write_atomic,
)


class TestWriteAtomic:
    """Readers see the old file or the new one, never a half-written one."""

    def test_replaces_content_and_leaves_no_temp_file(self, tmp_path: Path) -> None:
        path = output_path(tmp_path, "node-ping_", "n1")
        write_atomic(path, "a 1\n")
        write_atomic(path, "a 2\n")
        assert path.read_text() == "a 2\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["node-ping_n1.prom"]
        assert path.stat().st_mode & 0o777 == 0o644

    def test_failure_keeps_the_old_file(self, tmp_path: Path) -> None:
        path = tmp_path / "node-ping_n1.prom"
        write_atomic(path, "old 1\n")
        with pytest.raises(UnicodeEncodeError):
            write_atomic(path, "bad \udcff\n")  # cannot be encoded: fails mid-write
        assert path.read_text() == "old 1\n"
        assert [p.name for p in tmp_path.iterdir()] == ["node-ping_n1.prom"]

    def test_missing_directory_raises_and_leaves_nothing(self, tmp_path: Path) -> None:
        # A read-only and a full directory are covered with a real tmpfs in test_cycle.py.
        with pytest.raises(FileNotFoundError):
            write_atomic(tmp_path / "gone" / "node-ping_n1.prom", "a 1\n")
        assert list(tmp_path.iterdir()) == []


class TestRemoveStale:
    """Start-up clean-up touches our prefix only: other exporters share the directory."""

    def test_removes_only_own_files(self, tmp_path: Path) -> None:
        ours = ["node-ping_old-node.prom", "node-ping_n1.prom", "node-ping_n1.prom.0123456789abcdef.tmp"]
        theirs = ["node_exporter_smartmon.prom", "node-ping.prom", "xnode-ping_a.prom", "node-ping_notes.txt"]
        for name in ours + theirs:
            (tmp_path / name).write_text("x 1\n")
        an_hour_later = time.time() + 3600
        removed = remove_stale(tmp_path, "node-ping_", now=an_hour_later)
        assert sorted(p.name for p in removed) == sorted(ours)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)

    def test_keeps_this_nodes_own_file_for_the_first_cycle_to_replace(self, tmp_path: Path) -> None:
        """Until the first cycle ends its series go on: a restart is no gap on the dashboard."""
        own = output_path(tmp_path, "node-ping_", "n1")
        for name in ("node-ping_n1.prom", "node-ping_renamed.prom"):
            (tmp_path / name).write_text("x 1\n")
        assert remove_stale(tmp_path, "node-ping_", keep=own) == [tmp_path / "node-ping_renamed.prom"]
        assert own.exists()

    def test_a_fresh_temp_file_is_another_writers_and_stays(self, tmp_path: Path) -> None:
        """A second instance starting on the node (a surge during a rolling update) must not pull the
        temp file from under the first one's write."""
        in_flight = tmp_path / "node-ping_n1.prom.0123456789abcdef.tmp"
        in_flight.write_text("x 1\n")
        assert remove_stale(tmp_path, "node-ping_") == []
        assert in_flight.exists()


class TestNames:
    def test_temp_names_differ_between_writers(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Named by a random token, not the pid: in containers every node-ping is pid 1."""
        path = output_path(tmp_path, "node-ping_", "n1")
        seen: list[str] = []
        real_replace = os.replace

        def spy(src: str | Path, dst: str | Path) -> None:
            seen.append(Path(src).name)
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", spy)
        for value in range(20):
            write_atomic(path, f"a {value}\n")
        assert len(set(seen)) == 20
        assert all(name.startswith("node-ping_n1.prom.") and name.endswith(".tmp") for name in seen)

    def test_longest_output_name_still_has_room_for_the_temp_token(self, tmp_path: Path) -> None:
        name = "node-ping_" + "n" * (MAX_NAME_BYTES - len("node-ping_") - len(".prom"))
        path = tmp_path / f"{name}.prom"
        assert len(path.name) == MAX_NAME_BYTES
        write_atomic(path, "a 1\n")
        assert [p.name for p in tmp_path.iterdir()] == [path.name]
        assert len(temp_prefix(path.name)) + TEMP_TOKEN_CHARS + len(TEMP_SUFFIX) <= MAX_NAME_BYTES

    def test_refuses_empty_prefix(self, tmp_path: Path) -> None:
        (tmp_path / "other.prom").write_text("x 1\n")
        with pytest.raises(ValueError, match="other exporters"):
            remove_stale(tmp_path, "")
        assert (tmp_path / "other.prom").exists()
