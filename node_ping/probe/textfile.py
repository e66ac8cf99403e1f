"""Files in node-exporter's textfile directory: the .prom file, its lock, and their clean-up.

The directory is shared with other exporters, and whoever may write to it may plant a symbolic link
under one of our names between two of our steps. So we only ever create, replace or remove files
that start with our own prefix (and the lock beside our file), and every step goes through a
descriptor of the directory and never follows a link: node-ping runs as root, and a chmod or a
rename through a planted link would hand the link's target (a 0600 root file) to node-exporter.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
"""node-exporter reads only `*.prom`, so a temp file ending in .tmp is never scraped half-written."""

TEMP_TOKEN_CHARS = 16
"""Random hex characters in a temp file's name. Not the pid: in a container node-ping is pid 1, so
two pods on one node (a surge during a rolling update) would share, and mangle, one temp file."""

MAX_NAME_BYTES = 255
"""Longest file name Linux file systems take (NAME_MAX)."""

STALE_TEMP_AGE_S = 600
"""A temp file lives for the moment of one write; one this old was left by a process that died."""

DEAD_TEMP_AGE_S = 60
"""While we hold our file's lock nobody else writes it, and a write keeps touching its temp file as
it goes: a temp file of our file's name untouched this long was left by a writer that was killed
(an OOM kill between write and rename). Removed while running, not only at start-up: after a few
such restarts they would pile up, each a full copy of the file."""

LOCK_SUFFIX = ".lock"
"""node-exporter reads only `*.prom`: the lock beside our file is never scraped."""

LOCK_ATTEMPTS = 3
"""A lock file we opened may be removed by its holder as it stops, before we lock it: then we try
the new one. More changes in a row than this and we leave the file to the others this cycle."""

LOCK_MODE = 0o600
"""Only the owner (root) may open the lock, so no other user can take it to stop our writes."""

_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""Never follow a link; and a FIFO planted under our name must not block open() for ever."""


class Tampered(OSError):
    """One of our names in the directory was swapped for something else while we worked on it."""


class Taken(Exception):
    """Another node-ping holds the lock of this file: it writes the file, this one does not."""


def output_path(directory: Path, prefix: str, node_name: str) -> Path:
    return directory / f"{prefix}{node_name}.prom"


def lock_name(name: str) -> str:
    """The lock beside output file `name`: `.<prefix><node>.lock`, hidden; without the dot when
    that would exceed the file name limit (the output name is at most MAX_NAME_BYTES long)."""
    stem = name.removesuffix(".prom")
    hidden = f".{stem}{LOCK_SUFFIX}"
    return hidden if len(hidden.encode()) <= MAX_NAME_BYTES else f"{stem}{LOCK_SUFFIX}"


def temp_prefix(name: str) -> str:
    """The start of the temp files' names for output file `name`: the name itself while that
    leaves room for the token within the usual 255-byte file name limit, else its first bytes
    (config.MAX_PREFIX keeps the whole prefix in them, so start-up clean-up finds them)."""
    room = MAX_NAME_BYTES - TEMP_TOKEN_CHARS - len(TEMP_SUFFIX) - 1
    head = name.encode()[:room].decode(errors="ignore")
    return f"{head}."


_TEMP_TAIL = re.compile(rf"[0-9a-f]{{{TEMP_TOKEN_CHARS}}}{re.escape(TEMP_SUFFIX)}")


@contextmanager
def _directory(directory: Path) -> Iterator[int]:
    """A descriptor of `directory`, for working on the names in it. The directory itself is the
    configured path (whoever may write inside it cannot replace it): only names in it are not
    followed."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _open(name: str, flags: int, dir_fd: int, mode: int = 0o644) -> int:
    """open() `name` in the directory without following a link; a link is reported as such."""
    try:
        return os.open(name, flags | _NO_FOLLOW, mode, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{name} is a symbolic link, which node-ping does not follow") from err
        raise


def _same_file(dir_fd: int, name: str, ours: os.stat_result) -> bool:
    """Whether `name` is still our regular file (the name itself, not what a link points to)."""
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(now.st_mode) and (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)


def _unlink(dir_fd: int, name: str) -> None:
    """Remove the name (unlink never follows a link: a planted one goes, its target stays)."""
    with suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _tampered(directory: Path, what: str) -> Tampered:
    return Tampered(f"the textfile directory {directory} was tampered with: {what}; node-ping follows no link "
                    "there and removes any planted under its own names. Check who else can write to that directory")


def write_atomic(path: Path, text: str | Iterable[str]) -> None:
    """Write `text` (or its chunks) to a temp file in the same directory, then rename over the target.

    rename() within one filesystem is atomic, so a reader sees the old file or the new one, never
    half of either. On any failure the temp file is removed and the old file stays as it was.
    Raises Tampered if a name was swapped meanwhile (then nothing of ours is left but the old file,
    or no file if what was planted had already been renamed into place: never a link).
    """
    with _directory(path.parent) as dir_fd:
        _write_at(dir_fd, path, text)


def _write_at(dir_fd: int, path: Path, text: str | Iterable[str]) -> None:
    name = path.name
    temp = f"{temp_prefix(name)}{secrets.token_hex(TEMP_TOKEN_CHARS // 2)}{TEMP_SUFFIX}"
    fd = _open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, dir_fd, mode=0o600)
    try:
        with open(fd, "w", encoding="utf-8", closefd=False) as handle:
            handle.writelines([text] if isinstance(text, str) else text)
        os.fsync(fd)
        os.fchmod(fd, 0o644)  # node-exporter may run as another user; umask would narrow open()'s mode
        ours = os.fstat(fd)
        if not _same_file(dir_fd, temp, ours):
            raise _tampered(path.parent, f"the temp file {temp} was replaced before it was renamed to {name}")
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink(dir_fd, temp)  # ours, or whatever was planted under our temp name
        raise
    finally:
        os.close(fd)
    if not _same_file(dir_fd, name, ours):
        # Swapped between the check and the rename: what was planted now has the name node-exporter reads.
        try:
            planted = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            planted = None
        if planted is not None and not stat.S_ISREG(planted.st_mode):
            _unlink(dir_fd, name)
        raise _tampered(path.parent, f"the temp file {temp} was replaced just before it was renamed to {name}")


def read_text(path: Path) -> str:
    """The text of a regular file in a shared directory, never read through a link."""
    with _directory(path.parent) as dir_fd:
        fd = _open(path.name, os.O_RDONLY, dir_fd)
        with open(fd, encoding="utf-8", errors="replace") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{path.name} is not a regular file")
            return handle.read()


def touch(path: Path) -> None:
    """Create `path` or set its modification time to now, never through a link."""
    with _directory(path.parent) as dir_fd:
        fd = _open(path.name, os.O_WRONLY | os.O_CREAT, dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{path.name} is not a regular file")
            os.utime(fd)
        finally:
            os.close(fd)


def _remove_if_older(dir_fd: int, name: str, cutoff: float) -> bool:
    """Remove `name` if it is a regular file last modified before `cutoff`; links are left alone."""
    try:
        found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(found.st_mode) or found.st_mtime > cutoff:
            return False
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False  # renamed or removed by its writer meanwhile
    return True


def remove_stale(directory: Path, prefix: str, now: float | None = None, keep: Path | None = None) -> list[Path]:
    """Remove our own leftovers from an earlier run: `<prefix>*.prom` but `keep` (this node's own
    file, which the first cycle replaces: until then its series go on), and `<prefix>*.tmp` temp
    files older than STALE_TEMP_AGE_S (a younger one may be another instance's write in flight).

    A node that was renamed, or a crash between write and rename, leaves files whose series would
    otherwise be scraped for ever. Files of other exporters and links are never touched.
    """
    if not prefix:
        raise ValueError("an empty prefix would match other exporters' files")
    now = time.time() if now is None else now
    removed: list[Path] = []
    with _directory(directory) as dir_fd:
        for name in sorted(os.listdir(dir_fd)):
            if not name.startswith(prefix) or directory / name == keep:
                continue
            min_age = 0.0 if name.endswith(".prom") else STALE_TEMP_AGE_S if name.endswith(TEMP_SUFFIX) else None
            if min_age is not None and _remove_if_older(dir_fd, name, now - min_age):
                removed.append(directory / name)
    return removed


def _remove_dead_temps(dir_fd: int, name: str, now: float) -> list[str]:
    """Remove temp files of output file `name` older than DEAD_TEMP_AGE_S; never fails the write."""
    head = temp_prefix(name)
    removed: list[str] = []
    try:
        for found in os.listdir(dir_fd):
            if found.startswith(head) and _TEMP_TAIL.fullmatch(found[len(head):]) \
                    and _remove_if_older(dir_fd, found, now - DEAD_TEMP_AGE_S):
                removed.append(found)
    except OSError as err:
        log.debug("cannot clean up temp files of %s: %s", name, err)
    return removed


class Writer:
    """The writer of one .prom file: it writes only while it holds the lock beside the file.

    Two node-pings of one node sharing the directory and prefix (a surge during a rolling update, a
    second release) would each replace the file with their own counters, and every scrape would
    see them go back and forth. The lock (flock, released by the kernel when its holder dies) lets
    one write; the other raises Taken each cycle until the first one is gone, then takes over.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(lock_name(path.name))
        self._lock: int | None = None
        self._lock_file: os.stat_result | None = None

    def write(self, text: str | Iterable[str]) -> None:
        """Write the file if this node-ping holds its lock. Raises Taken if another one does,
        Tampered or another OSError if the file cannot be written."""
        with _directory(self.path.parent) as dir_fd:
            self._hold(dir_fd)
            for name in _remove_dead_temps(dir_fd, self.path.name, time.time()):
                log.info("removed %s, a temp file left by a writer that was killed", self.path.with_name(name))
            _write_at(dir_fd, self.path, text)

    def _hold(self, dir_fd: int) -> None:
        name = self.lock_path.name
        if self._lock is not None and self._lock_file is not None:
            if _same_file(dir_fd, name, self._lock_file):
                return
            # Removed or replaced (the directory recreated, say): it no longer keeps anybody out.
            self._drop()
        for _ in range(LOCK_ATTEMPTS):
            fd, found = self._lock_at(dir_fd, name)
            if _same_file(dir_fd, name, found):
                self._lock, self._lock_file = fd, found
                return
            os.close(fd)  # its holder removed it as it stopped, after we had opened it: take the new one
        raise Taken(f"the lock {self.lock_path} of {self.path} keeps changing: other node-pings are starting and "
                    "stopping; this one does not write the file this cycle")

    def _lock_at(self, dir_fd: int, name: str) -> tuple[int, os.stat_result]:
        """Open and lock the lock file `name`; raise Taken if another node-ping holds it."""
        try:
            fd = _open(name, os.O_RDONLY | os.O_CREAT, dir_fd, mode=LOCK_MODE)
        except OSError as err:
            if err.errno == errno.ELOOP:
                _unlink(dir_fd, name)
                raise _tampered(self.path.parent, f"the lock {name} was a symbolic link") from err
            raise
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                _unlink(dir_fd, name)
                raise _tampered(self.path.parent, f"the lock {name} was not a regular file")
            if found.st_uid != os.geteuid():
                # Only a node-ping creates it, as itself: another user's lock would keep us from
                # writing for as long as that user liked.
                _unlink(dir_fd, name)
                raise _tampered(self.path.parent, f"the lock {name} belonged to uid {found.st_uid}, not to node-ping")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Taken(f"another node-ping writes {self.path} (it holds {self.lock_path}): this one leaves the "
                        "file to it, so that scrapes do not see two sets of counters in turn, and takes over "
                        "when that one stops") from None
        except BaseException:
            os.close(fd)
            raise
        return fd, found

    def _drop(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
        self._lock = self._lock_file = None

    def close(self) -> None:
        """Stop being the writer: remove the lock file (still holding it, so nobody has it meanwhile),
        then let it go. A node-ping waiting for the file takes over at its next cycle."""
        if self._lock_file is not None:
            try:
                with _directory(self.path.parent) as dir_fd:
                    if _same_file(dir_fd, self.lock_path.name, self._lock_file):
                        _unlink(dir_fd, self.lock_path.name)
            except OSError as err:
                log.debug("cannot remove %s: %s", self.lock_path, err)
        self._drop()


_claimed: dict[Path, Writer] = {}
"""The files this process is the one writer of, for its life. One Writer per file: a flock belongs
to an open file, so two in one process would keep each other out."""


def claim(path: Path) -> None:
    """Make this process the writer of `path` (taking its lock at the first write) until release()."""
    _claimed.setdefault(path, Writer(path))


def write_textfile(path: Path, text: str | Iterable[str]) -> None:
    """Write `path`: through this process's Writer if it claimed the file (Taken while another node-ping
    holds it), else directly, as a program that embeds a cycle does."""
    writer = _claimed.get(path)
    if writer is None:
        write_atomic(path, text)
    else:
        writer.write(text)


def release(path: Path) -> None:
    """Stop being the writer of `path`, if this process claimed it: as node-ping stops."""
    writer = _claimed.pop(path, None)
    if writer is not None:
        writer.close()
