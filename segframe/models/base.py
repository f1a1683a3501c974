"""What every segframe model shares: the model contract, and starting from another checkpoint.

The contract (docs/models.md): `forward(float [B,3,H,W] RGB in [0,1]) -> logits [B,C,H,W]` at the
input's H x W, for any H and W. Normalisation happens inside the model, so a checkpoint carries it.
A family only writes `forward_padded`, which sees a normalised input padded to its `pad_multiple`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segframe.core.errors import ConfigError, MissingFileError, load_problem

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT_STRIDES = (8, 16)  # the choices of a dilated backbone (fcn_dilated, DeepLabV3/V3+)


def one_backbone(backbone: str | None, encoder: str | None, default: str, family: str) -> str:
    """The network a family builds on, under its one name `backbone`; `encoder` is its other name (smp's,
    and the key checkpoints of smp families held before the two were one): either may be given, both
    only with the same value. Neither: the family's `default`."""
    if backbone is not None and encoder is not None and str(backbone) != str(encoder):
        raise ConfigError(f"model.backbone={backbone!r} and model.encoder={encoder!r} disagree: model.encoder is "
                          f"another name for model.backbone (the network {family} is built on), one setting; give it "
                          f"once: model.backbone={encoder} (which also overrides an experiment's model.backbone), "
                          f"or drop model.encoder={encoder} to keep {backbone}")
    name = backbone if backbone is not None else encoder
    return default if name is None else str(name)


def to_input(images: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 [B,3,H,W] from the loader -> float in [0,1] in `memory_format` (the loader's batches are
    channels-last; a model runs in the layout it was asked for, whatever layout came in); the model
    normalises further (its mean/std). The one conversion training, evaluation and the bench use."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32, memory_format=memory_format).div_(255.0)
    return images.contiguous(memory_format=memory_format)


class SegmentationModel(nn.Module):
    """Base of every family. `(x * input_scale - mean) / std` after an optional RGB -> BGR swap
    (`channel_order`): torchvision and timm weights want RGB in [0,1] with ImageNet mean/std;
    Caffe-converted VGG16 weights want BGR in 0..255 minus the BGR mean, std 1.

    Subclasses set `output_stride` (input pixels per pixel of the coarsest logits the head computes
    before its final upsampling, measured by the tests) and `pad_multiple`, then call
    `start_from(init_from)` at the end of their `__init__`.
    """

    output_stride: int
    pad_multiple: int = 32
    classifier_prefixes: tuple[str, ...] = ()  # state_dict names of the layers sized by the class count

    def __init__(self, num_classes: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 input_scale: float = 1.0, channel_order: str = "rgb"):
        super().__init__()
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        if channel_order not in ("rgb", "bgr"):
            raise ConfigError(f"channel_order must be 'rgb' or 'bgr' (Caffe-converted weights), got {channel_order!r}")
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"mean and std need 3 values (RGB) and std > 0, got mean={mean}, std={std}")
        # plain copies for hparams/repr; the buffers are what forward uses (and move with .to(device))
        self.num_classes, self.channel_order = num_classes, channel_order
        self.norm_mean, self.norm_std, self.input_scale = tuple(mean), tuple(std), float(input_scale)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.channel_order == "bgr":  # Caffe models were trained on BGR images (mean in BGR order too)
            x = x.flip(1)
        x = (x * self.input_scale - self.mean) / self.std
        # zero in normalised space = the mean colour; every stride then divides the size exactly,
        # so the logits line up with the input pixels; they are cropped back to H x W
        m = self.pad_multiple
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m))
        return self.forward_padded(x)[..., :h, :w]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def start_from(self, init_from: str | os.PathLike | None) -> None:
        if init_from:
            load_matching_weights(self, init_from)


def _group(names: Sequence[str]) -> str:
    """'backbone: 120, score_s32: 2' style summary of tensor names by top-level module."""
    counts: dict[str, int] = {}
    for n in names:
        counts[n.split(".")[0]] = counts.get(n.split(".")[0], 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"


def _check_same_normalisation(model: nn.Module, ckpt: Any, file: Path) -> None:
    """Weights learnt on one input normalisation are wrong under another (RGB vs Caffe BGR 0..255):
    a stage must keep its parent's `channel_order`, `input_scale`, `mean` and `std`."""
    parent = (ckpt.get("hyper_parameters") or {}).get("model_config") if isinstance(ckpt, dict) else None
    if not parent:
        return  # a plain state_dict carries no normalisation to compare
    mine = {"channel_order": getattr(model, "channel_order", "rgb"), "input_scale": model.input_scale,
            "mean": list(model.norm_mean), "std": list(model.norm_std)}
    theirs = {"channel_order": parent.get("channel_order", "rgb"), "input_scale": float(parent.get("input_scale", 1.0)),
              "mean": [float(v) for v in parent.get("mean", mine["mean"])],
              "std": [float(v) for v in parent.get("std", mine["std"])]}
    differ = [k for k in mine if (mine[k] != theirs[k] if k == "channel_order" else
                                  not torch.allclose(torch.tensor(mine[k], dtype=torch.float64),
                                                     torch.tensor(theirs[k], dtype=torch.float64)))]
    if differ:
        raise ConfigError(f"init_from {file} was trained with input normalisation "
                          f"{ {k: theirs[k] for k in differ} } but this model uses { {k: mine[k] for k in differ} }; "
                          "set model.channel_order/input_scale/mean/std as the parent had them")


def _class_count_clash(model: nn.Module, own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """A classifier tensor (the model's `classifier_prefixes`) of another class count in the
    checkpoint: copying around it would silently mix two tasks."""
    prefixes = tuple(getattr(model, "classifier_prefixes", ()))
    for name, tensor in own.items():
        src = state.get(name)
        if prefixes and name.startswith(prefixes) and src is not None and src.shape[:1] != tensor.shape[:1]:
            return f"checkpoint has {src.shape[0]} classes, model has {tensor.shape[0]} ({name})"
    return None


def read_init_file(path: str | os.PathLike) -> tuple[Path, Any]:
    """The loaded contents of an `init_from` file (never unpickling code), or the error naming it."""
    file = Path(path).expanduser()
    if not file.is_file():
        where = " (the reference's released FCN weights: docs/reproducing.md, \"Reproducing FCN\", Downloads)" \
            if file.name.endswith("_from_caffe.pth") else ""
        raise MissingFileError(f"init_from checkpoint not found: {file} (from model.init_from={path}){where}")
    try:
        return file, torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickled objects, not a torch file...
        # not `from exc`: torch's cause advises turning weights_only off (running the code a pickle holds)
        raise ConfigError(f"model.init_from={path}: {file} cannot be loaded as a weights file or checkpoint: "
                          f"{load_problem(exc)}")


def load_matching_weights(model: nn.Module, path: str | os.PathLike, loaded: Any = None) -> tuple[list[str], list[str]]:
    """Copy every tensor of checkpoint `path` whose name and shape match `model`: staged training
    (FCN-32s -> 16s -> 8s), or a backbone shared between families (FCN-8s ResNet-18 -> dilated FCN).

    `path` is a Lightning checkpoint ({"state_dict": {"model.<name>": ...}}) or a plain state_dict
    (`loaded`: its contents, when the caller has read them already). Returns (copied, new) state_dict
    names; `new` keep their fresh init (e.g. zero skip score layers, bilinear `up_final`, whose kernel
    size differs between 32s/16s/8s). Raises ValueError when a classifier's class count differs.
    """
    file, ckpt = (Path(path).expanduser(), loaded) if loaded is not None else read_init_file(path)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) else ckpt
    if not isinstance(state, dict):
        raise ConfigError(f"{file}: expected a Lightning checkpoint or a state_dict, got {type(state).__name__}")
    state = {k.removeprefix("model."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    _check_same_normalisation(model, ckpt, file)

    own = model.state_dict()
    clash = _class_count_clash(model, own, state)
    if clash:
        raise ConfigError(f"{file}: {clash}; init_from needs the same class list: use a checkpoint trained on "
                          f"this dataset's classes, or drop model.init_from")
    copied, new, mismatched = [], [], []
    with torch.no_grad():
        for name, tensor in own.items():
            src = state.get(name)
            if src is not None and src.shape == tensor.shape:
                tensor.copy_(src)  # state_dict() tensors share storage with the parameters/buffers
                copied.append(name)
            else:
                new.append(name)
                if src is not None:
                    mismatched.append(f"{name} {tuple(src.shape)} -> {tuple(tensor.shape)}")
    if not copied:
        raise ConfigError(f"init_from {file}: no tensor matches this model by name and shape "
                          f"(a checkpoint of a different backbone or model family?)")
    log.info("init_from %s: copied %d tensors (%s)", file, len(copied), _group(copied))
    log.info("init_from %s: new (kept initialisation) %d tensors: %s", file, len(new), ", ".join(new) or "none")
    if mismatched:
        log.info("init_from %s: skipped for shape mismatch: %s", file, "; ".join(mismatched))
    prefixes = ("backbone.", "encoder.")
    if any(n.startswith(prefixes) for n in new):
        log.warning("init_from %s: %d backbone tensors were not in the checkpoint (different backbone?)",
                    file, sum(n.startswith(prefixes) for n in new))
    return copied, new
