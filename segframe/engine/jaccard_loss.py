"""TernausNet's loss, `loss=log_jaccard`: (1 - w) * cross entropy - w * log(soft Jaccard), after loss.py of
github.com/ternaus/robot-surgery-segmentation (Shvets, Rakhlin, Kalinin & Iglovikov, ICMLA 2018), with the
conventions of segframe.engine.losses: forward(logits [B,C,H,W], target [B,H,W]) -> scalar, target 255 ignored,
built by SegModule with `weight` (module.class_weighting) and `reduction` (module.loss_reduction).

A module of its own, and free of segframe.engine.losses (whose size limit is near): a loss module that imports
this one to list LogJaccard among its storable losses makes no import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segframe.core.errors import ConfigError
from segframe.data.sample import IGNORE_INDEX
from segframe.engine.loss_args import class_factors

CLASS_CHOICES = ("all", "foreground")


class LogJaccard(nn.Module):
    """(1 - w) * CE - w * sum_c log((I_c + eps) / (U_c - I_c + eps)), w = `jaccard_weight`, on the softmax
    probabilities p of the valid pixels (target != 255) of the WHOLE batch (not per image):
    I_c = sum(p_c * [y = c]), U_c = sum(p_c) + sum([y = c]). CE is the mean cross entropy of the valid
    pixels (with class weights w_y: sum w_y * -log p_y / sum w_y, as torch's NLLLoss).

    classes="all": the sum runs over every class, background included, and a class absent from the
    batch is not left out: its term, log(eps / (sum p_c + eps)), pushes its probability down. With
    log_softmax outputs this is the reference's LossMulti. classes="foreground": class 1 of a 2-class
    problem only, the reference's LossBinary on its single logit z: with logits [l0, l1], softmax gives
    p_1 = sigmoid(l1 - l0) and the 2-class cross entropy equals BCE-with-logits on z = l1 - l0.

    w = 0 is cross entropy; w = 1 is -log Jaccard alone (the reference's README script). Ignored pixels
    change nothing (even non-finite logits there) and get zero gradient; a batch that is all ignore
    gives 0. Class weights apply to the cross-entropy term only (the reference's LossMulti takes them
    the same way). module.loss_reduction must be "mean": the blend weighs a mean cross entropy against
    -log Jaccard, and a summed one, pixels-per-image times larger, would drown the Jaccard term.
    """

    name = "log_jaccard"

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None, reduction: str = "mean",
                 jaccard_weight: float = 0.3, classes: str = "all", eps: float = 1e-15):
        super().__init__()
        if reduction != "mean":
            raise ConfigError(f"module.loss_reduction={reduction!r} does not apply to loss={self.name}: it blends "
                              f"the mean cross entropy with -log Jaccard by (1 - loss.jaccard_weight) and "
                              f"loss.jaccard_weight (TernausNet's loss.py), and a summed cross entropy would drown "
                              f"the Jaccard term; use module.loss_reduction=mean")
        if isinstance(jaccard_weight, bool) or not isinstance(jaccard_weight, (int, float)) \
                or not 0.0 <= jaccard_weight <= 1.0:
            raise ConfigError(f"loss.jaccard_weight must be a number in [0, 1] (the loss is (1 - w) * CE - w * log "
                              f"Jaccard; TernausNet used 0.3 and 1), got {jaccard_weight!r}")
        if classes not in CLASS_CHOICES:
            raise ConfigError(f"loss.classes must be one of {CLASS_CHOICES} (all: every class, background "
                              f"included; foreground: class 1 of a 2-class problem), got {classes!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < 1.0:
            raise ConfigError(f"loss.eps must be a number in (0, 1) (TernausNet: 1e-15), got {eps!r}")
        self.jaccard_weight, self.classes, self.eps = float(jaccard_weight), classes, float(eps)
        # a buffer: moves with the module to the GPU; not persistent, SegModule rebuilds it from its hparams
        self.register_buffer("weight", class_factors("the class weights (module.class_weighting)", weight),
                             persistent=False)

    def _check(self, num_classes: int) -> None:
        if self.classes == "foreground" and num_classes != 2:
            raise ConfigError(f"loss.classes=foreground is TernausNet's binary loss, on class 1 of 2 classes, but "
                              f"the model predicts {num_classes} classes; use loss.classes=all")
        if self.weight is not None and len(self.weight) != num_classes:
            raise ConfigError(f"the class weights (module.class_weighting) have {len(self.weight)} entries but the "
                              f"model predicts {num_classes} classes")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        self._check(num_classes)
        valid = target != IGNORE_INDEX
        # at least float32 (half-precision logits under mixed precision); an ignored pixel's logits are
        # replaced by zeros, so nothing of it enters (not even inf or NaN) and its gradient is 0
        scores = logits.to(torch.promote_types(logits.dtype, torch.float32))
        log_p = F.log_softmax(torch.where(valid[:, None], scores, 0.0), dim=1)
        w = self.jaccard_weight
        loss = log_p.new_zeros(())
        if w < 1:
            loss = loss + (1 - w) * self._cross_entropy(log_p, target, valid)
        if w > 0:
            loss = loss - w * self._log_jaccard(log_p, target, valid).sum()
        return loss

    def _cross_entropy(self, log_p: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean -log p_y over the valid pixels (class-weighted: divided by their summed weights); 0 if none."""
        weight = None if self.weight is None else self.weight.to(log_p.dtype)
        total = F.nll_loss(log_p, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum")
        if weight is None:
            return total / valid.sum().clamp_min(1)
        return total / (weight[target.masked_fill(~valid, 0)] * valid).sum().clamp_min(1e-12)

    def _log_jaccard(self, log_p: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """log((I_c + eps) / (U_c - I_c + eps)) per class over the batch's valid pixels (class 1 only for
        classes="foreground"); every term is log(eps / eps) = 0 when no pixel is valid."""
        num_classes = log_p.shape[1]
        probs = log_p.exp() * valid[:, None]
        labels = torch.arange(num_classes, device=target.device).view(1, -1, 1, 1)
        truth = (target[:, None] == labels).to(probs.dtype)  # 255 matches no class: ignored pixels are 0
        if self.classes == "foreground":
            probs, truth = probs[:, 1:2], truth[:, 1:2]
        dims = (0, *range(2, probs.dim()))
        inter = (probs * truth).sum(dims)
        union = probs.sum(dims) + truth.sum(dims)
        return torch.log((inter + self.eps) / (union - inter + self.eps))
