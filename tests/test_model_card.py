"""MODEL_CARD.md (segframe.evaluation.model_card): every field rendered from plain values, and a training run
writes one with its best checkpoint's sha256."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.config import TINY_ON_TINY_SHAPES, compose, tiny
from segframe.data.manifest import sha256_file
from segframe.evaluation.model_card import CARD, render_card

METRICS = {
    "miou": 0.61234, "mdice": 0.7, "mean_acc": 0.75, "pixel_acc": 0.9, "fwiou": 0.85, "miou_img": 0.5,
    "mdice_img": 0.55, "classes": ["background", "circle"], "dataset": "shapes", "split": "val", "num_samples": 100,
    "checkpoint": "run/checkpoints/best-epoch007.ckpt", "git_commit": "abc1234-dirty", "fit_seconds": 3725.4,
    "epochs": 8, "steps": 600, "model_parameters": 11_234_567, "model_gflops": 4.321, "model_gflops_at": [96, 96],
    "model_output_stride": 32,
    "inference": {"scales": [1.0], "flip": False, "mode": "whole", "crf": False, "crf_iterations": 5},
}
CONFIG = {
    "seed": 7,
    "data": {"name": "shapes", "crop_size": 96},
    "datamodule": {"batch_size": 8},
    "model": {"_target_": "segframe.models.fcn.FCN", "stride": 8, "backbone": "resnet18"},
    "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.9},
    "scheduler": {"_target_": "torch.optim.lr_scheduler.PolynomialLR", "_partial_": True, "total_iters": None,
                  "power": 0.9},
    "loss": {"_target_": "segframe.engine.losses.CrossEntropy", "_partial_": True},
    "augmentation": {"train": {"_target_": "segframe.data.augment.default_train", "crop_size": 96, "hflip": 0.5}},
}
TABLE = "| class | IoU % |\n| --- | ---: |\n| background | 98.00 |\n| circle | 24.47 |\n"
HARDWARE = {"device": "NVIDIA H200", "device_count": 2, "torch": "2.5.1"}


def test_card_shows_every_field():
    card = render_card(METRICS, CONFIG, TABLE, "f" * 64, HARDWARE, train_split=("train", 600))
    assert card.startswith("# Model card\n\nFCN (resnet18) on shapes") and "crf_iterations" not in card
    expected = [
        # data and split
        "| dataset | shapes |", "| train split | train (600 images) |", "| evaluated on | val (100 images) |",
        # model
        "| family (_target_) | segframe.models.fcn.FCN |", "| backbone | resnet18 |",
        "| parameters | 11,234,567 |",
        "| output stride | 32 |", "| GFLOPs | 4.321 at 96x96 |", "background, circle",
        # recipe
        "torch.optim.SGD (momentum 0.9)", "| learning rate | 0.01 |",
        "torch.optim.lr_scheduler.PolynomialLR (power 0.9)",
        "segframe.engine.losses.CrossEntropy", "| epochs / steps | 8 / 600 |", "| batch size | 8 |", "| crop | 96 |",
        "segframe.data.augment.default_train (crop_size 96, hflip 0.5)", "| seed | 7 |",
        # metrics, percent with two decimals, and the per-class table
        "| mIoU % | 61.23 |", "| mDice % | 70.00 |", "| mean acc % | 75.00 |", "| pixel acc % | 90.00 |",
        "| fwIoU % | 85.00 |", "| mIoU per image % | 50.00 |", "| mDice per image % | 55.00 |", "| circle | 24.47 |",
        "| test-time options | scales [1.0], flip False, mode whole |",
        # hardware, time, commit, checkpoint
        "| device | NVIDIA H200 |", "| device count | 2 |", "| torch | 2.5.1 |", "1:02:05", "abc1234-dirty",
        "run/checkpoints/best-epoch007.ckpt", "f" * 64,
        # how to load it
        "python -m segframe.eval ckpt=run/checkpoints/best-epoch007.ckpt",
        "python -m segframe.predict ckpt=run/checkpoints/best-epoch007.ckpt input=",
        "python -m segframe.export ckpt=run/checkpoints/best-epoch007.ckpt format=onnx",
        "from segframe import load_model", 'load_model("run/checkpoints/best-epoch007.ckpt")', ".onnx",
    ]
    missing = [e for e in expected if e not in card]
    assert not missing, f"{missing}\n\n{card}"


def test_card_without_optional_values_says_na():
    metrics = {k: v for k, v in METRICS.items() if k not in ("miou_img", "mdice_img", "model_gflops_at")}
    card = render_card({**metrics, "mdice": None}, {**CONFIG, "scheduler": None, "loss": None}, TABLE, None,
                       {"device": "Intel Xeon", "device_count": 1, "torch": "2.5.1"})
    for text in ("| mIoU per image % | n/a |", "| mDice % | n/a |", "| train split | n/a |", "| sha256: `n/a`",
                 "none (constant)", "| loss | cross entropy |", "| GFLOPs | 4.321 |"):
        assert text.replace("| sha256", "- sha256") in card, text


def test_training_writes_the_card_with_the_checkpoint_sha256(tmp_path: Path, tiny_shapes, one_thread):
    from segframe.engine.training import train

    overrides = tiny("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                     base=TINY_ON_TINY_SHAPES)
    train(compose([*overrides, f"data.shard_dir={tiny_shapes}"]), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    card = (tmp_path / CARD).read_text()
    assert Path(metrics["checkpoint"]).is_file() and sha256_file(metrics["checkpoint"]) in card
    assert "| train split | train (24 images) |" in card
    assert f"| evaluated on | val ({metrics['num_samples']} images) |" in card
    assert (tmp_path / "per_class.md").read_text().strip() in card
    assert f"| parameters | {metrics['model_parameters']:,} |" in card and "resnet18" in card
    assert not list(tmp_path.glob(".*.partial"))  # written atomically
