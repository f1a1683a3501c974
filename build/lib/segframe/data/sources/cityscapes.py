"""Cityscapes fine annotations: `labelIds` PNGs remapped to the 19 evaluation classes (trainIds).

The labelId -> trainId table is the official one from cityscapesScripts' `labels.py`
(Cordts et al., CVPR 2016); every other label (void, license plate, ...) becomes 255.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segframe.data.sample import IGNORE_INDEX, RawSample
from segframe.data.sources.files import Item, fingerprint, load_pair, read_index_png, require

# (trainId order) name, labelId, colour
LABELS = (
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)), ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)), ("sky", 23, (70, 130, 180)), ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)), ("car", 26, (0, 0, 142)), ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)), ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32)),
)
CLASSES = tuple(name for name, _, _ in LABELS)
PALETTE = [list(colour) for _, _, colour in LABELS]
LABEL_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _train_id, (_, _label_id, _) in enumerate(LABELS):
    LABEL_TO_TRAIN[_label_id] = _train_id

URL = ("https://www.cityscapes-dataset.com/downloads/ (gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip; "
       "free registration)")
LAYOUT = """\
  <data.root>
    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"""


def read_train_ids(path: str | Path) -> np.ndarray:
    return LABEL_TO_TRAIN[read_index_png(path)]


class CityscapesSource:
    """`leftImg8bit/<split>/<city>/*_leftImg8bit.png` paired with `gtFine/<split>/<city>/*_gtFine_labelIds.png`."""

    def __init__(self, root: str, splits: Sequence[str] = ("train", "val")):
        self.root, self.split_names = Path(root), list(splits)
        self._items: dict[str, list[Item]] | None = None

    def splits(self) -> dict[str, list[Item]]:
        if self._items is None:
            dirs = [f"{kind}/{s}" for s in self.split_names for kind in ("leftImg8bit", "gtFine")]
            require("cityscapes", self.root, dirs, URL, LAYOUT)
            self._items = {s: self._list(s) for s in self.split_names}
        return self._items

    def _list(self, split: str) -> list[Item]:
        items = []
        for image in sorted((self.root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            mask = self.root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
            items.append((stem, str(image), str(mask)))
        return items

    def load(self, item: Item) -> RawSample:
        return load_pair(item, read_train_ids)

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root), "splits": self.split_names}

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.root, self.splits())
