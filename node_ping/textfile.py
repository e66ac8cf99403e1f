"""Write the .prom file for node-exporter's textfile collector, and nothing else.

The directory is shared with other exporters: we only ever create, replace or remove files that
start with our own prefix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
"""node-exporter reads only `*.prom`, so a temp file ending in .tmp is never scraped half-written."""


def output_path(directory: Path, prefix: str, node_name: str) -> Path:
    return directory / f"{prefix}{node_name}.prom"


def write_atomic(path: Path, text: str | Iterable[str]) -> None:
    """Write `text` (or its chunks) to a temp file in the same directory, then rename over the target.

    rename() within one filesystem is atomic, so a reader sees the old file or the new one, never
    half of either. On any failure the temp file is removed and the old file stays as it was.
    """
    temp = path.with_name(f"{path.name}.{os.getpid()}{TEMP_SUFFIX}")
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


def remove_stale(directory: Path, prefix: str) -> list[Path]:
    """Remove our own leftovers (`<prefix>*.prom` and their temp files) from an earlier run.

    A node that was renamed, or a crash between write and rename, leaves files whose series would
    otherwise be scraped for ever. Files of other exporters are never touched.
    """
    if not prefix:
        raise ValueError("an empty prefix would match other exporters' files")
    removed: list[Path] = []
    for pattern in (f"{prefix}*.prom", f"{prefix}*.prom.*{TEMP_SUFFIX}"):
        for path in directory.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return sorted(removed)
