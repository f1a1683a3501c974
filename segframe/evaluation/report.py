"""Run outputs: metrics.json, per-class tables (md + csv), confusion-matrix and prediction PNGs."""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from segframe.core.metric_names import SUMMARY_HEADERS, anchor_image_keys, image_summary_keys, percent, summary_keys
from segframe.core.paths import REPO_ROOT
from segframe.data.colours import IGNORE_COLOUR, colorize
from segframe.evaluation.metrics import scores

log = logging.getLogger("segframe")



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


def _json_number(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v  # JSON has no NaN


def per_class_rows(result: dict[str, Any], classes: Sequence[str],
                   image_result: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One dict per class: dataset-level iou, dice, precision, recall (= acc, kept under both
    names), gt_pixels; with `image_result` (metrics.image_scores) also dice_img and iou_img."""
    rows = [
        {"class": name, "iou": iou, "dice": dice, "precision": prec, "recall": acc, "acc": acc, "gt_pixels": px}
        for name, iou, dice, prec, acc, px in zip(classes, result["per_class_iou"], result["per_class_dice"],
                                                  result["per_class_precision"], result["per_class_acc"],
                                                  result["gt_pixels"])
    ]
    if image_result is not None:
        for row, dice_img, iou_img in zip(rows, image_result["per_class_dice_img"], image_result["per_class_iou_img"]):
            row.update(dice_img=dice_img, iou_img=iou_img)
    return rows


def markdown_table(result: dict[str, Any], classes: Sequence[str], image_result: dict[str, Any] | None = None) -> str:
    """Per-class IoU / Dice / precision / recall in percent with two decimals, the dataset-level
    summary scores, then (with `image_result`) the per-image ones in a table of their own."""
    lines = ["| class | IoU % | Dice % | precision % | recall (acc) % | gt pixels |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in per_class_rows(result, classes):
        lines.append(f"| {row['class']} | {percent(row['iou'])} | {percent(row['dice'])} | "
                     f"{percent(row['precision'])} | {percent(row['recall'])} | {row['gt_pixels']} |")
    lines += ["", "| " + " | ".join(SUMMARY_HEADERS[k] for k in summary_keys()) + " |",
              "| " + " | ".join("---:" for _ in summary_keys()) + " |",
              "| " + " | ".join(percent(result[k]) for k in summary_keys()) + " |"]
    if image_result is not None:
        excluded = ", background excluded" if image_result.get("skip_background") else ""
        lines += ["", "Above: dataset-level (one confusion matrix over all pixels). Below: per image (Dice/IoU of "
                      f"each image, averaged over the images that contain the class, then over classes; medical "
                      f"convention{excluded}).",
                  "", "| " + " | ".join(SUMMARY_HEADERS[k] for k in image_summary_keys()) + " |",
                  "| " + " | ".join("---:" for _ in image_summary_keys()) + " |",
                  "| " + " | ".join(percent(image_result[k]) for k in image_summary_keys()) + " |"]
        if not math.isnan(image_result.get("jaccard_ternaus", float("nan"))):
            lines += ["", "TernausNet's convention (EndoVis 2017): per image, over the classes in its ground truth; "
                          "an image with an empty ground truth scores 1 if nothing is predicted, else 0.",
                      "", "| " + " | ".join(SUMMARY_HEADERS[k] for k in anchor_image_keys()) + " |",
                      "| " + " | ".join("---:" for _ in anchor_image_keys()) + " |",
                      "| " + " | ".join(percent(image_result[k]) for k in anchor_image_keys()) + " |"]
    return "\n".join(lines) + "\n"


def _font() -> Any:
    from PIL import ImageFont

    try:  # Pillow >= 10.1 ships a scalable default font; older ones a fixed bitmap one
        return ImageFont.load_default(size=14)
    except TypeError:
        return ImageFont.load_default()


def prediction_grid(images: Sequence[np.ndarray], gts: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                    palette: Sequence[Sequence[int]], path: Path, classes: Sequence[str] | None = None,
                    min_cell: int = 192) -> None:
    """A header row (image | ground truth | prediction), one row per sample in the dataset palette
    (void white), and a legend of every class colour. Small images are enlarged by a whole factor
    (nearest neighbour) so that each cell is at least `min_cell` px on its short side."""
    from PIL import Image, ImageDraw

    font, gap, pad = _font(), 8, 6
    cells = []
    for im, gt, pr in zip(images, gts, preds):
        factor = max(1, math.ceil(min_cell / max(1, min(im.shape[:2]))))
        cells.append([a.repeat(factor, 0).repeat(factor, 1) for a in (im, colorize(gt, palette), colorize(pr, palette))])
    column = max(c[0].shape[1] for c in cells)
    width = 3 * column + 2 * gap + 2  # 1 px each side for the frames
    line = font.getbbox("Ag")[3] + 6  # height of one line of text
    names = list(classes) if classes is not None else [f"class {i}" for i in range(len(palette))]
    items = [(tuple(int(v) for v in colour), name) for name, colour in zip(names, palette)] + [(IGNORE_COLOUR, "ignore")]
    swatch, x, legend = line - 6, pad, [[]]  # legend: lines of (x, colour, name)
    for colour, name in items:
        item = swatch + 4 + int(font.getbbox(name)[2])
        if x > pad and x + item > width - pad:
            legend.append([])
            x = pad
        legend[-1].append((x, colour, name))
        x += item + 14
    top = line + 4
    height = top + sum(c[0].shape[0] + gap for c in cells) + pad + len(legend) * line + pad
    canvas = np.full((height, width, 3), 255, np.uint8)
    frames, y = [], top  # a thin grey frame around each cell: void (white) stays visible at the edges
    for row in cells:
        for i, cell in enumerate(row):
            x = 1 + i * (column + gap)
            canvas[y:y + cell.shape[0], x:x + cell.shape[1]] = cell
            frames.append([x - 1, y - 1, x + cell.shape[1], y + cell.shape[0]])
        y += row[0].shape[0] + gap
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for frame in frames:
        draw.rectangle(frame, outline=(190, 190, 190))
    for i, title in enumerate(("image", "ground truth", "prediction")):
        draw.text((1 + i * (column + gap) + (column - font.getbbox(title)[2]) // 2, 2), title, fill=(0, 0, 0), font=font)
    y += pad
    for entries in legend:
        for x, colour, name in entries:
            draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=colour, outline=(96, 96, 96))
            draw.text((x + swatch + 4, y), name, fill=(0, 0, 0), font=font)
        y += line
    picture.save(path)


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
                 examples: tuple[list, list, list] | None = None,
                 image_result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write metrics.json, per_class.{md,csv}, confusion_matrix.png, predictions.png; return the metrics.
    `image_result` (metrics.image_scores, e.g. SegModule.last_image_scores["test"]) adds the
    per-image scores (mdice_img, miou_img; per class dice_img, iou_img); without it they are null."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cm = confmat.cpu().numpy() if isinstance(confmat, torch.Tensor) else np.asarray(confmat)
    result = scores(cm)
    rows = per_class_rows(result, classes, image_result)
    metrics = {
        **{k: _json_number(result[k]) for k in summary_keys()},
        **{k: _json_number(image_result[k]) if image_result is not None else None for k in image_summary_keys()},
        **{k: _json_number(image_result.get(k, float("nan"))) if image_result is not None else None
           for k in anchor_image_keys()},
        "per_image_excludes_background": bool(image_result["skip_background"]) if image_result is not None else None,
        "per_class": {r["class"]: {k: _json_number(v) for k, v in r.items() if k != "class"} for r in rows},
        "classes": list(classes),
        "confusion_matrix": cm.astype(np.int64).tolist(),
        "git_commit": git_commit(),
        **info,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (run_dir / "per_class.md").write_text(markdown_table(result, classes, image_result))
    with open(run_dir / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["class"])
        writer.writeheader()
        writer.writerows(rows)
    confusion_plot(cm, classes, run_dir / "confusion_matrix.png")
    if examples is not None and examples[0]:
        prediction_grid(*examples, palette, run_dir / "predictions.png", classes=classes)
    return metrics


def finish_run(run_dir: Path, config: Any, confmat: torch.Tensor, image_result: dict[str, Any] | None,
               classes: Sequence[str], palette: Sequence[Sequence[int]], info: dict[str, Any],
               examples: tuple[list, list, list] | None) -> dict[str, Any]:
    """The end of a train or eval run: its resolved config, the report (write_report), and the
    per-class table and summary printed for the person watching. Returns the metrics."""
    OmegaConf.save(config, run_dir / "config.yaml", resolve=True)
    metrics = write_report(run_dir, confmat, classes, palette, info, examples, image_result=image_result)
    print(f"\n{info['dataset']} {info['split']} ({info['num_samples']} images):\n" + (run_dir / "per_class.md").read_text())
    log.info("%s %s: mIoU %.2f  mDice %.2f  mean acc %.2f  pixel acc %.2f  fwIoU %.2f  | per image: mIoU %.2f  "
             "mDice %.2f  (report in %s)", info["dataset"], info["split"],
             *(100 * (metrics[k] or 0) for k in ("miou", "mdice", "mean_acc", "pixel_acc", "fwiou", "miou_img",
                                                  "mdice_img")), run_dir)
    return metrics
