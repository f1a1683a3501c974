"""Shared by the entry points: user errors become one clear message and a non-zero exit."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("segframe")

# Errors a user causes (bad config, missing data, bad files): print the message, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError, KeyError)


def run(job: Callable[[], T]) -> T:
    """Run `job`; on a user error print its message and exit 1 (SEGFRAME_TRACEBACK=1 shows the traceback)."""
    try:
        return job()
    except USER_ERRORS as exc:
        if os.environ.get("SEGFRAME_TRACEBACK") or _multirun():
            raise  # in a sweep Hydra records the failed job; exiting here would end the whole sweep
        from hydra.errors import InstantiationException

        message = str(exc)
        if isinstance(exc, InstantiationException) and exc.__cause__ is not None:
            message += f"\ncaused by: {exc.__cause__}"
        log.error("%s: %s", type(exc).__name__, message)
        print(f"\nerror: {message}\n(set SEGFRAME_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(1)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
