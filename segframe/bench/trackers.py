"""`python -m segframe.bench.trackers [--repeats 3] [--steps-per-epoch 16] [--epochs 2] [--calls 200]`: what
an experiment tracker costs a training run, against the CSV logger alone.

End to end: the same tiny shapes run (FCN-8s ResNet-18, 48x48, batch 4, every step logged:
trainer.log_every_n_steps=1) trains with `logger=csv`, `logger=[csv,mlflow]` (a local SQLite store,
synchronous logging as MLflow's default, and with `logger.mlflow.synchronous=false`) and
`logger=[csv,wandb]` (offline), each as `python -m segframe.train` in its own process, interleaved (csv,
mlflow, ..., csv, ...) so that drift on a shared machine touches all alike. Per run: the time per training
step (the median interval from one batch's start to the next one's inside an epoch: the step, its
logging and the loader; one torch thread unless `--threads`), the seconds from the process start to its
first step (imports, the tracker run's creation, the config as params) and from the end of training to
the process end (the final evaluation, the report, the trackers' final metrics and uploads); the table
gives the median over the repeats, their spread (min-max) and the difference to CSV alone.

The logging alone (`--calls`): Lightning's calls of one logged step (`log_metrics` with a training step's
metrics, then `save`), timed per logger in one process, without the training's noise."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from segframe.bench.common import fmt, machine_line, median, table

LOGGERS = {"csv": ["logger=csv"], "csv+mlflow": ["logger=[csv,mlflow]"],
           "csv+mlflow-async": ["logger=[csv,mlflow]", "logger.mlflow.synchronous=false"],
           "csv+wandb": ["logger=[csv,wandb]"]}


class StepClock(pl.Callback):
    """Writes the wall clock at every training batch's start, each epoch's, and the end of training to `path`
    (JSON): added to a run with `+callbacks.step_clock={_target_: segframe.bench.trackers.StepClock, path: F}`."""

    def __init__(self, path: str):
        self.path, self.starts, self.ended = path, [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append((trainer.current_epoch, time.time()))

    def on_train_end(self, trainer, pl_module) -> None:
        self.ended = time.time()
        Path(self.path).write_text(json.dumps({"starts": self.starts, "ended": self.ended}))


def step_seconds(starts: list[list[float]]) -> list[float]:
    """The intervals between consecutive batch starts of the same epoch (the epoch's end, validation, left out)."""
    return [b[1] - a[1] for a, b in zip(starts, starts[1:]) if a[0] == b[0]]


def run_once(name: str, args: argparse.Namespace, work: Path, number: int) -> dict[str, float]:
    """Train once with logger `name`; its seconds per step, to the first step and after training."""
    clock = work / f"clock-{number}.json"
    overrides = [
        "trainer.precision=32-true", "module.channels_last=false", "model.backbone=resnet18", "model.pretrained=false",
        f"data.source.num_train={4 * args.steps_per_epoch}", "data.source.num_val=4", "data.source.size=48",
        "data.crop_size=48", "data.shard_size=16", "datamodule.batch_size=4", "datamodule.eval_batch_size=4",
        "datamodule.num_workers=0", "optimizer=adamw", "report.num_images=2", "trainer.log_every_n_steps=1",
        f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false", f"paths.data_dir={work / 'data'}",
        f"hydra.run.dir={work / f'run-{number}'}", *LOGGERS[name],
        f"+callbacks.step_clock={{_target_: segframe.bench.trackers.StepClock, path: '{clock}'}}",
    ] + ([f"logger.mlflow.local_store={work / 'mlflow'}"] if "mlflow" in name else [])
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           **{k: str(work / "wandb-home" / k) for k in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")}}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.time()
    res = subprocess.run([sys.executable, "-m", "segframe.train", *overrides], env=env, capture_output=True, text=True)
    ended = time.time()
    if res.returncode != 0:
        raise SystemExit(f"logger {name}: the training run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    seen = json.loads(clock.read_text())
    steps = step_seconds(seen["starts"])
    return {"step_ms": 1000 * median(steps), "to_first_step_s": seen["starts"][0][1] - started,
            "after_training_s": ended - seen["ended"], "steps": len(seen["starts"])}


def call_costs(names: list[str], calls: int, work: Path) -> dict[str, float]:
    """Milliseconds per logging call as Lightning makes it at every logged step (`log_metrics` with a training
    step's metrics, then `save`), per logger, in this process: the logging alone, without the training's noise."""
    from pytorch_lightning.loggers import CSVLogger

    from segframe.engine.trackers import MLflowTracker, WandbTracker

    os.environ.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", **{k: str(work / "wandb-home" / k) for k in (
        "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")}})
    made = {"csv": lambda d: [CSVLogger(str(d), name="logs", version="")],
            "csv+mlflow": lambda d: [CSVLogger(str(d), name="logs", version=""),
                                     MLflowTracker(str(d), local_store=str(work / "mlflow"))],
            "csv+mlflow-async": lambda d: [CSVLogger(str(d), name="logs", version=""),
                                           MLflowTracker(str(d), local_store=str(work / "mlflow"), synchronous=False)],
            "csv+wandb": lambda d: [CSVLogger(str(d), name="logs", version=""), WandbTracker(str(d), mode="offline")]}
    costs = {}
    for name in names:
        run_dir = work / f"calls-{name}"
        loggers = made[name](run_dir)
        for logger in loggers[1:]:
            logger.begin(run_dir, {"bench": {"calls": calls}})
        start = time.perf_counter()
        for step in range(calls):  # what one training step logs (segframe's train/loss, the LR monitor's, epoch)
            values = {"train/loss_step": 1.0 / (step + 1), "lr-AdamW/pg1": 1e-3, "lr-AdamW/pg2": 1e-3, "epoch": 0.0}
            for logger in loggers:
                logger.log_metrics(values, step)
                logger.save()
        costs[name] = 1000 * (time.perf_counter() - start) / calls
        for logger in loggers[1:]:
            logger.finish(run_dir, {"steps": calls}, None)
    return costs


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> str:
    base = median([r["step_ms"] for r in results["csv"]])
    rows = []
    for name, runs in results.items():
        ms = [r["step_ms"] for r in runs]
        rows.append([name, median(ms), f"{fmt(min(ms))}-{fmt(max(ms))}", f"{median(ms) - base:+.1f}",
                     median([r["to_first_step_s"] for r in runs]), median([r["after_training_s"] for r in runs])])
    steps = int(results["csv"][0]["steps"])
    return (f"{steps} training steps ({args.epochs} epochs x {args.steps_per_epoch}), every step logged, "
            f"{args.threads} torch thread(s), "
            f"{args.repeats} repeats interleaved (median; spread min-max over the repeats)\n"
            + table(["logger", "ms/step", "spread", "vs csv", "s to 1st step", "s after training"], rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segframe.bench.trackers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="training runs per logger, interleaved (default 3; 0: "
                        "skip)")
    parser.add_argument("--steps-per-epoch", type=int, default=16, help="training steps per epoch (default 16)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--only", default=",".join(LOGGERS), help=f"loggers to compare (default {','.join(LOGGERS)})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training run (default 1: a "
                        "step on one core is the least disturbed by other work on a shared machine)")
    parser.add_argument("--calls", type=int, default=200, help="logging calls timed per logger, alone (default 200; 0: "
                        "skip)")
    args = parser.parse_args(argv)
    names = ["csv", *[n for n in args.only.split(",") if n != "csv"]]
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise SystemExit(f"--only: unknown logger(s) {unknown}; known: {', '.join(LOGGERS)}")
    print(f"segframe bench trackers: {machine_line(torch.device('cpu'))}", flush=True)
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="segframe-bench-trackers-") as tmp:
        work = Path(tmp)
        if args.repeats:
            run_once("csv", args, work, 0)  # converts the dataset; not counted
            if "csv+mlflow" in names:
                run_once("csv+mlflow", args, work, 1)  # creates the SQLite store (schema migrations); not counted
        for repeat in range(args.repeats):
            for name in names:
                results[name].append(run_once(name, args, work, 2 + repeat * len(names) + names.index(name)))
                print(f"  .. repeat {repeat + 1}/{args.repeats} {name}: {results[name][-1]['step_ms']:.1f} ms/step",
                      file=sys.stderr, flush=True)
        if args.repeats:
            print(report(results, args), flush=True)
        if args.calls:
            costs = call_costs(names, args.calls, work)
            print(f"\nthe logging alone: {args.calls} steps' log_metrics + save per logger, in one process\n"
                  + table(["logger", "ms/step", "vs csv"],
                          [[n, c, f"{c - costs['csv']:+.2f}"] for n, c in costs.items()]), flush=True)


if __name__ == "__main__":
    main()
