"""curves.png (segframe/evaluation/curves.py): built from the numbers in the run's CSV log, also for a resumed run
whose log repeats steps, and no picture (without a crash) where the log or its validation is missing."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
from PIL import Image

from helpers.cli import ok, run_cli
from helpers.config import tiny
from segframe.evaluation.curves import curve_data, read_log, smooth, write_curves

# the columns Lightning's CSVLogger writes for a segframe run (a subset: the per-class IoUs left out)
COLUMNS = ["epoch", "lr-AdamW/pg1", "lr-AdamW/pg2", "step", "test/miou", "train/loss_epoch", "train/loss_step",
           "val/loss", "val/mdice", "val/miou"]
STEPS_PER_EPOCH = 4


def lightning_rows(epochs: range, loss=lambda s: 2.0 / (1 + s), miou=lambda e: 0.1 + 0.2 * e,
                   test: bool = True) -> list[dict]:
    """Rows in the order and shape the CSVLogger writes them: per step an lr row (no epoch) and a loss row,
    at each epoch's last step the validation row and the epoch's mean loss, the test row at the end."""
    rows = []
    for epoch in epochs:
        for step in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH):
            lr = 0.003 * (1 - step / 40)
            rows += [{"step": step, "lr-AdamW/pg1": lr, "lr-AdamW/pg2": lr},
                     {"epoch": epoch, "step": step, "train/loss_step": loss(step)}]
        last = (epoch + 1) * STEPS_PER_EPOCH - 1
        rows += [{"epoch": epoch, "step": last, "val/loss": 1.5 - 0.1 * epoch, "val/miou": miou(epoch),
                  "val/mdice": miou(epoch) + 0.05},
                 {"epoch": epoch, "step": last, "train/loss_epoch": 1.0}]
    if test:
        rows.append({"epoch": epochs.stop, "step": epochs.stop * STEPS_PER_EPOCH, "test/miou": 0.5})
    return rows


def write_log(run: Path, rows: list[dict], mode: str = "w", folder: str = "logs") -> Path:
    path = run / folder / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if mode == "w":
            writer.writeheader()
        writer.writerows(rows)
    return path


def write_config(run: Path, **checkpoint) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(json.dumps({"checkpoint": checkpoint}))  # JSON is YAML


def test_curves_png_is_built_from_the_logged_numbers(tmp_path):
    path = write_log(tmp_path, lightning_rows(range(3)))
    png = write_curves(tmp_path)
    assert png == tmp_path / "curves.png" and png.stat().st_size > 10_000
    assert Image.open(png).size == (1500, 420)
    assert not list(tmp_path.glob(".curves.png*"))  # written under a temporary name, renamed
    data = curve_data(tmp_path)
    logged = read_log(path)
    # a plotted value against the CSV, parsed here on its own
    val = {int(r["epoch"]): float(r["val/miou"]) for r in csv.DictReader(open(path)) if r["val/miou"]}
    assert data.val["val/miou"] == (sorted(val), [val[e] for e in sorted(val)])
    assert data.val["val/mdice"][1][2] == pytest.approx(0.55)
    assert data.loss == (list(range(12)), [2.0 / (1 + s) for s in range(12)])
    assert len(logged) == 3 * (2 * STEPS_PER_EPOCH + 2) + 1
    # both param groups have the same schedule: one line for both
    assert list(data.lr) == ["AdamW (pg1, pg2)"] and data.lr["AdamW (pg1, pg2)"][1][0] == pytest.approx(0.003)
    assert (data.best.epoch, data.best.monitor, data.best.mode) == (2, "val/miou", "max")  # no config: val/miou


def test_a_resumed_log_plots_each_step_once_the_later_value_winning(tmp_path):
    """The killed process logged epochs 0-1 and half of epoch 2; the resumed one appended from step 4
    (the checkpoint's) on, with other values: each step and epoch is plotted once, as the resumed run logged it."""
    killed = lightning_rows(range(2), test=False) + lightning_rows(range(2, 3), test=False)[:4]
    write_log(tmp_path, killed)
    write_log(tmp_path, lightning_rows(range(1, 4), loss=lambda s: 10.0 + s, miou=lambda e: 0.5 + 0.1 * e), mode="a")
    data = curve_data(tmp_path)
    steps, losses = data.loss
    assert steps == list(range(16))
    assert losses[:4] == [2.0 / (1 + s) for s in range(4)] and losses[4:] == [10.0 + s for s in range(4, 16)]
    assert data.val["val/miou"][0] == [0, 1, 2, 3] and data.val["val/miou"][1] == pytest.approx([0.1, 0.6, 0.7, 0.8])
    assert len(set(data.lr["AdamW (pg1, pg2)"][0])) == len(data.lr["AdamW (pg1, pg2)"][0]) == 16
    assert data.best.epoch == 3
    assert write_curves(tmp_path).stat().st_size > 0


def test_the_best_epoch_follows_checkpoint_monitor(tmp_path, caplog):
    write_log(tmp_path, lightning_rows(range(4), miou=lambda e: [0.3, 0.5, 0.5, 0.4][e]))
    write_config(tmp_path, monitor="val/loss", mode="min")
    assert (curve_data(tmp_path).best.epoch, curve_data(tmp_path).best.monitor) == (3, "val/loss")
    write_config(tmp_path, monitor="val/miou", mode="max")
    assert curve_data(tmp_path).best.epoch == 1  # the first of equal values, as ModelCheckpoint keeps it
    write_config(tmp_path, monitor="val/not_logged", mode="min")
    with caplog.at_level(logging.INFO, logger="segframe"):
        best = curve_data(tmp_path).best
    assert (best.epoch, best.monitor) == (1, "val/miou") and "val/not_logged is not in the CSV log" in caplog.text
    assert write_curves(tmp_path).is_file()


def test_no_csv_log_or_no_validation_gives_no_picture(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="segframe"):
        assert write_curves(tmp_path) is None  # logger=none: no CSV
        assert "has no CSV log" in caplog.text
        rows = [r for r in lightning_rows(range(2)) if "val/miou" not in r]  # limit_val_batches=0
        write_log(tmp_path, rows)
        assert write_curves(tmp_path) is None
        assert "holds no validation metrics" in caplog.text
        (tmp_path / "logs" / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage")  # damaged
        assert write_curves(tmp_path) is None
        assert "cannot be read" in caplog.text
    assert not (tmp_path / "curves.png").exists()


def test_the_csv_is_found_where_the_logger_config_puts_it(tmp_path):
    (tmp_path / "config.yaml").write_text(json.dumps({"logger": {"csv": {
        "_target_": "pytorch_lightning.loggers.CSVLogger", "name": "csv_here", "version": "v1"}}}))
    write_log(tmp_path, lightning_rows(range(2)), folder="csv_here/v1")
    assert curve_data(tmp_path).csv == tmp_path / "csv_here" / "v1" / "metrics.csv"


def test_smoothing_is_a_debiased_ema_that_skips_non_finite_values():
    assert smooth([2.0] * 5) == pytest.approx([2.0] * 5)  # debiased: no ramp up from 0
    values = smooth([1.0, float("nan"), 3.0], weight=0.5)
    assert values[0] == values[1] == 1.0 and values[2] == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)
    assert math.isnan(smooth([float("inf"), 1.0], weight=0.5)[0])


@pytest.mark.slow  # two training processes (~50 s)
def test_a_real_resumed_run(tmp_path):
    """A real run, resumed for one more epoch: curves.png from its one CSV log, each step once."""
    run, data = tmp_path / "run", tmp_path / "data"
    recipe = tiny("report.num_images=0", f"paths.data_dir={data}", f"hydra.run.dir={run}")
    ok(run_cli("train", *recipe, "trainer.max_epochs=1"))
    ok(run_cli("train", *recipe, "trainer.max_epochs=2", f"resume={run / 'checkpoints' / 'last.ckpt'}"))
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    curves = curve_data(run)
    logged = {int(r["step"]): float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")}
    assert curves.loss == (sorted(logged), [logged[s] for s in sorted(logged)]) and len(logged) == 8
    val = [float(r["val/miou"]) for r in rows if r.get("val/miou")]
    assert curves.val["val/miou"] == ([0, 1], val)
    assert curves.best.epoch == (0 if val[0] >= val[1] else 1)
    assert write_curves(run).stat().st_size > 10_000
