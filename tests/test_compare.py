"""`python -m segframe.compare` (segframe/compare.py, comparison.py): the config keys that differ and the
metrics, side by side; compare.png with the validation curves; sweep directories and globs; clear errors.

The fast tests fabricate run directories the way a training run leaves them (the config composed by
Hydra, resolved in config.yaml and as composed in .hydra/; metrics.json; logs/metrics.csv); one slow
test trains two real runs through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict
from PIL import Image

from helpers.cli import ok, run_cli
from helpers.config import compose, tiny
from segframe.compare import main
from segframe.experiments.comparison import IGNORED, load, validation_curve
from segframe.evaluation.curves import curve_data, write_curves

CLASSES = ("background", "circle")


@pytest.fixture(scope="module")
def configs():
    """Composed configs by optimizer.lr (composing is the slow part: once per value)."""
    return {lr: compose(tiny(f"optimizer.lr={lr}")) for lr in (0.003, 0.001)}


def fake_run(folder: Path, cfg, miou: float | None, curve: list[float] | None = None, resume: str | None = None,
             data_dir: str | None = None, reference: dict | None = None) -> Path:
    """A run directory as training leaves it; miou=None: a run that failed (no metrics.json, no config.yaml)."""
    cfg = cfg.copy()
    cfg.resume = resume
    cfg.reference = reference
    with open_dict(cfg):  # as a config with Hydra's own node would have it
        cfg.hydra = {"run": {"dir": str(folder)}}
    if data_dir is not None:
        cfg.paths.data_dir = data_dir
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    (folder / ".hydra" / "overrides.yaml").write_text("[]\n")
    if miou is None:
        return folder
    OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
    metrics = {"miou": miou, "mdice": miou + 0.1, "mean_acc": 0.5, "pixel_acc": 0.9, "fwiou": 0.8, "miou_img": None,
               "mdice_img": None, "jaccard_ternaus": None, "dice_ternaus": None,
               "per_class": {c: {"iou": miou + 0.01 * i} for i, c in enumerate(CLASSES)}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "logs").mkdir()
    with open(folder / "logs" / "metrics.csv", "w", newline="") as f:  # the CSVLogger's columns, validation rows
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "val/mdice", "val/miou"])
        writer.writeheader()
        writer.writerows({"epoch": e, "step": 4 * e + 3, "val/miou": v, "val/mdice": v + 0.1}
                         for e, v in enumerate(curve or [miou / 2, miou]))
    return folder


def table_rows(out: str) -> dict[str, list[str]]:
    """The printed markdown table as {first cell: the other cells}."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return {r[0]: r[1:] for r in rows}


def compare(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_the_table_shows_the_key_that_differs_and_both_runs_metrics(tmp_path, configs, capsys, monkeypatch):
    a = fake_run(tmp_path / "runs" / "a", configs[0.003], 0.4)
    b = fake_run(tmp_path / "runs" / "b", configs[0.001], 0.6, resume="/elsewhere/last.ckpt")
    monkeypatch.chdir(tmp_path)
    out = compare(capsys, str(a), str(b))
    rows = table_rows(out)
    assert rows[""] == ["a", "b"]
    keys = [k for k in rows if "%" not in k and k not in ("", "---") and not k.startswith("best")]
    assert keys == ["optimizer.lr"], out  # resume and hydra.run.dir differ too, and are ignored
    assert rows["optimizer.lr"] == ["0.003", "0.001"]
    assert rows["mIoU %"] == ["40.00", "60.00"] and rows["mDice %"] == ["50.00", "70.00"]
    assert "mIoU per image %" not in rows  # no run has it
    assert rows["best (mIoU %)"] == ["", "*"]
    assert "keys that differ: optimizer.lr" in out and "ignored keys: hydra.*" in out and "resume (" in out
    assert set(IGNORED) == {"hydra.*", "resume"}
    picture = tmp_path / "compare.png"  # the current directory by default
    assert f"wrote {Path('compare.png')}" in out and picture.stat().st_size > 10_000
    assert Image.open(picture).width == 900


def test_per_class_iou_metric_and_output_options(tmp_path, configs, capsys):
    a = fake_run(tmp_path / "a", configs[0.003], 0.4)
    b = fake_run(tmp_path / "b", configs[0.001], 0.3)
    out = compare(capsys, str(a), str(b), "per_class=true", "metric=mdice", f"output={tmp_path / 'here'}")
    rows = table_rows(out)
    assert rows["IoU background %"] == ["40.00", "30.00"] and rows["IoU circle %"] == ["41.00", "31.00"]
    assert rows["best (mDice %)"] == ["*", ""]
    assert (tmp_path / "here" / "compare.png").stat().st_size > 0
    assert "IoU background %" not in table_rows(compare(capsys, str(a), str(b), f"output={tmp_path}"))


def test_a_sweep_directory_and_a_glob_expand_to_their_runs(tmp_path, configs, capsys):
    sweep = tmp_path / "multirun" / "12-00-00"
    for n, lr in enumerate((0.003, 0.001, 0.003)):
        fake_run(sweep / str(n), configs[lr], 0.1 * (n + 1))
    fake_run(sweep / "10", configs[0.001], None)  # a failed job: no metrics.json
    (sweep / "summary.md").write_text("| run |\n")
    (sweep / "multirun.yaml").write_text("{}\n")
    out = compare(capsys, str(sweep), f"output={tmp_path}")
    assert table_rows(out)[""] == ["0", "1", "2", "10"]  # numbered jobs in numeric order
    assert table_rows(out)["mIoU %"] == ["10.00", "20.00", "30.00", "n/a"]
    assert "no metrics.json (failed or still running): 10" in out and "no val/miou curve" in out
    # a glob, as quoted on the command line; the files among its matches are skipped, and said so
    out = compare(capsys, f"{sweep}/*", f"output={tmp_path}")
    assert table_rows(out)[""] == ["0", "1", "10", "2"] and "skipped (files, not run directories)" in out
    # a run given twice (itself and inside its sweep) is one column
    assert table_rows(compare(capsys, str(sweep / "1"), str(sweep), f"output={tmp_path}"))[""] == ["1", "0", "2", "10"]


def test_keys_that_follow_a_differing_key_through_an_interpolation_are_named_not_shown(tmp_path, configs, capsys):
    a = fake_run(tmp_path / "a", configs[0.003], 0.4, data_dir="/data/one")
    b = fake_run(tmp_path / "b", configs[0.003], 0.4, data_dir="/data/two")
    out = compare(capsys, str(a), str(b), f"output={tmp_path}")
    assert table_rows(out)["paths.data_dir"] == ["/data/one", "/data/two"]
    assert "data.shard_dir" not in table_rows(out) and "datamodule.shard_dir" not in table_rows(out)
    assert "not shown, they follow the keys above through an interpolation: paths.raw_dir, datamodule.shard_dir, " \
           "data.shard_dir" in out


def test_a_node_set_in_one_run_and_null_in_another_is_one_row(tmp_path, configs, capsys):
    a = fake_run(tmp_path / "a", configs[0.003], 0.4, reference={"recipe": "x", "mean": {"miou": 70.0}})
    b = fake_run(tmp_path / "b", configs[0.003], 0.4)
    rows = table_rows(compare(capsys, str(a), str(b), f"output={tmp_path}"))
    assert [k for k in rows if "." in k or k == "reference"] == ["reference"] and rows["reference"] == ["{...}", "null"]


def test_a_key_set_from_the_environment_is_shown(tmp_path, configs, capsys, monkeypatch):
    """paths.data_dir is `${oc.env:SEGFRAME_DATA,...}` in both composed configs: it differs through no other
    key, so it is shown; data.shard_dir follows it."""
    for name in "ab":
        monkeypatch.setenv("SEGFRAME_DATA", f"/data/{name}")
        fake_run(tmp_path / name, configs[0.003], 0.4)
    rows = table_rows(compare(capsys, str(tmp_path / "a"), str(tmp_path / "b"), f"output={tmp_path}"))
    assert [k for k in rows if "." in k] == ["paths.data_dir"] and rows["paths.data_dir"] == ["/data/a", "/data/b"]


def test_the_compared_curve_is_the_runs_logged_validation(tmp_path, configs, capsys):
    a = fake_run(tmp_path / "a", configs[0.003], 0.4, curve=[0.1, 0.3, 0.4])
    b = fake_run(tmp_path / "b", configs[0.001], 0.6, curve=[0.2, 0.6])
    runs = load([a, b])
    assert validation_curve(runs[0], "miou") == ([0, 1, 2], [0.1, 0.3, 0.4])
    assert validation_curve(runs[1], "mdice")[1] == pytest.approx([0.3, 0.7])
    assert curve_data(a).val["val/miou"] == validation_curve(runs[0], "miou")  # one reading, curves.py's


@pytest.mark.parametrize("case", ["missing", "not_a_run", "one_run", "glob_without_runs", "metric", "per_class"])
def test_bad_arguments_are_named_with_what_was_expected(tmp_path, configs, capsys, case):
    run = fake_run(tmp_path / "run", configs[0.003], 0.4)
    (tmp_path / "empty").mkdir()
    args, expected = {
        "missing": ([str(run), str(tmp_path / "nope")], f"{tmp_path / 'nope'}: no such file or folder. Expected a run"),
        "not_a_run": ([str(run), str(tmp_path / "empty")],
                      f"{tmp_path / 'empty'} is not a run directory: it holds neither metrics.json nor .hydra/"),
        "one_run": ([str(run)], "compare needs at least 2 runs and found 1"),
        "glob_without_runs": ([str(run), f"{tmp_path}/em*"], "no run directory matches this pattern"),
        "metric": ([str(run), str(run), "metric=iou"], "metric=iou: not a summary metric; use one of miou"),
        "per_class": ([str(run), str(run), "per_class=maybe"], "per_class=maybe: use per_class=true or "),
    }[case]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and expected in err, err
    assert "outputs/2026-12-06/11-16-22" in err or case in ("metric", "per_class")  # what a run directory is


@pytest.mark.slow  # two training processes through the CLI (~60 s)
def test_two_real_runs_that_differ_in_one_key(tmp_path):
    data = tmp_path / "data"
    runs = [tmp_path / f"lr{lr}" for lr in ("0.003", "0.001")]
    for run in runs:
        lr = run.name.removeprefix("lr")
        ok(run_cli("train", *tiny(f"optimizer.lr={lr}", "report.num_images=0"), f"paths.data_dir={data}",
                   "trainer.max_epochs=2", f"hydra.run.dir={run}"))
    res = run_cli("compare", *map(str, runs), "per_class=true", f"output={tmp_path}")
    ok(res)
    rows = table_rows(res.stdout)
    assert "keys that differ: optimizer.lr\n" in res.stdout, res.stdout
    assert rows["optimizer.lr"] == ["0.003", "0.001"]
    for run, cell in zip(runs, rows["mIoU %"]):
        assert cell == f"{100 * json.loads((run / 'metrics.json').read_text())['miou']:.2f}"
    assert len([k for k in rows if k.startswith("IoU ")]) == 6  # shapes' classes
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    # curves.png of a real run: its plotted validation is the CSV's
    logged = [float(r["val/miou"]) for r in csv.DictReader(open(runs[0] / "logs" / "metrics.csv")) if r["val/miou"]]
    assert curve_data(runs[0]).val["val/miou"] == ([0, 1], logged)
    assert write_curves(runs[0]).stat().st_size > 10_000
