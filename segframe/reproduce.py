"""`python -m segframe.reproduce experiment=NAME [seeds=0,1] [out=DIR] [train overrides...]`

Trains the experiment once per seed (each run is `python -m segframe.train experiment=NAME
seed=K`, in its own process), first training the earlier stages of a staged chain
(`parent_experiment`) whose checkpoints are missing; then prints reported vs reproduced per
metric, writes `experiments/results/NAME.json`, and exits 1 when a metric with a tolerance
misses it (or a run fails).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segframe.metric_names import image_summary_keys, summary_keys
from segframe.paths import EXPERIMENTS_DIR

# dataset-level, then per image (miou_img, mdice_img: the polyp papers' convention), recorded per run
# and judged alike; a reference may lack some (e.g. mdice): those print "-" and judge nothing
METRICS = (*summary_keys(), *image_summary_keys())


def experiments_dir() -> Path:
    """experiments/ of the checkout, or $SEGFRAME_EXPERIMENTS (your own, found by train through
    `hydra.searchpath=[file://DIR/..]` with the files in DIR = <that>/experiment)."""
    return Path(os.environ.get("SEGFRAME_EXPERIMENTS", EXPERIMENTS_DIR))


def load_experiment(name: str) -> DictConfig:
    path = experiments_dir() / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in experiments_dir().glob("*.yaml"))
        raise FileNotFoundError(f"no experiment {name!r} ({path} is missing); experiments: {', '.join(known)}")
    return OmegaConf.load(path)


STAMP = "reproduce.json"
SIZE_KEYS = ("fit_seconds", "train_images_per_s", "model_parameters", "model_gflops", "model_gflops_at")


def _finished(run_dir: Path, name: str, seed: int, overrides: list[str]) -> Path | None:
    """The evaluated checkpoint of a finished run of this experiment, seed and overrides, if any:
    a parent stage is reused only when it is exactly what this reproduction would train."""
    stamp, metrics = run_dir / STAMP, run_dir / "metrics.json"
    if not (stamp.is_file() and metrics.is_file()):
        return None
    if json.loads(stamp.read_text()) != {"experiment": name, "seed": seed, "overrides": overrides}:
        return None
    checkpoint = Path(json.loads(metrics.read_text()).get("checkpoint", ""))
    return checkpoint if checkpoint.is_file() else None


def train_run(name: str, seed: int, out: Path, overrides: list[str], log: Any = print,
              chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """One seed of one experiment (its parent stages first, unless a finished run of the same
    parent, seed and overrides is there). Returns {seed, metrics..., wall_s, run_dir, ok}."""
    if name in chain:
        raise ValueError(f"parent_experiment forms a cycle: {' -> '.join(chain + (name,))}")
    run_dir = out / name / f"seed{seed}"
    extra = []
    parent = load_experiment(name).get("parent_experiment")
    if parent:
        parent_dir = out / parent / f"seed{seed}"
        parent_ckpt = _finished(parent_dir, parent, seed, overrides)
        if parent_ckpt is None:
            log(f"{name} seed {seed}: stage {parent} has no finished run here yet; training it first")
            if not train_run(parent, seed, out, overrides, log, chain + (name,))["ok"]:
                return {"seed": seed, "ok": False, "run_dir": str(run_dir), "error": f"stage {parent} failed"}
            parent_ckpt = _finished(parent_dir, parent, seed, overrides)
        extra.append(f"model.init_from={parent_ckpt}")
    command = [sys.executable, "-m", "segframe.train", f"experiment={name}", f"seed={seed}",
               f"hydra.run.dir={run_dir}", *extra, *overrides]
    if run_dir.exists():  # never read a checkpoint or metrics.json left by an earlier run
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    log(f"{name} seed {seed}: training -> {run_dir} (log: {run_dir / 'reproduce.log'})")
    start = time.time()
    with open(run_dir / "reproduce.log", "w") as log_file:
        code = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT).returncode
    wall = round(time.time() - start, 1)
    metrics_file = run_dir / "metrics.json"
    if code != 0 or not metrics_file.is_file():
        log(f"{name} seed {seed}: FAILED (exit {code}); see {run_dir / 'reproduce.log'}")
        return {"seed": seed, "ok": False, "run_dir": str(run_dir), "wall_s": wall, "error": f"exit {code}"}
    (run_dir / STAMP).write_text(json.dumps({"experiment": name, "seed": seed, "overrides": overrides}))
    metrics = json.loads(metrics_file.read_text())
    log(f"{name} seed {seed}: mIoU {100 * (metrics['miou'] or 0):.2f} in {wall:.0f} s")
    return {"seed": seed, "ok": True, "run_dir": str(run_dir), "wall_s": wall,
            "git_commit": metrics.get("git_commit"), "steps": metrics.get("steps"),
            "init_from": extra[0].split("=", 1)[1] if extra else None, **{k: metrics.get(k) for k in METRICS},
            # what the model costs (README "Model comparison"); absent from runs made before they were recorded
            **{k: metrics.get(k) for k in SIZE_KEYS if k in metrics}}


def compare(reference: DictConfig | None, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Reproduced mean / spread per metric (percent) against the reference and its tolerance."""
    done = [r for r in runs if r["ok"]]
    rows = {}
    for metric in METRICS:
        values = [100 * r[metric] for r in done if r.get(metric) is not None]
        mean = round(statistics.fmean(values), 2) if values else None
        ref = reference if reference is not None else {}
        reported = (ref.get("mean") or {}).get(metric)
        tolerance = (ref.get("tolerance") or {}).get(metric)
        minimum = (ref.get("minimum") or {}).get(metric)  # an expectation: at least this much
        diff = round(mean - reported, 2) if mean is not None and reported is not None else None
        verdicts = ([abs(diff) <= tolerance] if tolerance is not None and diff is not None else []) + \
            ([mean >= minimum] if minimum is not None and mean is not None else [])
        rows[metric] = {
            "reported": reported, "reproduced": mean, "per_seed": [round(v, 2) for v in values],
            "spread": round(max(values) - min(values), 2) if values else None, "diff": diff,
            "tolerance": tolerance, "minimum": minimum, "within": all(verdicts) if verdicts else None,
        }
    return rows


def print_table(name: str, rows: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    print(f"\n{name}: reported vs reproduced (percent)")
    print(f"{'metric':<10} {'reported':>9} {'reproduced':>11} {'diff':>7} {'tolerance':>9}  per seed")
    for metric, row in rows.items():
        verdict = {True: "ok", False: "MISS", None: ""}[row["within"]] + \
            (f" (at least {row['minimum']:.2f})" if row.get("minimum") is not None else "")
        diff = "-" if row["diff"] is None else f"{row['diff']:+.2f}"
        print(f"{metric:<10} {fmt(row['reported']):>9} {fmt(row['reproduced']):>11} {diff:>7} "
              f"{fmt(row['tolerance']):>9}  {row['per_seed']} {verdict}")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0 if args else 2
    options = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.split("=", 1)[0] in ("experiment", "seeds", "out")}
    overrides = [a for a in args if a.split("=", 1)[0] not in options]
    if "experiment" not in options:
        print("error: say which experiment: python -m segframe.reproduce experiment=NAME", file=sys.stderr)
        return 2
    name = options["experiment"]
    try:
        experiment = load_experiment(name)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reference = experiment.get("reference")
    try:
        seeds = [int(s) for s in options["seeds"].strip("[]").split(",")] if "seeds" in options else \
            [int(s) for s in (reference.get("seeds", [0]) if reference is not None else [0])]
    except ValueError:
        print(f"error: seeds must be integers, e.g. seeds=0,1; got {options['seeds']!r}", file=sys.stderr)
        return 2
    seeds = list(dict.fromkeys(seeds))  # a repeated seed would count twice in the mean
    if any(o.startswith("hydra.run.dir=") for o in overrides):
        print("error: reproduce places each run under out=DIR/NAME/seedK; use out=DIR, not hydra.run.dir",
              file=sys.stderr)
        return 2
    out = Path(options.get("out", "outputs/reproduce"))
    try:
        runs = [train_run(name, seed, out, overrides) for seed in seeds]
    except (ValueError, FileNotFoundError) as exc:  # a parent_experiment cycle or a missing parent file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = compare(reference, runs)
    print_table(name, rows)
    result = {
        "experiment": name, "seeds": seeds, "overrides": overrides, "metrics": rows, "runs": runs,
        "reference_source": reference.get("source") if reference is not None else None,
        "wall_s": [r.get("wall_s") for r in runs],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), **_torch_info()},
        "date": time.strftime("%Y-%m-%d"),
    }
    failed = [r for r in runs if not r["ok"]]
    missed = [m for m, row in rows.items() if row["within"] is False]
    results = experiments_dir() / "results" / f"{name}.json"
    # where data and outputs live, and loader processes, do not change the numbers; devices do
    # (DDP multiplies the batch), so they count as a different recipe
    recipe = [o for o in overrides if not o.startswith(("hydra.", "paths.", "datamodule.num_workers"))]
    if recipe:  # a changed recipe is not the experiment: keep its numbers out of the results table
        print(f"\nnot recording {results}: overrides {recipe} change the recipe")
    elif not failed:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {results}; `python -m segframe.results` updates the README table")
    if failed:
        print(f"{len(failed)} run(s) failed: {[r['run_dir'] for r in failed]}", file=sys.stderr)
        return 1
    if missed:
        print(f"outside the tolerance: {missed}", file=sys.stderr)
        return 1
    return 0


def _torch_info() -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"torch": torch.__version__, "device": device}


if __name__ == "__main__":
    sys.exit(main())
