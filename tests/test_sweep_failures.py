"""What a sweep says when runs fail, met the way users met it (issue 28): a sweep whose jobs all fail
exits non-zero with each run's reason in the summary; a job whose config cannot be composed refuses
the whole sweep, listing every such job, before any trains; and a kept Optuna study continued by the
same command draws new trials, not its first ones again."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers.cli import REPO, run_cli
from helpers.config import TINY_ON_TINY_SHAPES, tiny

TINY = tiny("datamodule.pin_memory=false", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            base=TINY_ON_TINY_SHAPES)


def _sweep(tiny_shapes: Path, sweep_dir: Path, *args: str):
    return run_cli("train", "-m", *TINY, f"data.shard_dir={tiny_shapes}", f"hydra.sweep.dir={sweep_dir}", *args)


@pytest.mark.slow  # a CLI end-to-end run (>15 s): CI runs it with the slow set
def test_a_sweep_whose_runs_fail_exits_non_zero_and_says_why(tiny_shapes, tmp_path):
    sweep = tmp_path / "sweep"
    res = _sweep(tiny_shapes, sweep, "optimizer.lr=-1,0.01,-2")
    assert res.returncode == 1, res.stderr[-3000:]
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [r["status"] for r in rows] == ["failed", "ok", "failed"]
    assert rows[0]["reason"] == "ValueError: Invalid learning rate: -1" and rows[1]["reason"] == ""
    summary = (sweep / "summary.md").read_text()
    assert "| 2 | -2 | failed: ValueError: Invalid learning rate: -2 |" in summary  # the varied lr, not every override
    assert summary.startswith("| run | optimizer.lr | mIoU % |") and (sweep / "summary.png").stat().st_size > 0
    assert f"sweep summary: {sweep / 'summary.md'}" in res.stdout  # where to look, printed at the end
    assert "2 of 3 runs failed" in res.stderr  # each named by what set it apart, not by every override
    assert "  run 2 (optimizer.lr=-2): ValueError: Invalid learning rate: -2" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_summary_names_a_run_that_recorded_nothing(tmp_path):
    from segframe.experiments import sweep_plot
    from segframe.experiments.sweep_summary import summarize

    (tmp_path / "0" / ".hydra").mkdir(parents=True)  # killed from outside: no metrics.json, no failure.txt
    (row,) = summarize(tmp_path)
    assert row["status"] == "failed" and "killed, or still running? see 0/*.log" in row["reason"]
    (panel,) = sweep_plot.panels([row], [], "miou")  # nothing varied: the plot is over the runs
    assert [(p.run, p.y, p.status) for p in panel.points] == [("0", None, "failed")]
    legend = [t.get_text() for t in sweep_plot.draw([panel], "miou").legends[0].texts]
    assert legend == ["failed (1): run 0"] and (tmp_path / "summary.png").stat().st_size > 0


def test_a_job_that_cannot_compose_refuses_the_sweep_before_any_runs(tiny_shapes, tmp_path):
    """Hydra stopped at the first job it could not compose: the valid job before or after it never ran
    and no summary was written. Every job is composed first, and all that fail are listed."""
    sweep = tmp_path / "sweep"
    res = _sweep(tiny_shapes, sweep, "model=fcn8s,nonexistent,unet2", "optimizer.lr=0.01,0.02")
    assert res.returncode == 1
    assert "4 of the sweep's 6 job configs cannot be composed, so no job was run" in res.stderr
    for job in ("model=nonexistent optimizer.lr=0.01", "model=unet2 optimizer.lr=0.02"):
        assert job in res.stderr
    assert "Could not find 'model/nonexistent'" in res.stderr and "Traceback" not in res.stderr
    assert not sweep.exists()  # nothing started


def _optuna_task(tmp_path: Path) -> None:
    (tmp_path / "conf.yaml").write_text(textwrap.dedent("""\
        x: 0.0
        defaults:
          - override hydra/sweeper: optuna
        hydra:
          sweep: {dir: 'sweep-${now:%H%M%S%f}'}
          sweeper:
            direction: maximize
            study_name: kept
            n_trials: 3
            n_jobs: 1
            sampler: {seed: 0, n_startup_trials: 10}
            params: {x: 'interval(0.0, 1.0)'}
          callbacks:
            sweep_summary: {_target_: segframe.experiments.sweep.SweepSummary}
        """))
    (tmp_path / "task.py").write_text(textwrap.dedent("""\
        import json
        from pathlib import Path

        import hydra
        from hydra.core.hydra_config import HydraConfig
        from segframe.core.cli import run

        def job(x):  # what segframe.train leaves for the summary, and returns to the sweeper
            Path(HydraConfig.get().runtime.output_dir, "metrics.json").write_text(json.dumps({"miou": x}))
            return x

        @hydra.main(config_path=".", config_name="conf", version_base="1.3")
        def main(cfg):
            return run(lambda: job(cfg.x))

        main()
        """))


def test_continuing_a_kept_optuna_study_draws_new_trials(tmp_path):
    _optuna_task(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"
    for _ in range(2):  # the same command twice: docs/scaling.md's "the same command continues it"
        res = subprocess.run([sys.executable, "task.py", "-m", storage], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    import optuna

    trials = optuna.load_study(study_name="kept", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    xs = [t.params["x"] for t in trials]
    assert len(xs) == 6 and len(set(xs)) == 6, xs  # the second command's 3 trials are new points
    assert "continuing Optuna study kept" in res.stdout + res.stderr
    sweeps = sorted(tmp_path.glob("sweep-*"))
    assert len(sweeps) == 2 and all(len(list(csv.DictReader(open(s / "summary.csv")))) == 3 for s in sweeps)
    assert OmegaConf.load(sweeps[1] / "optimization_results.yaml").best_value == max(xs)
