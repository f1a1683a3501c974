"""Segmentation losses, one per option of the `loss=` config group: cross entropy, Dice, focal,
Lovász-softmax and cross entropy + Dice.

Each loss is an `nn.Module`: `forward(logits float[B,C,H,W], target long[B,H,W]) -> scalar`, where
target 255 (IGNORE_INDEX) marks pixels without a label. Ignored pixels (with finite logits) are honoured exactly: they
change neither the loss nor the gradient of any other pixel, their own logits get zero gradient,
and a batch that is all ignore gives 0 (never NaN).

SegModule builds the loss from a factory (the config node, Hydra `_partial_`) with the two things
it owns: `weight`, the per-class weights of `module.class_weighting` (or None), and `reduction`,
`module.loss_reduction` ("mean" over the valid pixels, or "sum": the FCN reference's un-normalised
loss, summed over the valid pixels and divided by the batch size, as Caffe's SoftmaxWithLoss with
`normalize: false` and pytorch-fcn's trainer do; so the learning rate means the same at any batch
size). The region losses (Dice, Lovász) compare whole masks: they have no per-pixel sum and
already count every present class once whatever its size, so they refuse reduction="sum" and
class weights; in CeDice both apply to its cross-entropy term only.

segmentation_models_pytorch.losses is used where it was checked to be exact with ignored pixels:
DiceLoss (rescaled to a mean over the present classes, see Dice) and LovaszLoss (but for the
all-ignore batch, see Lovasz). The focal loss is written here (see Focal).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from segframe.core.errors import ConfigError
from segframe.data.sample import IGNORE_INDEX
from segframe.engine.jaccard_loss import LogJaccard
from segframe.engine.loss_args import check_number, class_factors

REDUCTIONS = ("mean", "sum")


# --------------------------------------------------------------------------- argument checks


def _check_reduction(reduction: str, loss: str, region: bool = False) -> None:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"module.loss_reduction must be 'mean' (over valid pixels) or 'sum' (the FCN reference's "
                          f"un-normalised loss: summed over valid pixels, divided by the batch size), got {reduction!r}")
    if region and reduction == "sum":
        # a region loss is one number per class for the whole batch: there is no per-pixel sum
        raise ConfigError(f"module.loss_reduction='sum' does not apply to loss={loss}: it compares whole masks and "
                          f"has no per-pixel sum; use module.loss_reduction=mean, or loss=ce_dice (its "
                          f"cross-entropy term is summed)")


def _check_no_weight(weight: Any, loss: str) -> None:
    if weight is not None:
        # each present class already counts once whatever its pixel count: weights would re-skew it
        raise ConfigError(f"module.class_weighting weights pixels per class, but loss={loss} averages the present "
                          f"classes equally already; use module.class_weighting=none, or loss=ce_dice (the weights "
                          f"apply to its cross-entropy term)")


def _check_classes(key: str, factors: torch.Tensor | None, logits: torch.Tensor) -> None:
    # the number of classes is known only from the logits
    if factors is not None and len(factors) != logits.shape[1]:
        raise ConfigError(f"{key} has {len(factors)} entries but the model predicts {logits.shape[1]} classes")


# --------------------------------------------------------------------------- shared pieces


def _valid_pixels(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N,C] and labels [N] of the valid pixels only: the ignored ones are never read, so
    nothing about them (not even a non-finite logit) reaches the loss, and their gradient is 0."""
    valid = target != IGNORE_INDEX
    return logits.movedim(1, -1)[valid], target[valid]


def _zero(logits: torch.Tensor) -> torch.Tensor:
    """A 0 on the autograd graph that reads no logit (backward still runs, all gradients 0)."""
    return logits.narrow(-1, 0, 0).sum()


def _at_least(factors: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    """float32 per-class factors in float64 for float64 logits (torch wants one dtype); never
    lowered to half precision: mixed precision computes the loss in float32 with float32 weights."""
    return None if factors is None else factors.to(torch.promote_types(logits.dtype, factors.dtype))


def _smp_losses() -> Any:
    """segmentation_models_pytorch.losses, imported on first use: the package pulls in timm and
    its encoders (seconds), which a run with loss=ce (and every `import segframe.engine.module`) skips."""
    from segmentation_models_pytorch import losses as smp_losses

    return smp_losses


def _present_classes(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many classes have at least one valid pixel in the batch's target."""
    labels = target[target != IGNORE_INDEX]
    return (torch.bincount(labels, minlength=num_classes) > 0).sum()


# --------------------------------------------------------------------------- the losses


class CrossEntropy(nn.Module):
    """Cross entropy of the valid pixels (FCN: Long, Shelhamer & Darrell, CVPR 2015), optionally with
    per-class weights w. reduction="mean": sum of w_y * -log p_y divided by the summed w_y of the
    valid pixels (their number when unweighted), as torch's weighted mean, so switching weighting on
    does not rescale the loss; all-ignore gives 0. reduction="sum": the sum over the valid pixels
    divided by the batch size (the FCN reference's un-normalised loss, per image)."""

    name = "ce"

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None, reduction: str = "mean"):
        super().__init__()
        _check_reduction(reduction, self.name)
        self.reduction = reduction
        # a buffer: moves with the module to the GPU; not persistent, SegModule rebuilds it from its hparams
        self.register_buffer("weight", class_factors("the class weights (module.class_weighting)", weight),
                             persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = _at_least(self.weight, logits)
        loss = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum")
        if self.reduction == "mean":
            # no boolean indexing when unweighted: the divisor stays on the device, no host sync
            valid = target != IGNORE_INDEX
            total = weight[target[valid]].sum() if weight is not None else valid.sum()
            loss = loss / total.clamp_min(1e-12 if weight is not None else 1)
        else:
            loss = loss / logits.shape[0]
        return loss


class Dice(nn.Module):
    """Soft multiclass Dice loss (Milletari, Navab & Ahmadi, V-Net, 3DV 2016) on the softmax
    probabilities p of the valid pixels of the whole batch. Per class c, with g the one-hot target and
    the sums over the batch's valid pixels:
        dice_c = (2 * sum(p_c * g_c) + 2 * smooth) / (sum(p_c) + sum(g_c) + 2 * smooth)
    (smp's form (I + smooth) / ((P + G) / 2 + smooth): its smoothing counts double.) The loss is the
    mean of 1 - dice_c over the classes present in the batch's valid target; absent classes do not
    enter (probability put on them still lowers the present classes' dice). smooth=0 (the default)
    is the exact Dice: a present class has sum(g_c) >= 1, so nothing divides by 0. All-ignore: 0.
    Region loss: no class weights and no reduction="sum" (ValueError)."""

    name = "dice"

    def __init__(self, weight: Any = None, reduction: str = "mean", smooth: float = 0.0):
        super().__init__()
        _check_reduction(reduction, self.name, region=True)
        _check_no_weight(weight, self.name)
        self.smooth = check_number("loss.smooth", smooth)
        # checked exact with ignored pixels: their probabilities and one-hot rows are multiplied by 0
        # before any sum, and a class is "present" from the masked target only
        self.dice = _smp_losses().DiceLoss("multiclass", smooth=self.smooth, ignore_index=IGNORE_INDEX)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        # smp sets the loss of absent classes to 0 but still divides by all C classes, so the loss
        # would shrink with fewer classes in a batch: rescale to the mean over the present ones
        # (none present, all ignore: smp gives 0, and 0 stays 0)
        return self.dice(logits, target) * (num_classes / _present_classes(target, num_classes).clamp_min(1))


class Focal(nn.Module):
    """Multiclass (softmax) focal loss (Lin, Goyal, Girshick, He & Dollár, ICCV 2017). Per valid
    pixel, with p the softmax probability of its label y:
        FL = -alpha_y * w_y * (1 - p)^gamma * log(p)
    gamma=0 without alpha is cross entropy exactly. alpha: null or one factor per class (the paper's
    alpha_t); w: the class weights of module.class_weighting. reduction="mean": divided by the
    summed w_y of the valid pixels (their number when unweighted), as CrossEntropy; alpha is not in
    the divisor (the paper normalises by a count). reduction="sum": summed, divided by the batch size
    (as CrossEntropy). All-ignore: 0.

    Written here rather than smp's FocalLoss: in multiclass mode smp sums one-vs-rest sigmoid
    (binary) focal losses, not the softmax focal loss, and with every pixel ignored its mean is NaN
    (a mean over no pixels)."""

    name = "focal"

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None, reduction: str = "mean",
                 gamma: float = 2.0, alpha: Sequence[float] | None = None):
        super().__init__()
        _check_reduction(reduction, self.name)
        self.reduction = reduction
        self.gamma = check_number("loss.gamma", gamma)
        # buffers: move with the module to the GPU; not persistent (rebuilt from the config)
        self.register_buffer("weight", class_factors("the class weights (module.class_weighting)", weight),
                             persistent=False)
        self.register_buffer("alpha", class_factors("loss.alpha", alpha), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_classes("loss.alpha", self.alpha, logits)
        _check_classes("the class weights (module.class_weighting)", self.weight, logits)
        scores, labels = _valid_pixels(logits, target)
        # at least float32 (half-precision logits under mixed precision): log p of a confident pixel
        log_p = F.log_softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=1)
        log_p = log_p.gather(1, labels[:, None]).squeeze(1)
        # 1 - p as -expm1(log p): accurate near p = 1; the clamp keeps the gradient of (1 - p)^gamma
        # finite for gamma < 1 where p rounds to 1 (the loss there is 0 either way)
        focus = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny).pow(self.gamma)
        loss = -focus * log_p
        if self.alpha is not None:
            loss = loss * self.alpha[labels]
        if self.weight is not None:
            loss = loss * self.weight[labels]
        loss = loss.sum()  # 0 when there is no valid pixel
        if self.reduction == "mean":
            total = self.weight[labels].sum().clamp_min(1e-12) if self.weight is not None else max(len(labels), 1)
            loss = loss / total
        else:
            loss = loss / logits.shape[0]
        return loss


class Lovasz(nn.Module):
    """Lovász-softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018): the Lovász extension of the
    Jaccard loss 1 - IoU_c, applied to the errors |[y = c] - p_c| of the softmax probabilities of the
    valid pixels of the whole batch, averaged over the classes present in the batch's valid target
    (the paper's classes="present"). All-ignore: 0. Region loss: no class weights and no
    reduction="sum" (ValueError)."""

    name = "lovasz"

    def __init__(self, weight: Any = None, reduction: str = "mean"):
        super().__init__()
        _check_reduction(reduction, self.name, region=True)
        _check_no_weight(weight, self.name)
        # smp's copy of the authors' code: it drops the ignored pixels before anything else (exact);
        # per_image stays off: there an image with no valid pixel breaks its mean
        self.lovasz = _smp_losses().LovaszLoss("multiclass", per_image=False, ignore_index=IGNORE_INDEX)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not bool((target != IGNORE_INDEX).any()):
            # smp returns an empty tensor here, not a scalar: backward and logging would fail
            return _zero(logits)
        # in float32: smp's Lovász gradient is float32 and torch.dot wants one dtype (half or double fail)
        return self.lovasz(logits.float(), target)


class CeDice(nn.Module):
    """ce_weight * CrossEntropy + dice_weight * Dice (the pairing of e.g. nnU-Net: Isensee et al.,
    Nature Methods 2021). The class weights and reduction="sum" apply to the cross-entropy term
    only (Dice has neither); with "sum" the cross entropy grows with the pixel count and dwarfs the
    Dice term (<= 1) unless dice_weight is scaled up to match."""

    name = "ce_dice"

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None, reduction: str = "mean",
                 ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 0.0):
        super().__init__()
        _check_reduction(reduction, self.name)
        self.ce_weight = check_number("loss.ce_weight", ce_weight)
        self.dice_weight = check_number("loss.dice_weight", dice_weight)
        if self.ce_weight == 0 and self.dice_weight == 0:
            raise ConfigError("loss.ce_weight and loss.dice_weight are both 0: the loss would be 0; "
                              "set at least one > 0")
        self.ce = CrossEntropy(weight, reduction)
        self.dice = Dice(smooth=smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce_weight * self.ce(logits, target) + self.dice_weight * self.dice(logits, target)


# every loss of the `loss=` group, by option name (LogJaccard, loss=log_jaccard, lives in jaccard_loss.py)
LOSSES: dict[str, type[nn.Module]] = {cls.name: cls
                                      for cls in (CrossEntropy, Dice, Focal, Lovasz, CeDice, LogJaccard)}


# --------------------------------------------------------------------------- factories <-> plain configs


def config_of(factory: Callable[..., nn.Module]) -> dict[str, Any] | None:
    """The plain config (`_target_`, `_partial_`, arguments) of a factory of one of these losses (a
    class, or a functools.partial of one as Hydra's `_partial_` makes), for a checkpoint's hparams:
    plain types only, so it loads with torch.load(weights_only=True). None for any other callable."""
    partial = isinstance(factory, functools.partial)
    cls = factory.func if partial else factory
    if cls not in LOSSES.values() or (partial and factory.args):
        return None
    keywords = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                for k, v in (factory.keywords if partial else {}).items()}
    return {"_target_": f"{cls.__module__}.{cls.__name__}", "_partial_": True, **keywords}


def factory_from(config: dict[str, Any]) -> Callable[..., nn.Module]:
    """The loss factory of a config config_of wrote. Only the losses of LOSSES: a checkpoint's
    hparams are data and never name code to import."""
    target = str(config.get("_target_", ""))
    classes = {f"{cls.__module__}.{cls.__name__}": cls for cls in LOSSES.values()}
    if target not in classes:
        raise ConfigError(f"loss config _target_ must be one of {sorted(classes)}, got {target!r}")
    return functools.partial(classes[target], **{k: v for k, v in config.items() if not k.startswith("_")})
