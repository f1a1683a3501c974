"""What every entry point does with an exception: a user error (`segframe.core.errors.SegframeError`, or
a config that Hydra, OmegaConf or Lightning refused) becomes one clear paragraph and exit 1; anything
else is a bug and keeps its traceback (a plain ValueError included)."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from segframe.core import errors
from segframe.core.atomic import write_text_atomic
from segframe.core.errors import LaunchError, SegframeError
from segframe.core.unknown_keys import install as advise_on_unknown_keys

T = TypeVar("T")

log = logging.getLogger("segframe")

FAILURE = "failure.txt"  # in a sweep job's run directory: why it failed, one line

advise_on_unknown_keys()  # every entry point imports this module before Hydra composes its config


def user_error(exc: BaseException) -> bool:
    """Whether `exc` is the user's to fix: a SegframeError; a component its config node could not
    build (Hydra's InstantiationException: an unknown `_target_`, a wrong argument, a value the
    component refused); a config value OmegaConf cannot resolve (`???`, a broken interpolation); a
    trainer setting Lightning refuses (MisconfigurationException, matched by name so that the CLI
    does not import Lightning)."""
    return isinstance(exc, (SegframeError, InstantiationException, OmegaConfBaseException)) or \
        any(c.__name__ == "MisconfigurationException" for c in type(exc).__mro__)


def run(job: Callable[[], T]) -> T:
    """Run `job`; on a user error print its message and exit 1 (SEGFRAME_TRACEBACK=1 shows the traceback).
    Inside a multirun sweep a failed run is logged with its traceback and the sweep goes on; a refused
    process layout (LaunchError) ends the sweep before anything trains."""
    try:
        return job()
    except Exception as exc:
        if _multirun() and not isinstance(exc, LaunchError) and not os.environ.get("SEGFRAME_TRACEBACK"):
            # one failed run must not end an overnight sweep: log it, and the sweep summary
            # lists the run as failed (it wrote no metrics.json)
            log.exception("run failed: %s", exc)
            record_failure(exc)
            if not _basic_sweeper():
                # optimisation sweepers (Optuna) record a raised run as a failed trial and go on
                # (hydra.sweeper.max_failure_rate); a returned nan would crash hydra-optuna-sweeper
                raise
            return float("nan")  # type: ignore[return-value]
        if not user_error(exc) or os.environ.get("SEGFRAME_TRACEBACK"):
            raise
        message = _message(exc)
        fail(message, f"{type(exc).__name__}: {message}")


def _message(exc: BaseException) -> str:
    """What to print for a user error. Our own error raised while Hydra built a component is shown as
    itself, naming the config node (Hydra's wrapping repeats it as a Python repr, quotes escaped), and
    one raised by a config resolver as itself."""
    text = str(exc)
    cause = exc.__cause__
    if isinstance(exc, InstantiationException) and isinstance(cause, SegframeError):
        node = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("full_key:")), "")
        return f"{cause}" + (f"\n(while building `{node}`)" if node else "")
    if isinstance(exc, InterpolationResolutionError):  # our resolver's refusal (fold_split, task_classes)
        raised = re.match(r"(\w+) raised while resolving interpolation: (.*)", text.splitlines()[0])
        if raised and isinstance(getattr(errors, raised.group(1), None), type) \
                and issubclass(getattr(errors, raised.group(1)), SegframeError):
            return raised.group(2)  # it names the key and the fix already; OmegaConf keeps no __cause__
    if cause is not None and str(cause) not in text:
        text += f"\ncaused by: {cause}"
    return text


def reason(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line for a table: its type and message, whitespace folded, cut at `limit`."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def record_failure(exc: BaseException) -> None:
    """Leave the reason a sweep job failed in its run directory (FAILURE), for the sweep summary."""
    write_text_atomic(Path(HydraConfig.get().runtime.output_dir) / FAILURE, reason(exc) + "\n")


def fail(message: str, logged: str | None = None,
         hint: str = "(set SEGFRAME_TRACEBACK=1 for the full traceback)") -> NoReturn:
    """Print a user error as one paragraph (and record it in the run's log file); exit 1."""
    _log_to_files(logged or message)
    print(f"\nerror: {message}\n{hint}", file=sys.stderr)
    sys.exit(1)


def _log_to_files(message: str) -> None:
    """Record the error in the run's log file (Hydra's job log) without printing it twice on the console."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _basic_sweeper() -> bool:
    return str(HydraConfig.get().sweeper.get("_target_", "")).endswith(".BasicSweeper")
