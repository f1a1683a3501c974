"""Where a resumed run picks up: `resume=PATH|auto` turned into a checkpoint and the run directory it
belongs to, and that run's CSV and TensorBoard logs continued without duplicates (what the killed
process logged after its checkpoint is dropped: the resumed run logs it again), and its experiment
tracker runs (MLflow, W&B) continued under the ids its directory recorded. A run whose fit and
report are already done is left alone (`ResumePoint.finished`). A resume from inside an epoch says
what segframe does about it, instead of Lightning's warning that the loader cannot resume
(`mid_epoch_resume`).

The checkpoints themselves are written by checkpointing.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from segframe.core.atomic import write_text_atomic
from segframe.core.config import flatten
from segframe.core.errors import ResumeError
from segframe.core.moved import current_config
from segframe.engine.checkpointing import LAST, PARTIAL
from segframe.engine.trackers.common import Tracker
from segframe.evaluation.model_card import CARD

log = logging.getLogger("segframe")

METRICS = "metrics.json"  # with the model card (CARD), what a finished run writes last (segframe.evaluation.report)
# Lightning's warning on a resume from inside an epoch, which assumes the loader restarts the epoch
# from its first batch; segframe's continues it without the batches already trained (data/datamodule.py)
NOT_RESUMABLE = ("You're resuming from a checkpoint that ended before the epoch ended and your dataloader is "
                 "not resumable")


@dataclass(frozen=True)
class ResumePoint:
    path: Path        # the checkpoint
    run_dir: Path     # the run it continues: logs, checkpoints and report go there
    step: int         # optimizer steps completed; logs at this step and later are logged again
    speed_knobs: dict[str, Any] | None = None  # the precision and layout it trained with (speed.Choice.record())
    mid_epoch: tuple[int, int] | None = None  # (epoch, batches of it trained) for a checkpoint from inside an epoch
    finished: bool = False  # fit done under this command's limits, metrics.json and the card written: nothing to do


def find_resume(resume: str | None, run_dir: Path, config: dict[str, Any]) -> ResumePoint | None:
    """The checkpoint `resume=` asks for, checked before anything is built. `auto`: the run's own
    `checkpoints/last.ckpt` when it exists (a requeued job), else None (start fresh). A PATH inside
    `<run>/checkpoints/` continues `<run>`, wherever this command's own Hydra directory is. Settings in
    `config` (this command's) that differ from the run's own are logged."""
    if resume in (None, ""):
        return None
    if str(resume) == "auto":
        path = run_dir / "checkpoints" / LAST
        _clean(path.parent)
        if not path.is_file():
            log.info("resume=auto: no %s yet; starting a fresh run", path)
            return None
    else:
        path = Path(str(resume)).expanduser().absolute()
        if not path.is_file():
            raise ResumeError(
                f"resume={resume}: no such checkpoint. Pass the last.ckpt of the run to continue "
                f"(resume=RUN/checkpoints/last.ckpt), or resume=auto with hydra.run.dir=RUN to continue RUN when it "
                f"has a checkpoint and start fresh otherwise")
    try:  # mmap: checks the file and reads the counters without loading every tensor
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        # epochs whose training is done (a checkpoint from inside an epoch has not processed it yet)
        epoch = int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
        step = int(ckpt["global_step"])
    except Exception as exc:  # noqa: BLE001 (truncated, not a torch file, not a training checkpoint)
        raise ResumeError(
            f"resume={resume}: {path} cannot be resumed from ({type(exc).__name__}: {exc}). It is not a complete "
            f"segframe training checkpoint; pass another one, or delete it to start the run afresh") from exc
    owner = path.parent.parent if path.parent.name == "checkpoints" else run_dir
    _clean(path.parent)
    # checkpoints before `run_config` existed kept the run's config among the module's hyper-parameters
    before = ckpt.get("run_config") or (ckpt.get("hyper_parameters") or {}).get("config") or {}
    reported = _reported(owner)
    # the report must be of this checkpoint's fit: a run extended (trainer.max_epochs raised) and killed in its
    # final evaluation has the shorter fit's metrics.json beside a finished, longer fit
    if fit_done(ckpt, before, config) and reported is not None and reported.get("steps") in (None, step):
        log.info("resume=%s: %s already finished (%d epochs and %d optimizer steps done); its results are in %s "
                 "and are left as they are, checkpoints included. To train it longer, run this again with a larger "
                 "trainer.max_epochs or trainer.max_steps; to evaluate it again: python -m segframe.eval ckpt=%s",
                 resume, owner, epoch, step, owner / METRICS, reported.get("checkpoint") or path)
        return ResumePoint(path=path, run_dir=owner, step=step, finished=True)
    log.info("resuming %s from %s (%d epochs and %d optimizer steps done)", owner, path, epoch, step)
    changed = config_changes(before, config)
    if changed:
        longer = any(c.startswith(("trainer.max_epochs", "trainer.max_steps")) for c in changed)
        log.warning("resuming with settings that differ from the run's own: %s%s", "; ".join(changed),
                    " (the LR schedule continues as the run set it up: past its old end a poly schedule stays at 0)"
                    if longer else "")
    knobs = ckpt.get("speed_knobs")
    return ResumePoint(path=path, run_dir=owner, step=step, speed_knobs=dict(knobs) if knobs else None,
                       mid_epoch=_mid_epoch(ckpt["loops"]["fit_loop"]))


def _reported(run_dir: Path) -> dict[str, Any] | None:
    """The run's metrics.json when its report is complete (metrics.json and the model card), else None."""
    try:
        return json.loads((run_dir / METRICS).read_text()) if (run_dir / CARD).is_file() else None
    except (OSError, ValueError):
        return None


def _mid_epoch(fit_loop: dict[str, Any]) -> tuple[int, int] | None:
    """(epoch, batches of it trained) when the checkpoint was written inside an epoch: that epoch has
    started but not been processed (an end-of-epoch checkpoint has processed it)."""
    epochs = fit_loop["epoch_progress"]["current"]
    batches = (fit_loop.get("epoch_loop.batch_progress") or {}).get("current") or {}
    if int(epochs.get("started", epochs["processed"])) <= int(epochs["processed"]) or "processed" not in batches:
        return None
    return int(epochs["processed"]), int(batches["processed"])


def fit_done(ckpt: dict[str, Any], before: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether resuming `ckpt` would train nothing: its counters reach this command's trainer.max_steps or
    trainer.max_epochs (as Lightning reads them), or its fit ended (EarlyStopping, say: RunClock recorded
    it) and this command asks for no more epochs or steps than the run's own."""
    step = int(ckpt["global_step"])
    epochs = int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])

    def limits(cfg: dict[str, Any]) -> tuple[int, int]:
        trainer = cfg.get("trainer") or {}
        max_steps = int(trainer.get("max_steps") if trainer.get("max_steps") is not None else -1)
        max_epochs = trainer.get("max_epochs")
        if max_epochs is None:  # Lightning's default: 1000 epochs, unlimited when max_steps is set
            max_epochs = 1000 if max_steps == -1 else -1
        return max_steps, int(max_epochs)

    max_steps, max_epochs = limits(config)
    if (max_steps != -1 and step >= max_steps) or (max_epochs != -1 and epochs >= max_epochs):
        return True
    ended = bool(((ckpt.get("callbacks") or {}).get("RunClock") or {}).get("fit_complete"))
    return ended and before.get("trainer") is not None and limits(before) == (max_steps, max_epochs)


@contextlib.contextmanager
def mid_epoch_resume(resume: ResumePoint | None) -> Iterator[None]:
    """Around `trainer.fit` of a resumed run. From inside an epoch, Lightning warns that the loader is
    not resumable and the results may be unreliable; segframe's train loader continues the epoch in
    its seeded order without the batches already trained (data/datamodule.py), so exactly that warning
    is silenced here, and one line says what is done instead."""
    if resume is None or resume.mid_epoch is None:
        yield
        return
    epoch, done = resume.mid_epoch
    log.info("resumed mid-epoch at step %d: skipping the %d batch%s already trained in epoch %d (the epoch "
             "continues in its own seeded order without them, as the uninterrupted run would have)",
             resume.step, done, "" if done == 1 else "es", epoch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(NOT_RESUMABLE))
        yield


def _clean(folder: Path) -> None:
    """Delete the partial checkpoints a killed writer left in `folder` (nothing else writes there yet)."""
    for path in sorted(folder.glob(f".*{PARTIAL}")) if folder.is_dir() else []:
        path.unlink(missing_ok=True)
        log.info("removed %s, left behind by a save that was killed", path)


def config_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every setting that differs between the checkpoint's run and this one
    (`resume` itself aside), both as a run of this version says them (core/moved.py)."""
    old, new = flatten(current_config(before)), flatten(current_config(now))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k != "resume" and old.get(k) != new.get(k)]


class _ContinuedCSV(ExperimentWriter):
    """The CSV logger's writer for a resumed run. The stock writer deletes metrics.csv when its folder
    is not empty; this one keeps the rows logged before the checkpoint's step and drops the later ones,
    which the resumed run logs again."""

    def __init__(self, log_dir: str, before_step: int):
        self.before_step = before_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < self.before_step]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(kept)
        write_text_atomic(path, text.getvalue())
        self.metrics_keys = keys  # later rows append under the same header


def continue_logs(loggers: list[Any], resume: ResumePoint) -> None:
    """Make the run's loggers continue its existing logs: CSV rows and TensorBoard events at the
    checkpoint's step or later are dropped (TensorBoard: purge_step), since the resumed run logs them again;
    an experiment tracker (MLflow, W&B) continues the tracker run the run directory recorded, where the
    points the killed process logged after its checkpoint stay beside the ones logged again."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            if rank_zero_only.rank == 0:  # the CSV logger writes from rank 0 only
                logger._experiment = _ContinuedCSV(logger.log_dir, resume.step)
        elif isinstance(logger, TensorBoardLogger):
            logger._kwargs["purge_step"] = resume.step  # passed on to its SummaryWriter
        elif isinstance(logger, Tracker):
            logger.continue_run(resume.run_dir)
        else:
            log.info("%s: resumed runs start a new log there", type(logger).__name__)
