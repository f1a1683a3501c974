"""Running segframe's commands the way a user does: `python -m segframe.<module> args...` in a
subprocess, with a fresh Hydra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def run_cli(module: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `python -m segframe.<module> args...` in a subprocess (fresh Hydra, like a user)."""
    full_env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", f"segframe.{module}", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def ok(res) -> str:
    """Assert a `run_cli` result exited 0, showing the ends of its output when it did not; its stdout
    and stderr, one after the other."""
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-5000:]}"
    return res.stdout + res.stderr
