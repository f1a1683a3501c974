"""Dilated FCN: a ResNet whose last stages keep their resolution through dilation, and one FCN score
layer, upsampled bilinearly (tf-image-segmentation's `resnet_v1_{50,101}_{8,16}s`; its author's
follow-up added ResNet-18/34-8s, 68.0 mIoU on RV-VOC12 for ResNet-34-8s).

Dilation instead of skip connections (Yu & Koltun, ICLR 2016; Chen et al., DeepLab): the backbone's
receptive field and ImageNet weights are kept, while the features stay at 1/8 or 1/16 of the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segframe.core.errors import ConfigError
from segframe.models.backbones import RESNET_WEIGHTS, Pretrained, ResNetBackbone
from segframe.models.base import IMAGENET_MEAN, IMAGENET_STD, OUTPUT_STRIDES, SegmentationModel, one_backbone
from segframe.models.fcn import score_layer


def dilate_stage(stage: nn.Sequential, dilation: int, previous: int) -> None:
    """Make a ResNet stage keep its input's resolution: stride 1 everywhere, and every 3x3 conv
    dilated by `dilation`, except the stage's first one, which keeps the `previous` stage's rate
    (what torchvision's `replace_stride_with_dilation` does for bottlenecks). Written for both block
    kinds because torchvision's BasicBlock (ResNet-18/34) raises on dilation > 1; the weights are
    unchanged, so ImageNet weights load as before."""
    first = True
    for block in stage:
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
        for conv in (m for m in block.children() if isinstance(m, nn.Conv2d)):
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                rate = previous if first else dilation
                conv.dilation, conv.padding = (rate, rate), (rate, rate)
                first = False


class DilatedFCN(SegmentationModel):
    """ResNet-18/34/50/101 at `output_stride` 8 (layer3 dilated x2, layer4 x4) or 16 (layer4 x2), a 1x1
    score layer (zero init, as FCN's), bilinear upsampling to the input size. Backbone tensor names
    equal `FCN`'s ResNet backbone, so `init_from` an FCN-8s checkpoint copies the whole backbone."""

    pad_multiple = 16  # the stem and layer2 halve the size three times, layer3 once more at stride 16

    def __init__(
        self,
        num_classes: int,
        backbone: str | None = None,
        output_stride: int = 8,
        pretrained: Pretrained = False,
        init_from: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_scale: float = 1.0,
        channel_order: str = "rgb",
        encoder: str | None = None,
    ):
        super().__init__(num_classes, mean, std, input_scale, channel_order)
        backbone = one_backbone(backbone, encoder, "resnet50", "fcn_dilated")
        output_stride = int(output_stride)
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"model.output_stride must be one of {OUTPUT_STRIDES} for fcn_dilated, got {output_stride}")
        if backbone not in RESNET_WEIGHTS:
            raise ConfigError(f"model.backbone={backbone!r}: unknown backbone for fcn_dilated; valid: "
                              f"{', '.join(RESNET_WEIGHTS)}")
        self.backbone_name, self.output_stride = backbone, output_stride
        self.classifier_prefixes = ("score.",)
        self.backbone = ResNetBackbone(backbone, pretrained)
        if output_stride == 8:
            dilate_stage(self.backbone.layer3, dilation=2, previous=1)
            dilate_stage(self.backbone.layer4, dilation=4, previous=2)
        else:
            dilate_stage(self.backbone.layer4, dilation=2, previous=1)
        self.score = score_layer(self.backbone.channels["s32"], self.num_classes)
        self.start_from(init_from)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        score = self.score(self.backbone(x)["s32"])  # "s32" is the last stage, here at 1/8 or 1/16
        return F.interpolate(score, size=x.shape[-2:], mode="bilinear", align_corners=False)
