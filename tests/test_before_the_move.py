"""Checkpoints written before segframe's folders became its layers still load: they name their loss
and scheduler classes by the old import paths (`segframe.losses.Focal`, `segframe.schedules.WarmupPoly`).
The fixture is a real checkpoint kept from commit b0b74a1 (tests/fixtures/before_move/unet_tiny.json
holds the command that wrote it and the logits it gave then)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.cli import run_cli

from segframe.core.moved import current_config, current_target, current_targets
from segframe.engine import losses
from segframe.engine.checkpoint import load_checkpoint, module_from_checkpoint
from segframe.engine.resume import config_changes

FIXTURE = Path(__file__).parent / "fixtures" / "before_move"
CKPT, EXPECTED = FIXTURE / "unet_tiny.ckpt", json.loads((FIXTURE / "unet_tiny.json").read_text())
WHOLE = {"scales": [1.0], "flip": False, "mode": "whole", "crop": 512, "stride": 341, "crf": False}


def test_the_fixture_names_the_old_paths():
    raw = torch.load(CKPT, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["loss_config"]["_target_"] == "segframe.losses.Focal"
    assert raw["run_config"]["scheduler"]["_target_"] == "segframe.schedules.WarmupPoly"


def test_an_old_checkpoint_loads_with_its_loss_and_gives_the_same_logits():
    ckpt = load_checkpoint(str(CKPT))
    assert ckpt["hyper_parameters"]["loss_config"]["_target_"] == "segframe.engine.losses.Focal"
    assert ckpt["run_config"]["scheduler"]["_target_"] == "segframe.engine.schedules.WarmupPoly"
    module = module_from_checkpoint(ckpt, WHOLE).eval()
    assert isinstance(module.criterion, losses.Focal)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = module.model(x)
    # float sums over 6k logits: equal on this machine, within 1e-4 on another CPU's kernels
    assert float(y.sum()) == pytest.approx(EXPECTED["logits_sum"], rel=1e-4)
    assert float(y.abs().sum()) == pytest.approx(EXPECTED["logits_abs_sum"], rel=1e-4)


def test_the_python_api_and_eval_load_an_old_checkpoint(tmp_path):
    """The way a user meets it: `segframe.load_model` and `python -m segframe.eval ckpt=...`."""
    import segframe

    ckpt = tmp_path / "old.ckpt"
    shutil.copy(CKPT, ckpt)
    image = (torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy()
    mask = segframe.load_model(ckpt, device="cpu").predict(image)
    assert mask.shape == (32, 32)
    shapes = ["data=shapes", f"data.shard_dir={tmp_path / 'shards'}", "data.source.num_train=8", "data.source.num_val=4",
              "data.source.size=32", "data.shard_size=8"]  # the dataset the fixture was trained on
    assert run_cli("convert", *shapes).returncode == 0
    res = run_cli("eval", f"ckpt={ckpt}", *shapes, f"hydra.run.dir={tmp_path / 'eval'}", "datamodule.num_workers=0",
                  "report.num_images=0")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["miou"] >= 0


def test_current_target_renames_only_moved_modules():
    assert current_target("segframe.losses.Focal") == "segframe.engine.losses.Focal"
    assert current_target("segframe.losses") == "segframe.engine.losses"
    assert current_target("segframe.lossesX.Y") == "segframe.lossesX.Y"  # a prefix is not a module
    assert current_target("segframe.models.smp.SmpModel") == "segframe.models.smp.SmpModel"
    assert current_target("torch.optim.SGD") == "torch.optim.SGD"
    nested = {"a": [{"_target_": "segframe.schedules.WarmupPoly", "x": "segframe.losses.Focal"}]}
    assert current_targets(nested) == {"a": [{"_target_": "segframe.engine.schedules.WarmupPoly",
                                              "x": "segframe.losses.Focal"}]}  # only `_target_` values


def test_a_run_of_before_reads_as_one_of_now():
    """Resume's list of changed settings and compare's differing keys see no change where only the
    names moved: old `_target_` paths, and an smp run's `encoder` that is now `backbone`."""
    before = torch.load(CKPT, map_location="cpu", weights_only=True)["run_config"]
    now = current_targets(before)
    now["model"] = {**{k: v for k, v in now["model"].items() if k != "encoder"},
                    "backbone": before["model"]["encoder"], "encoder": None}
    assert config_changes(before, now) == []
    assert config_changes(before, {**now, "seed": 7}) == [f"seed: {before['seed']!r} -> 7"]
    assert current_config({"model": {"encoder": "r18"}}) == {"model": {"backbone": "r18"}}
    assert current_config({"model": {"backbone": "r18", "encoder": None}}) == {"model": {"backbone": "r18"}}
    assert current_config({"model": {"backbone": "r18", "encoder": "r18"}}) == {"model": {"backbone": "r18"}}
    disagree = {"model": {"backbone": "r18", "encoder": "r34"}}
    assert current_config(disagree) == disagree  # a real disagreement is shown, not hidden
