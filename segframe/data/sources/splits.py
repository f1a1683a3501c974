"""Splitting a list of items that came without an official split: seeded, or by list files."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from segframe.core.errors import ConfigError
from segframe.data.sample import SampleError
from segframe.data.sources.files import Item

log = logging.getLogger("segframe")


def seeded_split(items: Sequence[Item], num_val: int, seed: int, name: str) -> dict[str, list[Item]]:
    """`num_val` items drawn with `seed` (independent of file-system order) -> val, the rest -> train."""
    if not 0 < num_val < len(items):
        raise ConfigError(f"{name}: cannot put {num_val} of {len(items)} images in val; "
                          f"set a val size between 1 and {len(items) - 1}")
    ordered = sorted(items)
    picked = set(np.random.default_rng(seed).permutation(len(ordered))[:num_val].tolist())
    return {"train": [it for i, it in enumerate(ordered) if i not in picked],
            "val": [it for i, it in enumerate(ordered) if i in picked]}


def seeded_folds(items: Sequence[Item], num_folds: int, seed: int, name: str) -> dict[str, list[Item]]:
    """The items dealt into `num_folds` splits fold0..fold{n-1} of near-equal size, in a seeded order
    (independent of file-system order): cross-validation from one conversion (`data.fold=K`)."""
    if not 2 <= num_folds <= len(items):
        raise ConfigError(f"{name}: cannot deal {len(items)} images into {num_folds} folds; "
                          f"set data.num_folds between 2 and {len(items)}")
    ordered = sorted(items)
    order = np.random.default_rng(seed).permutation(len(ordered)).tolist()
    return {f"fold{k}": [ordered[i] for i in sorted(order[k::num_folds])] for k in range(num_folds)}


def split_by_lists(items: Sequence[Item], lists: Mapping[str, Sequence[str]], where: str) -> dict[str, list[Item]]:
    """Each split holds the items whose id its list names; an id with no image is an error."""
    by_id = {it[0]: it for it in items}
    out: dict[str, list[Item]] = {}
    seen: dict[str, str] = {}
    for split, ids in lists.items():
        leaked = [i for i in ids if i in seen]
        if leaked:  # an image in two splits would leak training data into evaluation
            raise SampleError(f"{where}: {leaked[:5]} listed in both {seen[leaked[0]]!r} and {split!r}; "
                              "each image belongs to one split")
        seen.update(dict.fromkeys(ids, split))
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise SampleError(f"{where}: split {split!r} lists {len(unknown)} id(s) with no image, e.g. {unknown[:5]}")
        out[split] = [by_id[i] for i in ids]
    unlisted = len(by_id) - len(seen)
    if unlisted:
        log.warning("%s: %d of %d images are in no split list and are not converted", where, unlisted, len(by_id))
    return out
