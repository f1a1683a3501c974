"""Test-time inference: whole image at native size, multi-scale + horizontal flip, sliding window.

Every mode returns class scores at the input's H x W. One whole-image pass returns the model's
logits unchanged; when several passes are combined (scales, flips), their softmax
probabilities are averaged; sliding windows average the logits where windows overlap. With
`crf`, the result is refined by a dense CRF (segframe.evaluation.crf) and returned as log-probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from segframe.core.errors import ConfigError
from segframe.evaluation import crf as dense_crf

MODES = ("whole", "slide")


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one axis: every `stride`, plus one flush with the far edge."""
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop + 1, stride))
    if starts[-1] != size - crop:
        starts.append(size - crop)
    return starts


def slide(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Logits of `crop` x `crop` windows every `stride` pixels, averaged where they overlap; for
    images too large to run whole (memory), or models trained on crops."""
    h, w = x.shape[-2:]
    if h <= crop and w <= crop:
        return model(x)
    total = count = None
    for y0 in window_starts(h, crop, stride):
        for x0 in window_starts(w, crop, stride):
            logits = model(x[..., y0:y0 + crop, x0:x0 + crop])
            if total is None:  # float32 sums: adding overlapping bf16/fp16 logits loses precision
                total = torch.zeros(*logits.shape[:2], h, w, dtype=torch.float32, device=logits.device)
                count = torch.zeros(1, 1, h, w, dtype=torch.float32, device=logits.device)
            total[..., y0:y0 + crop, x0:x0 + crop] += logits.float()
            count[..., y0:y0 + crop, x0:x0 + crop] += 1
    return total / count


def check_options(scales: Sequence[float] = (1.0,), flip: bool = False, mode: str = "whole", crop: int = 512,
                  stride: int = 341, crf: bool = False, **crf_options: float) -> None:
    """Refuse options `infer` cannot honour, before any work (not after hours of training)."""
    if crf or crf_options:
        if crf:
            dense_crf.check(**crf_options)
        elif set(crf_options) - set(dense_crf.DEFAULTS):  # unused while crf is off: only their names are checked
            raise ConfigError(f"unknown inference option(s) {sorted(set(crf_options) - set(dense_crf.DEFAULTS))}")
    if mode not in MODES:
        raise ConfigError(f"eval.mode must be one of {MODES}, got {mode!r}")
    if not isinstance(scales, (list, tuple)) or not scales or any(not isinstance(s, (int, float)) or s <= 0
                                                                  for s in scales):
        raise ConfigError(f"eval.scales must be a list of positive factors, e.g. [0.75, 1.0, 1.25]; got {scales!r}")
    if mode == "slide" and not 0 < stride <= crop:
        raise ConfigError(f"eval.stride must be in 1..eval.crop ({crop}) so windows cover the image, got {stride}")


def infer(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scales: Sequence[float] = (1.0,),
          flip: bool = False, mode: str = "whole", crop: int = 512, stride: int = 341, crf: bool = False,
          **crf_options: float) -> torch.Tensor:
    """Class scores [B, C, H, W] for input `x` [B, 3, H, W] (what `model` takes).

    scales: input resized by each factor (bilinear), scores resized back; flip: each scale also
    run on the mirrored image and mirrored back; mode: "whole" runs the (resized) image in one
    pass, "slide" in `crop`-sized windows every `stride` pixels; crf: the scores of all that
    refined by a dense CRF on the image (segframe.evaluation.crf, `crf_*` its kernels), as log-probabilities."""
    check_options(scales, flip, mode, crop, stride, crf, **crf_options)
    scores = _combined(model, x, scales, flip, mode, crop, stride)
    return dense_crf.refine(scores, x, **crf_options) if crf else scores


def _combined(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scales: Sequence[float], flip: bool,
              mode: str, crop: int, stride: int) -> torch.Tensor:
    h, w = x.shape[-2:]

    def run(inp: torch.Tensor) -> torch.Tensor:
        return slide(model, inp, crop, stride) if mode == "slide" else model(inp)

    passes = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
    if passes == [(1.0, False)]:
        return run(x)
    probs = None
    for scale, mirrored in passes:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        inp = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if mirrored:
            inp = inp.flip(-1)
        logits = run(inp)
        if mirrored:
            logits = logits.flip(-1)
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        p = logits.softmax(1)
        probs = p if probs is None else probs + p
    return probs / len(passes)


def single_pass(scales: Sequence[float] = (1.0,), flip: bool = False, mode: str = "whole", crf: bool = False,
                **_: object) -> bool:
    """Whether these options run the model once on the whole image and return its logits unchanged."""
    return mode == "whole" and list(scales) == [1.0] and not flip and not crf


def probabilities(scores: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False, crf: bool = False,
                  **_: object) -> torch.Tensor:
    """`infer`'s scores as class probabilities: several passes (scales, flips) already averaged
    probabilities; one pass or sliding windows give logits, and a CRF log-probabilities."""
    averaged = (list(scales) != [1.0] or flip) and not crf
    return scores if averaged else scores.float().softmax(1)
