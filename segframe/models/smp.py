"""segmentation_models_pytorch's architectures (U-Net, DeepLabV3/V3+, FPN, PSPNet, ...) x encoders
(torchvision ResNets, timm's `tu-*`, ...) behind segframe's model contract (models/base.py).

What segframe adds around `smp.create_model`: normalisation and padding inside the model (any H x W
in, logits at H x W out), ImageNet encoder weights from a local file offline, `init_from`, and the
measured output stride of the logits its head computes.
"""

from __future__ import annotations

import http.client
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.error import URLError

import segmentation_models_pytorch as smp
import torch
import torchvision
from torch import nn

from segframe.models.backbones import RESNET_WEIGHTS, Pretrained, PretrainedWeightsError, load_pretrained
from segframe.models.base import IMAGENET_MEAN, IMAGENET_STD, SegmentationModel

log = logging.getLogger(__name__)

ARCHS = tuple(sorted(smp.MODEL_ARCHITECTURES_MAPPING))  # lower-case names: unet, deeplabv3plus, ...
DILATABLE = ("deeplabv3", "deeplabv3plus")  # archs whose encoder output stride is a choice (8 or 16)


def check_encoder(encoder: str) -> None:
    if encoder.startswith("tu-"):
        import timm

        if not timm.list_models(encoder[3:]):
            raise ValueError(f"model.encoder={encoder!r}: timm has no model {encoder[3:]!r} "
                             f"(list them with python -c \"import timm; print(timm.list_models('*resnet*'))\")")
    elif encoder not in smp.encoders.get_encoder_names():
        raise ValueError(f"model.encoder={encoder!r} is not a segmentation_models_pytorch encoder; valid: "
                         f"{', '.join(smp.encoders.get_encoder_names())}, or any timm model as tu-NAME")


def _encoder_state(encoder: nn.Module, state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The entries of a classification state_dict that `encoder` needs. A torchvision ResNet's keys
    equal smp's ResNet encoder's (minus `fc`); timm's `tu-` encoders wrap the timm model as `model.`."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    own = encoder.state_dict()
    candidates = [dict(state), {f"model.{k}": v for k, v in state.items()},
                  {k.removeprefix("encoder."): v for k, v in state.items()}]
    best = max(candidates, key=lambda c: sum(k in own for k in c))
    missing = [k for k in own if k not in best]
    # a classifier the encoder dropped (fc, classifier, head) may be left over; a tensor inside one
    # of the encoder's own stages may not (a deeper network's state_dict: ResNet-34's into ResNet-18)
    stages = {k.split(".")[1] if k.startswith("model.") else k.split(".")[0] for k in own}
    unexpected = [k for k in best if k not in own
                  and (k.split(".")[1] if k.startswith("model.") and "." in k[6:] else k.split(".")[0]) in stages]
    mismatched = [f"{k} {tuple(best[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in best and getattr(best[k], "shape", None) != v.shape]
    if missing or unexpected or mismatched:
        problems = [f"{len(names)} {label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                    if names]
        raise ValueError(f"{source} does not fit this encoder ({'; '.join(problems)}). Expected the ImageNet "
                         f"classification model's state_dict (torchvision's for resnet*, timm's for tu-*)")
    return {k: best[k] for k in own}


def _download_error(encoder: str, exc: Exception) -> PretrainedWeightsError:
    return PretrainedWeightsError(
        f"Could not get ImageNet weights for encoder {encoder} ({type(exc).__name__}: {exc}). On a machine with "
        f"network access save them, e.g. python -c \"import timm, torch; torch.save(timm.create_model("
        f"'{encoder.removeprefix('tu-')}', pretrained=True).state_dict(), '{encoder}.pth')\", then pass "
        f"model.pretrained=/path/to/{encoder}.pth here; or train from scratch with model.pretrained=false.")


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
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Pretrained weights file not found: {path} (from model.pretrained={pretrained}). "
                                    f"Pass the encoder's ImageNet state_dict file, model.pretrained=true to download "
                                    f"it, or model.pretrained=false")
        state = torch.load(path, map_location="cpu", weights_only=True)  # data, never code
        model.encoder.load_state_dict(_encoder_state(model.encoder, state, f"weights file {path}"))
        log.info("encoder %s: ImageNet weights from %s", encoder, path)
    return model


@torch.no_grad()
def probe(model: nn.Module, size: int = 128) -> tuple[int, list[str]]:
    """One small forward pass in eval mode (BN statistics untouched) that measures the output stride
    (input pixels per pixel of the map the segmentation head sees, its final upsampling excluded)
    and finds the modules with parameters that never run: smp keeps a ResNet's unused last stages
    when the architecture uses fewer (PSPNet: encoder_depth 3)."""
    seen: list[int] = []
    ran: set[nn.Module] = set()
    hooks = [model.segmentation_head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[-1]))]
    hooks += [m.register_forward_pre_hook(lambda m, _a: ran.add(m)) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    unused = [name for name, m in model.named_modules()
              if m not in ran and any(True for _ in m.parameters(recurse=False))]
    return size // seen[0], unused


class SmpModel(SegmentationModel):
    """`arch` (any of smp's: Unet, UnetPlusPlus, FPN, PSPNet, DeepLabV3, DeepLabV3Plus, ...) on `encoder`
    (resnet18/34/50/101, efficientnet-*, tu-<any timm model>, ...). `output_stride` 8|16 chooses the
    encoder's dilation for DeepLabV3/V3+; `options` are further keyword arguments of the smp class
    (e.g. decoder_channels). The smp model is `self.net`: its encoder is `net.encoder`."""

    def __init__(
        self,
        num_classes: int,
        arch: str = "Unet",
        encoder: str = "resnet34",
        output_stride: int | None = None,
        options: dict[str, Any] | None = None,
        pretrained: Pretrained = False,
        init_from: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_scale: float = 1.0,
        channel_order: str = "rgb",
    ):
        super().__init__(num_classes, mean, std, input_scale, channel_order)
        if arch.lower() not in ARCHS:
            raise ValueError(f"model.arch={arch!r} is not a segmentation_models_pytorch architecture; "
                             f"valid: {', '.join(ARCHS)}")
        check_encoder(encoder)
        options = dict(options or {})
        if output_stride is not None:
            if arch.lower() not in DILATABLE:
                raise ValueError(f"model.output_stride applies to {', '.join(DILATABLE)}, not {arch}; "
                                 f"set it to null (the architecture fixes its stride)")
            if int(output_stride) not in (8, 16):
                raise ValueError(f"model.output_stride must be 8 or 16 for {arch}, got {output_stride}")
            options["encoder_output_stride"] = int(output_stride)
        self.arch, self.encoder_name = arch, encoder
        self.net = build(arch, encoder, self.num_classes, pretrained, options)
        self.output_stride, unused = probe(self.net)
        # frozen, so the optimizer and DDP skip them; kept, so a full ImageNet state_dict still loads
        for name in unused:
            self.net.get_submodule(name).requires_grad_(False)
        if unused:
            log.info("%s/%s: %d modules never run (frozen): %s", arch, encoder, len(unused),
                     ", ".join(unused[:4]) + (" ..." if len(unused) > 4 else ""))
        self.start_from(init_from)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
