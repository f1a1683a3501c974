"""Shared by the entry points: user errors become one clear message and a non-zero exit."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")

log = logging.getLogger("segframe")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Failures a user causes (config, data, files, weights); anything else keeps its traceback."""
    from hydra.errors import InstantiationException

    from segframe.data.sample import SampleError
    from segframe.data.shards import ConversionInProgress, ManifestError
    from segframe.models.backbones import PretrainedWeightsError

    return (ValueError, FileNotFoundError, ManifestError, SampleError, PretrainedWeightsError, InstantiationException,
            ConversionInProgress)


def run(job: Callable[[], T]) -> T:
    """Run `job`; on a user error print its message and exit 1 (SEGFRAME_TRACEBACK=1 shows the traceback).
    Inside a multirun sweep a failed run is logged with its traceback and the sweep goes on; a refused
    process layout (segframe.sweep.LaunchError) ends the sweep before anything trains."""
    try:
        return job()
    except Exception as exc:
        from segframe.sweep import LaunchError

        if _multirun() and not isinstance(exc, LaunchError) and not os.environ.get("SEGFRAME_TRACEBACK"):
            # one failed run must not end an overnight sweep: log it, and the sweep summary
            # lists the run as failed (it wrote no metrics.json)
            log.exception("run failed: %s", exc)
            if not _basic_sweeper():
                # optimisation sweepers (Optuna) record a raised run as a failed trial and go on
                # (hydra.sweeper.max_failure_rate); a returned nan would crash hydra-optuna-sweeper
                raise
            return float("nan")  # type: ignore[return-value]
        if not isinstance(exc, _user_errors()) or os.environ.get("SEGFRAME_TRACEBACK"):
            raise
        message = str(exc)
        if exc.__cause__ is not None and str(exc.__cause__) not in message:
            message += f"\ncaused by: {exc.__cause__}"
        fail(message, f"{type(exc).__name__}: {message}")


def this_command(entry: str, *extra: str) -> str:
    """`python -m segframe.<entry>` with this run's command-line overrides, as pasteable shell words;
    `extra` overrides are added, replacing any given for the same keys."""
    import shlex

    from hydra.core.hydra_config import HydraConfig

    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    keys = {e.split("=", 1)[0].lstrip("+") for e in extra}
    kept = [o for o in given if o.split("=", 1)[0].lstrip("+~") not in keys]
    return " ".join([f"python -m segframe.{entry}"] + [shlex.quote(o) for o in kept + list(extra)])


def fail(message: str, logged: str | None = None) -> NoReturn:
    """Print a user error as one paragraph (and record it in the run's log file); exit 1."""
    _log_to_files(logged or message)
    print(f"\nerror: {message}\n(set SEGFRAME_TRACEBACK=1 for the full traceback)", file=sys.stderr)
    sys.exit(1)


def _log_to_files(message: str) -> None:
    """Record the error in the run's log file (Hydra's job log) without printing it twice on the console."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _basic_sweeper() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().sweeper.get("_target_", "")).endswith(".BasicSweeper")
