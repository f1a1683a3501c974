"""One dataset-level confusion matrix, and the benchmark scores derived from it.

Rows are ground truth, columns prediction; pixels labelled IGNORE_INDEX are excluded.
The matrix is a torchmetrics state reduced by sum, so it is exact across DDP ranks
(per-image averages, as in torchmetrics.segmentation.MeanIoU, are not the benchmark mIoU).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from segframe.data.sample import IGNORE_INDEX


class ConfusionMatrix(Metric):
    full_state_update = False
    is_differentiable = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds: class indices [B,H,W] (or logits [B,C,H,W]); target: [B,H,W] with ignore pixels."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} != target shape {tuple(target.shape)}")
        valid = target != self.ignore_index
        t, p = target[valid].long(), preds[valid].long()
        if t.numel() and int(t.max()) >= self.num_classes:
            raise ValueError(f"target label {int(t.max())} is outside 0..{self.num_classes - 1} and not {self.ignore_index}")
        # bincount over gt*C+pred: one pass, no per-class loop
        self.confmat += torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )

    def compute(self) -> torch.Tensor:
        return self.confmat


def scores(confmat: np.ndarray | torch.Tensor) -> dict[str, float | list[float]]:
    """Scores as fractions in [0, 1]. Per-class values are NaN for classes that are absent
    (IoU: from both ground truth and prediction; accuracy: from ground truth), and those
    classes do not enter the means."""
    cm = confmat.detach().cpu().double().numpy() if isinstance(confmat, torch.Tensor) else np.asarray(confmat, float)
    tp = np.diag(cm)
    gt = cm.sum(1)
    pred = cm.sum(0)
    total = cm.sum()
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    freq = gt / total if total > 0 else np.zeros_like(gt)
    present = union > 0
    return {
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "mean_acc": float(np.nanmean(acc)) if (gt > 0).any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "fwiou": float(np.nansum(freq * np.nan_to_num(iou))) if total > 0 else float("nan"),
        "per_class_iou": iou.tolist(),
        "per_class_acc": acc.tolist(),
        "gt_pixels": gt.astype(np.int64).tolist(),
    }


def summary_keys() -> Sequence[str]:
    return ("miou", "mean_acc", "pixel_acc", "fwiou")
