"""Checkpoints as training writes them, made in a second: for the tests of what reads them (the
Python API, export, predict) without training a model."""

from __future__ import annotations

from pathlib import Path

import torch

CLASSES = ["background", "circle", "square"]
PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75]]


def small_fcn_checkpoint(path: Path, seed: int = 0) -> Path:
    """A checkpoint of a small FCN-8s (ResNet-18, 3 classes) with random weights: its zero-initialised
    score layers are drawn too, so that the classes differ."""
    from hydra.utils import instantiate

    from segframe.engine.module import SegModule

    torch.manual_seed(seed)
    config = {"_target_": "segframe.models.fcn.FCN", "num_classes": 3, "stride": 8, "backbone": "resnet18",
              "pretrained": False, "init_from": None}
    module = SegModule(model=instantiate(config), optimizer=None, scheduler=None, classes=CLASSES, palette=PALETTE,
                       model_config=config)
    with torch.no_grad():
        for p in module.model.parameters():
            if p.dim() > 1 and not p.abs().sum():
                p.normal_(0, 0.05)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path
