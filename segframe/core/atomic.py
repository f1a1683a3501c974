"""Files written whole or not at all: a reader (or a process started after a kill) sees the old
content or the new one, never a half-written file."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `.NAME.partial` beside `path`, then rename it over `path`."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def fsync(path: Path) -> None:
    """Flush `path` to the disk: a file's content, or a folder's entries (so that a rename in it
    survives a power cut). Where the system cannot open a folder (Windows), nothing to do."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system that does not sync (some network mounts)
        pass
    finally:
        os.close(fd)
