"""Cross-validation folds from one conversion: a dataset converted into several splits (fold0..fold4,
or EndoVis 2017's instrument datasets) serves every fold, and `data.fold=K` picks, through the
`${fold_split:...}` resolver of its config, which splits validate and which train."""

from __future__ import annotations

from collections.abc import Sequence

from segframe.core.errors import ConfigError


def fold_split(which: str, fold: int | None, folds: int | Sequence[Sequence[str]] | None, dataset: str) -> str:
    """The split name a dataset config's `train_split` / `val_split` resolves to (`which`: train | val).
    Without a fold, `which` itself. With `fold=K`: the val split is fold K's splits, the train split
    every other fold's, joined with "+" (a union, manifest.split_info). `folds` is a fold count
    (splits fold0..fold{n-1}, as seeded_folds writes them) or a list of split lists (e.g. EndoVis
    2017's instrument datasets per fold)."""
    if fold is None:
        return which
    if folds is None:
        raise ConfigError(f"data.fold={fold} needs data.num_folds, the number of folds {dataset} was converted into "
                          f"(e.g. data.num_folds=5 data.fold={fold}); to convert it into folds: "
                          f"python -m segframe.convert data={dataset} data.num_folds=5")
    groups = [[f"fold{k}"] for k in range(int(folds))] if isinstance(folds, int) else [list(g) for g in folds]
    if not 0 <= int(fold) < len(groups):
        raise ConfigError(f"data.fold={fold}: {dataset} has {len(groups)} folds, numbered 0 to {len(groups) - 1}")
    chosen = groups if which == "train" else [groups[int(fold)]]
    return "+".join(s for k, g in enumerate(chosen) for s in g if which != "train" or k != int(fold))
