"""The `logger` group's loggers for a training run: Lightning's CSV and TensorBoard loggers, and the
experiment trackers (`logger=mlflow`: mlflow_run.py, `logger=wandb`: wandb_run.py), which also
record the run's config, final metrics and report files, and continue their tracker run when the run
is resumed (the ids are kept in the run directory's trackers.json; segframe.engine.resume.continue_logs).

`build` makes them before any work, so that a tracker whose extra is not installed stops the run
first; `begin` starts the tracker runs before training; `finish` ends them after the report."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from segframe.engine.trackers.common import Tracker
from segframe.engine.trackers.mlflow_run import MLflowTracker
from segframe.engine.trackers.wandb_run import WandbTracker

__all__ = ["MLflowTracker", "Tracker", "WandbTracker", "begin", "build", "failing", "finish"]


def build(logger_cfg: DictConfig | None, run_dir: Path) -> list[Any]:
    """One logger per node of the `logger` group (none for `logger=none`), each writing in `run_dir`."""
    return [instantiate(node, save_dir=str(run_dir)) for node in (logger_cfg or {}).values() if node is not None]


def begin(loggers: list[Any], run_dir: Path, config: dict[str, Any]) -> None:
    """Start (or continue) every tracker run before training: its id kept in the run directory, the
    run's resolved config logged."""
    for logger in loggers:
        if isinstance(logger, Tracker):
            logger.begin(run_dir, config)


def finish(loggers: list[Any], run_dir: Path, metrics: dict[str, Any], checkpoint: str | None) -> None:
    """After the report: every tracker logs the final metrics and the report files (and `checkpoint`,
    when its `log_checkpoint` is on), and ends its run."""
    for logger in loggers:
        if isinstance(logger, Tracker):
            logger.finish(run_dir, metrics, checkpoint)


@contextlib.contextmanager
def failing(loggers: list[Any]) -> Iterator[None]:
    """Inside: an error (in training, the evaluation, the report) ends every tracker run as failed
    before it propagates, so that no run is left RUNNING in the tracker."""
    try:
        yield
    except BaseException:
        for logger in loggers:
            if isinstance(logger, Tracker):
                with contextlib.suppress(Exception):  # the run's own error is the one to report
                    logger.finalize("failed")
        raise
