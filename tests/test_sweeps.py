"""Sweeps through the real CLI: basic, joblib, submitit (local; SLURM composes), an Optuna search,
one summary table per sweep whatever the launcher, and which multi-process layouts a sweep accepts."""

from __future__ import annotations

import csv
import os
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from segframe.experiments.sweep import LaunchError, check_sweep, check_trainer
from segframe.experiments.sweep_summary import summarize

from helpers.cli import ok as _ok, run_cli
from helpers.config import TINY_ON_TINY_SHAPES, compose, tiny

# one epoch of 2 batches on the tiny dataset, nothing written that the tests do not read
TINY = tiny("datamodule.pin_memory=false", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            base=TINY_ON_TINY_SHAPES)


def _sweep(tiny_shapes: Path, sweep_dir: Path, *args: str):
    return run_cli("train", "-m", *TINY, f"data.shard_dir={tiny_shapes}", f"hydra.sweep.dir={sweep_dir}", *args)


def _rows(sweep_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(sweep_dir / "summary.csv")))


def _compose(overrides: list[str]):
    return compose(overrides, return_hydra_config=True)  # the launcher and sweeper are under `hydra`


# --------------------------------------------------------------------------- launchers and searches


@pytest.mark.slow  # a CLI end-to-end run (>15 s): CI runs it with the slow set
def test_optuna_search_on_joblib_writes_one_summary(tiny_shapes, tmp_path):
    """The shipped Optuna search (2 trials over lr and weight decay) with both trials in joblib's worker
    processes: Optuna maximises the mIoU train returns, and the sweeping process writes one summary."""
    sweep = tmp_path / "optuna"
    # sqlite storage: optuna<3 needs SQLAlchemy<2 (pinned in the optuna extra)
    res = _sweep(tiny_shapes, sweep, "hparams_search=optuna_lr_wd", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}")
    _ok(res)
    assert "Joblib.Parallel(n_jobs=2" in res.stdout + res.stderr
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(result.best_params) == {"optimizer.lr", "optimizer.weight_decay"}
    assert 1e-4 <= result.best_params["optimizer.lr"] <= 1e-1
    assert 1e-6 <= result.best_params["optimizer.weight_decay"] <= 1e-2
    rows = _rows(sweep)
    assert [r["run"] for r in rows] == ["0", "1"] and all(r["status"] == "ok" for r in rows)
    assert [r["best"] for r in rows].count("*") == 1
    best = next(r for r in rows if r["best"] == "*")
    assert abs(float(best["miou"]) - result.best_value) < 1e-9  # Optuna maximised what train returned
    optuna_best = next(r for r in rows if f"optimizer.lr={result.best_params['optimizer.lr']}" in r["overrides"])
    assert abs(float(optuna_best["miou"]) - result.best_value) < 1e-9  # (the same run, or one tied with it)
    summary = (sweep / "summary.md").read_text()
    assert "| * |" in summary and "Optuna best (optimization_results.yaml): optimizer.lr=" in summary
    assert (tmp_path / "optuna.db").is_file()


def test_optuna_records_a_failed_run_and_goes_on(tmp_path):
    """A run that raises inside an Optuna search is a failed trial, not the end of the search (a returned
    nan would crash hydra-optuna-sweeper: it re-tells the trial as failed together with the nan)."""
    (tmp_path / "conf.yaml").write_text(textwrap.dedent("""\
        x: 0.0
        defaults:
          - override hydra/sweeper: optuna
          - override hydra/sweeper/sampler: random
        hydra:
          sweep: {dir: sweep}
          sweeper:
            direction: maximize
            n_trials: 3
            n_jobs: 1
            max_failure_rate: 1.0
            sampler: {seed: 0}  # trials x=0.5, -1.0, 0.5
            params: {x: 'choice(-1.0, 0.5)'}
          callbacks:
            sweep_summary: {_target_: segframe.experiments.sweep.SweepSummary}
        """))
    (tmp_path / "task.py").write_text(textwrap.dedent("""\
        import json
        from pathlib import Path

        import hydra
        from hydra.core.hydra_config import HydraConfig
        from segframe.core.cli import run

        @hydra.main(config_path=".", config_name="conf", version_base="1.3")
        def main(cfg):
            def job():
                if cfg.x < 0:
                    raise ValueError("x must not be negative")
                out = HydraConfig.get().runtime.output_dir  # what segframe.train leaves for the summary
                (Path(out) / "metrics.json").write_text(json.dumps({"miou": cfg.x}))
                return cfg.x
            return run(job)

        main()
        """))
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "task.py", "-m"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])})
    assert res.returncode == 1  # a sweep that lost a run says so to the shell
    assert "Failed experiment: x must not be negative" in res.stdout + res.stderr
    assert OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml").best_params == {"x": 0.5}
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1", "2"]  # it went on
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "Optuna best (optimization_results.yaml): x=0.5" in summary
    assert "failed: ValueError: x must not be negative" in summary and "1 of 3 runs failed" in res.stderr


def test_slurm_launcher_config_composes_with_project_defaults():
    res = run_cli("train", "hydra/launcher=slurm", "--cfg", "hydra")
    _ok(res)
    launcher = OmegaConf.create(res.stdout).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition is None and launcher.gpus_per_node == 1 and launcher.timeout_min == 1440
    assert "tasks_per_node: ${.gpus_per_node}" in res.stdout  # one process per GPU
    # as the launcher receives it: nodes follow trainer.num_nodes, tasks follow the GPUs
    from hydra.core.plugins import Plugins

    cfg = _compose(["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", "hydra.launcher.gpus_per_node=4",
                    "hydra.launcher.partition=gpu"])
    params = Plugins.instance()._instantiate(cfg.hydra.launcher).params
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"], params["partition"]) == (2, 4, 4, "gpu")


def test_hparams_search_composes_an_optuna_sweeper():
    cfg = _compose(["hparams_search=optuna_lr_wd"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay"}
    assert sweeper.max_failure_rate == 1.0


# --------------------------------------------------------------------------- sweeps and several processes


@pytest.mark.slow  # a CLI end-to-end run (>15 s): CI runs it with the slow set
def test_sweep_with_lightning_ddp_is_refused_before_training(tiny_shapes, tmp_path):
    sweep = tmp_path / "refused"
    res = _sweep(tiny_shapes, sweep, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                 "optimizer.lr=0.01,0.001")
    assert res.returncode == 1
    message = res.stderr
    assert "inside a multirun sweep" in message and "re-running this command line" in message
    assert "hydra/launcher=slurm" in message and "hydra/launcher=submitit_local" in message
    assert "Traceback" not in message and not sweep.exists()  # refused before the first job
    # a trainer value swept per job is refused by the job itself, before it trains, and ends the sweep
    res = _sweep(tiny_shapes, sweep, "trainer.accelerator=cpu", "trainer.devices=2,1")
    assert res.returncode == 1 and "re-running this command line" in res.stderr
    assert (sweep / "0").is_dir() and not (sweep / "0" / "checkpoints").exists() and not (sweep / "1").exists()


def test_sweep_with_one_submitit_task_per_process_trains_on_two_processes(tiny_shapes, tmp_path):
    """The supported layout: the launcher starts each run's processes (submitit: one task per device;
    on SLURM Lightning reads SLURM's variables, locally segframe exports the torch.distributed ones)."""
    sweep = tmp_path / "ddp"
    res = _sweep(tiny_shapes, sweep, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                 "hydra.launcher.timeout_min=10", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                 "optimizer.lr=0.01")
    _ok(res)
    log = (sweep / "0" / "train.log").read_text()
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    rows = _rows(sweep)
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["best"] == "*"
    assert sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir()) == ["0"]  # no copy ran the sweep


def test_check_trainer_refuses_what_cannot_start_its_processes():
    ddp2 = OmegaConf.create({"_target_": "pytorch_lightning.Trainer", "accelerator": "cpu", "devices": 2,
                             "strategy": "ddp"})
    with pytest.raises(LaunchError, match="re-running this command line"):
        check_trainer(ddp2, multirun=True)
    check_trainer(ddp2, multirun=False)  # a single run: Lightning's own launcher is right
    check_trainer(OmegaConf.merge(ddp2, {"devices": 1}), multirun=True)
    spawn = OmegaConf.merge(ddp2, {"strategy": "ddp_spawn"})
    for multirun in (False, True):  # the report's confusion matrix would stay in the spawned processes
        with pytest.raises(LaunchError, match="spawned processes"):
            check_trainer(spawn, multirun=multirun)


def test_check_sweep_refuses_a_sweep_started_in_several_copies(monkeypatch):
    cfg = _compose(["trainer.accelerator=cpu"])
    check_sweep(cfg)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match="torchrun"):
        check_sweep(cfg)


def test_check_sweep_wants_one_submitit_task_per_device(monkeypatch):
    local = ["hydra/launcher=submitit_local", "trainer=ddp", "trainer.accelerator=cpu"]
    with pytest.raises(LaunchError, match="tasks_per_node=2"):
        check_sweep(_compose([*local, "trainer.devices=2"]))
    check_sweep(_compose([*local, "trainer.devices=2", "hydra.launcher.tasks_per_node=2"]))
    slurm = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"]
    check_sweep(_compose([*slurm, "trainer=ddp"]))  # devices=auto: the job's GPUs, one task each
    with pytest.raises(LaunchError, match="trainer.devices=1 but hydra.launcher.tasks_per_node=4"):
        check_sweep(_compose(slurm))
    # submitit_local hides the GPUs from jobs (CUDA_VISIBLE_DEVICES="") unless gpus_per_node is set
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(LaunchError, match="hydra.launcher.gpus_per_node=1"):
        check_sweep(_compose(["hydra/launcher=submitit_local"]))
    check_sweep(_compose(["hydra/launcher=submitit_local", "hydra.launcher.gpus_per_node=1"]))


def test_summary_names_optuna_best(tmp_path):
    for i, miou in enumerate([0.5, 0.7]):
        run = tmp_path / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={i}\n")
        (run / "metrics.json").write_text(f'{{"miou": {miou}, "mean_acc": 0, "pixel_acc": 0, "fwiou": 0}}')
    (tmp_path / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params: {optimizer.lr: 1}\nbest_value: 0.7\n")
    rows = summarize(tmp_path)
    assert [r["best"] for r in rows] == ["", "*"]
    assert "optimizer.lr=1 -> 70.00 mIoU %" in (tmp_path / "summary.md").read_text()


# --------------------------------------------------------------------------- summary.md / .csv / .png


def _fabricate(sweep_dir: Path, runs: list[tuple[list[str], float | None]]) -> None:
    """Run dirs as a sweep leaves them: .hydra/overrides.yaml, and metrics.json (a score) or failure.txt (None)."""
    for i, (overrides, miou) in enumerate(runs):
        run = sweep_dir / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        if miou is None:
            (run / "failure.txt").write_text(f"FloatingPointError: the loss is nan (run {i})\n")
        else:
            (run / "metrics.json").write_text(f'{{"miou": {miou}, "mdice": {miou / 2}}}')


GRID = [(["model=fcn8s", f"optimizer.lr={lr}", "trainer.max_epochs=3"], miou)
        for lr, miou in (("1e-4", 0.40), ("1e-3", 0.55), ("1e-1", None))] + \
       [(["model=unet", "optimizer.lr=1e-3", "trainer.max_epochs=3"], 0.61)]


def test_summary_md_shows_only_the_parameters_that_vary_and_the_csv_keeps_every_override(tmp_path):
    _fabricate(tmp_path, GRID)
    rows = summarize(tmp_path)
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[0].startswith("| run | model | optimizer.lr | mIoU % | mDice % |")  # no trainer.max_epochs
    assert table[2].startswith("| 0 | fcn8s | 1e-4 | 40.00 | 20.00 |")
    assert table[4].startswith("| 2 | fcn8s | 1e-1 | failed: FloatingPointError: the loss is nan (run 2) |")
    assert table[5].startswith("| 3 | unet | 1e-3 | 61.00 |") and table[5].endswith("| * |")
    assert "Every run: `trainer.max_epochs=3`" in table  # said once, under the table
    csv_rows = _rows(tmp_path)
    assert list(csv_rows[0])[:4] == ["run", "overrides", "model", "optimizer.lr"]
    assert csv_rows[2]["overrides"] == "model=fcn8s optimizer.lr=1e-1 trainer.max_epochs=3"  # nothing lost
    assert (csv_rows[2]["optimizer.lr"], csv_rows[2]["status"]) == ("1e-1", "failed")
    assert [r["best"] for r in rows] == ["", "", "", "*"]


def test_summary_png_plots_the_metric_against_each_varied_parameter(tmp_path):
    from PIL import Image

    from segframe.experiments import sweep_plot
    from segframe.experiments.sweep_summary import varied_keys

    _fabricate(tmp_path, GRID)
    rows = summarize(tmp_path)
    png = tmp_path / "summary.png"
    assert png.stat().st_size > 10_000 and Image.open(png).size[0] >= 800  # two panels side by side
    model, lr = sweep_plot.panels(rows, varied_keys([r["params"] for r in rows]), "miou")
    assert (model.key, model.scale, model.categories) == ("model", "category", ["fcn8s", "unet"])
    assert (lr.key, lr.scale) == ("optimizer.lr", "log")  # a learning rate: log axis
    assert [(p.run, p.x, p.y, p.status, p.best) for p in lr.points][1] == ("1", 1e-3, pytest.approx(55.0), "ok", False)
    assert [(p.x, p.y, p.status) for p in lr.points if p.status == "failed"] == [(0.1, None, "failed")]
    fig = sweep_plot.draw([model, lr], "miou")
    dots, star, failed = fig.axes[1].collections  # what the lr panel shows: runs, the best, the failed run
    assert dots.get_offsets().ravel().tolist() == pytest.approx([1e-4, 40.0, 1e-3, 55.0, 1e-3, 61.0])
    assert star.get_offsets().ravel().tolist() == pytest.approx([1e-3, 61.0]) and failed.get_offsets()[0][0] == 0.1
    assert failed.get_offsets()[0][1] < 40.0  # below every score, not dropped
    assert fig.axes[1].get_xscale() == "log" and "failed (1): run 2" in [t.get_text() for t in fig.legends[0].texts]


def test_summary_png_axes_follow_the_values(tmp_path):
    from segframe.experiments import sweep_plot

    points = lambda key, values: [{"run": str(i), "status": "ok", "best": "", "miou": 0.5, "params": {key: v}}
                                  for i, v in enumerate(values)]
    scale = lambda key, values: sweep_plot.panels(points(key, values), [key], "miou")[0].scale
    assert scale("optimizer.weight_decay", ["1e-5", "1e-4"]) == "log"
    assert scale("optimizer.lr", ["0.01", "-1"]) == "log"  # a failed lr=-1 is drawn left of the others
    assert scale("datamodule.batch_size", ["2", "400"]) == "log"  # more than 2 decades
    assert scale("datamodule.batch_size", ["4", "8"]) == "linear"
    assert scale("data.crop_size", ["[64,64]", "[96,96]"]) == "category"
    nothing_varied = sweep_plot.panels(points("seed", ["0"]), [], "miou")  # one run: a panel over the runs
    assert [(p.key, p.categories) for p in nothing_varied] == [("run", ["0"])]

