"""A checkpoint written by `segframe.train`, read back: checked, loaded without unpickling code, and
turned into the trained module and the dataset it was trained on. (When and how training writes
checkpoints is checkpointing.py's job.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from segframe.errors import CheckpointError, MissingFileError
from segframe.module import SegModule


def load_checkpoint(path: str) -> dict[str, Any]:
    """A Lightning checkpoint written by `segframe.train`, loaded without unpickling code."""
    if not Path(path).is_file():
        raise MissingFileError(f"checkpoint {path} does not exist (ckpt=PATH, e.g. outputs/DATE/TIME/checkpoints/last.ckpt)")
    try:  # weights_only: a checkpoint is data, never code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickled objects, not a torch file...
        raise CheckpointError(f"{path} cannot be loaded as a segframe checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "model_config" not in ckpt["hyper_parameters"]:
        raise CheckpointError(f"{path} is not a segframe checkpoint (no hyper_parameters.model_config)")
    return ckpt


def trained_data(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The data config the checkpoint's model was trained on (checkpoints before `data_config`
    existed carried it inside the whole run config)."""
    hp = ckpt["hyper_parameters"]
    return hp.get("data_config") or (hp.get("config") or {}).get("data")


def module_from_checkpoint(ckpt: dict[str, Any], inference: dict[str, Any]) -> SegModule:
    """The trained SegModule of a loaded checkpoint: model, classes, palette and normalisation
    all come from the checkpoint itself."""
    hp = ckpt["hyper_parameters"]
    model_cfg = {**hp["model_config"], "pretrained": False, "init_from": None}  # weights come from the checkpoint
    module = SegModule(model=instantiate(model_cfg), optimizer=None, scheduler=None, classes=hp["classes"],
                       palette=hp["palette"], model_config=model_cfg, inference=inference,
                       # the trained loss, as trained, for the val/test loss (older checkpoints: mean CE)
                       loss_config=hp.get("loss_config"), loss_reduction=hp.get("loss_reduction", "mean"),
                       class_weighting=hp.get("class_weighting", "none"), class_pixels=hp.get("class_pixels"),
                       data_config=trained_data(ckpt))
    # a model compiled in place (torch.compile) names its tensors `model._orig_mod.<name>`
    module.load_state_dict({k.replace("._orig_mod.", ".", 1): v for k, v in ckpt["state_dict"].items()})
    return module
