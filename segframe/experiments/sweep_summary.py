"""A sweep's summary, written when its last job ends: one table of every run's parameters and
metrics (summary.md: the parameters that varied; summary.csv: every override too) and a plot of the
metric against each varied parameter (summary.png, segframe.experiments.sweep_plot)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from segframe.core.cli import FAILURE
from segframe.core.metric_names import SUMMARY_HEADERS, image_summary_keys, percent, summary_keys
from segframe.experiments import sweep_plot

OPTUNA_RESULTS = "optimization_results.yaml"  # written by hydra-optuna-sweeper in the sweep dir


def parameters(overrides: list[str]) -> dict[str, str]:
    """A run's overrides as {key: value as written}: `optimizer.lr=0.01` -> {"optimizer.lr": "0.01"},
    `+a.b=1` -> {"a.b": "1"}, `~a` -> {"a": "(deleted)"}."""
    pairs = (o.split("=", 1) if "=" in o else [o, "(deleted)"] for o in overrides)
    return {key.lstrip("+~"): value for key, value in pairs}


def varied_keys(params: list[dict[str, str]]) -> list[str]:
    """The keys whose value differs between runs (or that some run does not set), in order of appearance."""
    keys = dict.fromkeys(k for p in params for k in p)
    return [k for k in keys if len({p.get(k) for p in params}) > 1]


def cell(value: Any) -> str:
    """`value` as a markdown table cell (its pipes escaped)."""
    return str(value).replace("|", "\\|")


def summarize(sweep_dir: str | Path, metric: str = "miou") -> list[dict[str, Any]]:
    """Collect `<run>/metrics.json` + `<run>/.hydra/overrides.yaml`; write summary.{md,csv,png}, the best
    (by `metric`) marked: the csv with every override, the md and png with the parameters that varied."""
    sweep_dir = Path(sweep_dir)
    rows = []
    columns = [*summary_keys(), *image_summary_keys()]  # dataset-level, then per image (medical convention)
    runs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    for run in sorted(runs, key=lambda p: (int(p.name), "") if p.name.isdigit() else (1 << 30, p.name)):
        overrides_file = run / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        row: dict[str, Any] = {"run": run.name, "overrides": " ".join(overrides), "params": parameters(overrides),
                               "status": "failed", "reason": ""}
        if (run / "metrics.json").is_file():
            m = json.loads((run / "metrics.json").read_text())
            row.update({k: m.get(k) for k in columns}, status="ok")
        elif (run / FAILURE).is_file():
            row["reason"] = (run / FAILURE).read_text().strip()
        else:  # a job killed from outside (out of memory, a scheduler's time limit) records nothing
            row["reason"] = f"no metrics.json and no recorded error: killed, or still running? see {run.name}/*.log"
        rows.append(row)
    scored = [r for r in rows if r.get(metric) is not None]
    best = max(scored, key=lambda r: r[metric]) if scored else None
    varied = varied_keys([r["params"] for r in rows])
    for r in rows:
        r["best"] = "*" if r is best else ""
        r.update({k: r["params"].get(k, "") for k in varied if k not in r})
    fields = ["run", "overrides", *varied, "status", "reason", *columns, "best"]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(fields)), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (sweep_dir / "summary.md").write_text("\n".join(_table(rows, varied, columns) + _optuna_best(sweep_dir)) + "\n")
    sweep_plot.write(rows, varied, metric, sweep_dir / "summary.png")
    return rows


def _table(rows: list[dict[str, Any]], varied: list[str], columns: list[str]) -> list[str]:
    """summary.md's table: one column per varied parameter, then the scores; what every run shares below it."""
    lines = ["| run | " + "".join(f"{cell(k)} | " for k in varied) + " | ".join(SUMMARY_HEADERS[k] for k in columns)
             + " | best |", "| --- | " + "--- | " * len(varied) + " | ".join("---:" for _ in columns) + " | :-: |"]
    for r in rows:
        failed = "failed: " + cell(r["reason"])
        cells = [percent(r.get(k)) for k in columns] if r["status"] == "ok" else [failed] + [""] * (len(columns) - 1)
        params = "".join(f"{cell(r['params'].get(k, sweep_plot.NOT_SET))} | " for k in varied)
        lines.append(f"| {r['run']} | {params}" + " | ".join(cells) + f" | {r['best']} |")
    shared = {k: v for k, v in (rows[0]["params"] if rows else {}).items() if k not in varied}
    if shared:
        lines += ["", "Every run: `" + " ".join(f"{k}={v}" for k, v in shared.items()) + "`"]
    return lines


def _optuna_best(sweep_dir: Path) -> list[str]:
    if not (sweep_dir / OPTUNA_RESULTS).is_file():
        return []
    result = OmegaConf.to_container(OmegaConf.load(sweep_dir / OPTUNA_RESULTS))
    if not (isinstance(result, dict) and "best_params" in result):
        return []
    params = " ".join(f"{k}={v}" for k, v in result["best_params"].items())
    return ["", f"Optuna best ({OPTUNA_RESULTS}): {params} -> {percent(result.get('best_value'))} mIoU %"]
