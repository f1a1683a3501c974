"""ADE20K as the MIT Scene Parsing benchmark ships it (ADEChallengeData2016, 150 classes).

Annotation PNGs hold 0 for "other / unlabelled" and k = 1..150 for the classes of
`objectInfo150`; segframe stores 0 -> 255 (ignored) and k -> k - 1 (Zhou et al., CVPR 2017).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segframe.data.sample import IGNORE_INDEX, RawSample, SampleError
from segframe.data.sources.files import Item, fingerprint, load_pair, pairs_by_stem, read_index_png, require

# the first name of each objectInfo150 entry, in class-id order
CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(CLASSES) == 150

URL = "http://sceneparsing.csail.mit.edu/ (ADEChallengeData2016.zip, 923 MB)"
LAYOUT = """\
  <data.root>  = .../ADEChallengeData2016
    images/training/ADE_train_00000001.jpg ...        images/validation/ADE_val_00000001.jpg ...
    annotations/training/ADE_train_00000001.png ...   annotations/validation/ADE_val_00000001.png ..."""

# 0 -> 255 (ignored), k -> k - 1
SHIFT = np.array([IGNORE_INDEX] + list(range(255)), dtype=np.uint8)


def read_shifted(path: str | Path) -> np.ndarray:
    raw = read_index_png(path)
    if raw.max() > len(CLASSES):
        values = sorted(int(v) for v in np.unique(raw[raw > len(CLASSES)]))[:10]
        raise SampleError(f"mask {path}: ADE20K labels are 0..{len(CLASSES)}, found {values}")
    return SHIFT[raw]


class ADE20KSource:
    """splits maps a segframe split name to the folder under images/ and annotations/."""

    def __init__(self, root: str, splits: Mapping[str, str] | None = None):
        self.root = Path(root)
        self.split_dirs = dict(splits or {"train": "training", "val": "validation"})
        self._items: dict[str, list[Item]] | None = None
        self.unpaired_masks: list[str] = []

    def splits(self) -> dict[str, list[Item]]:
        if self._items is None:
            dirs = [f"{kind}/{d}" for d in self.split_dirs.values() for kind in ("images", "annotations")]
            require("ade20k", self.root, dirs, URL, LAYOUT)
            self._items = {}
            for split, d in self.split_dirs.items():
                items, orphans = pairs_by_stem(self.root / "images" / d, self.root / "annotations" / d,
                                               ("jpg",), ("png",))
                self._items[split] = items
                self.unpaired_masks += [str(p) for p in orphans]
        return self._items

    def load(self, item: Item) -> RawSample:
        return load_pair(item, read_shifted)

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root), "splits": self.split_dirs}

    def fingerprint(self) -> dict[str, Any]:
        return {**fingerprint(self.root, self.splits()), "unpaired_masks": self.unpaired_masks}
