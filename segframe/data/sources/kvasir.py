"""Kvasir-SEG (Jha et al., MMM 2020): 1000 colonoscopy images with polyp masks, no official split.

The masks are JPEGs, so their edges carry compression noise: a mask pixel is "polyp" when its
grey value is at least 128. The split is a seeded shuffle (880 train / 120 val by default) or
your own list files.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segframe.data.sample import RawSample, SampleError
from segframe.data.sources.files import Item, fingerprint, load_pair, pairs_by_stem, read_file, read_ids, require
from segframe.data.sources.splits import seeded_folds, seeded_split, split_by_lists

CLASSES = ("background", "polyp")
PALETTE = [[0, 0, 0], [255, 0, 0]]
THRESHOLD = 128

URL = "https://datasets.simula.no/kvasir-seg/ (kvasir-seg.zip, 44 MB)"
LAYOUT = """\
  <data.root>  = .../Kvasir-SEG
    images/cju0qkwl35piu0993l0dewei2.jpg ...
    masks/cju0qkwl35piu0993l0dewei2.jpg ...    (same file names; white = polyp)"""


def read_jpeg_mask(path: str | Path) -> np.ndarray:
    data = read_file(path, "mask")
    try:
        with Image.open(io.BytesIO(data)) as im:
            grey = np.asarray(im.convert("L"))
    except Exception as exc:
        raise SampleError(f"mask {path} cannot be decoded ({exc})") from exc
    return (grey >= THRESHOLD).astype(np.uint8)


class KvasirSegSource:
    """`num_val` images drawn with `seed` form val, the rest train; or `split_dir` holding
    `train.txt` and `val.txt` (one image stem per line) decides; or, with `num_folds`, the images
    are dealt into seeded folds fold0..fold{n-1} for cross-validation (data.fold=K)."""

    def __init__(self, root: str, num_val: int = 120, seed: int = 0, split_dir: str | None = None,
                 num_folds: int | None = None):
        self.root, self.num_val, self.seed = Path(root), int(num_val), int(seed)
        self.num_folds = int(num_folds) if num_folds else None
        self.split_dir = Path(split_dir) if split_dir else None
        self._items: dict[str, list[Item]] | None = None
        self.unpaired_masks: list[str] = []

    def lists(self) -> list[Path]:
        return [self.split_dir / "train.txt", self.split_dir / "val.txt"] if self.split_dir else []

    def splits(self) -> dict[str, list[Item]]:
        if self._items is None:
            require("kvasir_seg", self.root, ["images", "masks"], URL, LAYOUT)
            items, orphans = pairs_by_stem(self.root / "images", self.root / "masks", ("jpg", "jpeg"), ("jpg", "jpeg"))
            self.unpaired_masks = [str(p) for p in orphans]
            if self.split_dir:
                require("kvasir_seg", self.split_dir, ["train.txt", "val.txt"], None,
                        "  <data.split_dir>\n    train.txt val.txt    (one image file stem per line)", "data.split_dir")
                lists = {p.stem: read_ids(p) for p in self.lists()}
                self._items = split_by_lists(items, lists, f"kvasir_seg split_dir {self.split_dir}")
            elif self.num_folds:  # cross-validation: data.fold=K validates on fold K
                self._items = seeded_folds(items, self.num_folds, self.seed, "kvasir_seg")
            else:
                self._items = seeded_split(items, self.num_val, self.seed, "kvasir_seg")
        return self._items

    def load(self, item: Item) -> RawSample:
        return load_pair(item, read_jpeg_mask)

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root), "num_val": self.num_val, "seed": self.seed,
                "split_dir": str(self.split_dir) if self.split_dir else None, "num_folds": self.num_folds}

    def fingerprint(self) -> dict[str, Any]:
        return {**fingerprint(self.root, self.splits(), self.lists()), "unpaired_masks": self.unpaired_masks}
