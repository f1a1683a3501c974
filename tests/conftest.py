from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A small converted shapes dataset (2 train shards, 2 val shards) shared by the tests."""
    from segframe.data.shards import write_dataset
    from segframe.data.sources.shapes import CLASSES, PALETTE, ShapesSource

    out = tmp_path_factory.mktemp("data") / "shapes"
    source = ShapesSource(num_train=24, num_val=10, size=48, seed=0)
    write_dataset(source, out, "shapes", CLASSES, PALETTE, shard_size=6)
    return out


def run_cli(module: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `python -m segframe.<module> args...` in a subprocess (fresh Hydra, like a user)."""
    import subprocess

    full_env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", f"segframe.{module}", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def ok(res) -> None:
    """Assert a `run_cli` result exited 0, showing the ends of its output when it did not."""
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-5000:]}"


def compose_config(overrides: list[str], name: str = "train"):
    """The composed Hydra config of `python -m segframe.<name> overrides...`, without running it."""
    from hydra import compose, initialize_config_dir

    from segframe.paths import CONF_DIR  # importing it registers the ${repo_root:} / ${user_conf:} resolvers

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared 2-core machine OpenMP threads competing
    with other processes made model tests ~30x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
