"""`curves.png` of a run, rebuilt from its CSV log (`logs/metrics.csv`): the training loss per step
(smoothed, the raw values faint), the validation mIoU and mDice per epoch with the best epoch marked,
and the learning rate per step.

The best epoch is the one the run's best checkpoint took: by `checkpoint.monitor` and
`checkpoint.mode` of its config (val/miou, max by default), the first of equal values, as
ModelCheckpoint keeps it. A resumed run appends to the same CSV (resume.py): a step or epoch logged
twice is plotted once, the later value winning. `comparison.py` reads validation curves through
`read_log` and `per_epoch` here.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from segframe.core.metric_names import SUMMARY_HEADERS
from segframe.evaluation import run_files

log = logging.getLogger("segframe")

CURVES = "curves.png"
LOSS_COLUMNS = ("train/loss_step", "train/loss")  # logged on_step and on_epoch: Lightning adds `_step`
VAL_COLUMNS = ("val/miou", "val/mdice")
DEFAULT_MONITOR, DEFAULT_MODE = "val/miou", "max"
Series = tuple[list[int], list[float]]  # x (step or epoch), y


@dataclass
class Best:
    epoch: int
    value: float
    monitor: str
    mode: str


@dataclass
class CurveData:
    """What curves.png plots, each series as logged (fractions, not percent)."""
    csv: Path
    loss: Series                                          # train loss per step
    loss_smooth: list[float]                              # its EMA (smooth())
    val: dict[str, Series] = field(default_factory=dict)  # val/miou, val/mdice per epoch (those logged)
    lr: dict[str, Series] = field(default_factory=dict)   # lr-* per step; param groups with equal values merged
    best: Best | None = None


def read_log(path: Path) -> list[dict[str, str]]:
    """The rows of a CSVLogger file, in the order written (a header repeated by an appending writer is skipped)."""
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("step") != "step"]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _series(rows: list[dict[str, str]], column: str, by: str) -> Series:
    """`column` against `by` (`step` or `epoch`): each x once, the later row winning (a resumed run's
    log may repeat what the killed process logged), sorted by x."""
    values: dict[int, float] = {}
    for row in rows:
        x, y = _number(row.get(by)), _number(row.get(column))
        if x is not None and y is not None:
            values[int(x)] = y
    xs = sorted(values)
    return xs, [values[x] for x in xs]


def per_step(rows: list[dict[str, str]], column: str) -> Series:
    return _series(rows, column, "step")


def per_epoch(rows: list[dict[str, str]], column: str) -> Series:
    return _series(rows, column, "epoch")


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """TensorBoard's smoothing: a debiased exponential moving average. `weight` defaults to one that
    grows with the series (0.6 for a few dozen points, up to 0.98 for thousands); values that are not
    finite (a diverged step) are left out of the average."""
    if weight is None:
        weight = min(0.98, max(0.6, 1 - 10 / max(len(values), 1)))
    out, average, norm = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            average, norm = weight * average + (1 - weight) * v, weight * norm + (1 - weight)
        out.append(average / norm if norm else float("nan"))
    return out


def _learning_rates(rows: list[dict[str, str]]) -> dict[str, Series]:
    """LearningRateMonitor's `lr-OPTIMIZER[/pgN]` columns per step; groups with the same values share a line."""
    columns = sorted({c for row in rows[:1] for c in row if c and c.startswith("lr-")})
    merged: dict[tuple, list[str]] = {}
    series = {c: per_step(rows, c) for c in columns}
    for c, s in series.items():
        if s[0]:
            merged.setdefault((tuple(s[0]), tuple(s[1])), []).append(c)
    return {_lr_label(names): series[names[0]] for names in merged.values()}


def _lr_label(columns: list[str]) -> str:
    if len(columns) == 1:
        return columns[0].removeprefix("lr-")
    optimizer = columns[0].removeprefix("lr-").split("/")[0]
    return f"{optimizer} ({', '.join(c.rsplit('/', 1)[-1] for c in columns)})"


def best_epoch(rows: list[dict[str, str]], cfg: dict[str, Any]) -> Best | None:
    """The epoch the best checkpoint took: by the config's checkpoint.monitor / mode when the log has that
    column, else by val/miou (max); the first of equal values (ModelCheckpoint keeps the first)."""
    checkpoint = cfg.get("checkpoint") or {}
    monitor, mode = checkpoint.get("monitor") or DEFAULT_MONITOR, checkpoint.get("mode") or DEFAULT_MODE
    epochs, values = per_epoch(rows, monitor)
    if not epochs and monitor != DEFAULT_MONITOR:
        log.info("curves: checkpoint.monitor=%s is not in the CSV log; marking the best epoch by %s", monitor,
                 DEFAULT_MONITOR)
        monitor, mode = DEFAULT_MONITOR, DEFAULT_MODE
        epochs, values = per_epoch(rows, monitor)
    finite = [(e, v) for e, v in zip(epochs, values) if math.isfinite(v)]
    if not finite:
        return None
    pick = max if mode == "max" else min
    target = pick(v for _, v in finite)
    epoch = next(e for e, v in finite if v == target)
    return Best(epoch=epoch, value=target, monitor=monitor, mode=mode)


def curve_data(run_dir: Path) -> CurveData | None:
    """The series curves.png plots, read from the run's CSV log; None (and why, at info level) when the run
    has no CSV log or no validation metrics in it (a warning when the log cannot be read)."""
    run_dir = Path(run_dir)
    cfg = run_files.config(run_dir)
    path = run_files.csv_log(run_dir, cfg)
    if path is None:
        log.info("no %s for %s: the run has no CSV log (the logger group has no CSVLogger, e.g. logger=none)",
                 CURVES, run_dir)
        return None
    try:
        rows = read_log(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:  # a damaged log must not fail the run it ends
        log.warning("no %s for %s: %s cannot be read (%s: %s)", CURVES, run_dir, path, type(exc).__name__, exc)
        return None
    val = {c: per_epoch(rows, c) for c in VAL_COLUMNS}
    val = {c: s for c, s in val.items() if s[0]}
    if not val:
        log.info("no %s for %s: %s holds no validation metrics (%s)", CURVES, run_dir, path, ", ".join(VAL_COLUMNS))
        return None
    loss = next((s for s in (per_step(rows, c) for c in LOSS_COLUMNS) if s[0]), ([], []))
    return CurveData(csv=path, loss=loss, loss_smooth=smooth(loss[1]), val=val, lr=_learning_rates(rows),
                     best=best_epoch(rows, cfg))


def _header(column: str) -> str:
    """`val/miou` -> `mIoU %` (the tables' header), any other column as it is."""
    return SUMMARY_HEADERS.get(column.removeprefix("val/"), column)


def plot(data: CurveData, path: Path, title: str) -> None:
    """Draw `data` as three panels side by side (loss | validation | learning rate) into `path`."""
    fig = Figure(figsize=(15, 4.2))
    FigureCanvasAgg(fig)  # Agg, not pyplot: no display, no global backend switch, nothing to close
    loss_ax, val_ax, lr_ax = fig.subplots(1, 3)
    steps, raw = data.loss
    if steps:
        loss_ax.plot(steps, raw, color="tab:blue", alpha=0.25, linewidth=1, label="per step")
        loss_ax.plot(steps, data.loss_smooth, color="tab:blue", linewidth=2, label="smoothed (EMA)")
        loss_ax.legend(loc="best", fontsize=8)
    else:
        loss_ax.text(0.5, 0.5, "no training loss logged", ha="center", va="center", transform=loss_ax.transAxes)
    loss_ax.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    for column, colour in zip(data.val, ("tab:green", "tab:orange")):
        epochs, values = data.val[column]
        val_ax.plot(epochs, [100 * v for v in values], marker="o", markersize=4, color=colour, label=_header(column))
    if data.best is not None:
        best = data.best
        shown = best.monitor in data.val
        val_ax.axvline(best.epoch, color="grey", linestyle="--", linewidth=1)
        value = f"{100 * best.value:.2f} %" if shown else f"{best.value:.4g}"
        label = f"best: epoch {best.epoch} ({_header(best.monitor).removesuffix(' %')} {value}, {best.mode})"
        if shown:
            val_ax.plot([best.epoch], [100 * best.value], marker="*", markersize=16, color="crimson",
                        linestyle="none", label=label, zorder=5)
        else:
            val_ax.plot([], [], color="grey", linestyle="--", label=label)
    val_ax.set(title="validation", xlabel="epoch", ylabel="%")
    val_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    val_ax.legend(loc="best", fontsize=8)
    for label, (lr_steps, rates) in data.lr.items():
        lr_ax.plot(lr_steps, rates, linewidth=1.5, label=label)
    if data.lr:
        lr_ax.legend(loc="best", fontsize=8)
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    else:
        lr_ax.text(0.5, 0.5, "no learning rate logged\n(callbacks.lr_monitor)", ha="center", va="center",
                   transform=lr_ax.transAxes)
    lr_ax.set(title="learning rate", xlabel="optimizer step")
    for ax in (loss_ax, val_ax, lr_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_curves(run_dir: Path) -> Path | None:
    """Rebuild `<run_dir>/curves.png` from the run's CSV log; its path, or None when there is nothing to plot."""
    run_dir = Path(run_dir)
    data = curve_data(run_dir)
    if data is None:
        return None
    path = run_dir / CURVES
    partial = path.with_name(f".{CURVES}.partial.png")  # a reader sees the old picture or the new one
    plot(data, partial, f"{run_dir}  ({data.csv.relative_to(run_dir)})")
    partial.replace(path)
    return path
