"""The names of the summary scores, in table order: the one list that metrics.json, the printed
tables, sweep summaries, reproduce and results use. A module of its own so that the table tools
(`segframe.results`, `segframe.reproduce`) name the metrics without importing torch (~5 s)."""

from __future__ import annotations

from collections.abc import Sequence


def summary_keys() -> Sequence[str]:
    """The dataset-level summary scores (one confusion matrix over the split)."""
    return ("miou", "mdice", "mean_acc", "pixel_acc", "fwiou")


def image_summary_keys() -> Sequence[str]:
    """The per-image (medical convention) summary scores, kept apart from summary_keys()."""
    return ("miou_img", "mdice_img")
