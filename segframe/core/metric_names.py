"""The summary scores as every table shows them: their names in table order, their column headers,
and how a score prints. The one place that metrics.json, per_class.md, sweep summaries, reproduce
and results take them from. A module of its own, without torch, so that the table tools
(`segframe.results`, `segframe.reproduce`) name and print the metrics without importing it (~5 s)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def summary_keys() -> Sequence[str]:
    """The dataset-level summary scores (one confusion matrix over the split)."""
    return ("miou", "mdice", "mean_acc", "pixel_acc", "fwiou")


def image_summary_keys() -> Sequence[str]:
    """The per-image (medical convention) summary scores, kept apart from summary_keys()."""
    return ("miou_img", "mdice_img")


def anchor_image_keys() -> Sequence[str]:
    """TernausNet's per-image scores (ternaus/robot-surgery-segmentation, evaluate.py), the EndoVis 2017
    community's numbers: each image's Jaccard / Dice averaged over the foreground classes in its
    ground truth (1 when ground truth and prediction are both empty, 0 when only the ground truth
    is), then over all images. Under their own names: they are not miou_img / mdice_img."""
    return ("jaccard_ternaus", "dice_ternaus")


SUMMARY_HEADERS = {"miou": "mIoU %", "mdice": "mDice %", "mean_acc": "mean acc %", "pixel_acc": "pixel acc %",
                   "fwiou": "fwIoU %", "miou_img": "mIoU per image %", "mdice_img": "mDice per image %",
                   "jaccard_ternaus": "Jaccard (TernausNet, per image) %", "dice_ternaus": "Dice (TernausNet, per image) %"}


def percent(value: float | None, *, fraction: bool = True, missing: str = "n/a") -> str:
    """A score as the tables print it: percent with two decimals.

    fraction: True when `value` is a fraction in [0, 1] (metrics.json, per-class scores, sweep
    summaries), printed times 100; False when it is a percent already (the experiment files'
    references and reproduce's comparisons, which are kept in percent).
    missing: what a score that is None or NaN prints as: "n/a" in a run's own report, "-" in the
    experiments tables, where a reference or an older run may lack a metric.
    """
    if value is None:
        return missing
    number = 100 * value if fraction else float(value)
    return missing if math.isnan(number) else f"{number:.2f}"
