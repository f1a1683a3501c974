"""EndoVis 2017 robotic instrument segmentation (MICCAI 2017 EndoVis sub-challenge): the 8 labelled
training videos `train/instrument_dataset_1..8`, 225 da Vinci frames each (1920x1080), converted the
way TernausNet does it (ternaus/robot-surgery-segmentation `prepare_data.py`), once for its three
tasks (binary, parts, instruments) and its 4 folds (`FOLDS`: fold K validates on two datasets).

Each dataset has one ground-truth folder per instrument (`ground_truth/<Instrument>_labels/`,
a few without `_labels`), holding a mask per frame of the same file name: 0 background, 10 shaft,
20 wrist, 30 claspers (other non-zero values occur). Masks are read as TernausNet reads them,
`cv2.IMREAD_GRAYSCALE` (a 3-channel mask with equal channels reads as that value; unequal ones
would become their luma, as in TernausNet). Per frame, over the folders in *sorted* order
(TernausNet: glob order, which only matters where two instruments' masks overlap):
- instrument id by substring of the folder name, first match of `KEYS` (Maryland_Bipolar_Forceps is
  Bipolar Forceps): `instruments[mask > 0] = id`; a folder matching none is refused (TernausNet
  would give it no id);
- every folder but "Other": `binary |= mask > 0`, and `parts[mask == 10|20|30] = 1|2|3`.
Later folders overwrite earlier ones. Then the 1280x1024 crop at row 28, column 320 (`CROP`) cuts
the black borders (`crop_frames=False` keeps the full frame). TernausNet matches names in the
folder's whole path and writes its crops as JPEG (quality 100); here the folder's name is matched
and the crop is stored losslessly (PNG); the frame's own PNG bytes when not cropped.

One stored mask per frame encodes all three tasks: `code = 5 * i + s`, i the instrument id (0..7)
and s the state: 0 no non-Other instrument (binary 0, parts 0), 1 a non-Other instrument's pixel
that is not 10/20/30 (binary 1, parts 0), 2/3/4 shaft/wrist/claspers (binary 1, parts 1/2/3).
`TASKS[task]["map"][code]` is the task's class (`decode`); 255 is never stored.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from segframe.data.sample import IMAGE_FILE_EXTS, RawSample, SampleError
from segframe.data.sources.files import fingerprint, read_file, require
from segframe.data.tasks import view

INSTRUMENTS = ("Bipolar Forceps", "Prograsp Forceps", "Large Needle Driver", "Vessel Sealer", "Grasping Retractor",
               "Monopolar Curved Scissors", "Other")
# folder-name substring -> instrument id, tested in this order (TernausNet's if/elif chain)
KEYS = tuple((name.replace(" ", "_"), i) for i, name in enumerate(INSTRUMENTS, 1))
OTHER = "Other"  # a folder whose name holds it counts in instruments only, never in binary or parts
PARTS = ("shaft", "wrist", "claspers")
PART_VALUES = (10, 20, 30)
STATES = ("", "unlabelled part", *PARTS)  # s = 0..4
NUM_STORED = 5 * (len(INSTRUMENTS) + 1)  # 40
DATASETS = tuple(range(1, 9))
FOLDS = ((1, 3), (2, 5), (4, 8), (6, 7))  # TernausNet prepare_train_val.py: fold K validates on these
CROP = (28, 320, 1024, 1280)  # top, left, height, width: TernausNet's crop of the 1920x1080 frames

INSTRUMENT_PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                      [145, 30, 180], [70, 240, 240]]
_SHADE = (0.4, 0.55, 0.7, 0.85, 1.0)  # stored palette: the instrument's colour, brighter per state

URL = ("https://endovissub2017-roboticinstrumentsegmentation.grand-challenge.org/ (the training data; downloading "
       "it needs a registration with the challenge)")
LAYOUT = """\
  <data.root>  = the folder holding train/
    train/instrument_dataset_1/left_frames/frame000.png ... frame224.png
    train/instrument_dataset_1/ground_truth/Left_Prograsp_Forceps_labels/frame000.png ...
    train/instrument_dataset_1/ground_truth/Maryland_Bipolar_Forceps_labels/...  (one folder per instrument)
    ...
    train/instrument_dataset_8/left_frames/  ground_truth/
    test/instrument_dataset_1..10/left_frames/   (unlabelled: not converted, for predict)"""

# item: (id, frame path, mask file paths in sorted ground-truth folder order)
Item = tuple[str, str, tuple[str, ...]]


def instrument_id(folder_name: str) -> int | None:
    """The instrument id (1..7) of a ground-truth folder name, None when no known name is in it."""
    return next((i for key, i in KEYS if key in folder_name), None)


def stored_classes() -> list[str]:
    """The 40 stored codes' names: "background", "Prograsp Forceps/wrist", "Other",
    "Vessel Sealer/unlabelled part", ... ("background/shaft" and the like cannot occur)."""
    names = []
    for i in range(len(INSTRUMENTS) + 1):
        head = INSTRUMENTS[i - 1] if i else "background"
        names += [head] + [f"{head}/{state}" for state in STATES[1:]]
    return names


STORED_PALETTE = [[64 + 32 * s if s else 0] * 3 if i == 0 else [round(c * _SHADE[s]) for c in INSTRUMENT_PALETTE[i]]
                  for i in range(len(INSTRUMENTS) + 1) for s in range(len(STATES))]

TASKS: dict[str, dict[str, Any]] = {
    "binary": {"classes": ["background", "instrument"], "palette": [[0, 0, 0], [0, 255, 0]],
               "map": [int(code % 5 >= 1) for code in range(NUM_STORED)]},
    "parts": {"classes": ["background", *PARTS], "palette": [[0, 0, 0], [0, 160, 255], [255, 160, 0], [230, 25, 75]],
              "map": [code % 5 - 1 if code % 5 >= 2 else 0 for code in range(NUM_STORED)]},
    "instruments": {"classes": ["background", *INSTRUMENTS], "palette": INSTRUMENT_PALETTE,
                    "map": [code // 5 for code in range(NUM_STORED)]},
}


def decode(stored: np.ndarray, task: str) -> np.ndarray:
    """A stored mask (codes 0..39) -> the task's class ids, as data.task reads it (segframe.data.tasks)."""
    return view({"name": "endovis2017", "tasks": TASKS}, task).relabel(stored)


def fold_splits() -> list[list[str]]:
    """FOLDS as split names, fold K's val splits at index K (what `data.fold=K` needs)."""
    return [[f"instrument_dataset_{n}" for n in pair] for pair in FOLDS]


def encode(masks: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """(ground-truth folder name, HxW uint8 mask) in folder order -> HxW stored codes (see the module)."""
    instruments = np.zeros(masks[0][1].shape, np.uint8)
    binary = np.zeros(masks[0][1].shape, bool)
    parts = np.zeros(masks[0][1].shape, np.uint8)
    for name, mask in masks:
        ident = instrument_id(name)
        if ident is None:  # EndoVis2017Source refuses such folders when listing
            raise SampleError(f"ground-truth folder {name!r} names no known instrument")
        labelled = mask > 0
        instruments[labelled] = ident
        if OTHER not in name:
            binary |= labelled
            for part, value in enumerate(PART_VALUES, 1):
                parts[mask == value] = part
    state = np.where(parts > 0, parts + 1, binary.astype(np.uint8))
    return (5 * instruments + state).astype(np.uint8)


def _read_mask(path: str, sample_id: str) -> np.ndarray:
    mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        if not Path(path).is_file():
            raise SampleError(f"{sample_id}: mask file {path} is missing (every ground-truth folder of a dataset "
                              "has a mask per frame, of the frame's file name)")
        raise SampleError(f"{sample_id}: mask file {path} cannot be decoded (damaged?)")
    return mask


def _visible(folder: Path) -> list[Path]:
    """A folder's entries, sorted, without hidden ones (.DS_Store, macOS `._name` forks)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


class EndoVis2017Source:
    """Every frame of `train/instrument_dataset_1..8`, one split per dataset (`instrument_dataset_N`:
    folds are unions of splits), ids `instrument_dataset_3/frame012`; stored masks as in the module."""

    def __init__(self, root: str, crop_frames: bool = True):
        self.root, self.crop_frames = Path(root), bool(crop_frames)
        self._items: dict[str, list[Item]] | None = None
        self._ground_truth: dict[str, list[str]] = {}

    def splits(self) -> dict[str, list[Item]]:
        if self._items is None:
            required = [f"train/instrument_dataset_{n}/{sub}" for n in DATASETS
                        for sub in ("left_frames", "ground_truth")]
            require("endovis2017", self.root, required, URL, LAYOUT)
            self._items = {f"instrument_dataset_{n}": self._list(n) for n in DATASETS}
        return self._items

    def _list(self, number: int) -> list[Item]:
        dataset = self.root / "train" / f"instrument_dataset_{number}"
        folders = [p for p in _visible(dataset / "ground_truth") if p.is_dir()]
        if not folders:
            raise SampleError(f"endovis2017: {dataset / 'ground_truth'} has no ground-truth folders; expected one per "
                              "instrument (e.g. Left_Prograsp_Forceps_labels/): check the download (re-extract it)")
        for folder in folders:
            if instrument_id(folder.name) is None:
                raise SampleError(f"endovis2017: ground-truth folder {folder} names no known instrument; a folder name "
                                  f"must contain one of {', '.join(key for key, _ in KEYS)} (e.g. "
                                  "Maryland_Bipolar_Forceps_labels, Left_Large_Needle_Driver). Rename it, or remove "
                                  "it if it is not a label folder")
        self._ground_truth[dataset.name] = [f.name for f in folders]
        frames = [p for p in _visible(dataset / "left_frames")
                  if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_FILE_EXTS]
        if not frames:
            raise SampleError(f"endovis2017: {dataset / 'left_frames'} has no frames (frame000.png ...)")
        return [(f"{dataset.name}/{p.stem}", str(p), tuple(str(f / p.name) for f in folders)) for p in frames]

    def load(self, item: Item) -> RawSample:
        sample_id, frame, mask_paths = item
        masks = [_read_mask(path, sample_id) for path in mask_paths]
        if self.crop_frames:
            image = cv2.imread(frame, cv2.IMREAD_COLOR)
            if image is None:
                raise SampleError(f"{sample_id}: frame {frame} is missing or cannot be decoded")
            size = image.shape[:2]
        else:
            image = read_file(frame, "frame")
            size = _size(image, frame)
        sizes = {m.shape for m in masks} | {size}
        if len(sizes) > 1:
            raise SampleError(f"{sample_id}: frame and masks differ in size (WxH): frame {frame}: {size[1]}x{size[0]}, "
                              + ", ".join(f"{p}: {m.shape[1]}x{m.shape[0]}" for p, m in zip(mask_paths, masks)))
        if self.crop_frames:
            top, left, height, width = CROP
            if size[0] < top + height or size[1] < left + width:
                raise SampleError(f"{sample_id}: frame {frame} is {size[1]}x{size[0]} (WxH), too small for the "
                                  f"{width}x{height} crop at row {top}, column {left} of the 1920x1080 frames; "
                                  "convert it with data.crop_frames=false")
            box = (slice(top, top + height), slice(left, left + width))
            masks = [m[box] for m in masks]  # every step of encode is per pixel: crop first, same result
            image = np.ascontiguousarray(image[box][:, :, ::-1])  # BGR -> RGB
        names = [Path(p).parent.name for p in mask_paths]
        return RawSample(id=sample_id, image=image, mask=encode(list(zip(names, masks))),
                         source=f"{frame} + {len(masks)} ground-truth mask(s)")

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root), "crop_frames": self.crop_frames}

    def stored_classes(self) -> tuple[list[str], list[list[int]]]:
        """The 40 stored classes and their palette, for the manifest."""
        return stored_classes(), copy.deepcopy(STORED_PALETTE)

    def tasks(self) -> dict[str, dict[str, Any]]:
        """TASKS (a copy), for the manifest."""
        return copy.deepcopy(TASKS)

    def fingerprint(self) -> dict[str, Any]:
        files = {split: [(sid, frame if k == 0 else None, mask) for sid, frame, masks in items
                         for k, mask in enumerate(masks)] for split, items in self.splits().items()}
        return {**fingerprint(self.root, files), "ground_truth": dict(sorted(self._ground_truth.items()))}


def _size(data: bytes, path: str) -> tuple[int, int]:
    """(height, width) from an image file's header (the shard writer checks the whole file)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size[1], im.size[0]
    except Exception as exc:  # PIL raises many types for corrupt data
        raise SampleError(f"frame {path} cannot be decoded ({exc})") from exc
