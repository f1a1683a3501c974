"""Reproducing an experiment: each seed trained by `python -m segframe.train experiment=NAME seed=K`
in a process of its own, the earlier stages of a staged chain (`parent_experiment`) first unless a
finished run of exactly that stage is there; and the record of the runs that reproduce writes to
the experiment's result file (segframe.experiments.library.result_path).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from segframe.core.errors import ConfigError
from segframe.core.progress import Eta, clock
from segframe.experiments.library import METRICS, load_experiment

STAMP = "reproduce.json"  # in a run dir: the experiment, seed and overrides it was trained with
EVALUATED_KEYS = ("init_from_md5", "eval_seconds_per_image")  # an evaluate-only run: which weights, how fast
SIZE_KEYS = ("fit_seconds", "train_images_per_s", "model_parameters", "model_gflops", "model_gflops_at")


def _finished(run_dir: Path, name: str, seed: int, overrides: list[str]) -> Path | None:
    """The evaluated checkpoint of a finished run of this experiment, seed and overrides, if any:
    a parent stage is reused only when it is exactly what this reproduction would train."""
    stamp, metrics = run_dir / STAMP, run_dir / "metrics.json"
    if not (stamp.is_file() and metrics.is_file()):
        return None
    if json.loads(stamp.read_text()) != {"experiment": name, "seed": seed, "overrides": overrides}:
        return None
    checkpoint = Path(json.loads(metrics.read_text()).get("checkpoint", ""))
    return checkpoint if checkpoint.is_file() else None


def train_run(name: str, seed: int, out: Path, overrides: list[str], log: Any = print,
              chain: tuple[str, ...] = (), fold: int | None = None) -> dict[str, Any]:
    """One seed of one experiment (its parent stages first, unless a finished run of the same
    parent, seed and overrides is there); with `fold`, on that cross-validation fold (data.fold=K,
    under out/foldK/NAME/seedS, its parent stages too). Returns {seed, fold, metrics..., wall_s, run_dir, ok}."""
    if name in chain:
        raise ConfigError(f"parent_experiment forms a cycle: {' -> '.join(chain + (name,))}")
    if fold is not None:
        return {**train_run(name, seed, out / f"fold{fold}", [*overrides, f"data.fold={fold}"], log, chain), "fold": fold}
    run_dir = out / name / f"seed{seed}"
    extra = []
    parent = load_experiment(name).get("parent_experiment")
    if parent and any(o.startswith("model.init_from=") for o in overrides):
        # the stage starts from the weights given (e.g. the reference's released FCN-32s, as the reference
        # and pytorch-fcn started FCN-16s): no parent to train
        log(f"{name} seed {seed}: starting from the given model.init_from, not from a {parent} run")
    elif parent:
        parent_dir = out / parent / f"seed{seed}"
        parent_ckpt = _finished(parent_dir, parent, seed, overrides)
        if parent_ckpt is None:
            log(f"{name} seed {seed}: stage {parent} has no finished run here yet; training it first")
            if not train_run(parent, seed, out, overrides, log, chain + (name,))["ok"]:
                return {"seed": seed, "ok": False, "run_dir": str(run_dir), "error": f"stage {parent} failed"}
            parent_ckpt = _finished(parent_dir, parent, seed, overrides)
        extra.append(f"model.init_from={parent_ckpt}")
    command = [sys.executable, "-m", "segframe.train", f"experiment={name}", f"seed={seed}",
               f"hydra.run.dir={run_dir}", *extra, *overrides]
    if run_dir.exists():  # never read a checkpoint or metrics.json left by an earlier run
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    log(f"{name} seed {seed}: training -> {run_dir} (log: {run_dir / 'reproduce.log'})")
    start = time.time()
    with open(run_dir / "reproduce.log", "w") as log_file:
        code = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT).returncode
    wall = round(time.time() - start, 1)
    metrics_file = run_dir / "metrics.json"
    if code != 0 or not metrics_file.is_file():
        log(f"{name} seed {seed}: FAILED (exit {code}); see {run_dir / 'reproduce.log'}")
        return {"seed": seed, "ok": False, "run_dir": str(run_dir), "wall_s": wall, "error": f"exit {code}"}
    (run_dir / STAMP).write_text(json.dumps({"experiment": name, "seed": seed, "overrides": overrides}))
    metrics = json.loads(metrics_file.read_text())
    log(f"{name} seed {seed}: mIoU {100 * (metrics['miou'] or 0):.2f} in {wall:.0f} s")
    return {"seed": seed, "ok": True, "run_dir": str(run_dir), "wall_s": wall,
            "git_commit": metrics.get("git_commit"), "steps": metrics.get("steps"),
            "init_from": extra[0].split("=", 1)[1] if extra else metrics.get("init_from"),
            **{k: metrics.get(k) for k in METRICS},
            # what the model costs (docs/reproducing.md, "Model comparison"), and the precision and layout it trained in
            # (trainer.precision / module.channels_last, `auto` resolved); absent from runs made before they
            # were recorded
            **{k: metrics.get(k) for k in (*SIZE_KEYS, *EVALUATED_KEYS, "speed_knobs") if k in metrics}}


def train_runs(name: str, seeds: list[int], folds: list[int | None], out: Path, overrides: list[str],
               log: Any = print) -> list[dict[str, Any]]:
    """train_run for every fold and seed, in that order, each announced with its place and the time
    left at the mean time per run so far: `run 2/4 (tiny16, seed 1), 0:06:15 elapsed, ETA 0:18:45`."""
    jobs = [(fold, seed) for fold in folds for seed in seeds]
    eta, runs = Eta(len(jobs)), []
    for k, (fold, seed) in enumerate(jobs):
        where = f"{name}, seed {seed}" + (f", fold {fold}" if fold is not None else "")
        left = eta.left(k)
        log(f"run {k + 1}/{len(jobs)} ({where})" + (f", {clock(eta.elapsed())} elapsed, ETA {clock(left)}"
                                                     if left is not None else ""))
        runs.append(train_run(name, seed, out, overrides, log, fold=fold))
    log(f"{len(jobs)} run(s) of {name} in {clock(eta.elapsed())}")
    return runs


def folds_to_run(text: str | None, overrides: list[str]) -> list[int | None]:
    """The folds of `folds=0,1,2,3` (cross-validation: each fold trained with every seed), else [None].
    Refuses the train overrides that reproduce sets itself per run (hydra.run.dir, data.fold)."""
    if any(o.startswith("hydra.run.dir=") for o in overrides):  # checked here: before the first run
        raise ConfigError("reproduce places each run under out=DIR/NAME/seedK; use out=DIR, not hydra.run.dir")
    if any(o.startswith("data.fold=") for o in overrides):
        raise ConfigError("reproduce trains each fold of folds=0,1,...; use folds=K, not data.fold=K")
    if text is None:
        return [None]
    try:
        folds = [int(f) for f in text.strip("[]").split(",")]
    except ValueError:
        raise ConfigError(f"folds must be integers, e.g. folds=0,1,2,3; got {text!r}") from None
    return list(dict.fromkeys(folds))


def seeds_to_run(text: str | None, reference: DictConfig | None) -> list[int]:
    """The seeds of `seeds=0,1` (`text`), else the reference's, else [0]; each once, since a repeated
    seed would count twice in the mean. ValueError naming the value when one is not an integer."""
    try:
        seeds = [int(s) for s in text.strip("[]").split(",")] if text is not None else \
            [int(s) for s in (reference.get("seeds", [0]) if reference is not None else [0])]
    except ValueError:
        raise ConfigError(f"seeds must be integers, e.g. seeds=0,1; got {text!r}") from None
    return list(dict.fromkeys(seeds))


def record(name: str, seeds: list[int], overrides: list[str], rows: dict[str, Any], runs: list[dict[str, Any]],
           reference: DictConfig | None, folds: list[int | None] = (None,)) -> dict[str, Any]:
    """What the result file holds: the comparison (compare()'s rows), every run, and where and when."""
    return {
        "experiment": name, "seeds": seeds, "overrides": overrides, "metrics": rows, "runs": runs,
        **({"folds": list(folds)} if folds != [None] and folds != (None,) else {}),
        "reference_source": reference.get("source") if reference is not None else None,
        "wall_s": [r.get("wall_s") for r in runs],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), **_torch_info()},
        "date": time.strftime("%Y-%m-%d"),
    }


def _torch_info() -> dict[str, Any]:
    # imported here, once the runs are done, not with the module: reproduce starts in ~1 s without torch (~5 s)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"torch": torch.__version__, "device": device}
