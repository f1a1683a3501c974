from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# fixtures only; plain helpers live in tests/helpers (`from helpers.cli import run_cli`)
from helpers.config import TINY_SHAPES_SOURCE  # noqa: E402


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A small converted shapes dataset (2 train shards, 2 val shards) shared by the tests."""
    from segframe.data.shard_writer import write_dataset
    from segframe.data.sources.shapes import CLASSES, PALETTE, ShapesSource

    out = tmp_path_factory.mktemp("data") / "shapes"
    source = ShapesSource(**TINY_SHAPES_SOURCE, seed=0)
    write_dataset(source, out, "shapes", CLASSES, PALETTE, shard_size=6)
    return out


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared 2-core machine OpenMP threads competing
    with other processes made model tests ~30x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
