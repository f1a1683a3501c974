"""Hydra callback: at the end of a multirun, one table of every run's overrides and metrics."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from segframe.metrics import summary_keys
from segframe.report import percent

log = logging.getLogger(__name__)


def summarize(sweep_dir: str | Path, metric: str = "miou") -> list[dict[str, Any]]:
    """Collect `<run>/metrics.json` + `<run>/.hydra/overrides.yaml`; write summary.{md,csv}; best marked."""
    sweep_dir = Path(sweep_dir)
    rows = []
    runs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    for run in sorted(runs, key=lambda p: (int(p.name), "") if p.name.isdigit() else (1 << 30, p.name)):
        overrides_file = run / ".hydra" / "overrides.yaml"
        overrides = " ".join(OmegaConf.load(overrides_file)) if overrides_file.is_file() else ""
        row: dict[str, Any] = {"run": run.name, "overrides": overrides, "status": "failed"}
        if (run / "metrics.json").is_file():
            m = json.loads((run / "metrics.json").read_text())
            row.update({k: m.get(k) for k in summary_keys()}, status="ok")
        rows.append(row)
    scored = [r for r in rows if r.get(metric) is not None]
    best = max(scored, key=lambda r: r[metric]) if scored else None
    fields = ["run", "overrides", "status", *summary_keys(), "best"]
    for r in rows:
        r["best"] = "*" if r is best else ""
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| run | overrides | mIoU % | mean acc % | pixel acc % | fwIoU % | best |",
             "| --- | --- | ---: | ---: | ---: | ---: | :-: |"]
    for r in rows:
        cells = [percent(r.get(k)) for k in summary_keys()] if r["status"] == "ok" else ["failed", "", "", ""]
        lines.append(f"| {r['run']} | {r['overrides']} | " + " | ".join(cells) + f" | {r['best']} |")
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            summarize(sweep_dir)
            log.info("sweep summary:\n%s", (sweep_dir / "summary.md").read_text())
