"""Lightning's progress where the output is not a terminal: one line per epoch, not a bar.

In a terminal, train and eval keep Lightning's own bar (Rich's or tqdm's; with the time left). Where
stdout is a file or a pipe (a CI log, `> log.txt`, a SLURM output file, reproduce's per-run log) that
bar would be a wall of carriage returns or one block at the very end, so `EpochLines` takes its place
and logs (the `segframe` logger: the console, and the run's train.log under Hydra):

    epoch 3/30, step 360 (+120), train/loss 0.8123, val/miou 0.4312, 1:02 this epoch, 3:07 elapsed, ETA 24:16
    test: 60 batches, 0:12 elapsed

and, inside an epoch or an evaluation that runs longer than `every_s` (5 minutes), one line each
`every_s` seconds with the batch it is at. `for_console` picks: nothing (Lightning's bar) in a terminal,
EpochLines otherwise, nothing when the trainer's enable_progress_bar is false or a progress bar is
among the callbacks already (Lightning refuses a progress bar callback with enable_progress_bar=false).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar

from segframe.core.progress import Eta, clock, is_terminal

log = logging.getLogger("segframe")


def for_console(enabled: bool, callbacks: list[Any]) -> list[ProgressBar]:
    """The progress bar callback to add to `callbacks` for this process's stdout (see the module doc)."""
    if not enabled or any(isinstance(c, ProgressBar) for c in callbacks) or is_terminal(sys.stdout):
        return []
    return [EpochLines()]


def _total(value: float | int | None) -> int | None:
    return int(value) if value is not None and value != float("inf") and value >= 0 else None


class EpochLines(ProgressBar):
    """A line per training epoch (epoch k/N, the step, the epoch's loss and validation scores, time this
    epoch, elapsed, ETA), a line per evaluation, and a line each `every_s` seconds inside long ones."""

    def __init__(self, every_s: float = 300.0, say: Callable[[str], Any] = log.info):
        super().__init__()
        self.every_s, self.say, self._enabled = every_s, say, True
        self._epochs = self._steps = self._train = self._eval = Eta(None)
        self._first_step, self._evaluated, self._last_line, self._validated = 0, 0, 0.0, False

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _line(self, text: str) -> None:
        if self._enabled:
            self.say(text)
            self._last_line = time.monotonic()

    def _beat(self, what: str, loop: Eta, done: int, extra: str = "") -> None:
        """Inside a long loop: a line each every_s seconds."""
        if time.monotonic() - self._last_line >= self.every_s:
            self._line(f"{what} {loop.text(done)}{extra}")

    def _epoch(self, trainer: pl.Trainer) -> str:
        total = _total(trainer.max_epochs)
        return f"epoch {trainer.current_epoch + 1}" + (f"/{total}" if total else "")

    # --------------------------------------------------------------------------- fit

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a resumed run: the rate counts this process's epochs and steps only
        self._epochs = Eta(_total(trainer.max_epochs), skipped=trainer.current_epoch)
        self._steps = Eta(_total(trainer.max_steps) or None, skipped=trainer.global_step)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train, self._first_step = Eta(_total(self.total_train_batches)), trainer.global_step
        self._validated, self._last_line = False, time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = trainer.progress_bar_metrics.get("train/loss_step")
        self._beat(f"{self._epoch(trainer)}, batch", self._train, batch_idx + 1,
                   f", train/loss {_number(loss)}" if loss is not None else "")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval = Eta(_total(self.total_val_batches))

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:  # (a couple of batches before the first epoch)
            self._beat(f"{self._epoch(trainer)}, validation batch", self._eval, batch_idx + 1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the epoch's validation (Lightning validates before this hook): its scores are current."""
        metrics = {k.removesuffix("_epoch"): v for k, v in sorted(trainer.progress_bar_metrics.items(),
                                                                  key=lambda kv: kv[0].startswith("val/"))
                   if not k.endswith("_step") and (self._validated or not k.startswith("val/"))}
        done = trainer.current_epoch + 1
        lefts = [t for t in (self._epochs.left(done), self._steps.left(trainer.global_step)) if t is not None]
        self._line(f"{self._epoch(trainer)}, step {trainer.global_step} (+{trainer.global_step - self._first_step})"
                   + "".join(f", {k} {_number(v)}" for k, v in metrics.items())
                   + f", {clock(self._train.elapsed())} this epoch, {clock(self._epochs.elapsed())} elapsed"
                   + (f", ETA {clock(min(lefts))}" if lefts else ""))

    # --------------------------------------------------------------------------- evaluation (eval, and after fit)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval, self._evaluated = Eta(_total(sum(trainer.num_test_batches))), 0
        self._last_line = time.monotonic()

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluated += 1
        self._beat("test: batch", self._eval, self._evaluated)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._line(f"test: {self._evaluated} batches, {clock(self._eval.elapsed())} elapsed")


def _number(value: Any) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)
