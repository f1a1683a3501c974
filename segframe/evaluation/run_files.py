"""A run directory read back after the run: its config (resolved where it can be), its metrics.json,
and where its CSV log is. What `curves.py` and `comparison.py` read; nothing here writes.

A training run leaves `config.yaml` (its resolved config, written when it finishes), `.hydra/`
(the composed config, with its `${...}` interpolations, written when it starts), `metrics.json`,
and the CSV logger's `metrics.csv` where the `logger` group's CSVLogger node puts it (`logs/` by
default). A run that failed or is still running has `.hydra/` only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from segframe.core import paths  # noqa: F401  (registers ${repo_root:} and the other resolvers the configs use)
from segframe.core.moved import current_config

log = logging.getLogger("segframe")

METRICS, RESOLVED, COMPOSED = "metrics.json", "config.yaml", ".hydra/config.yaml"
CSV_LOG = "metrics.csv"  # the name Lightning's CSVLogger gives its file


def is_run(path: Path) -> bool:
    """Whether `path` is a run directory: it holds metrics.json (a finished run) or .hydra/ (any run)."""
    return path.is_dir() and ((path / METRICS).is_file() or (path / ".hydra").is_dir())


def config(run_dir: Path) -> dict[str, Any]:
    """The run's config as plain data: `config.yaml` (resolved by the run itself) when it is there, else
    `.hydra/config.yaml` resolved here (a run that never finished), else {}. Where an interpolation
    cannot be resolved here (an environment variable of another machine), the config as composed.
    A run of an older segframe is read as this version would write it (core/moved.py)."""
    for name, resolve in ((RESOLVED, False), (COMPOSED, True)):
        path = run_dir / name
        if not path.is_file():
            continue
        loaded = OmegaConf.load(path)
        if not isinstance(loaded, DictConfig):
            return {}
        try:
            return current_config(OmegaConf.to_container(loaded, resolve=resolve))  # type: ignore[arg-type]
        except OmegaConfBaseException as exc:
            log.info("%s: kept as composed, an interpolation does not resolve here (%s)", path, exc)
            return current_config(OmegaConf.to_container(loaded, resolve=False))  # type: ignore[arg-type]
    return {}


def composed(run_dir: Path) -> dict[str, Any]:
    """The run's config as Hydra composed it (`.hydra/config.yaml`), interpolations unresolved; {} without it."""
    path = run_dir / COMPOSED
    loaded = OmegaConf.load(path) if path.is_file() else None
    if not isinstance(loaded, DictConfig):
        return {}
    return current_config(OmegaConf.to_container(loaded, resolve=False))  # type: ignore[arg-type]


def metrics(run_dir: Path) -> dict[str, Any] | None:
    """The run's metrics.json, or None when it has none (a failed or unfinished run) or it is unreadable."""
    try:
        return json.loads((run_dir / METRICS).read_text())
    except (OSError, ValueError):
        return None


def csv_log(run_dir: Path, cfg: dict[str, Any] | None = None) -> Path | None:
    """The run's `metrics.csv`: where the CSVLogger node of its config (`cfg`, read from the run when not
    given) writes it, under the run directory as training puts it (`save_dir`), else `logs/metrics.csv`
    (the default logger's). None when the run has no CSV log (`logger=none`, say)."""
    cfg = config(run_dir) if cfg is None else cfg
    candidates = [folder / CSV_LOG for node in _csv_nodes(cfg.get("logger")) for folder in _log_dirs(run_dir, node)]
    candidates.append(run_dir / "logs" / CSV_LOG)
    return next((p for p in candidates if p.is_file()), None)


def _csv_nodes(node: Any) -> list[dict[str, Any]]:
    """Every CSVLogger node in the `logger` group, however it nests them (one node per logger, or a list)."""
    if isinstance(node, dict):
        if str(node.get("_target_", "")).endswith("CSVLogger"):
            return [node]
        return [n for child in node.values() for n in _csv_nodes(child)]
    if isinstance(node, list):
        return [n for child in node for n in _csv_nodes(child)]
    return []


def _log_dirs(run_dir: Path, node: dict[str, Any]) -> list[Path]:
    """Where CSVLogger(save_dir=run_dir, name=..., version=...) writes: `name/version` (a string version,
    "" for none), `name/version_N` (an int), or the newest `name/version_*` (None: Lightning numbers them)."""
    base = run_dir / str(node.get("name") if node.get("name") is not None else "lightning_logs")
    version = node.get("version")
    if isinstance(version, str):
        return [base / version if version else base]
    if isinstance(version, int):
        return [base / f"version_{version}"]
    numbered = [p for p in base.glob("version_*") if p.name.removeprefix("version_").isdigit()]
    return sorted(numbered, key=lambda p: int(p.name.removeprefix("version_")), reverse=True)
