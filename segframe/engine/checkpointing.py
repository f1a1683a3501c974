"""Checkpoints of a training run that survive SIGKILL, preemption and requeue.

- `AtomicCheckpointIO` writes every checkpoint to a temporary name in its own folder, fsyncs it and
  renames it over the old file: a kill during a write leaves the previous checkpoint whole.
- `LastCheckpoint` writes `checkpoints/last.ckpt` at the end of every epoch and, when asked, every N
  optimizer steps and/or M minutes inside an epoch. Under SLURM the requeue signal is answered at the
  next step boundary: save, `scontrol requeue`, stop (`Requeued`).
- `BestCheckpoint`: the monitored best checkpoint, whose tracking survives a moved run directory.
- `StepSeed` seeds torch's RNG (dropout) at every training batch from (seed, batch count, rank), so a
  resumed run draws the masks an uninterrupted run would have drawn.
- `resumable()` builds them all from the `checkpoint` config node.
- `RunConfig` records the run's config in each checkpoint, for the resumed run's list of changed settings.
- `RunClock` carries the run's fit time and trained images across its processes, in each checkpoint.

Where a resumed run picks up (`resume=`) is resume.py; the data side (a resumed epoch continues its
seeded order without the batches already trained) is data/datamodule.py.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import Callback, Checkpoint, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from segframe.core.atomic import fsync
from segframe.core.errors import ConfigError

log = logging.getLogger("segframe")

LAST = "last.ckpt"
EVALUATED = "evaluated.ckpt"  # an evaluate_only run's weights, as loaded from model.init_from (nothing trained)
PARTIAL = ".partial"  # suffix of a checkpoint being written; what a kill mid-write leaves behind


class RunConfig(Callback):
    """Stores the run's resolved config in every checkpoint (`run_config`), so that a resumed run
    can say which settings changed since; no component gets the whole config. With `speed_knobs`
    (segframe.engine.speed's choice, recorded), also what `auto` became, which eval reuses."""

    def __init__(self, config: dict[str, Any], speed_knobs: dict[str, Any] | None = None):
        self.config, self.speed_knobs = config, speed_knobs

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["run_config"] = self.config
        if self.speed_knobs is not None:
            checkpoint["speed_knobs"] = self.speed_knobs


class RunClock(Callback):
    """The run's fit seconds and training images over all of its processes, carried in every checkpoint
    (its callback state): a resumed process adds its own to what its checkpoint recorded. A process
    counts up to the checkpoint the next one resumed from: the steps a killed process trained after
    its last checkpoint were lost, and are trained, timed and counted again by the resumed process,
    once. A process that trained no step (a finished fit resumed for its evaluation) adds nothing.

    `start_step`: the step this process starts at, for a checkpoint written before RunClock existed."""

    def __init__(self, batch_size: int, start_step: int = 0):
        self.batch_size = int(batch_size)
        self.before: dict[str, Any] = {"fit_seconds_per_process": [], "train_images": 0, "step": int(start_step)}
        self.fit_complete = False  # set when fit ends normally: the final last.ckpt records it
        self._trainer: pl.Trainer | None = None
        self._started = time.monotonic()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._trainer, self._started = trainer, time.monotonic()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_complete = True  # before LastCheckpoint's final save: Lightning runs checkpoint callbacks last

    def _steps(self) -> int:
        """Optimizer steps this process trained."""
        return int(self._trainer.global_step) - int(self.before["step"]) if self._trainer is not None else 0

    def record(self) -> dict[str, Any]:
        """What metrics.json reports: the seconds of each process that trained, their sum, and the
        images trained (each once)."""
        trainer, steps = self._trainer, self._steps()
        per_process = [*self.before["fit_seconds_per_process"],
                       *([round(time.monotonic() - self._started, 1)] if steps > 0 else [])]
        images = int(self.before["train_images"]) + (steps * self.batch_size * trainer.accumulate_grad_batches
                                                     * trainer.world_size if trainer is not None else 0)
        return {"fit_seconds": round(sum(per_process), 1), "fit_seconds_per_process": per_process,
                "fit_processes": len(per_process), "train_images": images}

    def state_dict(self) -> dict[str, Any]:
        record = self.record()
        return {"fit_seconds_per_process": record["fit_seconds_per_process"], "train_images": record["train_images"],
                "step": int(self._trainer.global_step) if self._trainer is not None else int(self.before["step"]),
                "fit_complete": self.fit_complete}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = {"fit_seconds_per_process": [float(s) for s in state_dict.get("fit_seconds_per_process", [])],
                       "train_images": int(state_dict.get("train_images", 0)),
                       "step": int(state_dict.get("step", self.before["step"]))}


class Requeued(Exception):
    """SLURM asked for a requeue: last.ckpt is saved and the job is queued again; this process stops."""



class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to `.<name>.<pid>.partial` beside the target, fsync, rename over the target.
    Lightning's own writer opens the target itself and writes into it, so a kill mid-write leaves a
    truncated file under the real name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # a remote filesystem (fsspec): no rename to rely on
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}{PARTIAL}")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        fsync(target.parent)


class LastCheckpoint(Checkpoint):
    """`<dirpath>/last.ckpt`, rewritten atomically at the end of every epoch (after validation, so the
    best-checkpoint tracking it carries includes that epoch), every `every_n_steps` optimizer steps and
    every `every_minutes` minutes, and when SLURM sends `requeue_signal` (then: save, requeue, stop).

    A Checkpoint subclass, so Lightning runs it after the monitored ModelCheckpoint of the same epoch."""

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None, every_minutes: float | None = None,
                 requeue_signal: int | None = None):
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise ConfigError(f"checkpoint.every_n_steps must be a positive number of steps or null, got {every_n_steps}")
        if every_minutes is not None and float(every_minutes) <= 0:
            raise ConfigError(f"checkpoint.every_minutes must be a positive number of minutes or null, got {every_minutes}")
        self.path = Path(dirpath) / LAST
        self.every_n_steps = int(every_n_steps) if every_n_steps else None
        self.every_seconds = 60.0 * float(every_minutes) if every_minutes else None
        self.requeue_signal = requeue_signal
        self._saved_step = -1
        self._saved_at = time.monotonic()
        self._requeue_asked = False
        self._previous_handler: Any = None

    # the signal only sets a flag: the checkpoint is written at the next step boundary, where the
    # model, optimizer and loop counters agree (and, under DDP, where every rank can join the save)
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.requeue_signal is not None:
            self._previous_handler = signal.signal(self.requeue_signal, self._on_requeue_signal)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.requeue_signal is not None and self._previous_handler is not None:
            signal.signal(self.requeue_signal, self._previous_handler)
            self._previous_handler = None

    def _on_requeue_signal(self, signum: int, frame: Any) -> None:
        log.info("received signal %d (SLURM requeue): saving at the next step boundary", signum)
        self._requeue_asked = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved_at = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch-end save (after validation) follows at once
        by_steps = bool(self.every_n_steps) and trainer.global_step % self.every_n_steps == 0
        time_due, requeue = self._agreed(trainer)
        if (by_steps or time_due or requeue) and trainer.global_step != self._saved_step:
            self._save(trainer)
        if requeue:
            self._requeue(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._saved_step:  # a run resumed from this very checkpoint passes here again
            self._save(trainer)
        if self._agreed(trainer)[1]:
            self._requeue(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the finished fit once more, with its loop counters complete ("epoch" = epochs trained):
        # resuming it goes straight to the evaluation
        self._save(trainer)

    def _agreed(self, trainer: pl.Trainer) -> tuple[bool, bool]:
        """(time to save, requeue asked), as rank 0 sees them: every rank must join the same saves."""
        if self.every_seconds is None and self.requeue_signal is None:
            return False, False
        mine = (self.every_seconds is not None and time.monotonic() - self._saved_at >= self.every_seconds,
                self._requeue_asked)
        return tuple(trainer.strategy.broadcast(mine, src=0)) if trainer.world_size > 1 else mine

    def _save(self, trainer: pl.Trainer) -> None:
        """Flush the logs, then write last.ckpt."""
        # the logs on disk must hold everything the checkpoint covers: continue_logs cuts them back to it
        for logger in trainer.loggers:
            logger.save()
        self._saved_step = trainer.global_step  # before the save: state_dict() is part of the checkpoint
        start = time.monotonic()
        # the whole training state (optimizer, schedule, loops: resume needs it); said, not left to
        # Lightning's default, which logs "`weights_only` was not set" at every save
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_at = time.monotonic()
        log.debug("wrote %s (step %d) in %.0f ms", self.path, trainer.global_step, 1000 * (self._saved_at - start))

    def _requeue(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            job = slurm_job_id()
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if done.returncode != 0:
                log.warning("`scontrol requeue %s` failed (exit %d): %s; resume by hand with resume=%s", job,
                            done.returncode, done.stderr.strip(), self.path)
            else:
                log.info("requeued SLURM job %s; it resumes from %s", job, self.path)
        raise Requeued(f"saved {self.path} at step {trainer.global_step} and requeued SLURM job {slurm_job_id()}")

    def state_dict(self) -> dict[str, Any]:
        return {"saved_step": self._saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_step = int(state_dict.get("saved_step", -1))


class BestCheckpoint(ModelCheckpoint):
    """The monitored best checkpoint, whose tracking survives a run directory that was moved or copied
    (rsync to another cluster) before resuming: paths recorded under the old folder are read under the
    new one. Lightning's ModelCheckpoint drops the best score then and keeps a path that may be gone."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            def moved(path: Any) -> Any:
                if not isinstance(path, str) or not path.startswith(old):
                    return path
                there = new + path[len(old):]
                return there if Path(there).is_file() or not Path(path).is_file() else path

            state_dict = {**state_dict, "dirpath": new,
                          "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()},
                          **{k: moved(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                                   "last_model_path")}}
        super().load_state_dict(state_dict)


def slurm_job_id() -> str:
    """The id `scontrol requeue` takes: `<array job>_<task>` for an array task, else the job id."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID", "?")


def slurm_requeue_plugins() -> tuple[list[Any], int | None]:
    """(Trainer plugins, requeue signal) for this process. Under a SLURM batch job, Lightning's
    SLURMEnvironment is kept but its own requeue handler is off: that one writes a checkpoint from
    inside the signal handler, wherever the step happens to be (mid optimizer step, mid all-reduce
    under DDP), into hpc_ckpt_N.ckpt; LastCheckpoint saves last.ckpt at the next step boundary instead."""
    if not SLURMEnvironment.detect():
        return [], None
    environment = SLURMEnvironment(auto_requeue=False)
    return [environment], environment.requeue_signal


def resumable(ckpt_dir: Path, seed: int, monitor: str, mode: str, every_n_steps: int | None = None,
              every_minutes: float | None = None, slurm_requeue: bool = True) -> tuple[BestCheckpoint, list, list]:
    """(the best-checkpoint callback, every checkpointing callback, Trainer plugins) of a training run;
    the keyword arguments are the `checkpoint` config node's keys. (RunClock is the caller's: it
    needs the batch size.)"""
    best = BestCheckpoint(dirpath=ckpt_dir, monitor=monitor, mode=mode, filename="best-epoch{epoch:03d}",
                          auto_insert_metric_name=False, save_top_k=1)
    plugins, requeue_signal = slurm_requeue_plugins()
    last = LastCheckpoint(ckpt_dir, every_n_steps=every_n_steps, every_minutes=every_minutes,
                          requeue_signal=requeue_signal if slurm_requeue else None)
    return best, [best, last, StepSeed(seed)], [AtomicCheckpointIO(), *plugins]


class StepSeed(Callback):
    """torch's RNG (dropout) seeded at every training batch from (seed, batches so far, rank): what a
    batch draws does not depend on what ran before it in this process, so a resumed run draws exactly
    what the uninterrupted run would have."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        count = trainer.fit_loop.epoch_loop.batch_progress.total.ready
        torch.manual_seed(hash((self.seed, count, trainer.global_rank)) & 0xFFFF_FFFF)
