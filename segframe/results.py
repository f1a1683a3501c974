"""`python -m segframe.results [--check]`: the README's results table and model comparison,
generated from the experiment files (what each reports) and experiments/results/*.json (what
`segframe.reproduce` measured). Never typed by hand: `--check` exits 1 when the README differs
from what this makes.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from segframe.metric_names import image_summary_keys, summary_keys
from segframe.paths import EXPERIMENTS_DIR, REPO_ROOT

START, END = "<!-- results:start -->", "<!-- results:end -->"
METRICS = tuple(summary_keys())  # "-" where a reference or a run lacks one (runs before mDice existed)
# per image (the medical convention): shown after the dataset-level ones, only in the rows of references
# that name one (in mean, minimum or tolerance), e.g. a polyp recipe judged on mdice_img
IMAGE_METRICS = tuple(image_summary_keys())


def _pct(v: Any) -> str:
    return "-" if v is None else f"{float(v):.2f}"


def _per_image(values: dict[str, Any]) -> str:
    """'; per image mIoU / mDice: a / b' (percent), or '' when `values` holds no per-image number."""
    if all(values.get(m) is None for m in IMAGE_METRICS):
        return ""
    names = " / ".join({"miou_img": "mIoU", "mdice_img": "mDice"}.get(m, m) for m in IMAGE_METRICS)
    return f"; per image {names}: " + " / ".join(_pct(values.get(m)) for m in IMAGE_METRICS)


def row(name: str, experiment: Any, result: dict[str, Any] | None) -> str:
    ref = experiment.reference
    reported = " / ".join(_pct(ref.get("mean", {}).get(m)) for m in METRICS)
    if ref.get("minimum"):
        reported = ", ".join(f"{m} >= {_pct(v)}" for m, v in ref.minimum.items()) + " (expected)"
    reported += _per_image(ref.get("mean") or {})
    names_image = any(m in (ref.get(part) or {}) for part in ("mean", "minimum", "tolerance") for m in IMAGE_METRICS)
    if result is None:
        why = ref.get("not_reproduced", "not run yet")
        reproduced, diff, status, wall = f"not reproduced ({why})", "-", "-", "-"
    else:
        from segframe.reproduce import compare

        metrics = compare(ref, result["runs"])  # against the reference as it stands now
        seeds = ", ".join(_pct(v) for v in metrics["miou"]["per_seed"])
        reproduced = " / ".join(_pct(metrics[m]["reproduced"]) for m in METRICS)
        if names_image:
            reproduced += _per_image({m: metrics[m]["reproduced"] for m in IMAGE_METRICS if m in metrics})
        reproduced += f" (mIoU per seed: {seeds})"
        diff = "-" if metrics["miou"]["diff"] is None else f"{metrics['miou']['diff']:+.2f}"
        # every metric compare() judged: the dataset-level ones and the per-image ones
        verdicts = [metrics[m]["within"] for m in metrics if metrics[m]["within"] is not None]
        tolerances = ", ".join([f"{m} ±{metrics[m]['tolerance']}" for m in metrics if metrics[m]["tolerance"] is not None]
                               + [f"{m} >= {metrics[m]['minimum']}" for m in metrics if metrics[m]["minimum"] is not None])
        status = ("within tolerance" if all(verdicts) else "OUTSIDE tolerance") + f" ({tolerances})" if verdicts \
            else "no tolerance"
        walls = [w for w in result.get("wall_s", []) if w is not None]
        wall = f"{statistics.fmean(walls):.0f} s ({result['machine'].get('device', '?')}, {result['date']})" if walls \
            else "-"
    return (f"| `{name}` | {ref.get('recipe', '')} | {ref.get('data', '')} | {reported} | {ref.get('source', '')} | "
            f"{reproduced} | {diff} | {status} | {wall} |")


def table(experiments_dir: Path = EXPERIMENTS_DIR) -> str:
    lines = [
        "| experiment | recipe | evaluated on | reported mIoU / mDice / mean acc / pixel acc / fwIoU % | source of the reported "
        "numbers | reproduced here (mean over seeds) | Δ mIoU | verdict | wall time per run |",
        "| --- | --- | --- | --- | --- | --- | ---: | --- | --- |",
    ]
    for path in sorted(experiments_dir.glob("*.yaml")):
        experiment = OmegaConf.load(path)
        if experiment.get("reference") is None:
            continue
        result_file = experiments_dir / "results" / f"{path.stem}.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else None
        lines.append(row(path.stem, experiment, result))
    return "\n".join(lines) + "\n"


def comparison_table(experiments_dir: Path = EXPERIMENTS_DIR) -> str:
    """The experiments that carry `comparison:` (the same data, recipe and CPU time budget, one
    model family each), best mean mIoU first: what each model reaches and what it costs."""
    lines = ["| experiment | model | parameters | GFLOPs / image | train img/s | steps | fit s | mIoU % (per seed) "
             "| mDice % | wall time per run |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    rows = []
    for path in sorted(experiments_dir.glob("*.yaml")):
        experiment = OmegaConf.load(path)
        if not experiment.get("comparison"):
            continue
        result_file = experiments_dir / "results" / f"{path.stem}.json"
        runs = [r for r in json.loads(result_file.read_text())["runs"] if r.get("ok")] if result_file.is_file() else []

        def mean(key: str, scale: float = 1.0) -> float | None:
            values = [scale * r[key] for r in runs if r.get(key) is not None]
            return statistics.fmean(values) if values else None

        miou = mean("miou", 100)
        gflops, size = mean("model_gflops"), next((r["model_gflops_at"] for r in runs if r.get("model_gflops_at")), None)
        cells = [f"`{path.stem}`", experiment.comparison.get("model", ""),
                 "-" if mean("model_parameters") is None else f"{mean('model_parameters') / 1e6:.2f}M",
                 "-" if gflops is None else f"{gflops:.2f}" + (f" ({size[0]}x{size[1]})" if size else ""),
                 _pct(mean("train_images_per_s")), _pct(mean("steps")).removesuffix(".00"),
                 "-" if mean("fit_seconds") is None else f"{mean('fit_seconds'):.0f}",
                 "not run yet" if miou is None else
                 f"**{miou:.2f}** ({', '.join(_pct(None if r.get('miou') is None else 100 * r['miou']) for r in runs)})",
                 _pct(mean("mdice", 100)), "-" if mean("wall_s") is None else f"{mean('wall_s'):.0f} s"]
        rows.append((-(miou if miou is not None else -1.0), "| " + " | ".join(cells) + " |"))
    return "\n".join(lines + [r for _, r in sorted(rows)]) + "\n"


TABLES = {  # README markers -> the generator of what goes between them
    (START, END): table,
    ("<!-- comparison:start -->", "<!-- comparison:end -->"): comparison_table,
}


def render(readme: str, generated: str, markers: tuple[str, str] = (START, END)) -> str:
    start, end = markers
    if start not in readme or end not in readme:
        raise ValueError(f"README.md has no {start} ... {end} markers for a generated table")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{generated}{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    readme_path = REPO_ROOT / "README.md"
    readme = readme_path.read_text()
    updated = readme
    for markers, generate in TABLES.items():
        updated = render(updated, generate(), markers)
    if "--check" in args:
        if updated != readme:
            print("README.md's results tables are out of date: run `python -m segframe.results`", file=sys.stderr)
            return 1
        print("README.md's results tables are up to date")
        return 0
    readme_path.write_text(updated)
    print(f"updated the results tables in {readme_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
