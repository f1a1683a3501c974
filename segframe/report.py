"""Run outputs: metrics.json, per-class tables (md + csv), confusion-matrix and prediction PNGs."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segframe.data.sample import IGNORE_INDEX
from segframe.metrics import scores, summary_keys
from segframe.paths import REPO_ROOT

IGNORE_COLOUR = (255, 255, 255)


def git_commit() -> str:
    """HEAD of the checkout, with '-dirty' when tracked files have uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def percent(x: float | None) -> str:
    """A fraction as the tables print it: percent with two decimals."""
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _json_number(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v  # JSON has no NaN


def per_class_rows(result: dict[str, Any], classes: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {"class": name, "iou": iou, "acc": acc, "gt_pixels": px}
        for name, iou, acc, px in zip(classes, result["per_class_iou"], result["per_class_acc"], result["gt_pixels"])
    ]


def markdown_table(result: dict[str, Any], classes: Sequence[str]) -> str:
    """Per-class IoU / accuracy in percent with two decimals, then the four summary scores."""
    lines = ["| class | IoU % | acc % | gt pixels |", "| --- | ---: | ---: | ---: |"]
    for row in per_class_rows(result, classes):
        lines.append(f"| {row['class']} | {percent(row['iou'])} | {percent(row['acc'])} | {row['gt_pixels']} |")
    lines += ["", "| mIoU % | mean acc % | pixel acc % | fwIoU % |", "| ---: | ---: | ---: | ---: |",
              "| " + " | ".join(percent(result[k]) for k in summary_keys()) + " |"]
    return "\n".join(lines) + "\n"


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[IGNORE_INDEX] = IGNORE_COLOUR
    return lut[mask]


def prediction_grid(images: Sequence[np.ndarray], gts: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                    palette: Sequence[Sequence[int]], path: Path) -> None:
    """One row per sample: image | ground truth | prediction, in the dataset palette (void white)."""
    from PIL import Image

    rows = []
    width = max(im.shape[1] for im in images) * 3 + 8
    for im, gt, pr in zip(images, gts, preds):
        row = np.concatenate([im, np.full((im.shape[0], 4, 3), 255, np.uint8), colorize(gt, palette),
                              np.full((im.shape[0], 4, 3), 255, np.uint8), colorize(pr, palette)], axis=1)
        row = np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255)
        rows.append(row)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def confusion_plot(confmat: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix (rows = ground truth), counts hidden for readability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = confmat.astype(float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    size = max(4.0, 0.35 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def predict_examples(module: torch.nn.Module, loader: Any, count: int) -> tuple[list, list, list]:
    """First `count` samples of an eval loader with the module's predictions, as uint8 arrays."""
    images, gts, preds = [], [], []
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    for batch_images, batch_masks in loader:
        batch = batch_images.to(device)
        logits = module.predict_scores(batch) if hasattr(module, "predict_scores") else module(batch)
        for img, gt, pr in zip(batch_images, batch_masks, logits.argmax(1).cpu()):
            images.append(img.permute(1, 2, 0).numpy().astype(np.uint8))
            gts.append(gt.numpy().astype(np.uint8))
            preds.append(pr.numpy().astype(np.uint8))
            if len(images) >= count:
                break
        if len(images) >= count:
            break
    module.train(was_training)
    return images, gts, preds


def write_report(run_dir: str | Path, confmat: torch.Tensor | np.ndarray, classes: Sequence[str],
                 palette: Sequence[Sequence[int]], info: dict[str, Any],
                 examples: tuple[list, list, list] | None = None) -> dict[str, Any]:
    """Write metrics.json, per_class.{md,csv}, confusion_matrix.png, predictions.png; return the metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cm = confmat.cpu().numpy() if isinstance(confmat, torch.Tensor) else np.asarray(confmat)
    result = scores(cm)
    metrics = {
        **{k: _json_number(result[k]) for k in summary_keys()},
        "per_class": {r["class"]: {k: _json_number(v) for k, v in r.items() if k != "class"}
                      for r in per_class_rows(result, classes)},
        "classes": list(classes),
        "confusion_matrix": cm.astype(np.int64).tolist(),
        "git_commit": git_commit(),
        **info,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (run_dir / "per_class.md").write_text(markdown_table(result, classes))
    with open(run_dir / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "iou", "acc", "gt_pixels"])
        writer.writeheader()
        writer.writerows(per_class_rows(result, classes))
    confusion_plot(cm, classes, run_dir / "confusion_matrix.png")
    if examples is not None and examples[0]:
        prediction_grid(*examples, palette, run_dir / "predictions.png")
    return metrics
