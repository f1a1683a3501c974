"""The reference FCNs' weights under the reference's layer names, loaded into segframe's FCN.

pytorch-fcn (github.com/wkentaro/pytorch-fcn) converted the authors' released Caffe models to PyTorch
(`fcn32s_from_caffe.pth`, `fcn16s_from_caffe.pth`, `fcn8s_from_caffe.pth`, `fcn8s-atonce_from_caffe.pth`:
plain state dicts) and saves its own training runs as checkpoints holding `model_state_dict`. Both name
the layers as the Caffe nets do: conv1_1 ... conv5_3, fc6, fc7, score_fr, score_pool4, score_pool3 and
the upsamplers upscore (FCN-32s), upscore2, upscore16 (FCN-16s), upscore_pool4, upscore8 (FCN-8s).

Those weights expect the reference's input: BGR in 0..255 minus the BGR mean, which the model's
normalisation must say (`channel_order=bgr`, `input_scale=255`, `std=[1, 1, 1]`); with
`padding=caffe` the net then computes the reference's outputs. The at-once FCN-8s has the same names
as FCN-8s: its file needs `model=fcn8s_atonce` (skip_scales), which the names cannot tell.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segframe.core.errors import ConfigError
from segframe.models.backbones import mismatch_report

log = logging.getLogger(__name__)

# torchvision's vgg16.features index of each conv layer, and the FCN backbone slice that holds it
_VGG_CONVS = {"conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10, "conv3_2": 12, "conv3_3": 14,
              "conv4_1": 17, "conv4_2": 19, "conv4_3": 21, "conv5_1": 24, "conv5_2": 26, "conv5_3": 28}
BACKBONE_NAMES = {name: f"backbone.{'to_s8' if i < 17 else 'to_s16' if i < 24 else 'to_s32'}.{i}"
                  for name, i in _VGG_CONVS.items()} | {"fc6": "backbone.fc6", "fc7": "backbone.fc7"}
HEAD_NAMES = {"score_fr": "score_s32", "score_pool4": "score_s16", "score_pool3": "score_s8",
              "upscore2": "up_s32", "upscore_pool4": "up_s16"}
# each reference net's last upsampler, by the stride it upsamples from
FINAL_UPSAMPLERS = {32: "upscore", 16: "upscore16", 8: "upscore8"}
REFERENCE_MEAN = (104.00699, 116.66877, 122.67892)  # BGR, the reference's data layers (voc_layers.py)


def reference_state(loaded: Any) -> dict[str, torch.Tensor] | None:
    """The state dict of a pytorch-fcn file (plain, or a checkpoint's `model_state_dict`) when its
    tensors carry the reference's layer names; None for anything else (a segframe checkpoint)."""
    state = loaded.get("model_state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        return None
    names = {k.rsplit(".", 1)[0] for k, v in state.items() if isinstance(v, torch.Tensor)}
    return state if {"conv1_1", "score_fr"} <= names else None


def file_stride(state: dict[str, torch.Tensor]) -> int:
    """Which reference net the tensors come from: 8 with a pool3 skip, 16 with a pool4 skip, else 32."""
    layers = {k.rsplit(".", 1)[0] for k in state}
    return 8 if "score_pool3" in layers else 16 if "score_pool4" in layers else 32


def _check_normalisation(model: nn.Module, file: Path) -> None:
    # the mean within 2 grey levels of the reference's (the VGG paper's (103.939, 116.779, 123.68) is, by 1.01)
    off_mean = any(abs(m - r) > 2.0 for m, r in zip(model.norm_mean, REFERENCE_MEAN))
    if model.channel_order != "bgr" or model.input_scale != 255.0 or any(s != 1.0 for s in model.norm_std) or off_mean:
        raise ConfigError(
            f"init_from {file} holds the reference FCN's weights, which expect BGR 0..255 minus the BGR mean, but the "
            f"model normalises as channel_order={model.channel_order}, input_scale={model.input_scale}, "
            f"mean={list(model.norm_mean)}, std={list(model.norm_std)}; set model.channel_order=bgr model.input_scale=255 "
            f"model.mean=[{', '.join(map(str, REFERENCE_MEAN))}] model.std=[1,1,1] (the fcn*_voc_paper experiments do)")


def load_reference_weights(model: nn.Module, state: dict[str, torch.Tensor], file: Path) -> list[str]:
    """Copy a reference state dict into a VGG16 FCN by the reference's names; returns the model's
    tensors the file did not set (the new skip layers of a finer stage, which keep their zero init).

    Refused, listing the tensors: a name the mapping does not know, a shape that differs (e.g.
    another class count), a finer net's file for a coarser model, a backbone tensor the file lacks.
    A coarser net's last upsampler is left out, as the reference re-initialises its upsamplers
    bilinearly at each stage.
    """
    if getattr(model, "backbone_name", None) != "vgg16":
        raise ConfigError(f"init_from {file} holds a reference VGG16 FCN; this model's backbone is "
                          f"{getattr(model, 'backbone_name', type(model).__name__)!r}: use model.backbone=vgg16")
    _check_normalisation(model, file)
    stride = file_stride(state)
    if stride < model.stride:
        raise ConfigError(f"init_from {file} is a reference FCN-{stride}s, finer than this FCN-{model.stride}s: its skip "
                          f"layers have no place here; use model.stride={stride} (model=fcn{stride}s)")
    names = {**BACKBONE_NAMES, **HEAD_NAMES, FINAL_UPSAMPLERS[stride]: "up_final"}
    skipped = [] if stride == model.stride else [FINAL_UPSAMPLERS[stride]]  # bilinear again in the finer net
    own = model.state_dict()
    mapped, unknown, mismatched = {}, [], []
    for key, tensor in state.items():
        layer, _, kind = key.rpartition(".")
        if layer in skipped or not isinstance(tensor, torch.Tensor):
            continue
        target = f"{names[layer]}.{kind}" if layer in names else None
        if target not in own:
            unknown.append(key)
        elif tensor.shape != own[target].shape:
            mismatched.append(f"{key} {tuple(tensor.shape)} vs {target} {tuple(own[target].shape)}")
        else:
            mapped[target] = tensor
    missing = [k for k in own if k not in mapped and (k.startswith("backbone.") or stride == model.stride)]
    if unknown or mismatched or missing:
        raise ConfigError(f"init_from {file}: the reference FCN-{stride}s weights do not fit this FCN-{model.stride}s "
                          f"({mismatch_report(missing, unknown, mismatched)}); names are pytorch-fcn's, shapes must "
                          f"match (num_classes {model.num_classes})")
    with torch.no_grad():
        for target, tensor in mapped.items():
            own[target].copy_(tensor)
    new = [k for k in own if k not in mapped]
    log.info("init_from %s: reference FCN-%ds weights, %d tensors by name%s", file, stride, len(mapped),
             f"; new (kept initialisation): {', '.join(new)}" if new else "")
    if getattr(model, "padding", "caffe") != "caffe":
        log.warning("init_from %s: reference weights with model.padding=%s compute other outputs than the reference "
                    "nets; model.padding=caffe reproduces them", file, model.padding)
    return new
