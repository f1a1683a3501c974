"""segmentation_models_pytorch's architectures (U-Net, DeepLabV3/V3+, FPN, PSPNet, ...) x encoders
(torchvision ResNets, timm's `tu-*`, ...) behind segframe's model contract (models/base.py).

What segframe adds around `smp.create_model`: normalisation and padding inside the model (any H x W
in, logits at H x W out), ImageNet encoder weights from a local file offline, `init_from`, and the
measured output stride of the logits its head computes.
"""

from __future__ import annotations

import http.client
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.error import URLError

import segmentation_models_pytorch as smp
import timm
import torch
import torchvision
from torch import nn

from segframe.core.errors import ConfigError
from segframe.models.backbones import (
    RESNET_WEIGHTS,
    Pretrained,
    PretrainedWeightsError,
    load_pretrained,
    mismatch_report,
    read_weights_file,
)
from segframe.models.base import IMAGENET_MEAN, IMAGENET_STD, OUTPUT_STRIDES, SegmentationModel, one_backbone

log = logging.getLogger(__name__)

ARCHS = tuple(sorted(smp.MODEL_ARCHITECTURES_MAPPING))  # lower-case names: unet, deeplabv3plus, ...
DILATABLE = ("deeplabv3", "deeplabv3plus")  # archs whose encoder output stride is a choice (8 or 16)


def check_encoder(encoder: str) -> None:
    if encoder.startswith("tu-"):
        if not timm.list_models(encoder[3:]):
            raise ConfigError(f"model.backbone={encoder!r}: timm has no model {encoder[3:]!r} "
                              f"(list them with python -c \"import timm; print(timm.list_models('*resnet*'))\")")
    elif encoder not in smp.encoders.get_encoder_names():
        raise ConfigError(f"model.backbone={encoder!r} is not a segmentation_models_pytorch encoder; valid: "
                          f"{', '.join(smp.encoders.get_encoder_names())}, or any timm model as tu-NAME")


def _timm_name(key: str) -> str:
    """A timm feature encoder's key -> the classification model's: timm's FeatureListNet flattens
    nested stages into one module name (`stages_0` for `stages.0`); smp wraps it as `model.`."""
    return re.sub(r"^(\w+?)_(\d+)\.", r"\1.\2.", key.removeprefix("model."))


def _encoder_state(encoder: nn.Module, state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The entries of a classification state_dict that `encoder` needs. A torchvision ResNet's keys
    equal smp's ResNet encoder's (minus `fc`); timm's `tu-` encoders wrap the timm model (see _timm_name)."""
    if not isinstance(state, Mapping):
        raise ConfigError(f"{source}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    own = encoder.state_dict()
    timm_encoder = any(k.startswith("model.") for k in own)
    name_of = {k: (_timm_name(k) if timm_encoder and k not in state else k) for k in own}
    missing = [k for k in own if name_of[k] not in state]
    # a classifier the encoder dropped (fc, classifier, head) may be left over; a tensor inside one
    # of the encoder's own stages may not (a deeper network's state_dict: ResNet-34's into ResNet-18)
    stages = {name_of[k].split(".")[0] for k in own}
    unexpected = [k for k in state if k not in name_of.values() and k.split(".")[0] in stages]
    mismatched = [f"{k} {tuple(state[name_of[k]].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if name_of[k] in state and getattr(state[name_of[k]], "shape", None) != v.shape]
    if missing or unexpected or mismatched:
        raise ConfigError(f"{source} does not fit this encoder ({mismatch_report(missing, unexpected, mismatched)}). "
                          f"Expected the ImageNet classification model's state_dict (torchvision's for resnet*, "
                          f"timm's for tu-*, smp's encoder for the others)")
    return {k: state[name_of[k]] for k in own}


def _download_error(encoder: str, exc: Exception) -> PretrainedWeightsError:
    if encoder.startswith("tu-"):
        save = f"timm.create_model('{encoder[3:]}', pretrained=True).state_dict()"
        module = "timm"
    else:
        save = f"smp.encoders.get_encoder('{encoder}', weights='imagenet').state_dict()"
        module = "segmentation_models_pytorch as smp"
    return PretrainedWeightsError(
        f"Could not get ImageNet weights for encoder {encoder} ({type(exc).__name__}: {exc}). On a machine with "
        f"network access save them: python -c \"import torch, {module}; torch.save({save}, '{encoder}.pth')\", "
        f"then pass model.pretrained=/path/to/{encoder}.pth here; or train from scratch with model.pretrained=false.")


def build(arch: str, encoder: str, num_classes: int, pretrained: Pretrained, options: dict[str, Any]) -> nn.Module:
    """An smp model with its encoder's ImageNet weights: torchvision's file for ResNets (the same
    file and offline cache as FCN's backbones), smp's/timm's download for others, or a local file."""
    hub_weights = pretrained is True and encoder not in RESNET_WEIGHTS
    try:
        model = smp.create_model(arch, encoder_name=encoder, encoder_weights="imagenet" if hub_weights else None,
                                 classes=num_classes, **options)
    except (URLError, OSError, RuntimeError, http.client.HTTPException) as exc:
        if hub_weights:
            raise _download_error(encoder, exc) from exc
        raise
    if pretrained is True and encoder in RESNET_WEIGHTS:
        resnet = getattr(torchvision.models, encoder)(weights=None)
        load_pretrained(resnet, True, RESNET_WEIGHTS[encoder])
        model.encoder.load_state_dict(_encoder_state(model.encoder, resnet.state_dict(), f"{encoder} weights"))
    elif pretrained not in (False, True, None):
        state = read_weights_file(pretrained, f"{encoder}.pth", "the ImageNet download")
        model.encoder.load_state_dict(_encoder_state(model.encoder, state, f"weights file {pretrained}"))
        log.info("encoder %s: ImageNet weights from %s", encoder, pretrained)
    return model


def probe(model: nn.Module, size: int = 64) -> tuple[int, list[str]]:
    """One small forward and backward pass in eval mode (batch norm statistics untouched) that measures
    the output stride (input pixels per pixel of the map the segmentation head sees, its final
    upsampling excluded) and finds the parameters no output depends on: smp keeps a ResNet's last
    stages when the architecture uses fewer (PSPNet: encoder_depth 3). Autograd decides, so a
    parameter used through a method rather than a module call (a ViT's pos_embed) counts as used."""
    seen: list[int] = []
    hook = model.segmentation_head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[-1]))
    was_training = model.training
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    try:
        model.eval()
        out = model(torch.zeros(1, 3, size, size))
        grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
    finally:
        hook.remove()
        model.train(was_training)
    return size // seen[0], [n for (n, _), g in zip(named, grads) if g is None]


# smp arguments segframe sets itself, and the key a user sets instead
OWNED_OPTIONS = {
    "classes": "the class count comes from data.num_classes",
    "encoder_name": "use model.backbone (or its other name, model.encoder)",
    "encoder_weights": "use model.pretrained=true|false|PATH",
    "encoder_output_stride": "use model.output_stride",
    "in_channels": "segframe models take RGB images",
    "activation": "the model returns logits (the loss and the metrics apply softmax/argmax)",
    "aux_params": "an auxiliary classification head changes the output to a tuple, which the model contract excludes",
}


def check_timm_normalisation(encoder: str, mean: Sequence[float], std: Sequence[float]) -> None:
    """timm weights come with their own input statistics (many use 0.5 / 0.5): training them on
    inputs normalised differently silently wastes the pretraining."""
    cfg = timm.get_pretrained_cfg(encoder[3:])
    if cfg is None or not getattr(cfg, "mean", None):
        return
    want_mean, want_std = [round(float(v), 4) for v in cfg.mean], [round(float(v), 4) for v in cfg.std]
    if [round(v, 4) for v in mean] != want_mean or [round(v, 4) for v in std] != want_std:
        raise ConfigError(f"encoder {encoder}'s ImageNet weights expect inputs normalised with mean {want_mean} and "
                          f"std {want_std}, but model.mean={list(mean)} model.std={list(std)}; set "
                          f"model.mean={want_mean} model.std={want_std} (or model.pretrained=false)")


class SmpModel(SegmentationModel):
    """`arch` (any of smp's: Unet, UnetPlusPlus, FPN, PSPNet, DeepLabV3, DeepLabV3Plus, ...) on `backbone`
    (resnet18/34/50/101, efficientnet-*, tu-<any timm model>, ...; smp's own name for it, `encoder`, is
    taken too: models/base.py one_backbone). `output_stride` 8|16 chooses the
    encoder's dilation for DeepLabV3/V3+; `options` are further keyword arguments of the smp class
    (e.g. decoder_channels). The smp model is `self.net`: its encoder is `net.encoder`."""

    def __init__(
        self,
        num_classes: int,
        arch: str = "Unet",
        backbone: str | None = None,
        output_stride: int | None = None,
        options: dict[str, Any] | None = None,
        pretrained: Pretrained = False,
        init_from: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_scale: float = 1.0,
        channel_order: str = "rgb",
        encoder: str | None = None,
    ):
        super().__init__(num_classes, mean, std, input_scale, channel_order)
        encoder = one_backbone(backbone, encoder, "resnet34", arch)
        if arch.lower() not in ARCHS:
            raise ConfigError(f"model.arch={arch!r} is not a segmentation_models_pytorch architecture; "
                              f"valid: {', '.join(ARCHS)}")
        check_encoder(encoder)
        options = dict(options or {})
        owned = [k for k in options if k in OWNED_OPTIONS]
        if owned:
            raise ConfigError(f"model.options may not set {owned}: " + "; ".join(OWNED_OPTIONS[k] for k in owned))
        if output_stride is not None:
            if arch.lower() not in DILATABLE:
                raise ConfigError(f"model.output_stride applies to {', '.join(DILATABLE)}, not {arch}; "
                                  f"set it to null (the architecture fixes its stride)")
            if int(output_stride) not in OUTPUT_STRIDES:
                raise ConfigError(f"model.output_stride must be one of {OUTPUT_STRIDES} for {arch}, "
                                  f"got {output_stride}")
            options["encoder_output_stride"] = int(output_stride)
        if pretrained not in (False, None) and encoder.startswith("tu-"):
            check_timm_normalisation(encoder, self.norm_mean, self.norm_std)
        self.arch, self.backbone_name = arch, encoder
        self.classifier_prefixes = ("net.segmentation_head.",)
        self.net = build(arch, encoder, self.num_classes, pretrained, options)
        self.output_stride, unused = probe(self.net)
        # frozen, so the optimizer and DDP skip them; kept, so a full ImageNet state_dict still loads
        for name in unused:
            self.net.get_parameter(name).requires_grad_(False)
        if unused:
            log.info("%s/%s: %d parameters no output depends on (frozen): %s", arch, encoder, len(unused),
                     ", ".join(unused[:4]) + (" ..." if len(unused) > 4 else ""))
        self.start_from(init_from)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
