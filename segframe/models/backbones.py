"""VGG16 / ResNet feature extractors for FCN, exposing the stride-8/16/32 features.

Each backbone has `channels: dict[str, int]` and `forward(x) -> {"s8", "s16", "s32"}`.
Weights (`pretrained`): False = random init; True = torchvision's ImageNet weights (downloaded
into the torch hub cache, or read from it offline); a str = a local torchvision state_dict file.
"""

from __future__ import annotations

import http.client
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from segframe.core.errors import ConfigError, MissingFileError, PretrainedWeightsError, load_problem
from segframe.models.caffe import CONV1_PAD

Pretrained = bool | str | os.PathLike

RESNET_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
}


def mismatch_report(missing: Sequence[str], unexpected: Sequence[str], mismatched: Sequence[str]) -> str:
    """'2 missing: a, b; 1 shape mismatch: c (3,) vs (4,)' (a few names each, not a wall of text)."""
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if names:
            more = f" ... (+{len(names) - 5} more)" if len(names) > 5 else ""
            problems.append(f"{len(names)} {label}: {', '.join(names[:5])}{more}")
    return "; ".join(problems)


def _check_keys(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Fail with a readable message when `state` doesn't fit `model`."""
    if not isinstance(state, dict):
        raise ConfigError(f"{source}: expected a torchvision state_dict (a dict of tensors), "
                          f"got {type(state).__name__}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and hasattr(state[k], "shape") and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise ConfigError(f"{source} does not match torchvision's {type(model).__name__} state_dict "
                          f"({mismatch_report(missing, unexpected, mismatched)}). Expected a state_dict saved from the "
                          f"torchvision classification model (model.state_dict()), not a segmentation checkpoint.")


def read_weights_file(pretrained: str | os.PathLike, example: str, download: str) -> dict[str, torch.Tensor]:
    """The state_dict in a local weights file (`model.pretrained=PATH`), or the error saying what to pass."""
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise MissingFileError(f"Pretrained weights file not found: {path} (from model.pretrained={pretrained}). "
                               f"Pass an existing file, e.g. model.pretrained=/path/to/{example}, "
                               f"or model.pretrained=true for {download}, or model.pretrained=false.")
    try:  # weights_only: never unpickle arbitrary objects from a file we did not create
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickled objects, not a torch file...
        # not `from exc`: torch's cause advises turning weights_only off (running the code a pickle holds)
        raise ConfigError(f"model.pretrained={pretrained}: {path} cannot be loaded as a weights file: "
                          f"{load_problem(exc)}; pass an intact copy of {example}, or model.pretrained=false")


def load_pretrained(model: nn.Module, pretrained: Pretrained, weights: torchvision.models.WeightsEnum) -> None:
    """Load ImageNet weights into a torchvision classification model, in place (see module doc)."""
    if pretrained is False or pretrained is None:
        return
    if pretrained is True:
        url = weights.url
        file_name = os.path.basename(url)
        cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
        try:
            # torch.hub reads <hub>/checkpoints/<file> if present (offline use), else downloads and hash-checks it
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True,
                                                       weights_only=True)
        except (URLError, OSError, RuntimeError, http.client.HTTPException, pickle.UnpicklingError) as e:
            raise PretrainedWeightsError(
                f"Could not get ImageNet weights {file_name} ({type(e).__name__}: {e}). "
                f"Download {url} on a machine with network access and put it at "
                f"{os.path.join(cache_dir, file_name)} (the torch hub checkpoints dir; set TORCH_HOME to move it), "
                f"or point at a local copy with model.pretrained=/path/to/{file_name}, "
                f"or train from scratch with model.pretrained=false.") from e
        source = f"{file_name} (torch hub cache {cache_dir})"
    else:
        path = Path(pretrained).expanduser()
        state = read_weights_file(pretrained, os.path.basename(weights.url), "the torchvision download")
        source = f"weights file {path}"
    _check_keys(model, state, source)
    model.load_state_dict(state)


class VGG16Backbone(nn.Module):
    """torchvision VGG16 `features` + fc6/fc7 as convolutions (the paper's "convolutionalised" VGG).

    fc6 is a 7x7 conv with padding=3 instead of the paper's valid 7x7 conv on a 100-px padded input:
    we pad the input to a multiple of 32 and crop the logits, so pool5 is exactly H/32 and padding=3
    keeps it that size (inputs as small as 32 px work). At a position whose 7x7 window lies inside the
    map, fc6 computes exactly torchvision's classifier.0 Linear on that window.

    With `caffe=True` it has the reference nets' geometry instead (models/caffe.py): conv1_1 pads by
    100 px, pooling rounds up (Caffe's, PyTorch's ceil_mode) and fc6 is a valid 7x7 convolution; the
    weights and their names are the same.
    """

    def __init__(self, pretrained: Pretrained = False, caffe: bool = False):
        super().__init__()
        vgg = torchvision.models.vgg16(weights=None)
        load_pretrained(vgg, pretrained, torchvision.models.VGG16_Weights.IMAGENET1K_V1)
        features = vgg.features
        if caffe:
            features[0].padding = (CONV1_PAD, CONV1_PAD)
            for layer in features:
                if isinstance(layer, nn.MaxPool2d):
                    layer.ceil_mode = True
        # indices in torchvision's vgg16.features: pool3 = 16, pool4 = 23, pool5 = 30 (slices keep the names)
        self.to_s8, self.to_s16, self.to_s32 = features[:17], features[17:24], features[24:31]
        lin6, lin7 = vgg.classifier[0], vgg.classifier[3]
        # meta device: skip a wasted random init of 100M fc6 params; the Linear weights are reused as-is
        self.fc6 = nn.Conv2d(512, 4096, 7, padding=0 if caffe else 3, device="meta")
        self.fc7 = nn.Conv2d(4096, 4096, 1, device="meta")
        self.fc6.weight = nn.Parameter(lin6.weight.detach().view(4096, 512, 7, 7))
        self.fc6.bias = nn.Parameter(lin6.bias.detach())
        self.fc7.weight = nn.Parameter(lin7.weight.detach().view(4096, 4096, 1, 1))
        self.fc7.bias = nn.Parameter(lin7.bias.detach())
        self.relu6, self.drop6 = nn.ReLU(inplace=True), nn.Dropout(0.5)
        self.relu7, self.drop7 = nn.ReLU(inplace=True), nn.Dropout(0.5)
        self.channels = {"s8": 256, "s16": 512, "s32": 4096}

    def conv_fc6(self, x: torch.Tensor) -> torch.Tensor:
        """fc6 as a 7x7 conv. On CPU with a pool5 map smaller than the kernel (inputs < 224 px), oneDNN's
        conv backward is pathologically slow (~10-50 s per step); the same math as im2col + matmul is ~1 s."""
        b, _, h, w = x.shape
        if x.device.type != "cpu" or min(h, w) >= 7:
            return self.fc6(x)
        pad = self.fc6.padding[0]
        cols = F.unfold(x, 7, padding=pad)  # [B, 512*49, h'*w'], same (c, kh, kw) order as weight.view(4096, -1)
        out = self.fc6.weight.flatten(1) @ cols + self.fc6.bias[:, None]
        return out.view(b, -1, h + 2 * pad - 6, w + 2 * pad - 6)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s8 = self.to_s8(x)
        s16 = self.to_s16(s8)
        s32 = self.drop6(self.relu6(self.conv_fc6(self.to_s32(s16))))
        s32 = self.drop7(self.relu7(self.fc7(s32)))
        return {"s8": s8, "s16": s16, "s32": s32}


class ResNetBackbone(nn.Module):
    """torchvision ResNet without avgpool/fc: s8 = layer2, s16 = layer3, s32 = layer4.

    Module names match torchvision's (conv1, bn1, layer1..4) so checkpoints read naturally.
    """

    def __init__(self, name: str = "resnet18", pretrained: Pretrained = False):
        super().__init__()
        if name not in RESNET_WEIGHTS:
            raise ConfigError(f"unknown ResNet {name!r}; valid: {', '.join(RESNET_WEIGHTS)}")
        resnet = getattr(torchvision.models, name)(weights=None)
        load_pretrained(resnet, pretrained, RESNET_WEIGHTS[name])
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        c32 = resnet.fc.in_features  # 512 (basic blocks) or 2048 (bottlenecks); each stage halves it
        self.channels = {"s8": c32 // 4, "s16": c32 // 2, "s32": c32}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        s8 = self.layer2(x)
        s16 = self.layer3(s8)
        s32 = self.layer4(s16)
        return {"s8": s8, "s16": s16, "s32": s32}
