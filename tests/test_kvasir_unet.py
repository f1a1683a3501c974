"""`experiment=kvasir_unet`, the medical recipe: its config, its reference (judged on the per-image
polyp Dice, `mdice_img`) in reproduce and the results table, and convert -> train -> eval end to end
on a tiny Kvasir-SEG tree in the real layout.

mdice_img against a direct NumPy per-image polyp Dice is tested in test_metrics_dice.py
(test_binary_mdice_img_is_the_foreground_dice_averaged_over_images)."""

from __future__ import annotations

import json
import math

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segframe.core.config import check_keys
from segframe.core.paths import EXPERIMENTS_DIR

from helpers.cli import ok, run_cli
from helpers.config import compose, tiny


def test_kvasir_unet_composes_with_the_recipe():
    cfg = compose(["experiment=kvasir_unet"])
    check_keys(cfg, "train")
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.data.name == "kvasir_seg" and list(cfg.data.classes) == ["background", "polyp"]
    assert cfg.data.crop_size == 352 and cfg.data.num_val == 120 and cfg.data.split_dir is None
    assert cfg.model._target_ == "segframe.models.smp.SmpModel" and cfg.model.arch == "Unet"
    assert cfg.model.backbone == "resnet34" and cfg.model.pretrained is True
    assert cfg.loss._target_ == "segframe.engine.losses.CeDice" and cfg.loss.ce_weight == 1 and cfg.loss.dice_weight == 1
    assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.optimizer.lr == 2e-4
    assert cfg.scheduler._target_.endswith("PolynomialLR")
    assert cfg.augmentation.train._target_.endswith("default_train") and list(cfg.augmentation.train.scale) == [0.5, 1.5]
    assert cfg.augmentation.train.crop_size == 352 and cfg.augmentation.eval._target_.endswith("identity")
    assert cfg.datamodule.batch_size == 8 and cfg.datamodule.eval_batch_size == 1 and cfg.trainer.max_epochs == 100
    assert cfg.checkpoint.monitor == "val/mdice_img" and cfg.checkpoint.mode == "max"
    instantiate(cfg.augmentation.train)
    ref = cfg.reference
    assert dict(ref.mean) == {"mdice_img": 81.8, "miou_img": 74.6}  # PraNet Table 1, Kvasir, U-Net row
    assert dict(ref.minimum) == {"mdice_img": 80.0} and ref.get("tolerance") is None  # an expectation
    assert "PraNet" in ref.source and "MICCAI 2020" in ref.source and "CVC-ClinicDB" in ref.source
    assert ref.not_reproduced == "needs a GPU and the Kvasir-SEG download"


def test_reproduce_judges_a_per_image_reference():
    from segframe.reproduce import compare

    ref = OmegaConf.load(EXPERIMENTS_DIR / "kvasir_unet.yaml").reference
    runs = [{"ok": True, "miou": 0.85, "mdice": 0.91, "mdice_img": 0.83, "miou_img": 0.76},
            {"ok": True, "miou": 0.84, "mdice": 0.90, "mdice_img": 0.79, "miou_img": 0.71}]
    rows = compare(ref, runs)
    assert rows["mdice_img"]["reproduced"] == 81.0 and rows["mdice_img"]["per_seed"] == [83.0, 79.0]
    assert rows["mdice_img"]["reported"] == 81.8 and rows["mdice_img"]["diff"] == -0.8
    assert rows["mdice_img"]["minimum"] == 80.0 and rows["mdice_img"]["within"] is True
    assert rows["miou_img"]["reported"] == 74.6 and rows["miou_img"]["within"] is None  # anchor only
    assert rows["miou"]["within"] is None and rows["miou"]["reported"] is None
    assert compare(ref, runs[1:])["mdice_img"]["within"] is False  # 79 < 80


def test_results_row_shows_and_judges_the_per_image_numbers():
    from segframe.results import row

    experiment = OmegaConf.load(EXPERIMENTS_DIR / "kvasir_unet.yaml")
    line = row("kvasir_unet", experiment, None)
    assert "| mdice_img >= 80.00 (expected); per image mIoU / mDice: 74.60 / 81.80 |" in line
    assert "not reproduced (needs a GPU and the Kvasir-SEG download)" in line
    runs = [{"ok": True, "miou": 0.85, "mdice": 0.91, "mean_acc": 0.9, "pixel_acc": 0.95, "fwiou": 0.9,
             "miou_img": 0.75, "mdice_img": 0.83}]
    result = {"runs": runs, "wall_s": [1800.0], "machine": {"device": "GPU"}, "date": "2026-12-01"}
    line = row("kvasir_unet", experiment, result)
    assert "85.00 / 91.00 / 90.00 / 95.00 / 90.00; per image mIoU / mDice: 75.00 / 83.00 (mIoU per seed: 85.00)" in line
    assert "within tolerance (mdice_img >= 80.0)" in line
    runs[0]["mdice_img"] = 0.78
    assert "OUTSIDE tolerance (mdice_img >= 80.0)" in row("kvasir_unet", experiment, result)
    # a dataset-level reference (every other row) shows no per-image numbers, as before
    plain = OmegaConf.create({"reference": {"recipe": "r", "data": "d", "source": "s", "mean": {"miou": 60.0},
                                            "tolerance": {"miou": 1.0}}})
    line = row("x", plain, {**result, "runs": [{**runs[0], "miou": 0.605}]})
    assert "per image" not in line and "| 60.00 / - / - / - / - |" in line and "within tolerance (miou ±1.0)" in line


KV_IDS = [f"cju{i:02d}kvasirfixture{i:04d}" for i in range(8)]
# TINY fitted to the recipe: its own data and optimizer, its U-Net on resnet18, 3 steps of batch 2
TINY = tiny("data.crop_size=32", "trainer.max_epochs=1", "trainer.max_steps=3",
            "datamodule.batch_size=2", "datamodule.eval_batch_size=1", "report.num_images=2",
            drop=["data.source", "data.shard_size", "optimizer"])  # TINY's model.backbone=resnet18 stays


@pytest.mark.slow  # ~45 s: three CLI processes
def test_kvasir_unet_convert_train_eval_end_to_end(tmp_path):
    """Convert a Kvasir-SEG tree (JPEG masks), train the recipe for 3 steps, then `segframe.eval`
    last.ckpt: both write the dataset-level and the per-image Dice (about 45 s on 2 cores)."""
    from helpers.datasets import make_kvasir

    root = tmp_path / "raw" / "Kvasir-SEG"
    make_kvasir(root, KV_IDS)
    data = [f"data.root={root}", "data.num_val=2", f"paths.data_dir={tmp_path / 'data'}"]
    ok(run_cli("convert", "data=kvasir_seg", *data, "num_workers=0", cwd=tmp_path))
    manifest = json.loads((tmp_path / "data" / "kvasir_seg" / "manifest.json").read_text())
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 6, "val": 2}

    run = tmp_path / "run"
    ok(run_cli("train", "experiment=kvasir_unet", *data, *TINY, f"hydra.run.dir={run}", cwd=tmp_path))
    train_m = json.loads((run / "metrics.json").read_text())
    config = OmegaConf.load(run / "config.yaml")
    assert config.model.arch == "Unet" and config.loss._target_ == "segframe.engine.losses.CeDice"
    assert config.checkpoint.monitor == "val/mdice_img" and train_m["dataset"] == "kvasir_seg"
    assert train_m["steps"] == 3 and train_m["num_samples"] == 2

    out = tmp_path / "eval"
    ok(run_cli("eval", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={out}",
               "datamodule.num_workers=0", cwd=tmp_path))
    eval_m = json.loads((out / "metrics.json").read_text())
    for metrics, folder in ((train_m, run), (eval_m, out)):
        for key in ("miou", "mdice", "miou_img", "mdice_img"):
            assert 0.0 <= metrics[key] <= 1.0, (folder, key, metrics[key])
        table = (folder / "per_class.md").read_text()
        assert "| mIoU % | mDice % |" in table and "| mIoU per image % | mDice per image % |" in table
    # one epoch: last.ckpt is the best checkpoint the training evaluated, so eval gives the same numbers
    for key in ("mdice", "mdice_img", "miou_img"):
        assert math.isclose(eval_m[key], train_m[key], rel_tol=1e-9), key
    assert eval_m["split"] == "val" and eval_m["num_samples"] == 2

