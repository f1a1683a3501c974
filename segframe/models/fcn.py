"""FCN-32s / FCN-16s / FCN-8s (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015) on VGG16 or ResNet backbones, and the at-once FCN-8s of the reference
implementation (fcn.berkeleyvision.org, `voc-fcn8s-atonce`).

Two geometries (`padding`):
- `pad32` (the default): the (normalised) input is zero-padded bottom/right to a multiple of 32
  (models/base.py), so every feature map is exactly H/8, H/16, H/32 and the upsampled logits line up
  with the input; they are then cropped back to H x W. Any backbone.
- `caffe`: the reference nets' own (models/caffe.py): 100 px input padding, ceil-mode pooling, valid
  fc6, unpadded upsamplers and crops at the reference's offsets, so that the reference's weights
  (models/reference_weights.py) compute the reference's outputs at any size. VGG16 only.

Two kinds of upsampling (`upsampling`): `learned` ConvTranspose2d kernels that start bilinear (the
CVPR 2015 nets), or `fixed` bilinear kernels that never train (the reference implementation: "the
bilinear kernels are fixed", its Deconvolution layers have lr_mult 0; pytorch-fcn and the seed
project tf-image-segmentation do the same).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from segframe.core.errors import ConfigError
from segframe.models.backbones import Pretrained, ResNetBackbone, VGG16Backbone
from segframe.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationModel,
    load_matching_weights,
    one_backbone,
    read_init_file,
)
from segframe.models.caffe import IDENTITY, compose, crop_like, crop_offset
from segframe.models.reference_weights import load_reference_weights, reference_state

BACKBONES = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet101")
STRIDES = (32, 16, 8)
UPSAMPLINGS = ("learned", "fixed")
PADDINGS = ("pad32", "caffe")

log = logging.getLogger(__name__)


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


def upsampler(channels: int, factor: int, fixed: bool = False, padded: bool = True) -> nn.ConvTranspose2d:
    """x`factor` upsampling with a bilinear kernel of size 2 * factor. `padded`: output size exactly
    factor * input (padding factor / 2); else the reference's unpadded layer, (input + 1) * factor,
    whose extra border the caffe geometry crops. `fixed`: the kernel never trains (requires_grad off,
    so it never reaches the optimiser nor its weight decay); it stays a parameter, so checkpoints and
    exported graphs name it as the learned one does."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2 if padded else 0,
                            bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    up.weight.requires_grad_(not fixed)
    return up


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def upsample(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """layer(x), in fp32 when autocast is on. On CPUs with AMX (Intel Xeon, amx_bf16), oneDNN's bf16
    transposed convolution returns a wrong input gradient at large strides (torch 2.14.1, measured:
    stride 8, kernel 16, padding 4 gives cosine 0.0001 against fp32; stride 2 is exact), so bf16
    training learnt nothing upstream of FCN-8s's last upsampler (quickstart: 14 mIoU for 72). The layer
    has only the class channels: fp32 costs little. Without autocast (fp32, export) it is layer(x)."""
    if _autocast_on(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return layer(x.float())
    return layer(x)


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
    `channel_order`) is the base's (models/base.py). `upsampling` and `padding`: see the module doc.
    `skip_scales` (FCN-8s: [pool4, pool3]) multiplies the skip features by fixed factors before
    their score layers: the at-once FCN-8s's [0.01, 0.0001], which let all three streams train from
    VGG16 at once. `init_from` copies matching tensors from a coarser (or same) FCN checkpoint for
    staged training, or loads a reference weights file (pytorch-fcn's names, models/reference_weights.py),
    after `pretrained` loading, so it wins.
    """

    def __init__(
        self,
        num_classes: int,
        stride: int = 8,
        backbone: str | None = None,
        pretrained: Pretrained = False,
        init_from: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_scale: float = 1.0,
        channel_order: str = "rgb",
        upsampling: str = "learned",
        padding: str = "pad32",
        skip_scales: Sequence[float] | None = None,
        encoder: str | None = None,
    ):
        super().__init__(num_classes, mean, std, input_scale, channel_order)
        stride, num_classes = int(stride), int(num_classes)
        backbone = one_backbone(backbone, encoder, "vgg16", "FCN")
        self._check(stride, backbone, upsampling, padding, skip_scales)
        self.stride, self.backbone_name = stride, backbone
        self.upsampling, self.padding = upsampling, padding
        self.skip_scales = tuple(float(v) for v in skip_scales) if skip_scales else (1.0, 1.0)
        self.output_stride = stride  # the finest skip it adds: s8 for FCN-8s
        self.classifier_prefixes = ("score_", "up_")
        caffe, fixed = padding == "caffe", upsampling == "fixed"
        if caffe:
            self.pad_multiple = 1  # no bottom/right padding: conv1_1 pads, the crops align

        self.backbone = VGG16Backbone(pretrained, caffe) if backbone == "vgg16" else \
            ResNetBackbone(backbone, pretrained)
        ch = self.backbone.channels
        self.score_s32 = score_layer(ch["s32"], num_classes)
        if stride <= 16:
            self.score_s16 = score_layer(ch["s16"], num_classes)
            self.up_s32 = upsampler(num_classes, 2, fixed, padded=not caffe)
        if stride == 8:
            self.score_s8 = score_layer(ch["s8"], num_classes)
            self.up_s16 = upsampler(num_classes, 2, fixed, padded=not caffe)
        self.up_final = upsampler(num_classes, stride, fixed, padded=not caffe)
        self.offsets = self._caffe_offsets() if caffe else {}
        self.start_from(init_from)

    @staticmethod
    def _check(stride: int, backbone: str, upsampling: str, padding: str, skip_scales: Sequence[float] | None) -> None:
        if stride not in STRIDES:
            raise ConfigError(f"stride must be one of {STRIDES} (FCN-32s/16s/8s), got {stride}")
        if backbone not in BACKBONES:
            raise ConfigError(f"model.backbone={backbone!r} is not an FCN backbone; valid: {', '.join(BACKBONES)}")
        if upsampling not in UPSAMPLINGS:
            raise ConfigError(f"model.upsampling must be one of {UPSAMPLINGS} (learned: trained ConvTranspose2d; "
                              f"fixed: bilinear, never trained, as the reference), got {upsampling!r}")
        if padding not in PADDINGS:
            raise ConfigError(f"model.padding must be one of {PADDINGS} (pad32: pad to a multiple of 32; caffe: the "
                              f"reference nets' 100 px padding and crops), got {padding!r}")
        if padding == "caffe" and backbone != "vgg16":
            # the 100 px padding, the valid fc6 and the crop offsets belong to the reference's VGG16 layers
            raise ConfigError(f"model.padding=caffe is the reference VGG16 FCNs' geometry; backbone {backbone!r} has "
                              f"no reference net to match: use model.backbone=vgg16, or model.padding=pad32")
        if skip_scales is not None and (stride != 8 or len(skip_scales) != 2):
            raise ConfigError(f"model.skip_scales scales FCN-8s's pool4 and pool3 skips: two numbers with stride 8 "
                              f"(at-once FCN-8s: [0.01, 0.0001]), or null; got {list(skip_scales)} at stride {stride}")

    def _caffe_offsets(self) -> dict[str, int]:
        """The reference's crop offsets, from the layers' coordinate maps (models/caffe.py)."""
        b = self.backbone
        pool3 = compose(IDENTITY, b.to_s8)
        pool4 = compose(pool3, b.to_s16)
        score = compose(compose(pool4, b.to_s32), [b.fc6])  # fc7 and the score layers are 1x1
        offsets = {}
        if self.stride <= 16:
            score = compose(score, [self.up_s32])
            offsets["s16"] = crop_offset(pool4, score)
        if self.stride == 8:
            score = compose(score, [self.up_s16])
            offsets["s8"] = crop_offset(pool3, score)
        offsets["final"] = crop_offset(compose(score, [self.up_final]), IDENTITY)
        return offsets

    def start_from(self, init_from: str | None) -> None:
        """init_from: a reference weights file by its names, else a segframe checkpoint by matching
        names and shapes. With fixed upsampling the kernels stay bilinear whatever the file held."""
        if not init_from:
            return
        file, loaded = read_init_file(init_from)
        reference = reference_state(loaded)
        if reference is not None:
            load_reference_weights(self, reference, file)
        else:
            load_matching_weights(self, file, loaded)
        if self.upsampling == "fixed":
            self._reset_fixed_kernels(init_from)

    def _reset_fixed_kernels(self, source: str) -> None:
        changed = []
        with torch.no_grad():
            for name, module in self.named_children():
                if isinstance(module, nn.ConvTranspose2d):
                    kernel = bilinear_kernel(self.num_classes, module.kernel_size[0]).to(module.weight)
                    if not torch.allclose(module.weight, kernel, atol=1e-6):
                        changed.append(name)
                    module.weight.copy_(kernel)
        if changed:
            log.warning("init_from %s: its %s kernels were not bilinear; model.upsampling=fixed keeps them bilinear "
                        "(model.upsampling=learned uses the file's)", source, ", ".join(changed))

    def _skip(self, score: torch.Tensor, name: str, feats: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        """score + the score of skip feature `name` (scaled as at-once FCN-8s does), cropped to it in caffe."""
        feature = feats[name] * scale if scale != 1.0 else feats[name]
        skip = getattr(self, f"score_{name}")(feature)
        if self.offsets:
            skip = crop_like(skip, self.offsets[name], *score.shape[-2:])
        return score + skip

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        score = self.score_s32(feats["s32"])
        if self.stride <= 16:
            score = self._skip(upsample(self.up_s32, score), "s16", feats, self.skip_scales[0])
        if self.stride == 8:
            score = self._skip(upsample(self.up_s16, score), "s8", feats, self.skip_scales[1])
        out = upsample(self.up_final, score)
        return crop_like(out, self.offsets["final"], *x.shape[-2:]) if self.offsets else out
