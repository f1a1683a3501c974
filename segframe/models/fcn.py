"""FCN-32s / FCN-16s / FCN-8s (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015) on VGG16 or ResNet backbones.

Differences from the paper's Caffe nets, on purpose: instead of padding the input by 100 px and
cropping with per-layer offsets, the (normalised) input is zero-padded bottom/right to a multiple
of 32, so every feature map is exactly H/8, H/16, H/32 and the upsampled logits line up with the
input; they are then cropped back to H x W.
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

from segframe.models.backbones import Pretrained, ResNetBackbone, VGG16Backbone

log = logging.getLogger(__name__)

BACKBONES = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet101")
STRIDES = (32, 16, 8)


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """ConvTranspose2d weight [C, C, k, k] doing per-channel bilinear upsampling (the paper's init).

    With kernel 2f, stride f, padding f/2 this matches F.interpolate(scale_factor=f, mode="bilinear",
    align_corners=False) away from the borders.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = (filt1d[:, None] * filt1d[None, :]).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    idx = torch.arange(channels)
    weight[idx, idx] = filt  # diagonal: class c only feeds class c
    return weight


def upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Learnable x`factor` upsampling, bilinear-initialised: output size is exactly factor * input."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up


def score_layer(in_channels: int, num_classes: int) -> nn.Conv2d:
    # zero init as in the paper: a freshly added skip branch contributes nothing at first,
    # so FCN-16s initialised from FCN-32s starts out computing (nearly) the 32s prediction
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FCN(nn.Module):
    """forward(x: float [B,3,H,W] RGB in [0,1]) -> logits float [B,num_classes,H,W], any H, W.

    Normalisation happens inside the model, `(x * input_scale - mean) / std` after an optional
    RGB -> BGR swap (`channel_order`), so a checkpoint carries it: torchvision weights want RGB in
    [0,1] with ImageNet mean/std; Caffe-converted VGG16 weights want BGR in 0..255 minus the BGR
    mean (103.939, 116.779, 123.68), std 1. `stride` 32/16/8 selects FCN-32s/16s/8s. `init_from` copies matching tensors from
    a coarser (or same) FCN checkpoint for staged training (after `pretrained` loading, so it wins).
    """

    def __init__(
        self,
        num_classes: int,
        stride: int = 8,
        backbone: str = "vgg16",
        pretrained: Pretrained = False,
        init_from: str | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        input_scale: float = 1.0,
        channel_order: str = "rgb",
    ):
        super().__init__()
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr' (Caffe-converted weights), got {channel_order!r}")
        self.channel_order = channel_order
        stride, num_classes = int(stride), int(num_classes)
        if stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES} (FCN-32s/16s/8s), got {stride}")
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (RGB) and std > 0, got mean={mean}, std={std}")
        # plain copies for hparams/repr; the buffers are what forward uses (and move with .to(device))
        self.num_classes, self.stride, self.backbone_name = num_classes, stride, backbone
        self.norm_mean, self.norm_std, self.input_scale = tuple(mean), tuple(std), float(input_scale)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        self.backbone = VGG16Backbone(pretrained) if backbone == "vgg16" else ResNetBackbone(backbone, pretrained)
        ch = self.backbone.channels
        self.score_s32 = score_layer(ch["s32"], num_classes)
        if stride <= 16:
            self.score_s16 = score_layer(ch["s16"], num_classes)
            self.up_s32 = upsampler(num_classes, 2)
        if stride == 8:
            self.score_s8 = score_layer(ch["s8"], num_classes)
            self.up_s16 = upsampler(num_classes, 2)
        self.up_final = upsampler(num_classes, stride)

        if init_from:
            load_matching_weights(self, init_from)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.channel_order == "bgr":  # Caffe models were trained on BGR images (mean in BGR order too)
            x = x.flip(1)
        x = (x * self.input_scale - self.mean) / self.std
        # zero in normalised space = the mean colour; sizes then divide exactly by 8/16/32
        x = F.pad(x, (0, (-w) % 32, 0, (-h) % 32))
        feats = self.backbone(x)
        score = self.score_s32(feats["s32"])
        if self.stride <= 16:
            score = self.up_s32(score) + self.score_s16(feats["s16"])
        if self.stride == 8:
            score = self.up_s16(score) + self.score_s8(feats["s8"])
        return self.up_final(score)[..., :h, :w]


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
        raise ValueError(f"init_from {file} was trained with input normalisation "
                         f"{ {k: theirs[k] for k in differ} } but this model uses { {k: mine[k] for k in differ} }; "
                         "set model.channel_order/input_scale/mean/std as the parent had them")


def load_matching_weights(model: nn.Module, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Copy every tensor of checkpoint `path` whose name and shape match `model` (staged 32s -> 16s -> 8s).

    `path` is a Lightning checkpoint ({"state_dict": {"model.<name>": ...}}) or a plain state_dict.
    Returns (copied, new) state_dict names; `new` keep their fresh init (e.g. zero skip score layers,
    bilinear `up_final`, whose kernel size differs between 32s/16s/8s). Raises ValueError when the
    score layers' class counts differ.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"init_from checkpoint not found: {file} (from model.init_from={path})")
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) else ckpt
    if not isinstance(state, dict):
        raise ValueError(f"{file}: expected a Lightning checkpoint or a state_dict, got {type(state).__name__}")
    state = {k.removeprefix("model."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    _check_same_normalisation(model, ckpt, file)

    own = model.state_dict()
    for name in ("score_s32.weight", "score_s16.weight", "score_s8.weight"):
        if name in own and name in state and state[name].shape[0] != own[name].shape[0]:
            raise ValueError(f"checkpoint {file} has {state[name].shape[0]} classes, model has {own[name].shape[0]} "
                             f"({name}); init_from needs the same class list")
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
        raise ValueError(f"init_from {file}: no tensor matches this model by name and shape "
                         f"(a checkpoint of a different backbone or not an FCN?)")
    log.info("init_from %s: copied %d tensors (%s)", file, len(copied), _group(copied))
    log.info("init_from %s: new (kept initialisation) %d tensors: %s", file, len(new), ", ".join(new) or "none")
    if mismatched:
        log.info("init_from %s: skipped for shape mismatch: %s", file, "; ".join(mismatched))
    if any(n.startswith("backbone.") for n in new):
        log.warning("init_from %s: %d backbone tensors were not in the checkpoint (different backbone?)",
                    file, sum(n.startswith("backbone.") for n in new))
    return copied, new
