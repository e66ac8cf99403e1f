"""Write the .prom file for node-exporter's textfile collector, and nothing else.

The directory is shared with other exporters: we only ever create, replace or remove files that
start with our own prefix.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterable
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


def output_path(directory: Path, prefix: str, node_name: str) -> Path:
    return directory / f"{prefix}{node_name}.prom"


def write_atomic(path: Path, text: str | Iterable[str]) -> None:
    """Write `text` (or its chunks) to a temp file in the same directory, then rename over the target.

    rename() within one filesystem is atomic, so a reader sees the old file or the new one, never
    half of either. On any failure the temp file is removed and the old file stays as it was.
    """
    temp = path.with_name(f"{temp_prefix(path.name)}{secrets.token_hex(TEMP_TOKEN_CHARS // 2)}{TEMP_SUFFIX}")
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.writelines([text] if isinstance(text, str) else text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)  # node-exporter may run as another user
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def temp_prefix(name: str) -> str:
    """The start of the temp files' names for output file `name`: the name itself while that
    leaves room for the token within the usual 255-byte file name limit, else its first bytes
    (config.MAX_PREFIX keeps the whole prefix in them, so start-up clean-up finds them)."""
    room = MAX_NAME_BYTES - TEMP_TOKEN_CHARS - len(TEMP_SUFFIX) - 1
    head = name.encode()[:room].decode(errors="ignore")
    return f"{head}."


def remove_stale(directory: Path, prefix: str, now: float | None = None, keep: Path | None = None) -> list[Path]:
    """Remove our own leftovers from an earlier run: `<prefix>*.prom` but `keep` (this node's own
    file, which the first cycle replaces: until then its series go on), and `<prefix>*.tmp` temp
    files older than STALE_TEMP_AGE_S (a younger one may be another instance's write in flight).

    A node that was renamed, or a crash between write and rename, leaves files whose series would
    otherwise be scraped for ever. Files of other exporters are never touched.
    """
    if not prefix:
        raise ValueError("an empty prefix would match other exporters' files")
    now = time.time() if now is None else now
    removed: list[Path] = []
    for pattern, min_age in ((f"{prefix}*.prom", 0.0), (f"{prefix}*{TEMP_SUFFIX}", STALE_TEMP_AGE_S)):
        for path in directory.glob(pattern):
            if path == keep:
                continue
            try:
                if not path.is_file() or path.is_symlink() or now - path.stat().st_mtime < min_age:
                    continue
            except FileNotFoundError:
                continue  # renamed or removed by its writer meanwhile
            path.unlink(missing_ok=True)
            removed.append(path)
    return sorted(removed)
