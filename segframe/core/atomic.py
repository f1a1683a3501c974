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
