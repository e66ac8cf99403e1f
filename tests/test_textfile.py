"""The .prom file in the shared textfile directory: atomic, and only ever our own files."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node_ping.probe.config import Settings
from node_ping.probe.cycle import Prober
from node_ping.probe.textfile import (
    MAX_NAME_BYTES,
    TEMP_SUFFIX,
    TEMP_TOKEN_CHARS,
    Taken,
    Writer,
    lock_name,
    output_path,
    read_text,
    remove_stale,
    temp_prefix,
    touch,
    write_atomic,
)

SHADOW = "only root may read this\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A root-only file outside the textfile directory, as /etc/shadow is: what a planted link aims at."""
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "shadow"
    path.write_text(SHADOW)
    path.chmod(0o600)
    return path


@pytest.fixture
def textfile_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "textfile"
    directory.mkdir()
    return directory


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def swap_temp_for_link(directory: Path, target: Path) -> None:
    """What a user who may write to the directory does: move our temp file away, put a link in its place."""
    (temp,) = temp_files(directory)
    temp.rename(directory.parent / "moved-away")
    temp.symlink_to(target)


def swapping(real: Callable[..., Any], before: Callable[[], None]) -> Callable[..., Any]:
    """`real`, but its first call runs `before` first: a step of another process, exactly there."""
    calls: list[int] = []

    def swapped(*args: Any, **kwargs: Any) -> Any:
        if not calls:
            calls.append(1)
            before()
        return real(*args, **kwargs)

    return swapped


def swapping_once(real: Callable[..., Any], directory: Path, target: Path) -> Callable[..., Any]:
    """`real`, but the first call swaps the temp file for a link first."""
    return swapping(real, lambda: swap_temp_for_link(directory, target))


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
        real_rename = os.rename

        def spy(src: str, dst: str, **kwargs: Any) -> None:
            seen.append(src)
            real_rename(src, dst, **kwargs)

        monkeypatch.setattr(os, "rename", spy)
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


class TestPlantedLinks:
    """A user who may write to the shared directory swaps a name of ours for a symbolic link between two
    of our steps: node-ping (root) must neither change the link's target nor rename the link into place."""

    def test_temp_file_swapped_between_write_and_rename(self, textfile_dir: Path, secret: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        path = output_path(textfile_dir, "node-ping_", "n1")
        write_atomic(path, "a 1\n")
        # fsync comes after the data is written and before the mode is set and the file renamed.
        monkeypatch.setattr(os, "fsync", swapping_once(os.fsync, textfile_dir, secret))
        error: OSError | None = None
        try:
            write_atomic(path, "a 2\n")
        except OSError as err:
            error = err
        assert secret.stat().st_mode & 0o777 == 0o600, "node-ping made the link's target world-readable"
        assert not path.is_symlink(), "node-exporter would serve the link's target"
        assert secret.read_text() == SHADOW and path.read_text() == "a 1\n"
        assert error is not None and "tampered with" in str(error)
        assert temp_files(textfile_dir) == []  # the planted link is gone; its target stays
        write_atomic(path, "a 3\n")  # the next write works
        assert path.read_text() == "a 3\n"

    def test_temp_file_swapped_just_before_the_rename(self, textfile_dir: Path, secret: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        path = output_path(textfile_dir, "node-ping_", "n1")
        write_atomic(path, "a 1\n")
        monkeypatch.setattr(os, "rename", swapping_once(os.rename, textfile_dir, secret))
        with pytest.raises(OSError, match="tampered with"):
            write_atomic(path, "a 2\n")
        assert secret.stat().st_mode & 0o777 == 0o600
        assert not path.is_symlink()  # what was renamed into place is removed: no file beats a link
        assert sorted(p.name for p in textfile_dir.iterdir()) == []

    def test_the_prober_counts_it_as_a_write_error_and_says_so(self, textfile_dir: Path, secret: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
        prober = Prober(Settings(node_name="n1", textfile_dir=textfile_dir))
        assert prober.publish()
        monkeypatch.setattr(os, "fsync", swapping_once(os.fsync, textfile_dir, secret))
        with caplog.at_level(logging.WARNING):
            assert not prober.publish()  # nobody got this cycle's result
        assert prober.snapshot.errors["write"] == 1
        assert any(f"textfile directory {textfile_dir} was tampered with" in r.getMessage() for r in caplog.records)
        assert secret.stat().st_mode & 0o777 == 0o600
        assert not output_path(textfile_dir, "node-ping_", "n1").is_symlink()

    def test_lock_planted_as_a_link(self, textfile_dir: Path, secret: Path) -> None:
        path = output_path(textfile_dir, "node-ping_", "n1")
        lock = textfile_dir / lock_name(path.name)
        lock.symlink_to(secret)
        with pytest.raises(OSError, match="tampered with"):
            Writer(path).write("a 1\n")
        assert not lock.is_symlink() and secret.read_text() == SHADOW
        assert secret.stat().st_mode & 0o777 == 0o600
        Writer(path).write("a 1\n")  # the next cycle writes
        assert path.read_text() == "a 1\n"

    def test_a_lock_of_another_user_does_not_keep_us_out(self, textfile_dir: Path) -> None:
        """A user who can write to the directory creates the lock first and holds it: node-ping would
        leave the file to a node-ping that is not there, for as long as that user liked."""
        path = output_path(textfile_dir, "node-ping_", "n1")
        lock = textfile_dir / lock_name(path.name)
        squatter = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            os.fchown(squatter, 65534, 65534)
            fcntl.flock(squatter, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(OSError, match="belonged to uid 65534"):
                Writer(path).write("a 1\n")
            Writer(path).write("a 1\n")  # the next cycle writes
        finally:
            os.close(squatter)
        assert path.read_text() == "a 1\n"
        assert lock.stat().st_uid == os.geteuid()

    def test_reading_and_touching_never_follow_a_link(self, tmp_path: Path, secret: Path) -> None:
        link = tmp_path / "node-ping_n1.prom"
        link.symlink_to(secret)
        with pytest.raises(OSError, match="symbolic link"):
            read_text(link)
        before = secret.stat().st_mtime_ns
        with pytest.raises(OSError, match="symbolic link"):
            touch(link)
        assert secret.stat().st_mtime_ns == before
        dangling = tmp_path / "health"
        dangling.symlink_to(tmp_path / "etc" / "nologin")
        with pytest.raises(OSError, match="symbolic link"):
            touch(dangling)
        assert not (tmp_path / "etc" / "nologin").exists()  # root created no file where the link points

    def test_clean_up_leaves_links_and_their_targets(self, textfile_dir: Path, secret: Path) -> None:
        link = textfile_dir / "node-ping_n2.prom.0123456789abcdef.tmp"
        link.symlink_to(secret)
        os.utime(link, (0, 0), follow_symlinks=False)
        assert remove_stale(textfile_dir, "node-ping_", now=time.time() + 3600) == []
        assert link.is_symlink() and secret.read_text() == SHADOW


class TestOneWriter:
    """Two node-pings for one node: one writes, the other keeps out until the first one is gone."""

    def test_the_second_writer_keeps_out(self, textfile_dir: Path) -> None:
        path = output_path(textfile_dir, "node-ping_", "n1")
        first, second = Writer(path), Writer(path)
        first.write("a 1\n")
        with pytest.raises(Taken, match="another node-ping writes"):
            second.write("a 1000\n")
        assert path.read_text() == "a 1\n"
        assert sorted(p.name for p in textfile_dir.iterdir()) == [".node-ping_n1.lock", "node-ping_n1.prom"]

    def test_the_next_writer_takes_over_when_the_first_stops(self, textfile_dir: Path) -> None:
        path = output_path(textfile_dir, "node-ping_", "n1")
        first, second = Writer(path), Writer(path)
        first.write("a 1\n")
        with pytest.raises(Taken):
            second.write("b 1\n")
        first.close()
        assert sorted(p.name for p in textfile_dir.iterdir()) == ["node-ping_n1.prom"]  # nothing left behind
        second.write("b 2\n")
        assert path.read_text() == "b 2\n"

    def test_a_lock_removed_by_its_stopping_holder_after_we_opened_it(self, textfile_dir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """Locking the removed file would make two writers: the one that takes the new lock file, and us."""
        path = output_path(textfile_dir, "node-ping_", "n1")
        first, second = Writer(path), Writer(path)
        first.write("a 1\n")
        real_flock = fcntl.flock
        monkeypatch.setattr(fcntl, "flock", swapping(real_flock, first.close))
        second.write("b 1\n")
        monkeypatch.setattr(fcntl, "flock", real_flock)
        with pytest.raises(Taken):
            Writer(path).write("c 1\n")  # second holds the lock file that is there now
        assert path.read_text() == "b 1\n"

    def test_a_lock_removed_with_its_directory_is_taken_again(self, textfile_dir: Path) -> None:
        path = output_path(textfile_dir, "node-ping_", "n1")
        writer = Writer(path)
        writer.write("a 1\n")
        for leftover in textfile_dir.iterdir():
            leftover.unlink()
        textfile_dir.rmdir()
        with pytest.raises(FileNotFoundError):
            writer.write("a 2\n")
        textfile_dir.mkdir()
        writer.write("a 3\n")
        with pytest.raises(Taken):
            Writer(path).write("a 4\n")  # the new lock is held, not only the removed one
        assert path.read_text() == "a 3\n"

    def test_longest_output_name_has_a_lock_name(self, textfile_dir: Path) -> None:
        name = "node-ping_" + "n" * (MAX_NAME_BYTES - len("node-ping_") - len(".prom")) + ".prom"
        Writer(textfile_dir / name).write("a 1\n")
        assert len(lock_name(name)) <= MAX_NAME_BYTES and (textfile_dir / lock_name(name)).exists()


class TestDeadTempFiles:
    """Temp files of a killed writer go at the next write, not only at the next start."""

    def test_own_old_temp_files_go_others_stay(self, textfile_dir: Path) -> None:
        path = output_path(textfile_dir, "node-ping_", "n1")
        an_hour_ago = time.time() - 3600
        dead = [textfile_dir / f"node-ping_n1.prom.{token}.tmp" for token in ("0123456789abcdef", "fedcba9876543210")]
        kept = [textfile_dir / "node-ping_n1.prom.00000000000000aa.tmp",  # young: maybe a write in flight
                textfile_dir / "node-ping_n1.prom.x.prom.0123456789abcdef.tmp",  # node "n1.prom.x"
                textfile_dir / "other.prom.0123456789abcdef.tmp"]
        for file in dead + kept:
            file.write_text("x 1\n")
        for file in dead + kept[1:]:
            os.utime(file, (an_hour_ago, an_hour_ago))
        Writer(path).write("a 1\n")
        assert sorted(temp_files(textfile_dir)) == sorted(kept)
