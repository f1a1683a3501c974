"""End to end on tiny `shapes`, through the real CLIs: train -> eval, resume, sweep, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.cli import ok as _ok, run_cli
from helpers.config import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    run = root / "run"
    _ok(run_cli("train", *TINY, f"paths.data_dir={data}", "trainer.max_epochs=2", f"hydra.run.dir={run}"))
    return root, run


def test_train_writes_every_output(trained):
    root, run = trained
    assert (root / "data" / "shapes" / "manifest.json").is_file()  # converted automatically on first use
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("miou", "mean_acc", "pixel_acc", "fwiou"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["per_class"]) == {"background", "circle", "square", "triangle", "star", "cross"}
    assert metrics["split"] == "val" and metrics["num_samples"] == 6 and metrics["dataset"] == "shapes"
    assert metrics["git_commit"] and metrics["epochs"] == 2
    assert sum(map(sum, metrics["confusion_matrix"])) == 6 * 48 * 48  # every val pixel once, no ignore in shapes
    for name in ("per_class.md", "per_class.csv", "confusion_matrix.png", "predictions.png", "config.yaml",
                 ".hydra/config.yaml", "logs/metrics.csv"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert "| mIoU % |" in (run / "per_class.md").read_text()
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    assert any(r.get("val/miou") for r in rows) and any(r.get("train/loss_step") for r in rows)
    # last.ckpt and the best checkpoint, loadable without pickle, with plain hyper-parameters
    ckpts = run / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and list(ckpts.glob("best-epoch*.ckpt"))
    ckpt = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["classes"][0] == "background" and hp["model_config"]["backbone"] == "resnet18"
    # the dataset and the whole run config are kept apart: no component gets the whole config
    assert hp["data_config"]["name"] == "shapes" and "config" not in hp and isinstance(ckpt["run_config"], dict)
    assert ckpt["epoch"] == 2  # epochs completed


def test_checkpoint_saves_and_loads_log_no_weights_only_notice(trained):
    """Lightning logs "`weights_only` was not set, defaulting to `False`" at every checkpoint save whose
    caller leaves it unset (issue 27): segframe says what it saves and loads."""
    _, run = trained
    text = (run / "train.log").read_text()
    assert "epoch 2/2" in text and "Restoring states from the checkpoint" in text  # the log has the saves and the load
    assert "weights_only" not in text, [line for line in text.splitlines() if "weights_only" in line]


def test_predictions_grid_has_image_gt_prediction_rows(trained):
    from PIL import Image

    _, run = trained
    grid = Image.open(run / "predictions.png")
    assert grid.width >= 3 * 48 and grid.height >= 4 * 48


def test_eval_from_checkpoint_alone_reproduces_train_metrics(trained):
    root, run = trained
    best = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    out = root / "eval"
    _ok(run_cli("eval", f"ckpt={best}", f"hydra.run.dir={out}", "datamodule.num_workers=0"))
    train_m = json.loads((run / "metrics.json").read_text())
    eval_m = json.loads((out / "metrics.json").read_text())
    assert eval_m["confusion_matrix"] == train_m["confusion_matrix"]
    assert (out / "predictions.png").is_file() and (out / "per_class.csv").is_file()


@pytest.mark.slow  # a CLI end-to-end run (>15 s): CI runs it with the slow set
def test_eval_with_test_time_options(trained):
    """Multi-scale + flip, and sliding windows, through the CLI: every pixel still counted once."""
    root, run = trained
    best = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    train_m = json.loads((run / "metrics.json").read_text())
    pixels = sum(map(sum, train_m["confusion_matrix"]))
    for name, options in {"tta": ["eval.scales=[0.75,1.0,1.5]", "eval.flip=true"],
                          "slide": ["eval.mode=slide", "eval.crop=32", "eval.stride=20"]}.items():
        out = root / f"eval-{name}"
        res = run_cli("eval", f"ckpt={best}", f"hydra.run.dir={out}", "datamodule.num_workers=0", *options)
        _ok(res)
        assert "| mIoU % | mDice % | mean acc % | pixel acc % | fwIoU % |" in res.stdout  # a table to paste
        metrics = json.loads((out / "metrics.json").read_text())
        assert sum(map(sum, metrics["confusion_matrix"])) == pixels
        assert metrics["inference"]["mode"] == ("slide" if name == "slide" else "whole")
        assert metrics["inference"]["flip"] is (name == "tta")
        assert 0.0 <= metrics["miou"] <= 1.0
    bad = run_cli("eval", f"ckpt={best}", f"hydra.run.dir={root / 'eval-bad'}", "eval.mode=slid")
    assert bad.returncode == 1 and "eval.mode must be one of" in bad.stderr


def test_eval_under_ddp_with_two_cpu_processes_equals_one_process(trained):
    """Each val sample is counted exactly once across ranks and the confusion matrix is summed
    exactly: 2 gloo processes give the single-process matrix to the pixel."""
    root, run = trained
    best = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    out = root / "eval-ddp"
    _ok(run_cli("eval", f"ckpt={best}", f"hydra.run.dir={out}", "datamodule.num_workers=0",
                "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"))
    single = json.loads((run / "metrics.json").read_text())
    ddp = json.loads((out / "metrics.json").read_text())
    assert ddp["confusion_matrix"] == single["confusion_matrix"]


def test_resume_from_last_continues_that_run(trained):
    """resume=RUN/checkpoints/last.ckpt continues RUN itself (here a copy, moved elsewhere as a run synced
    to another machine would be), whatever this command's own Hydra directory."""
    import shutil

    root, run = trained
    moved = root / "moved-run"
    shutil.copytree(run, moved)
    out = root / "resumed"
    _ok(run_cli("train", *TINY, f"paths.data_dir={root / 'data'}", "trainer.max_epochs=3",
                f"resume={moved / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={out}"))
    first = json.loads((run / "metrics.json").read_text())
    resumed = json.loads((moved / "metrics.json").read_text())
    assert not (out / "metrics.json").exists()
    assert resumed["epochs"] == 3 and resumed["steps"] == first["steps"] // 2 * 3
    epochs = [r["epoch"] for r in csv.DictReader(open(moved / "logs" / "metrics.csv")) if r.get("val/miou")]
    assert epochs == ["0", "1", "2"]  # the run's own log, appended: only the remaining epoch was trained
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3
    assert Path(resumed["checkpoint"]).parent == moved / "checkpoints"  # best tracking moved with the run


def test_lr_sweep_writes_summary_table(trained):
    root, _ = trained
    sweep = root / "sweep"
    res = run_cli("train", "-m", *TINY, f"paths.data_dir={root / 'data'}", "trainer.max_epochs=1",
                  "optimizer.lr=0.01,0.001,-1", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 1 and "1 of 3 runs failed" in res.stderr  # the sweep went on, then said so
    summary = (sweep / "summary.md").read_text()
    # the parameter that varied, one column, and no override all runs shared in the table
    assert "| run | optimizer.lr | mIoU %" in summary and "| 0.01 |" in summary and "| 0.001 |" in summary
    assert summary.count("*") == 1  # best run marked
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(rows) == 3 and all(r["status"] == "ok" and float(r["miou"]) >= 0 for r in rows[:2])
    assert rows[2]["status"] == "failed"  # lr=-1 is refused by the optimizer; the sweep went on
    assert rows[2]["reason"] == "ValueError: Invalid learning rate: -1"


def test_missing_dataset_prints_convert_command(tmp_path):
    res = run_cli("train", *TINY, f"paths.data_dir={tmp_path}", "data.auto_convert=false", f"hydra.run.dir={tmp_path}/r")
    assert res.returncode != 0
    assert "python -m segframe.convert data=shapes" in res.stderr


def test_convert_cli_and_verify(tmp_path):
    """Also checks that the commands work from any working directory."""
    args = [f"paths.data_dir={tmp_path}", "data.source.num_train=6", "data.source.num_val=3", "data.source.size=32",
            f"hydra.run.dir={tmp_path}/log", "num_workers=0"]
    _ok(run_cli("convert", *args, cwd=tmp_path))
    res = run_cli("convert", *args, "verify=true", cwd=tmp_path)
    _ok(res)
    assert "OK" in res.stdout
    assert "\r" not in res.stdout + res.stderr  # not a terminal: progress as lines, not a redrawn bar
    shard = tmp_path / "shapes" / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 1
    shard.write_bytes(bytes(data))
    res = run_cli("convert", *args, "verify=true")
    assert res.returncode == 1 and "train-000000.tar" in res.stdout


def test_eval_refuses_checkpoint_for_other_number_of_classes(trained, tmp_path):
    import shutil

    root, run = trained
    other = tmp_path / "seven"
    shutil.copytree(root / "data" / "shapes", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["classes"].append("hexagon")
    manifest["palette"].append([1, 2, 3])
    (other / "manifest.json").write_text(json.dumps(manifest))
    res = run_cli("eval", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "data=shapes", f"data.shard_dir={other}",
                  "data.num_classes=7", f"hydra.run.dir={tmp_path}/eval")
    assert res.returncode != 0
    assert "predicts 6 classes" in res.stderr and "hexagon" in res.stderr
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_eval_of_a_corrupt_checkpoint_says_so(tmp_path):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    res = run_cli("eval", f"ckpt={bad}", "data=shapes", f"hydra.run.dir={tmp_path}/eval")
    assert res.returncode == 1 and "cannot be loaded as a segframe checkpoint" in res.stderr


@pytest.mark.slow  # a CLI end-to-end run (>15 s): CI runs it with the slow set
def test_predict_a_folder_with_a_corrupt_file(trained, tmp_path):
    from PIL import Image

    from segframe.data.sources.shapes import ShapesSource

    _, run = trained
    inputs = tmp_path / "photos"
    inputs.mkdir()
    source = ShapesSource(size=40)
    for i in range(3):
        Image.fromarray(source.generate("val", i)[0]).save(inputs / f"p{i}.png")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (inputs / "notes.txt").write_text("not an image: ignored")
    out = tmp_path / "pred"
    res = run_cli("predict", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"input={inputs}", f"output={out}",
                  "eval.flip=true", f"hydra.run.dir={tmp_path / 'run'}")
    _ok(res)
    assert "wrote 3 prediction(s)" in res.stdout and "broken.jpg" in res.stdout and "skipped 1" in res.stdout
    assert "\r" not in res.stdout + res.stderr  # not a terminal: progress as lines, not a redrawn bar
    for i in range(3):
        with Image.open(out / f"p{i}_mask.png") as mask:
            assert mask.mode == "P" and mask.size == (40, 40)
            assert set(np.unique(np.asarray(mask))) <= set(range(6))
        assert (out / f"p{i}_overlay.png").is_file()
    one = run_cli("predict", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"input={inputs}/p1.*",
                  f"output={tmp_path / 'glob'}", f"hydra.run.dir={tmp_path / 'run2'}")
    _ok(one)
    assert sorted(p.name for p in (tmp_path / "glob").iterdir()) == ["p1_mask.png", "p1_overlay.png"]
    into_inputs = run_cli("predict", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"input={inputs}",
                          f"output={inputs}", f"hydra.run.dir={tmp_path / 'run4'}")
    assert into_inputs.returncode == 1 and "holds the input images" in into_inputs.stderr
    missing = run_cli("predict", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"input={tmp_path / 'nothing'}",
                      f"hydra.run.dir={tmp_path / 'run3'}")
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
