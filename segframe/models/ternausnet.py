"""TernausNet-16: a U-Net whose encoder is ImageNet VGG16 (Iglovikov & Shvets, "TernausNet", 2018), as
`UNet16` of the robot-surgery segmentation code (Shvets, Rakhlin, Kalinin & Iglovikov, "Automatic
Instrument Segmentation in Robot-Assisted Surgery using Deep Learning", ICMLA 2018; github.com/ternaus/
robot-surgery-segmentation, models.py), behind segframe's model contract (models/base.py).

The encoder is torchvision's VGG16 `features`: 13 3x3 convolutions with ReLU in five stages, each stage
followed by a 2x2 max pool. With f = num_filters (32), the decoder is

    center = Up(512 -> 16f -> 8f)            on pool(conv5), H/32 -> H/16
    dec5   = Up(512 + 8f -> 16f -> 8f)       on [center, conv5]
    dec4   = Up(512 + 8f -> 16f -> 8f)       on [dec5, conv4]
    dec3   = Up(256 + 8f -> 8f -> 2f)        on [dec4, conv3]
    dec2   = Up(128 + 2f -> 4f -> f)         on [dec3, conv2]
    dec1   = 3x3 conv + ReLU (64 + f -> f)   on [dec2, conv1], full resolution
    final  = 1x1 conv (f -> num_classes)

where Up(a -> m -> b) is a 3x3 convolution a -> m with ReLU, then a transposed convolution m -> b with
kernel 4, stride 2, padding 1 (exactly x2) and a ReLU. The reference returns log_softmax for several
classes and a single logit for its binary task; here the output is always the raw logits of
num_classes >= 2 classes (binary = background + foreground), which segframe's losses take.

Module names follow the reference's (`encoder.<index in vgg16.features>`, `center.block.0.conv`,
`dec1.conv`, `final`), so its state_dict tensors carry the same names here. Five pools need H and W
divisible by 32: the base pads the normalised input up to that and crops the logits back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from segframe.core.errors import ConfigError
from segframe.models.backbones import Pretrained, load_pretrained
from segframe.models.base import IMAGENET_MEAN, IMAGENET_STD, SegmentationModel, one_backbone

# the stages of torchvision's vgg16.features as [start, end) indices: conv1 = features[0:4] (conv, relu,
# conv, relu), ...; the max pool after each stage is features[end]: 4, 9, 16, 23, 30
VGG16_STAGES = ((0, 4), (5, 9), (10, 16), (17, 23), (24, 30))
VGG16_CHANNELS = (64, 128, 256, 512, 512)  # output channels of conv1..conv5


def vgg16_features(pretrained: Pretrained) -> nn.Sequential:
    """torchvision's VGG16 `features` with ImageNet weights (`pretrained`, as backbones.load_pretrained
    takes it: true, false or a local state_dict file). Without weights only the features are built,
    initialised as torchvision does: the unused classifier's 124M random parameters cost a second."""
    if pretrained is not False and pretrained is not None:
        vgg = torchvision.models.vgg16(weights=None)
        load_pretrained(vgg, pretrained, torchvision.models.VGG16_Weights.IMAGENET1K_V1)
        return vgg.features
    vgg_module = torchvision.models.vgg
    features = vgg_module.make_layers(vgg_module.cfgs["D"], batch_norm=False)
    for layer in features:
        if isinstance(layer, nn.Conv2d):  # torchvision's VGG init
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return features


class ConvRelu(nn.Sequential):
    """3x3 convolution (padding 1) and ReLU; the convolution is `.conv`, as the reference names it."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.activation = nn.ReLU(inplace=True)


class DecoderBlock(nn.Module):
    """ConvRelu(in -> middle), ConvTranspose2d(middle -> out, kernel 4, stride 2, padding 1), ReLU: x2 in
    size. The reference's `is_deconv=True` block, the one its UNet16 uses."""

    def __init__(self, in_channels: int, middle_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            ConvRelu(in_channels, middle_channels),
            nn.ConvTranspose2d(middle_channels, out_channels, kernel_size=4, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class TernausNet16(SegmentationModel):
    """forward(x: float [B,3,H,W] RGB in [0,1]) -> logits float [B,num_classes,H,W], any H, W.

    `pretrained`: ImageNet VGG16 encoder weights, as the other VGG16 models take them (true: torchvision's
    file, from the torch hub cache offline; a path to a local copy of it; false: random init). `init_from`:
    a segframe checkpoint (or state_dict) to copy matching tensors from, after `pretrained`. Normalisation
    (`mean`, `std`, `input_scale`, `channel_order`) is the base's; the reference used albumentations'
    Normalize defaults, ImageNet mean/std on RGB / 255, which are the defaults here.
    """

    output_stride = 1  # the logits are computed at full resolution (dec1 and final)
    pad_multiple = 32  # five 2x2 pools

    def __init__(
        self,
        num_classes: int,
        num_filters: int = 32,
        pretrained: Pretrained = False,
        init_from: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_scale: float = 1.0,
        channel_order: str = "rgb",
        backbone: str | None = None,
        encoder: str | None = None,
    ):
        super().__init__(num_classes, mean, std, input_scale, channel_order)
        self.backbone_name = one_backbone(backbone, encoder, "vgg16", "TernausNet-16")
        if self.backbone_name != "vgg16":
            raise ConfigError(f"model.backbone={self.backbone_name!r}: TernausNet-16's encoder is VGG16 (the "
                              f"reference's), no other; a U-Net on {self.backbone_name}: "
                              f"model=unet model.backbone={self.backbone_name}")
        if isinstance(num_filters, bool) or not isinstance(num_filters, int) or num_filters < 1:
            raise ConfigError(f"model.num_filters must be a positive integer (TernausNet: 32), got {num_filters!r}")
        self.num_filters = f = num_filters
        self.classifier_prefixes = ("final.",)
        self.encoder = vgg16_features(pretrained)
        self.pool = nn.MaxPool2d(2, 2)
        self.center = DecoderBlock(512, 16 * f, 8 * f)
        self.dec5 = DecoderBlock(512 + 8 * f, 16 * f, 8 * f)
        self.dec4 = DecoderBlock(512 + 8 * f, 16 * f, 8 * f)
        self.dec3 = DecoderBlock(256 + 8 * f, 8 * f, 2 * f)
        self.dec2 = DecoderBlock(128 + 2 * f, 4 * f, f)
        self.dec1 = ConvRelu(64 + f, f)
        self.final = nn.Conv2d(f, self.num_classes, kernel_size=1)
        self.start_from(init_from)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """conv1..conv5: the outputs of VGG16's five stages (before their pools), at H, H/2, ..., H/16."""
        skips = []
        for i, (start, end) in enumerate(VGG16_STAGES):
            if i:
                x = self.pool(skips[-1])
            for index in range(start, end):
                x = self.encoder[index](x)
            skips.append(x)
        return skips

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        conv1, conv2, conv3, conv4, conv5 = self.encode(x)
        y = self.center(self.pool(conv5))
        y = self.dec5(torch.cat([y, conv5], 1))
        y = self.dec4(torch.cat([y, conv4], 1))
        y = self.dec3(torch.cat([y, conv3], 1))
        y = self.dec2(torch.cat([y, conv2], 1))
        y = self.dec1(torch.cat([y, conv1], 1))
        return self.final(y)
