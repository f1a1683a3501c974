"""The quick tier's one training run (marked `quick` by hand; tests/helpers/quick.py otherwise leaves
training out): the quickstart recipe, in this process, for 2 steps on the `tiny_shapes` fixture, from
composing the config to the report. It is there for what only a run meets: a key the configs, the
module, the checkpoint callback and the report must agree on (a `checkpoint.monitor` that names no
logged metric, a renamed config key, a callback that fails at its hook)."""

from __future__ import annotations

import json

import pytest
from helpers.config import TINY_ON_TINY_SHAPES, compose

from segframe.engine.training import train


@pytest.mark.quick
def test_one_short_run_trains_checkpoints_evaluates_and_reports(tmp_path, tiny_shapes, one_thread):
    cfg = compose(["experiment=quickstart", *TINY_ON_TINY_SHAPES, "scheduler.warmup_iters=1",
                   f"data.shard_dir={tiny_shapes}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                   "trainer.limit_val_batches=1"])
    miou = train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["miou"] == pytest.approx(miou)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".ckpt")[-1] == "last.ckpt"
    assert (tmp_path / "MODEL_CARD.md").is_file() and metrics["checkpoint"].endswith(".ckpt")
