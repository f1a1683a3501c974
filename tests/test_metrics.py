"""Confusion-matrix metrics against an independent NumPy computation."""

from __future__ import annotations

import math

import numpy as np
import torch

from segframe.evaluation.metrics import ConfusionMatrix, scores


def _reference(gt: np.ndarray, pred: np.ndarray, n: int) -> dict:
    """Straight from the definitions, per class with Python loops."""
    valid = gt != 255
    g, p = gt[valid], pred[valid]
    ious, accs, fw = [], [], 0.0
    for c in range(n):
        tp = np.sum((g == c) & (p == c))
        in_gt, in_pred = np.sum(g == c), np.sum(p == c)
        union = in_gt + in_pred - tp
        if union > 0:
            ious.append(tp / union)
            fw += in_gt / g.size * tp / union
        if in_gt > 0:
            accs.append(tp / in_gt)
    return {"miou": np.mean(ious), "mean_acc": np.mean(accs), "pixel_acc": np.mean(g == p), "fwiou": fw}


def test_metrics_equal_numpy_reference_with_ignore_and_absent_classes():
    rng = np.random.default_rng(0)
    n = 7
    metric = ConfusionMatrix(n)
    gts, preds = [], []
    for _ in range(4):  # several batches accumulate into one dataset-level matrix
        gt = rng.integers(0, 4, (2, 13, 17))  # classes 4..6 absent from ground truth
        gt[rng.random(gt.shape) < 0.2] = 255  # ignore pixels
        pred = rng.integers(0, 6, (2, 13, 17))  # class 5 predicted but never true; 6 absent everywhere
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
        gts.append(gt)
        preds.append(pred)
    result = scores(metric.compute())
    ref = _reference(np.concatenate(gts), np.concatenate(preds), n)
    for key in ("miou", "mean_acc", "pixel_acc", "fwiou"):
        assert math.isclose(result[key], ref[key], rel_tol=1e-12), key
    assert math.isnan(result["per_class_iou"][6])  # absent from gt and prediction: not averaged
    assert result["per_class_iou"][5] == 0.0  # predicted, never true: counts as 0
    assert math.isnan(result["per_class_acc"][5])
    assert metric.compute().sum() == sum(int((g != 255).sum()) for g in gts)


def test_logits_are_accepted_and_labels_out_of_range_rejected():
    metric = ConfusionMatrix(3)
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 1] = 1
    metric.update(logits, torch.tensor([[[1, 1], [0, 255]]]))
    assert metric.compute().tolist() == [[0, 1, 0], [0, 2, 0], [0, 0, 0]]
    try:
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 3))
    except ValueError as exc:
        assert "outside 0..2" in str(exc)
    else:
        raise AssertionError("label 3 with 3 classes must be rejected")


def test_sum_reduction_merges_like_ranks():
    """Two ranks' matrices summed equal one pass over all data (what DDP sync does)."""
    rng = np.random.default_rng(1)
    gt, pred = rng.integers(0, 5, (4, 9, 9)), rng.integers(0, 5, (4, 9, 9))
    whole, a, b = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    whole.update(torch.from_numpy(pred), torch.from_numpy(gt))
    a.update(torch.from_numpy(pred[:1]), torch.from_numpy(gt[:1]))
    b.update(torch.from_numpy(pred[1:]), torch.from_numpy(gt[1:]))
    a.merge_state(b)
    assert torch.equal(a.compute(), whole.compute())
