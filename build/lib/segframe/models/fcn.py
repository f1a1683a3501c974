"""FCN-32s / FCN-16s / FCN-8s (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015) on VGG16 or ResNet backbones.

Differences from the paper's Caffe nets, on purpose: instead of padding the input by 100 px and
cropping with per-layer offsets, the (normalised) input is zero-padded bottom/right to a multiple
of 32 (models/base.py), so every feature map is exactly H/8, H/16, H/32 and the upsampled logits
line up with the input; they are then cropped back to H x W.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segframe.errors import ConfigError
from segframe.models.backbones import Pretrained, ResNetBackbone, VGG16Backbone
from segframe.models.base import IMAGENET_MEAN, IMAGENET_STD, SegmentationModel

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


class FCN(SegmentationModel):
    """forward(x: float [B,3,H,W] RGB in [0,1]) -> logits float [B,num_classes,H,W], any H, W.

    `stride` 32/16/8 selects FCN-32s/16s/8s. Normalisation (`mean`, `std`, `input_scale`,
    `channel_order`) is the base's (models/base.py). `init_from` copies matching tensors from a
    coarser (or same) FCN checkpoint for staged training (after `pretrained` loading, so it wins).
    """

    def __init__(
        self,
        num_classes: int,
        stride: int = 8,
        backbone: str = "vgg16",
        pretrained: Pretrained = False,
        init_from: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_scale: float = 1.0,
        channel_order: str = "rgb",
    ):
        super().__init__(num_classes, mean, std, input_scale, channel_order)
        stride, num_classes = int(stride), int(num_classes)
        if stride not in STRIDES:
            raise ConfigError(f"stride must be one of {STRIDES} (FCN-32s/16s/8s), got {stride}")
        if backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
        self.stride, self.backbone_name = stride, backbone
        self.output_stride = stride  # the finest skip it adds: s8 for FCN-8s
        self.classifier_prefixes = ("score_", "up_")

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
        self.start_from(init_from)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        score = self.score_s32(feats["s32"])
        if self.stride <= 16:
            score = self.up_s32(score) + self.score_s16(feats["s16"])
        if self.stride == 8:
            score = self.up_s16(score) + self.score_s8(feats["s8"])
        return self.up_final(score)


