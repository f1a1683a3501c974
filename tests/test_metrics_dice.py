"""Dice / precision / recall / mDice (dataset level) and per-image Dice / IoU (medical
convention) against independent NumPy computations from the raw label arrays; the report
files that show them."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from segframe.core.metric_names import summary_keys
from segframe.evaluation.metrics import ConfusionMatrix, PerImageScores, image_scores, scores


def _random_labels(seed: int, shape=(6, 11, 13)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, shape)  # classes 4..5 never true
    gt[rng.random(shape) < 0.2] = 255  # ignore pixels
    pred = rng.integers(0, 5, shape)  # class 4 predicted but never true; 5 absent everywhere
    return gt, pred


def test_dice_precision_recall_mdice_equal_numpy_from_raw_labels():
    n = 6
    gt, pred = _random_labels(0)
    metric = ConfusionMatrix(n)
    for i in range(0, len(gt), 2):  # several batches, one dataset-level matrix
        metric.update(torch.from_numpy(pred[i:i + 2]), torch.from_numpy(gt[i:i + 2]))
    result = scores(metric.compute())
    valid = gt != 255
    g, p = gt[valid], pred[valid]
    dices = []
    for c in range(n):
        tp, in_gt, in_pred = np.sum((g == c) & (p == c)), np.sum(g == c), np.sum(p == c)
        if in_gt + in_pred:
            dices.append(2 * tp / (in_gt + in_pred))
            assert math.isclose(result["per_class_dice"][c], dices[-1], rel_tol=1e-12)
        else:
            assert math.isnan(result["per_class_dice"][c])
        if in_pred:
            assert math.isclose(result["per_class_precision"][c], tp / in_pred, rel_tol=1e-12)
        else:
            assert math.isnan(result["per_class_precision"][c])
        if in_gt:
            assert math.isclose(result["per_class_recall"][c], tp / in_gt, rel_tol=1e-12)
        else:
            assert math.isnan(result["per_class_recall"][c])
    assert math.isclose(result["mdice"], np.mean(dices), rel_tol=1e-12)
    assert len(dices) == 5  # class 5 (absent from gt and prediction) is not averaged
    assert result["per_class_dice"][4] == 0.0 and result["per_class_precision"][4] == 0.0  # predicted, never true
    assert math.isnan(result["per_class_recall"][4])
    np.testing.assert_array_equal(result["per_class_recall"], result["per_class_acc"])  # NaN == NaN here
    # Dice = 2 IoU / (1 + IoU), class by class
    for d, j in zip(result["per_class_dice"], result["per_class_iou"]):
        assert (math.isnan(d) and math.isnan(j)) or math.isclose(d, 2 * j / (1 + j), rel_tol=1e-12)
    assert tuple(summary_keys()) == ("miou", "mdice", "mean_acc", "pixel_acc", "fwiou")


def _per_image_reference(gt: np.ndarray, pred: np.ndarray, n: int, skip_background: bool) -> dict:
    """A direct loop over images and classes, from the label arrays."""
    dice = [[] for _ in range(n)]
    iou = [[] for _ in range(n)]
    for g_img, p_img in zip(gt, pred):
        valid = g_img != 255
        g, p = g_img[valid], p_img[valid]
        for c in range(n):
            tp, in_gt, in_pred = np.sum((g == c) & (p == c)), np.sum(g == c), np.sum(p == c)
            if in_gt + in_pred == 0:
                continue  # the class is not in this image: 0/0, skipped
            dice[c].append(2 * tp / (in_gt + in_pred))
            iou[c].append(tp / (in_gt + in_pred - tp))
    dice_c = [np.mean(v) if v else np.nan for v in dice]
    iou_c = [np.mean(v) if v else np.nan for v in iou]
    classes = [c for c in range(n) if dice[c] and not (skip_background and c == 0)]
    return {"per_class_dice_img": dice_c, "per_class_iou_img": iou_c, "images": [len(v) for v in dice],
            "mdice_img": np.mean([dice_c[c] for c in classes]), "miou_img": np.mean([iou_c[c] for c in classes])}


def _close_or_nan(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-15)
               for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("skip_background", [False, True])
def test_per_image_scores_equal_a_direct_numpy_loop(skip_background):
    n = 6
    gt, pred = _random_labels(1)
    gt[2][gt[2] == 3] = 0  # image 2: class 3 absent from ground truth...
    pred[2][pred[2] == 3] = 1  # ...and from the prediction: it must not count for that image
    gt[4] = 255  # image 4: every pixel ignored, no class counts
    metric = PerImageScores(n, skip_background=skip_background)
    metric.update(torch.from_numpy(pred[:4]), torch.from_numpy(gt[:4]))
    metric.update(torch.from_numpy(pred[4:]), torch.from_numpy(gt[4:]))
    result = image_scores(**metric.compute(), skip_background=metric.skip_background)
    ref = _per_image_reference(gt, pred, n, skip_background)
    assert result["images_per_class"] == ref["images"]
    assert ref["images"][3] == 4 and ref["images"][5] == 0  # 6 images, minus image 2 and the all-ignore one
    assert _close_or_nan(result["per_class_dice_img"], ref["per_class_dice_img"])
    assert _close_or_nan(result["per_class_iou_img"], ref["per_class_iou_img"])
    assert math.isclose(result["mdice_img"], ref["mdice_img"], rel_tol=1e-12)
    assert math.isclose(result["miou_img"], ref["miou_img"], rel_tol=1e-12)
    assert result["skip_background"] is skip_background
    # the per-image convention is not the dataset-level one
    cm = ConfusionMatrix(n)
    cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert not math.isclose(scores(cm.compute())["mdice"], result["mdice_img"], rel_tol=1e-6)


def test_binary_mdice_img_is_the_foreground_dice_averaged_over_images():
    """Kvasir-SEG style [background, polyp]: mdice_img = mean over images of the polyp Dice."""
    rng = np.random.default_rng(2)
    gt = (rng.random((5, 16, 16)) < 0.3).astype(np.int64)
    pred = (rng.random((5, 16, 16)) < 0.4).astype(np.int64)
    polyp = [2 * np.sum((g == 1) & (p == 1)) / (np.sum(g == 1) + np.sum(p == 1)) for g, p in zip(gt, pred)]
    metric = PerImageScores(2, skip_background=True)
    metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
    result = image_scores(**metric.compute(), skip_background=True)
    assert math.isclose(result["mdice_img"], float(np.mean(polyp)), rel_tol=1e-12)
    assert math.isclose(result["per_class_dice_img"][1], result["mdice_img"], rel_tol=1e-12)
    with_background = image_scores(**metric.compute(), skip_background=False)
    assert math.isclose(with_background["mdice_img"], np.mean(result["per_class_dice_img"]), rel_tol=1e-12)


def test_per_image_states_sum_like_ranks():
    """Two metrics updated on halves, states summed (what DDP's sum reduction does) == one on all."""
    gt, pred = _random_labels(3, (8, 9, 10))
    whole, a, b = PerImageScores(6), PerImageScores(6), PerImageScores(6)
    whole.update(torch.from_numpy(pred), torch.from_numpy(gt))
    a.update(torch.from_numpy(pred[:3]), torch.from_numpy(gt[:3]))
    b.update(torch.from_numpy(pred[3:]), torch.from_numpy(gt[3:]))
    states = ("dice_sum", "iou_sum", "images", "ternaus_jaccard_sum", "ternaus_dice_sum", "num_images")
    summed = {k: a.compute()[k] + b.compute()[k] for k in states}
    for key, value in whole.compute().items():
        assert torch.allclose(summed[key], value, rtol=1e-12, atol=0), key
    assert torch.equal(summed["images"], whole.compute()["images"])
    a.merge_state(b)  # torchmetrics' own merge (compute() would return its cached value here: read the states)
    assert torch.allclose(a.dice_sum, whole.dice_sum, rtol=1e-12, atol=0) and torch.equal(a.images, whole.images)
    for name in states:
        assert a._reductions[name].__name__.endswith("sum")  # dist_reduce_fx="sum"


def test_per_image_accepts_logits_and_rejects_bad_labels():
    metric = PerImageScores(3)
    logits = torch.zeros(2, 3, 2, 2)
    logits[:, 1] = 1
    target = torch.tensor([[[1, 1], [0, 255]], [[2, 2], [2, 2]]])
    metric.update(logits, target)
    state = metric.compute()
    # image 0: class 1 Dice 2*2/(2+3), class 0 Dice 0; image 1: classes 1 and 2 Dice 0
    assert state["images"].tolist() == [1, 2, 1]
    assert torch.allclose(state["dice_sum"], torch.tensor([0.0, 0.8, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="outside 0..2"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 3))


def test_report_has_dice_columns_per_image_table_and_legend(tmp_path):
    from PIL import Image

    from segframe.evaluation.report import write_report

    classes = ["background", "circle", "square"]
    palette = [[0, 0, 0], [200, 30, 30], [30, 200, 30]]
    rng = np.random.default_rng(4)
    gt = rng.integers(0, 3, (3, 96, 96))
    pred = rng.integers(0, 3, (3, 96, 96))
    cm, per_image = ConfusionMatrix(3), PerImageScores(3, skip_background=True)
    for m in (cm, per_image):
        m.update(torch.from_numpy(pred), torch.from_numpy(gt))
    image_result = image_scores(**per_image.compute(), skip_background=True)
    images = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(3)]
    examples = (images, [g.astype(np.uint8) for g in gt], [p.astype(np.uint8) for p in pred])
    metrics = write_report(tmp_path, cm.compute(), classes, palette, {"dataset": "t"}, examples,
                           image_result=image_result)
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored == json.loads(json.dumps(metrics))
    for key in ("miou", "mdice", "mean_acc", "pixel_acc", "fwiou", "mdice_img", "miou_img"):
        assert 0.0 <= stored[key] <= 1.0, key
    assert math.isclose(stored["mdice_img"], image_result["mdice_img"])
    assert stored["per_image_excludes_background"] is True
    for key in ("iou", "dice", "precision", "recall", "acc", "gt_pixels", "dice_img", "iou_img"):
        assert key in stored["per_class"]["circle"], key
    assert stored["per_class"]["circle"]["recall"] == stored["per_class"]["circle"]["acc"]
    table = (tmp_path / "per_class.md").read_text()
    assert "| class | IoU % | Dice % | precision % | recall (acc) % | gt pixels |" in table
    assert "| mIoU % | mDice % | mean acc % | pixel acc % | fwIoU % |" in table
    assert "| mIoU per image % | mDice per image % |" in table and "dataset-level" in table
    assert table.index("| mIoU % |") < table.index("| mIoU per image % |")
    header = next(csv.reader(open(tmp_path / "per_class.csv")))
    assert header[:7] == ["class", "iou", "dice", "precision", "recall", "acc", "gt_pixels"]
    grid = Image.open(tmp_path / "predictions.png")
    cell = 192  # 96 px images enlarged 2x
    assert grid.width >= 3 * cell and grid.width > 3 * 96
    assert grid.height > 3 * cell + 40  # a header row and a legend besides the three rows
    pixels = np.asarray(grid.convert("RGB"))
    legend = pixels[3 * cell + 20:]
    assert ((legend == [200, 30, 30]).all(-1)).any() and ((legend == [30, 200, 30]).all(-1)).any()  # swatches
    # an older caller (no per-image result) still gets a report; the per-image keys are null
    write_report(tmp_path / "old", cm.compute(), classes, palette, {})
    old = json.loads((tmp_path / "old" / "metrics.json").read_text())
    assert old["mdice_img"] is None and old["mdice"] is not None
    assert "per image" not in (tmp_path / "old" / "per_class.md").read_text()


def test_prediction_grid_legend_wraps_for_many_classes(tmp_path):
    from PIL import Image

    from segframe.evaluation.report import prediction_grid

    n = 30
    classes = [f"class_name_{i}" for i in range(n)]
    palette = [[(37 * i) % 256, (91 * i) % 256, (151 * i) % 256] for i in range(n)]
    rng = np.random.default_rng(5)
    masks = [rng.integers(0, n, (40, 60)).astype(np.uint8) for _ in range(2)]
    images = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(2)]
    prediction_grid(images, masks, masks, palette, tmp_path / "p.png", classes=classes)
    grid = Image.open(tmp_path / "p.png")
    rows = 2 * 200  # 40 px short side -> 5x -> 200 px cells
    assert grid.width >= 3 * 300 and grid.height > rows + 4 * 20  # the legend takes several lines


def _ternaus_by_hand(gts, preds):
    """ternaus/robot-surgery-segmentation evaluate.py's general_jaccard / general_dice, written out."""
    jaccards, dices = [], []
    for gt, pred in zip(gts, preds):
        if gt.sum() == 0:
            score = 1.0 if pred.sum() == 0 else 0.0
            jaccards.append(score)
            dices.append(score)
            continue
        js, ds = [], []
        for c in sorted(set(gt.flatten().tolist()) - {0}):
            t, p = gt == c, pred == c
            inter = (t & p).sum()
            js.append((inter + 1e-15) / (t.sum() + p.sum() - inter + 1e-15))
            ds.append((2 * inter + 1e-15) / (t.sum() + p.sum() + 1e-15))
        jaccards.append(np.mean(js))
        dices.append(np.mean(ds))
    return float(np.mean(jaccards)), float(np.mean(dices))


def test_ternausnet_per_image_scores_match_a_hand_computation():
    """Four images of a 4-class (parts) problem: both empty (1), empty gt with a prediction (0), a
    prediction of a class absent from the gt (it does not count for that image's mean), two classes."""
    from segframe.evaluation.metrics import PerImageScores, image_scores

    gts = np.zeros((4, 4, 4), np.int64)
    preds = np.zeros((4, 4, 4), np.int64)
    preds[1, 0, 0] = 2  # empty gt, something predicted: 0
    gts[2, :2] = 1
    preds[2, :1] = 1
    preds[2, 3, :] = 3  # class 3 predicted, absent from the gt: not averaged for this image
    gts[3, :2, :2], gts[3, 2:, 2:] = 1, 2
    preds[3, :2, :1], preds[3, 2:, 2:], preds[3, 0, 3] = 1, 2, 2
    metric = PerImageScores(4, skip_background=True)
    metric.update(torch.from_numpy(preds[:3]), torch.from_numpy(gts[:3]))
    metric.update(torch.from_numpy(preds[3]), torch.from_numpy(gts[3]))  # one image alone, as eval may give it
    got = image_scores(**metric.compute(), skip_background=True)
    jaccard, dice = _ternaus_by_hand(gts, preds)
    assert got["jaccard_ternaus"] == pytest.approx(jaccard, abs=1e-12)
    assert got["dice_ternaus"] == pytest.approx(dice, abs=1e-12)
    # by hand: (1 + 0 + 0.5 + (0.5 + 0.8) / 2) / 4 and (1 + 0 + 2/3 + (2/3 + 8/9) / 2) / 4
    assert jaccard == pytest.approx((1 + 0 + 0.5 + (0.5 + 0.8) / 2) / 4)
    assert dice == pytest.approx((1 + 0 + 2 / 3 + (2 / 3 + 8 / 9) / 2) / 4)
    assert got["miou_img"] != pytest.approx(jaccard)  # another convention, kept under its own name
    # without a background class the convention means nothing: not reported
    plain = PerImageScores(4, skip_background=False)
    plain.update(torch.from_numpy(preds), torch.from_numpy(gts))
    assert np.isnan(image_scores(**plain.compute(), skip_background=False)["jaccard_ternaus"])
