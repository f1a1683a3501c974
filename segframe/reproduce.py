"""`python -m segframe.reproduce experiment=NAME [seeds=0,1] [folds=0,1,2,3] [out=DIR] [train overrides...]`

Trains the experiment once per seed (each run is `python -m segframe.train experiment=NAME
seed=K`, in its own process), with `folds=` once per fold and seed (cross-validation: `data.fold=K`;
judged on the mean of the fold means), first training the earlier stages of a staged chain
(`parent_experiment`) whose checkpoints are missing; then prints reported vs reproduced per
metric, writes `experiments/results/NAME.json`, and exits 1 when a metric with a tolerance
misses it (or a run fails). With $SEGFRAME_EXPERIMENTS set, experiments and results are there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from segframe.core.errors import SegframeError
from segframe.experiments.library import (compare, load_experiment, not_recorded, result_path, second_references,
                                          write_result)
from segframe.experiments.reproduction import folds_to_run, record, seeds_to_run, train_runs
from segframe.experiments.tables import comparison_text

OPTIONS = ("experiment", "seeds", "folds", "out")  # reproduce's own; every other argument goes to train


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0 if args else 2
    options = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.split("=", 1)[0] in OPTIONS}
    overrides = [a for a in args if a.split("=", 1)[0] not in options]
    if "experiment" not in options:
        print("error: say which experiment: python -m segframe.reproduce experiment=NAME", file=sys.stderr)
        return 2
    name = options["experiment"]
    try:
        experiment = load_experiment(name)
        reference = experiment.get("reference")
        seeds, folds = seeds_to_run(options.get("seeds"), reference), folds_to_run(options.get("folds"), overrides)
        runs = train_runs(name, seeds, folds, Path(options.get("out", "outputs/reproduce")), overrides)
    except SegframeError as exc:  # a bad argument, a parent_experiment cycle, a missing experiment file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = compare(reference, runs)
    print(comparison_text(name, rows, second_references(reference, rows)))
    failed = [r for r in runs if not r["ok"]]
    reason = not_recorded(experiment, overrides, runs)
    if reason:  # not the experiment (another recipe, other weights): keep its numbers out of the results table
        print(f"\nnot recording {result_path(name)}: {reason}")
    elif not failed:
        written = write_result(name, record(name, seeds, overrides, rows, runs, reference, folds))
        print(f"\nwrote {written}; `python -m segframe.results` updates docs/reproducing.md and README.md")
    if failed:
        print(f"{len(failed)} run(s) failed: {[r['run_dir'] for r in failed]}", file=sys.stderr)
        return 1
    missed = [m for m, row in rows.items() if row["within"] is False]
    if missed:
        print(f"outside the tolerance: {missed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
