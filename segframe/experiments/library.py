"""The experiments library: the experiment files (what each recipe reports), the result files
`segframe.reproduce` writes beside them (what it measured), and the verdict of one against the
other. Both entry points find the experiments through experiments_dir(), so what reproduce writes
is what results reads. Torch-free, so that `segframe.results` starts without importing it (~5 s).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segframe.core.errors import MissingFileError
from segframe.core.metric_names import anchor_image_keys, image_summary_keys, summary_keys
from segframe.core.paths import EXPERIMENTS_DIR

# dataset-level, then per image (miou_img, mdice_img: the polyp papers' convention; jaccard_ternaus,
# dice_ternaus: TernausNet's, EndoVis 2017), recorded per run and judged alike; a reference may lack some (e.g. mdice): those print "-" and judge nothing
METRICS = (*summary_keys(), *image_summary_keys(), *anchor_image_keys())


def experiments_dir() -> Path:
    """experiments/ of the checkout, or $SEGFRAME_EXPERIMENTS (your own, found by train through
    `hydra.searchpath=[file://DIR/..]` with the files in DIR = <that>/experiment). Its results/
    holds what reproduce measured."""
    return Path(os.environ.get("SEGFRAME_EXPERIMENTS", EXPERIMENTS_DIR))


def experiment_files(directory: Path | None = None) -> list[Path]:
    """The experiment files of `directory` (default: experiments_dir()), in the tables' order."""
    return sorted((directory or experiments_dir()).glob("*.yaml"))


def load_experiment(name: str, directory: Path | None = None) -> DictConfig:
    path = (directory or experiments_dir()) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in experiment_files(directory))
        raise MissingFileError(f"no experiment {name!r} ({path} is missing); experiments: {', '.join(known)}")
    return OmegaConf.load(path)


def result_path(name: str, directory: Path | None = None) -> Path:
    """Where reproduce records experiment `name`'s runs: <experiments dir>/results/NAME.json."""
    return (directory or experiments_dir()) / "results" / f"{name}.json"


def load_result(name: str, directory: Path | None = None) -> dict[str, Any] | None:
    """What reproduce recorded for `name`, or None when it has not been reproduced."""
    path = result_path(name, directory)
    return json.loads(path.read_text()) if path.is_file() else None


def write_result(name: str, result: dict[str, Any]) -> Path:
    path = result_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def recipe_overrides(overrides: Iterable[str], evaluate_only: bool = False) -> list[str]:
    """The overrides that make a run another recipe than the experiment's, whose numbers stay out of
    the results: where data and outputs live, and loader processes, do not change the numbers;
    devices do (DDP multiplies the batch), so they count as a different recipe. In an evaluate-only
    experiment `model.init_from` says where the judged weights lie (their md5 is recorded)."""
    free = ("hydra.", "paths.", "datamodule.num_workers", *(("model.init_from=",) if evaluate_only else ()))
    return [o for o in overrides if not o.startswith(free)]


def released_elsewhere(reference: DictConfig | dict | None, runs: list[dict[str, Any]]) -> bool:
    """An evaluate-only verdict judges published weights (`reference.weights_md5`): runs that evaluated
    a file with another md5 did not evaluate them, and their verdict is not recorded."""
    expected = (reference or {}).get("weights_md5")
    return bool(expected) and any(r.get("init_from_md5") not in (None, expected) for r in runs)


def not_recorded(experiment: DictConfig, overrides: list[str], runs: list[dict[str, Any]]) -> str | None:
    """Why reproduce's runs are not the experiment and stay out of its results, or None."""
    recipe = recipe_overrides(overrides, bool(experiment.get("evaluate_only")))
    if recipe:
        return f"overrides {recipe} change the recipe"
    reference = experiment.get("reference")
    if released_elsewhere(reference, runs):
        md5s = sorted({r["init_from_md5"] for r in runs if r.get("init_from_md5")})
        return f"the evaluated weights (md5 {md5s}) are not the released file (md5 {reference.weights_md5})"
    return None


def compare(reference: DictConfig | None, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Reproduced mean / spread per metric (percent) against the reference and its tolerance. Runs
    of a cross-validation (each with its `fold`) are averaged per fold first: the reproduced value
    is the mean of the fold means, the spread is theirs (max - min), and `per_fold` lists them."""
    done = [r for r in runs if r["ok"]]
    folds = sorted({r["fold"] for r in done if r.get("fold") is not None})
    rows = {}
    for metric in METRICS:
        values = [100 * r[metric] for r in done if r.get(metric) is not None]
        per_fold = {k: round(statistics.fmean(v), 2) for k in folds
                    if (v := [100 * r[metric] for r in done if r.get("fold") == k and r.get(metric) is not None])}
        judged = list(per_fold.values()) if folds else values
        mean = round(statistics.fmean(judged), 2) if judged else None
        ref = reference if reference is not None else {}
        reported = (ref.get("mean") or {}).get(metric)
        tolerance = (ref.get("tolerance") or {}).get(metric)
        minimum = (ref.get("minimum") or {}).get(metric)  # an expectation: at least this much
        diff = round(mean - reported, 2) if mean is not None and reported is not None else None
        verdicts = ([abs(diff) <= tolerance] if tolerance is not None and diff is not None else []) + \
            ([mean >= minimum] if minimum is not None and mean is not None else [])
        rows[metric] = {
            "reported": reported, "reproduced": mean, "per_seed": [round(v, 2) for v in values],
            "spread": round(max(judged) - min(judged), 2) if judged else None, "diff": diff,
            "tolerance": tolerance, "minimum": minimum, "within": all(verdicts) if verdicts else None,
            **({"per_fold": per_fold} if folds else {}),
        }
    return rows


def second_references(reference: DictConfig | None, rows: dict[str, Any]) -> list[dict[str, Any]]:
    """The reference's `also:` entries (other published numbers for the same protocol, e.g. a faithful
    reimplementation's), each with reproduced minus its value per metric it names. Shown beside the
    judged reference and never judged: the verdict stays the `mean`/`tolerance` one's."""
    out = []
    for entry in (reference or {}).get("also") or []:
        diffs = {m: round(rows[m]["reproduced"] - v, 2) if rows.get(m, {}).get("reproduced") is not None else None
                 for m, v in (entry.get("mean") or {}).items()}
        out.append({"name": entry.get("name", "second reference"), "source": entry.get("source", ""), "mean": dict(entry.mean), "diff": diffs})
    return out

