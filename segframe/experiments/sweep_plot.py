"""A sweep's summary.png: the sweep's metric against each parameter that varied across its runs, one
panel per parameter, the best run marked and every failed run shown as failed (a red x at the foot of
the axis), never dropped. `panels` is what is drawn, as data (tests and other tools read it there).

Axes: a log axis for learning rates and weight decays (keys ending in `lr` or `weight_decay`) and for
any numeric parameter whose positive values span more than 2 decades (a value <= 0 there, such as a
failed lr=-1, is drawn left of the others with its value beside it); a categorical one for values that
are not numbers (`model=fcn8s,unet`), or that some run does not set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation

from segframe.core.metric_names import SUMMARY_HEADERS

NOT_SET = "(not set)"  # the value of a parameter that a run's overrides do not name
LOG_KEYS = ("lr", "weight_decay")  # a key ending in one of these gets a log axis (when its values are > 0)


@dataclass
class Point:
    run: str
    x: float  # the parameter's value, or its category's index on a categorical axis
    y: float | None  # the metric in percent; None when the run has none
    status: str  # "ok" or "failed"
    best: bool = False


@dataclass
class Panel:
    key: str
    scale: str  # "log", "linear" or "category"
    points: list[Point]
    categories: list[str] = field(default_factory=list)  # the tick labels of a categorical axis


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _scale(key: str, numbers: list[float]) -> str:
    """log for a learning rate, a weight decay or positive values spanning more than 2 decades; else linear."""
    positive = [n for n in numbers if n > 0]
    return "log" if positive and (key.endswith(LOG_KEYS) or max(positive) / min(positive) > 100) else "linear"


def position(panel: Panel, x: float) -> float:
    """Where a value is drawn: itself, except a value <= 0 on a log axis (an lr=-1 that failed, an lr=0),
    drawn half a decade left of the smallest positive one and labelled with its value."""
    if panel.scale != "log" or x > 0:
        return x
    return min(p.x for p in panel.points if p.x > 0) / 10 ** 0.5


class _LabelsFrom(LogFormatterSciNotation):
    """A log axis's tick labels from `edge` on: left of it are the values drawn out of place."""

    def __init__(self, edge: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.edge = edge

    def __call__(self, x: float, pos: int | None = None) -> str:
        return "" if x < self.edge else super().__call__(x, pos)


def panels(rows: Sequence[dict[str, Any]], varied: Sequence[str], metric: str) -> list[Panel]:
    """One panel per varied key (a single panel over the runs when nothing varied). `rows` are
    summarize()'s: run, status, best, the metric (a fraction) and `params` ({key: value as written})."""
    def point(row: dict[str, Any], x: float) -> Point:
        y = row.get(metric)
        return Point(str(row["run"]), x, None if y is None else 100.0 * float(y), row["status"], row["best"] == "*")

    if not varied:
        return [Panel("run", "category", [point(r, i) for i, r in enumerate(rows)], [str(r["run"]) for r in rows])]
    result = []
    for key in varied:
        values = [r["params"].get(key) for r in rows]
        numbers = [_number(v) for v in values]
        if all(n is not None for n in numbers):
            result.append(Panel(key, _scale(key, numbers), [point(r, n) for r, n in zip(rows, numbers)]))
            continue
        labels = [NOT_SET if v is None else v for v in values]
        categories = list(dict.fromkeys(labels))
        result.append(Panel(key, "category", [point(r, categories.index(v)) for r, v in zip(rows, labels)],
                            categories))
    return result


def draw(drawn: Sequence[Panel], metric: str) -> Figure:
    """The figure of `drawn`: per panel, the runs with the metric as dots (a line through them when each
    value was run once), the best as a star, runs without the metric as crosses below every score."""
    label = SUMMARY_HEADERS.get(metric, metric)
    columns = min(3, len(drawn))
    rows = math.ceil(len(drawn) / columns)
    fig = Figure(figsize=(4.6 * columns, 3.6 * rows), layout="constrained")
    scored = [p.y for p in drawn[0].points if p.y is not None] or [0.0, 100.0]
    span = max(max(scored) - min(scored), 1.0)
    foot = min(scored) - 0.12 * span  # where runs without the metric are drawn, below every score
    for i, panel in enumerate(drawn):
        ax = fig.add_subplot(rows, columns, i + 1)
        at = lambda points: [position(panel, p.x) for p in points]  # noqa: E731
        ok = sorted((p for p in panel.points if p.y is not None), key=lambda p: p.x)
        if ok:
            line = [p for p in ok if position(panel, p.x) == p.x]  # not through a value drawn out of place
            if len({p.x for p in line}) == len(line) and panel.scale != "category":
                ax.plot([p.x for p in line], [p.y for p in line], color="tab:blue", alpha=0.35, linewidth=1)
            ax.scatter(at(ok), [p.y for p in ok], color="tab:blue", zorder=3, label="run")
        for best in (p for p in ok if p.best):
            ax.scatter(at([best]), [best.y], marker="*", s=260, color="gold", edgecolor="black", zorder=4,
                       label=f"best: run {best.run} ({best.y:.2f})")
        for status, colour, name in (("failed", "tab:red", "failed"), ("ok", "tab:gray", f"no {label}")):
            missing = [p for p in panel.points if p.y is None and p.status == status]
            if missing:
                runs = ", ".join(p.run for p in missing[:8]) + (", ..." if len(missing) > 8 else "")
                ax.scatter(at(missing), [foot] * len(missing), marker="x", s=80, linewidths=2,
                           color=colour, zorder=5, label=f"{name} ({len(missing)}): run {runs}")
        aside = [p for p in panel.points if position(panel, p.x) != p.x]
        for p in aside:  # labelled with their value, left of a dotted line, under no tick label
            ax.annotate(f"{panel.key.rsplit('.', 1)[-1]}={p.x:g}", (position(panel, p.x), foot if p.y is None else p.y),
                        fontsize=8, textcoords="offset points", xytext=(0, 7), ha="center")
        if panel.scale == "category":
            long = max(map(len, panel.categories)) > 8
            ax.set_xticks(range(len(panel.categories)), panel.categories,
                          **({"rotation": 30, "ha": "right"} if long else {}))
            ax.set_xlim(-0.5, len(panel.categories) - 0.5)
        else:
            ax.set_xscale(panel.scale)
        if aside:
            edge = min(p.x for p in panel.points if p.x > 0) / 10 ** 0.25
            ax.axvline(edge, color="tab:gray", linestyle=":", linewidth=1)
            ax.xaxis.set_major_formatter(_LabelsFrom(edge))
            ax.xaxis.set_minor_formatter(_LabelsFrom(edge, labelOnlyBase=False))
        ax.set_ylim(foot - 0.06 * span, max(scored) + 0.08 * span)
        ax.set_xlabel(panel.key)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    handles, names = fig.axes[0].get_legend_handles_labels()  # the same runs in every panel: one legend
    fig.legend(handles, names, loc="outside lower center", ncols=min(3, len(names)), fontsize=8)
    failed = sum(p.status == "failed" for p in drawn[0].points)
    fig.suptitle(f"{label} of {len(drawn[0].points)} runs" + (f" ({failed} failed)" if failed else ""))
    return fig


def write(rows: Sequence[dict[str, Any]], varied: Sequence[str], metric: str, path: Path) -> list[Panel]:
    """Draw summary.png at `path`; returns the panels drawn."""
    drawn = panels(rows, varied, metric)
    draw(drawn, metric).savefig(path, dpi=100)
    return drawn
