"""What `python -m segframe.compare` does: runs side by side. The runs come from run directories,
sweep directories (a folder whose subfolders are runs: `multirun/DATE/TIME/`, `outputs/DATE/`) and
globs of them; the table shows the config keys that differ between the runs and their summary
metrics (per-class IoU on request); compare.png overlays their validation curves, read from each
run's CSV log through curves.py.

Configs are compared flattened (`optimizer.lr`), a list as one value. IGNORED keys differ between
runs without saying anything about what was trained, and are left out; so is a key that differs
only through the interpolation it follows (`data.shard_dir: ${paths.data_dir}/shapes` in every
run, naming `paths.data_dir`: that key is shown). The printout names what it left out.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from segframe.core.config import flatten
from segframe.core.errors import ConfigError, MissingFileError
from segframe.core.metric_names import SUMMARY_HEADERS, anchor_image_keys, image_summary_keys, percent, summary_keys
from segframe.evaluation import run_files
from segframe.evaluation.curves import per_epoch, read_log
from segframe.experiments.sweep_summary import cell

COMPARE = "compare.png"
METRICS = (*summary_keys(), *image_summary_keys(), *anchor_image_keys())
IGNORED = {"hydra.*": "each run's own output directory, job number and time",
           "resume": "how a run was restarted, not what it trained"}
RUN_HELP = ("a run directory (what `python -m segframe.train` writes, e.g. outputs/2026-12-06/11-16-22/, holding "
            "metrics.json and .hydra/), a sweep directory (multirun/DATE/TIME/, whose subfolders are runs) or a glob "
            "of them in quotes ('outputs/2026-12-06/*')")
MAX_LABEL, MAX_VALUE = 110, 32  # characters of a legend label, and of one value in it


@dataclass
class Run:
    path: Path
    name: str                      # relative to the runs' common folder
    config: dict[str, Any]         # flattened, resolved
    composed: dict[str, Any]       # flattened, as Hydra composed it ({} without .hydra/)
    metrics: dict[str, Any] | None  # None: no metrics.json (failed or unfinished)


def find_runs(arguments: list[str]) -> tuple[list[Path], list[str]]:
    """The run directories the arguments name, in their order, each once; and the files skipped (a shell
    expanding `multirun/DATE/TIME/*` passes the sweep's summary files too)."""
    runs: list[Path] = []
    skipped: list[str] = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.exists():
            found = _expand(path, skipped)
            if found is None:
                raise MissingFileError(f"{argument} is not a run directory: it holds neither metrics.json nor .hydra/, "
                                       f"and none of its subfolders is a run. Expected {RUN_HELP}")
        elif glob.has_magic(argument):
            matches = [Path(p) for p in sorted(glob.glob(os.path.expanduser(argument), recursive=True))]
            found = [run for match in matches for run in (_expand(match, skipped) or [])]
            if not found:
                seen = f" (it matches {len(matches)} path(s), none a run)" if matches else " (it matches nothing)"
                raise MissingFileError(f"{argument}: no run directory matches this pattern{seen}. Expected {RUN_HELP}")
        else:
            raise MissingFileError(f"{argument}: no such file or folder. Expected {RUN_HELP}")
        runs += [run for run in found if run not in runs]
    return runs, skipped


def _expand(path: Path, skipped: list[str]) -> list[Path] | None:
    """[path] for a run, its runs for a sweep directory, [] for a file (noted in `skipped`), else None."""
    if path.is_file():
        skipped.append(str(path))
        return []
    if run_files.is_run(path):
        return [path.resolve()]
    inside = [p.resolve() for p in path.iterdir() if run_files.is_run(p)]
    return sorted(inside, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)) or None


def load(paths: list[Path]) -> list[Run]:
    common = Path(os.path.commonpath(paths))
    return [Run(path=p, name=str(p.relative_to(common)) if p != common else p.name,
                config={k: v for k, v in flatten(run_files.config(p)).items() if not _ignored(k)},
                composed=flatten(run_files.composed(p)),
                metrics=run_files.metrics(p)) for p in paths]


def _ignored(key: str) -> bool:
    """Whether IGNORED leaves `key` out: `hydra.*` covers `hydra` and every key under it."""
    return any(key == k.removesuffix(".*") or key.startswith(k.removesuffix("*")) if k.endswith(".*") else key == k
               for k in IGNORED)


REFERENCE = re.compile(r"\$\{([\w.]+)\}")  # an interpolation naming another key
ABSENT = object()  # a key one run's composed config lacks


def differing_keys(runs: list[Run]) -> tuple[list[str], list[str]]:
    """The config keys whose value is not the same in every run (absent counts as a value), in config order,
    a node that is null in one run and set in another as one key (`reference`, not its every leaf); and
    apart from them, those that differ only through an interpolation of another key that differs (the same
    `${...}` in every run, naming it)."""
    keys = list(dict.fromkeys(k for run in runs for k in run.config))
    differ = [k for k in keys if len({value(run, k) for run in runs}) > 1]
    differ = [k for k in differ if not any(k.startswith(node + ".") for node in differ)]

    def follows(key: str) -> bool:
        composed = runs[0].composed.get(key)
        if not isinstance(composed, str) or any(run.composed.get(key, ABSENT) != composed for run in runs):
            return False
        named = REFERENCE.findall(composed)  # `${paths.data_dir}`, not a resolver's `${oc.env:...}`
        return any(d == ref or d.startswith(ref + ".") for ref in named for d in differ if d != key)

    derived = [k for k in differ if follows(k)]
    return [k for k in differ if k not in derived], derived


def value(run: Run, key: str) -> str:
    """The run's value of `key` as an override would write it (`0.001`, `true`, `null`, `[1.0]`); `{...}`
    for a node with keys under it; `-` when the run's config has no such key."""
    if key in run.config:
        found = run.config[key]
        return found if isinstance(found, str) else json.dumps(found)
    return "{...}" if any(k.startswith(key + ".") for k in run.config) else "-"


def table(runs: list[Run], keys: list[str], metric: str, per_class: bool) -> str:
    """Markdown, one column per run: the differing keys, the summary metrics any run has (percent), per-class
    IoU with `per_class`, and the best run by `metric` marked."""
    rows = [[k, *(cell(value(run, k)) for run in runs)] for k in keys]
    shown = [m for m in METRICS if any((run.metrics or {}).get(m) is not None for run in runs)]
    rows += [[SUMMARY_HEADERS[m], *(percent((run.metrics or {}).get(m)) for run in runs)] for m in shown]
    if per_class:
        classes = list(dict.fromkeys(c for run in runs for c in ((run.metrics or {}).get("per_class") or {})))
        rows += [[f"IoU {cell(c)} %", *(percent((((run.metrics or {}).get("per_class") or {}).get(c) or {}).get("iou"))
                                         for run in runs)] for c in classes]
    scores = [(run.metrics or {}).get(metric) for run in runs]
    if any(s is not None for s in scores):
        best = max((i for i, s in enumerate(scores) if s is not None), key=lambda i: scores[i])  # the first of equals
        rows.append([f"best ({SUMMARY_HEADERS[metric]})", *("*" if i == best else "" for i in range(len(runs)))])
    lines = ["| | " + " | ".join(cell(run.name) for run in runs) + " |",
             "| --- | " + " | ".join("---:" for _ in runs) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def label(run: Run, keys: list[str]) -> str:
    """A legend label: the run's name and its values of `keys`, each value cut to MAX_VALUE characters."""
    values = [value(run, k) for k in keys]
    text = ", ".join(f"{k}={v if len(v) <= MAX_VALUE else '...' + v[3 - MAX_VALUE:]}" for k, v in zip(keys, values))
    text = f"{run.name}: {text}" if text else run.name
    return text if len(text) <= MAX_LABEL else text[:MAX_LABEL - 3] + "..."


def validation_curve(run: Run, metric: str) -> tuple[list[int], list[float]]:
    """`val/<metric>` per epoch from the run's CSV log (curves.py's reading); empty without one."""
    path = run_files.csv_log(run.path)
    return per_epoch(read_log(path), f"val/{metric}") if path is not None else ([], [])


def plot(runs: list[Run], keys: list[str], metric: str, path: Path) -> list[Run]:
    """Overlay each run's validation curve of `metric` in `path`, its best epoch marked, labelled by its values
    of the `keys` that differ among the runs plotted (those with the most distinct values first); returns the
    runs without a curve (no CSV log, or no validation). Nothing is written when no run has one."""
    curves = {run.name: validation_curve(run, metric) for run in runs}
    missing = [run for run in runs if not curves[run.name][0]]
    if len(missing) == len(runs):
        return missing
    plotted = [run for run in runs if curves[run.name][0]]
    distinct = {k: len({value(run, k) for run in plotted}) for k in keys}  # among the runs plotted
    # the keys that tell most runs apart first: a label too long for the legend loses the least telling ones
    keys = sorted((k for k in keys if distinct[k] > 1), key=lambda k: -distinct[k])
    fig = Figure(figsize=(9, 5 + 0.22 * len(runs)))
    FigureCanvasAgg(fig)  # Agg: no display needed
    ax = fig.subplots()
    for run in runs:
        epochs, values = curves[run.name]
        if not epochs:
            continue
        percents = [100 * v for v in values]
        line, = ax.plot(epochs, percents, marker="o", markersize=3, linewidth=1.5, label=label(run, keys))
        finite = [i for i, p in enumerate(percents) if math.isfinite(p)]
        if finite:
            top = max(finite, key=lambda i: percents[i])  # the first of equal values
            ax.plot([epochs[top]], [percents[top]], marker="*", markersize=12, color=line.get_color(), linestyle="none")
    header = SUMMARY_HEADERS[metric]
    ax.set(title=f"validation {header.removesuffix(' %')} per epoch (* best epoch of each run)", xlabel="epoch",
           ylabel=header)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return missing


def compare(arguments: list[str], metric: str = "miou", per_class: bool = False, output: Path = Path(".")) -> str:
    """The printout of `python -m segframe.compare`: which runs, the ignored keys, the table; compare.png
    written to `output`."""
    if metric not in METRICS:
        raise ConfigError(f"metric={metric}: not a summary metric; use one of {', '.join(METRICS)}")
    paths, skipped = find_runs(arguments)
    if len(paths) < 2:
        raise MissingFileError(f"compare needs at least 2 runs and found {len(paths)}"
                               f"{': ' + str(paths[0]) if paths else ''}. Pass two or more of: {RUN_HELP}")
    runs = load(paths)
    keys, derived = differing_keys(runs)
    common = os.path.commonpath(paths)
    lines = [f"{len(runs)} runs under {common}"]
    if skipped:
        lines.append(f"skipped (files, not run directories): {', '.join(skipped)}")
    lines.append("ignored keys: " + "; ".join(f"{k} ({why})" for k, why in IGNORED.items()))
    lines.append(f"keys that differ: {', '.join(keys)}" if keys else "no config key differs between the runs")
    if derived:
        lines.append(f"not shown, they follow the keys above through an interpolation: {', '.join(derived)}")
    unfinished = [run.name for run in runs if run.metrics is None]
    if unfinished:
        lines.append(f"no metrics.json (failed or still running): {', '.join(unfinished)}")
    lines += ["", table(runs, keys, metric, per_class)]
    picture = output / COMPARE
    missing = plot(runs, keys, metric, picture)
    if len(missing) == len(runs):
        lines.append(f"no {COMPARE}: no run has val/{metric} in a CSV log (trained with logger=none?)")
    else:
        if missing:
            lines.append(f"no val/{metric} curve (no CSV log, or no validation): {', '.join(r.name for r in missing)}")
        lines.append(f"wrote {picture}")
    return "\n".join(lines)
