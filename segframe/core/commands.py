"""The command lines segframe's messages tell the user to run, composed in one place.

Library code that knows only a dataset's location names its convert command from the folder
(`convert_command_for`); the orchestration, which holds the composed config, passes the exact
one (`convert_command`) down as a plain string.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig


def _given() -> list[str]:
    """This run's command-line overrides (none outside a Hydra run)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def this_command(entry: str, *extra: str) -> str:
    """`python -m segframe.<entry>` with this run's command-line overrides, as pasteable shell words;
    `extra` overrides are added, replacing any given for the same keys."""
    given = _given()
    keys = {e.split("=", 1)[0].lstrip("+") for e in extra}
    kept = [o for o in given if o.split("=", 1)[0].lstrip("+~") not in keys]
    return " ".join([f"python -m segframe.{entry}"] + [shlex.quote(o) for o in kept + list(extra)])


def data_choice(data: Any) -> str:
    """The data config file this command composed (`folder` for `data=folder data.name=cells`)."""
    choice = HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
    return choice or data.name


def convert_command(data: Any) -> str:
    """The convert command for the data config `data` as composed now: its config file, and the
    dataset name when that differs (`data=folder data.name=cells`). With a dataset's own config file,
    the `data.*` and `paths.*` overrides of this command line come along, so that the command converts
    the same split and folder (`data=voc_aug data.split_mode=seg11valid`, not the default mode)."""
    choice = data_choice(data)
    if choice != data.name:
        return f"python -m segframe.convert data={choice} data.name={data.name}"
    kept = [o for o in _given() if o.lstrip("+~").startswith(("data.", "paths."))]
    return " ".join([f"python -m segframe.convert data={choice}"] + [shlex.quote(o) for o in kept])


def convert_command_for(location: str | os.PathLike) -> str:
    """The convert command for a dataset known only by where it lives: `<data_dir>/<name>` holds
    dataset `name`."""
    name = Path(str(location).rstrip("/")).name if not str(location).startswith("pipe:") else ""
    return f"python -m segframe.convert data={name or '<name>'}"
