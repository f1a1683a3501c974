"""What the experiment trackers (`logger=mlflow`, `logger=wandb`) share: the `Tracker` interface the
training run drives, the optional extra each one needs, the Hydra job a run belongs to (a sweep's
directory and overrides), the run config as flat parameters, the final numbers of metrics.json, the
report files a run uploads, and `trackers.json`, where a run directory keeps its tracker run ids so
that a resumed process continues the same tracker run."""

from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from segframe.core.atomic import write_text_atomic
from segframe.core.config import flatten
from segframe.core.errors import ConfigError

IDS = "trackers.json"  # in the run directory: {"mlflow": {"run_id": ...}, "wandb": {"id": ...}}
# what a finished run uploads, where it wrote it (curves.png: segframe.evaluation.curves; MODEL_CARD.md: training runs only)
REPORT_FILES = ("metrics.json", "per_class.md", "per_class.csv", "confusion_matrix.png", "predictions.png",
                "curves.png", "MODEL_CARD.md", "config.yaml")


def require(module: str, option: str) -> None:
    """Import `module` (an optional extra), or refuse `logger=<option>` naming the pip line."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"logger={option} needs the {module} package, which is not installed here ({exc}). Install the extra: "
            f"pip install \"segframe[{option}]\" (or drop {option} from logger=, e.g. logger=default). "
            f"Nothing was run.") from exc


class Tracker:
    """An experiment tracker's side of a training run, beside Lightning's per-step logging. The run
    calls, in this order: `continue_run` (a resumed run only), `begin` (before training), `finish`
    (after the report is written, on rank 0)."""

    name = ""  # its key in trackers.json

    def continue_run(self, run_dir: Path) -> None:
        """Continue the tracker run recorded in `run_dir`/trackers.json instead of starting one."""
        raise NotImplementedError

    def begin(self, run_dir: Path, config: dict[str, Any]) -> None:
        """Start (or continue) the tracker run, record its id in the run directory, log the config."""
        raise NotImplementedError

    def finish(self, run_dir: Path, metrics: dict[str, Any], checkpoint: str | None) -> None:
        """Log the final metrics and the report files (and `checkpoint` when asked to), end the run."""
        raise NotImplementedError

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's call with the module's hyper-parameters (class pixel counts, palette, ...): not
        logged; `begin` logs the run's whole resolved config instead."""


@dataclass(frozen=True)
class Job:
    """The Hydra job a run is: in a sweep (`-m`), its sweep directory (absolute), number and overrides."""

    overrides: tuple[str, ...] = ()
    sweep_dir: str | None = None
    number: int | None = None

    def tags(self) -> dict[str, str]:
        """What a tracker run is tagged with: the sweep it belongs to, its job number and overrides."""
        tags = {"segframe.overrides": " ".join(self.overrides)}
        if self.sweep_dir is not None:
            tags.update({"segframe.sweep_dir": self.sweep_dir, "segframe.sweep_job": str(self.number)})
        return tags


def shown(path: str | Path) -> str:
    """A path as the user knows it: relative to the working directory when inside it, else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def current_job() -> Job:
    """This process's Hydra job (an empty Job outside a Hydra app, e.g. `train()` called from Python)."""
    if not HydraConfig.initialized():
        return Job()
    hydra = HydraConfig.get()
    overrides = tuple(str(o) for o in hydra.overrides.task)
    if hydra.mode != RunMode.MULTIRUN:
        return Job(overrides)
    return Job(overrides, str(Path(hydra.sweep.dir).absolute()), int(hydra.job.num))


def params(config: dict[str, Any]) -> dict[str, str]:
    """The run config as tracker parameters: flat dotted keys, values as text."""
    return {k: str(v) for k, v in flatten(config).items() if v != {}}  # an empty section is no parameter


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json's numbers as `final/<key>`, and per class `final/<key>/<class>` (e.g. final/iou/person);
    nulls (a score with nothing to average) and booleans left out."""

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    out = {f"final/{k}": float(v) for k, v in metrics.items() if number(v)}
    for cls, row in (metrics.get("per_class") or {}).items():
        name = re.sub(r"[^A-Za-z0-9_. -]+", "_", str(cls))  # MLflow's metric-name alphabet
        out.update({f"final/{k}/{name}": float(v) for k, v in row.items() if number(v)})
    return out


def report_files(run_dir: Path) -> list[Path]:
    """The report files the run wrote (REPORT_FILES that exist)."""
    return [run_dir / name for name in REPORT_FILES if (run_dir / name).is_file()]


def recorded(run_dir: Path, name: str) -> dict[str, Any] | None:
    """The ids tracker `name` recorded in `run_dir`, or None."""
    try:
        return json.loads((Path(run_dir) / IDS).read_text()).get(name)
    except (OSError, ValueError):
        return None


def record(run_dir: Path, name: str, **ids: Any) -> None:
    """Keep tracker `name`'s run ids in `run_dir`/trackers.json (beside the other trackers')."""
    path = Path(run_dir) / IDS
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        held = {}
    held[name] = ids
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(held, indent=1) + "\n")
