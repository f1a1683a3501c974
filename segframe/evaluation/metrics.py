"""One dataset-level confusion matrix, and the benchmark scores derived from it; and,
under their own names, the per-image Dice/IoU averages medical papers report.

Rows are ground truth, columns prediction; pixels labelled IGNORE_INDEX are excluded.
The matrix is a torchmetrics state reduced by sum, so it is exact across DDP ranks
(per-image averages, as in torchmetrics.segmentation.MeanIoU, are not the benchmark mIoU:
they live in PerImageScores / image_scores and are never mixed with the dataset-level ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from segframe.data.sample import IGNORE_INDEX


def labels(logits: torch.Tensor) -> torch.Tensor:
    """Class indices [B,H,W] of scores [B,C,H,W]: exactly `logits.argmax(1)` (ties go to the first
    maximal class, a NaN to the first NaN); uint8 where the trick below runs (CPU, C < 256), else
    argmax's int64.
    Why not argmax: on the CPU, argmax over the channels of an NCHW tensor steps through memory
    H*W elements at a time and does not vectorise (~70 ms for [4,21,320,320] float32, a fifth of a
    ResNet-18 FCN-8s forward), while a max over the channels and elementwise ops do (~5-10 ms in all).
    argmax is kept where it is already cheap: on a GPU, and on channels-last logits (channels
    innermost, as a channels_last model returns them), where it is as fast as the trick."""
    if logits.device.type != "cpu" or logits.shape[1] > 255 or logits.stride(1) == 1:
        return logits.argmax(1)
    top = logits.amax(1, keepdim=True)  # compared in the logits' own dtype: no float32 copy of bf16/fp16
    if top.isnan().any():  # amax spreads a NaN, argmax picks the first one: leave that rare case to argmax
        return logits.argmax(1)
    return _first_true(logits >= top)  # == for top is the max; >= runs faster on the CPU (AVX-512: ~25%)


def _first_true(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first True along dim 1 of a bool mask with a True at every position, as uint8.
    Class c is weighted C - c, so the largest weight among the True ones is the first's: one
    multiply and one max reduction, both vectorised, instead of a per-class loop (C < 256)."""
    c = mask.shape[1]
    weights = torch.arange(c, 0, -1, dtype=torch.uint8, device=mask.device).view(c, *[1] * (mask.ndim - 2))
    return c - mask.view(torch.uint8).mul_(weights).amax(1)  # bool and uint8 share a byte: no copy


def _class_indices(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """preds as class indices with target's shape: logits [B,C,H,W] go through labels()."""
    if preds.ndim == target.ndim + 1:
        preds = labels(preds)
    if preds.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(preds.shape)} != target shape {tuple(target.shape)}")
    return preds


def _check_labels(gt: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Refuses ground-truth labels (ignored pixels already left out) outside 0..C-1: a negative one
    would otherwise be counted in the previous image's or row's bins."""
    if not gt.numel():
        return
    low, high = (int(v) for v in torch.aminmax(gt))
    bad = high if high >= num_classes else low if low < 0 else None
    if bad is not None:
        raise ValueError(f"target label {bad} is outside 0..{num_classes - 1} and not {ignore_index}")


def valid_labels(preds: torch.Tensor, target: torch.Tensor, num_classes: int,
                 ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(valid mask, gt labels, predicted labels) of the pixels not labelled `ignore_index`, after
    checking shapes and the label range. preds: class indices [B,H,W] or logits [B,C,H,W].
    The metrics count through pair_index() instead (no gathered copies); the bench times this
    gathered form as the metric update before issue 16."""
    preds = _class_indices(preds, target)
    valid = target != ignore_index
    t, p = target[valid].long(), preds[valid].long()
    _check_labels(t, num_classes, ignore_index)
    return valid, t, p


def pair_index(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """gt * C + prediction per pixel, int64 with target's shape; pixels labelled `ignore_index` get
    C*C, one bin past the matrix, which the caller's bincount counts and drops. This keeps the
    ignored pixels in place rather than gathering the valid ones (a boolean index copies both label
    tensors): the same counts, from elementwise passes only. Checks shapes and the label range."""
    preds = _class_indices(preds, target)
    void = target == ignore_index
    gt = target.long().masked_fill(void, 0)
    _check_labels(gt, num_classes, ignore_index)
    return gt.mul_(num_classes).add_(preds).masked_fill_(void, num_classes**2)


class ConfusionMatrix(Metric):
    full_state_update = False
    is_differentiable = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds: class indices [B,H,W] (or logits [B,C,H,W]); target: [B,H,W] with ignore pixels."""
        n = self.num_classes
        index = pair_index(preds, target, n, self.ignore_index)
        # bincount over gt*C+pred: one pass, no per-class loop; the last bin holds the ignored pixels
        self.confmat += torch.bincount(index.flatten(), minlength=n * n + 1)[: n * n].view(n, n)

    def compute(self) -> torch.Tensor:
        return self.confmat


def scores(confmat: np.ndarray | torch.Tensor) -> dict[str, float | list[float]]:
    """Dataset-level scores as fractions in [0, 1], all from the one confusion matrix.
    Per class (tp = diagonal, gt = row sum, pred = column sum): IoU = tp/(gt+pred-tp),
    Dice/F1 = 2tp/(gt+pred), precision = tp/pred, recall = accuracy = tp/gt. Per-class values
    are NaN for classes that are absent (IoU, Dice: from both ground truth and prediction;
    recall/accuracy: from ground truth; precision: from prediction), and those classes do not
    enter the means: mIoU and mDice average over classes in ground truth or prediction,
    mean accuracy over classes in ground truth."""
    cm = confmat.detach().cpu().double().numpy() if isinstance(confmat, torch.Tensor) else np.asarray(confmat, float)
    tp = np.diag(cm)
    gt = cm.sum(1)
    pred = cm.sum(0)
    total = cm.sum()
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
        dice = np.where(gt + pred > 0, 2 * tp / (gt + pred), np.nan)
        precision = np.where(pred > 0, tp / pred, np.nan)
    freq = gt / total if total > 0 else np.zeros_like(gt)
    present = union > 0  # == (gt + pred > 0): the classes mIoU and mDice average over
    return {
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "mdice": float(np.nanmean(dice)) if present.any() else float("nan"),
        "mean_acc": float(np.nanmean(acc)) if (gt > 0).any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "fwiou": float(np.nansum(freq * np.nan_to_num(iou))) if total > 0 else float("nan"),
        "per_class_iou": iou.tolist(),
        "per_class_dice": dice.tolist(),
        "per_class_precision": precision.tolist(),
        "per_class_recall": acc.tolist(),  # recall = tp/gt: the per-class pixel accuracy
        "per_class_acc": acc.tolist(),
        "gt_pixels": gt.astype(np.int64).tolist(),
    }


class PerImageScores(Metric):
    """Dice and IoU computed per image, then averaged over images (the convention of medical
    papers, e.g. PraNet's polyp Dice), kept apart from the dataset-level scores.

    For image i and class c, over the image's valid pixels (target != ignore_index):
    tp = pixels with gt c and prediction c, g = pixels with gt c, p = pixels predicted c;
    the image contains c when g + p > 0, and then Dice_i(c) = 2tp / (g + p) and
    IoU_i(c) = tp / (g + p - tp) (0 when c is only in gt or only in the prediction).
    Images where c is in neither gt nor prediction (0/0) do not count for c.

    States, per class, summed over images and reduced by sum across DDP ranks (exact):
    `dice_sum[c]` = sum of Dice_i(c), `iou_sum[c]` = sum of IoU_i(c), and
    `images[c]` = number of images that contain c. See image_scores() for the averages.
    `skip_background` (True when class 0 is named "background") is read by image_scores().

    Beside them, TernausNet's convention (metric_names.anchor_image_keys), class 0 as background:
    per image, the mean over the classes c >= 1 in its ground truth of Jaccard_i(c) / Dice_i(c); an
    image whose ground truth has no such class scores 1 when its prediction has none either, else 0.
    `ternaus_jaccard_sum` / `ternaus_dice_sum` sum those over images, `num_images` counts them.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, skip_background: bool = False):
        super().__init__()
        self.num_classes, self.ignore_index, self.skip_background = num_classes, ignore_index, skip_background
        self.add_state("dice_sum", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("iou_sum", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("ternaus_jaccard_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ternaus_dice_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds: class indices [B,H,W] (or logits [B,C,H,W]); target: [B,H,W] with ignore pixels."""
        if target.ndim == 2:  # one image
            preds, target = preds[None], target[None]
        n, batch = self.num_classes, target.shape[0]
        index = pair_index(preds, target, n, self.ignore_index)
        # each image gets C*C + 1 bins (its matrix, then its ignored pixels): one bincount for the
        # whole batch gives a confusion matrix per image, [B, C, C]
        bins = n * n + 1
        index += torch.arange(batch, device=index.device).view(-1, *[1] * (index.ndim - 1)) * bins
        counts = torch.bincount(index.flatten(), minlength=batch * bins).view(batch, bins)
        self._add_images(counts[:, : n * n].reshape(batch, n, n))

    def _add_images(self, cm: torch.Tensor) -> None:
        """Adds images given as their confusion matrices [B, C, C] (rows gt, columns prediction);
        update()'s second half, for a subclass that counts another way (the bench's before)."""
        cm = cm.double()
        tp = cm.diagonal(dim1=1, dim2=2)
        gt, pred = cm.sum(2), cm.sum(1)  # per image and class
        total = gt + pred
        present = total > 0
        denominator = total.clamp_min(1)
        dice, iou = 2 * tp / denominator, tp / (total - tp).clamp_min(1)
        self.dice_sum += dice.sum(0)
        self.iou_sum += iou.sum(0)
        self.images += present.sum(0)
        # TernausNet: the foreground classes in each image's ground truth; empty ground truth: 1 or 0
        in_gt = gt[:, 1:] > 0
        classes_in_gt = in_gt.sum(1)
        empty_score = (pred[:, 1:].sum(1) == 0).double()  # 1 when nothing is predicted as foreground

        def per_image(score: torch.Tensor) -> torch.Tensor:
            mean = (score[:, 1:] * in_gt).sum(1) / classes_in_gt.clamp_min(1)
            return torch.where(classes_in_gt > 0, mean, empty_score).sum()

        self.ternaus_jaccard_sum += per_image(iou)
        self.ternaus_dice_sum += per_image(dice)
        self.num_images += cm.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        return {"dice_sum": self.dice_sum, "iou_sum": self.iou_sum, "images": self.images,
                "ternaus_jaccard_sum": self.ternaus_jaccard_sum, "ternaus_dice_sum": self.ternaus_dice_sum,
                "num_images": self.num_images}


def image_scores(dice_sum: np.ndarray | torch.Tensor, iou_sum: np.ndarray | torch.Tensor,
                 images: np.ndarray | torch.Tensor, skip_background: bool = False,
                 ternaus_jaccard_sum: float | torch.Tensor = 0.0, ternaus_dice_sum: float | torch.Tensor = 0.0,
                 num_images: int | torch.Tensor = 0) -> dict[str, Any]:
    """Per-image averages from PerImageScores' states, as fractions in [0, 1]:
    per_class_dice_img[c] = mean over the images that contain c (in gt or prediction) of that
    image's Dice for c (NaN when no image contains c); likewise per_class_iou_img;
    mdice_img / miou_img = mean of those per-class averages over the classes some image
    contains, without class 0 when `skip_background` (class 0 named "background"). For a
    binary dataset [background, polyp], mdice_img is the per-image polyp Dice averaged over
    the images (the number polyp papers report). jaccard_ternaus / dice_ternaus: TernausNet's
    convention (see PerImageScores), only where class 0 is background (else NaN)."""
    def array(x: np.ndarray | torch.Tensor) -> np.ndarray:
        return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)

    dice, iou, count = array(dice_sum), array(iou_sum), array(images)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice_img = np.where(count > 0, dice / count, np.nan)
        iou_img = np.where(count > 0, iou / count, np.nan)
    averaged = count > 0
    if skip_background and len(averaged):
        averaged[0] = False
    return {
        "miou_img": float(np.mean(iou_img[averaged])) if averaged.any() else float("nan"),
        "mdice_img": float(np.mean(dice_img[averaged])) if averaged.any() else float("nan"),
        "per_class_iou_img": iou_img.tolist(),
        "per_class_dice_img": dice_img.tolist(),
        "images_per_class": count.astype(np.int64).tolist(),
        **{key: float(total) / int(num_images) if skip_background and int(num_images) else float("nan")
           for key, total in (("jaccard_ternaus", ternaus_jaccard_sum), ("dice_ternaus", ternaus_dice_sum))},
        "skip_background": bool(skip_background),
    }
