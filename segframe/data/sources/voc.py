"""PASCAL VOC 2012, the Berkeley SBD set, and VOC-aug (both merged: the seed project's splits, and
the FCN paper's SBD train + seg11valid).

VOC labels are palette PNGs whose palette indices ARE the class ids (255 = void border):
they are read as indices, never through RGB. SBD labels are MATLAB files holding a struct
`GTcls` whose field `Segmentation` is the HxW class-id array (no void pixels).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segframe.core.errors import ConfigError, MissingFileError
from segframe.data.sample import RawSample, SampleError
from segframe.data.sources.files import Item, bit_palette, fingerprint, index_png_bytes, load_pair, read_ids, require

log = logging.getLogger("segframe")

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor")
PALETTE = bit_palette(len(CLASSES))

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar, 2 GB)"
VOC_LAYOUT = """\
  <data.root>  = .../VOCdevkit/VOC2012
    JPEGImages/2007_000032.jpg ...
    SegmentationClass/2007_000032.png ...      (palette PNGs)
    ImageSets/Segmentation/train.txt val.txt   (one image id per line)"""
SBD_URL = ("http://home.bharathh.info/pubs/codes/SBD/download.html (benchmark.tgz, 1.4 GB; "
           "Hariharan et al., ICCV 2011)")
SBD_LAYOUT = """\
  <data.root>  = .../benchmark_RELEASE/dataset
    img/2008_000002.jpg ...
    cls/2008_000002.mat ...                    (struct GTcls, field Segmentation)
    train.txt val.txt                          (8498 / 2857 image ids)"""

# Long et al.'s protocol: train on SBD train, evaluate on the VOC 2011 val images not in SBD train
SEG11VALID = "seg11valid"
# the FCN authors' list of those 736 ids (fcn.berkeleyvision.org, data/pascal/seg11valid.txt), shipped
# as package data; segframe/data/lists/README.md says where it comes from
SEG11VALID_LIST = Path(__file__).resolve().parent.parent / "lists" / "seg11valid.txt"
# |PT|, |PV|, |BT|, |BV| of the full datasets, and (train, val) per voc_aug split mode
FULL_LIST_SIZES = (1464, 1449, 8498, 2857)
PUBLISHED_SPLIT_SIZES = {1: (10582, 1449), 2: (11127, 904), 3: (11685, 346), SEG11VALID: (8498, 736)}
MODES = "1, 2, 3 or seg11valid"


def read_sbd_mat(path: str | Path) -> np.ndarray:
    """`GTcls.Segmentation` of an SBD `cls/*.mat` file as HxW uint8 class ids."""
    import scipy.io

    if not Path(path).is_file():
        raise SampleError(f"mask file {path} is missing")
    try:
        mat = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except Exception as exc:  # bad zlib stream, not a MAT file, no GTcls struct...
        raise SampleError(f"mask {path} is not an SBD class file with struct GTcls.Segmentation ({exc})") from exc
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 255:
        raise SampleError(f"mask {path}: GTcls.Segmentation must be a 2-D array of class ids, got {seg.shape}")
    return seg.astype(np.uint8)


def _read_mask(path: str | Path) -> np.ndarray | bytes:
    return read_sbd_mat(path) if str(path).endswith(".mat") else index_png_bytes(path)


class VOCSource:
    """`VOCdevkit/VOC2012`: the image-set lists name the ids of each split."""

    def __init__(self, root: str, splits: Sequence[str] = ("train", "val")):
        self.root, self.split_names = Path(root), list(splits)
        self._items: dict[str, list[Item]] | None = None

    def lists(self) -> dict[str, Path]:
        return {s: self.root / "ImageSets" / "Segmentation" / f"{s}.txt" for s in self.split_names}

    def splits(self) -> dict[str, list[Item]]:
        if self._items is None:
            require("voc", self.root, ["JPEGImages", "SegmentationClass"] +
                    [str(p.relative_to(self.root)) for p in self.lists().values()], VOC_URL, VOC_LAYOUT)
            self._items = {s: [voc_item(self.root, i) for i in read_ids(p)] for s, p in self.lists().items()}
        return self._items

    def load(self, item: Item) -> RawSample:
        return load_pair(item, index_png_bytes)

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root), "splits": self.split_names}

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.root, self.splits(), self.lists().values())


def voc_item(root: Path, image_id: str) -> Item:
    return (image_id, str(root / "JPEGImages" / f"{image_id}.jpg"), str(root / "SegmentationClass" / f"{image_id}.png"))


def sbd_item(root: Path, image_id: str) -> Item:
    return (image_id, str(root / "img" / f"{image_id}.jpg"), str(root / "cls" / f"{image_id}.mat"))


class SBDSource:
    """`benchmark_RELEASE/dataset`: Hariharan et al.'s semantic boundaries dataset, class labels."""

    def __init__(self, root: str, splits: Sequence[str] = ("train", "val")):
        self.root, self.split_names = Path(root), list(splits)
        self._items: dict[str, list[Item]] | None = None

    def lists(self) -> dict[str, Path]:
        return {s: self.root / f"{s}.txt" for s in self.split_names}

    def splits(self) -> dict[str, list[Item]]:
        if self._items is None:
            require("sbd", self.root, ["img", "cls"] + [p.name for p in self.lists().values()], SBD_URL, SBD_LAYOUT)
            self._items = {s: [sbd_item(self.root, i) for i in read_ids(p)] for s, p in self.lists().items()}
        return self._items

    def load(self, item: Item) -> RawSample:
        return load_pair(item, read_sbd_mat)

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root), "splits": self.split_names}

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.root, self.splits(), self.lists().values())


def voc_aug_split(pt: Sequence[str], pv: Sequence[str], bt: Sequence[str], bv: Sequence[str],
                  mode: int) -> tuple[list[str], list[str]]:
    """(train ids, val ids) as tf-image-segmentation defined them, with S = PT u PV u BT u BV:
    mode 1: val = PV; mode 2: val = PV minus BT; mode 3: val = PV minus (BV u BT); train = S minus val."""
    pv_set, bt_set, bv_set = set(pv), set(bt), set(bv)
    if mode == 1:
        val = pv_set
    elif mode == 2:
        val = pv_set - bt_set
    elif mode == 3:
        val = pv_set - bv_set - bt_set
    else:
        raise ConfigError(f"voc_aug: data.split_mode must be {MODES}, got {mode!r}")
    everything = set(pt) | pv_set | bt_set | bv_set
    return sorted(everything - val), sorted(val)


def seg11valid_split(pv: Sequence[str], bt: Sequence[str], valid: Sequence[str],
                     list_file: Path = SEG11VALID_LIST) -> tuple[list[str], list[str]]:
    """(train ids, val ids) of the FCN paper: train = SBD train (BT), val = seg11valid, VOC 2011 val
    images that are not in SBD train. An id in both would be evaluated on after training on it, and
    one outside VOC's val list has no VOC label: both are refused."""
    valid_set, bt_set = set(valid), set(bt)
    leaked = sorted(valid_set & bt_set)
    if leaked:
        raise ConfigError(
            f"voc_aug: {len(leaked)} id(s) of the seg11valid list {list_file} are in SBD train "
            f"(data.sbd_root/train.txt), e.g. {leaked[:5]}; seg11valid is VOC 2011 val minus SBD train, so "
            "training would see evaluation images. Point data.sbd_root at benchmark_RELEASE/dataset of the "
            "SBD release, and data.seg11valid_list at the 736-id list (null = the one segframe ships)")
    unlabelled = sorted(valid_set - set(pv))
    if unlabelled:
        raise ConfigError(
            f"voc_aug: {len(unlabelled)} id(s) of the seg11valid list {list_file} are not in VOC's val list "
            f"(data.voc_root/ImageSets/Segmentation/val.txt), e.g. {unlabelled[:5]}: they have no VOC label. "
            "data.voc_root must be VOCdevkit/VOC2012 of VOCtrainval_11-May-2012.tar")
    return sorted(bt_set), sorted(valid_set)


def checked_mode(value: Any) -> int | str:
    """data.split_mode as the converter keys it: 1, 2, 3 (also from the command line's "2") or "seg11valid"."""
    mode = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if mode not in PUBLISHED_SPLIT_SIZES or isinstance(mode, bool):
        raise ConfigError(f"voc_aug: data.split_mode must be {MODES}, got {value!r}")
    return mode


class VOCAugSource:
    """VOC 2012 + SBD. Training labels come from SBD where SBD annotates the image (it is in BT u BV),
    else from VOC; validation labels always from VOC. Images come from VOC's JPEGImages when there,
    else from SBD's img/ (the same photographs). `split_mode` 1-3 are tf-image-segmentation's splits;
    "seg11valid" is Long et al.'s (SBD train / seg11valid, with the ids of `seg11valid_list`)."""

    def __init__(self, voc_root: str, sbd_root: str, split_mode: int | str = 2, seg11valid_list: str | None = None):
        self.voc, self.sbd = VOCSource(voc_root), SBDSource(sbd_root)
        self.split_mode = checked_mode(split_mode)
        self.valid_list = Path(seg11valid_list) if seg11valid_list else SEG11VALID_LIST
        self._items: dict[str, list[Item]] | None = None
        self.split_check = ""

    def splits(self) -> dict[str, list[Item]]:
        if self._items is not None:
            return self._items
        voc_lists, sbd_lists = self.voc.lists(), self.sbd.lists()
        require("voc_aug", self.voc.root, ["JPEGImages", "SegmentationClass"] +
                [str(p.relative_to(self.voc.root)) for p in voc_lists.values()], VOC_URL, VOC_LAYOUT,
                root_key="data.voc_root")
        require("voc_aug", self.sbd.root, ["cls"] + [p.name for p in sbd_lists.values()], SBD_URL, SBD_LAYOUT,
                root_key="data.sbd_root")
        pt, pv = read_ids(voc_lists["train"]), read_ids(voc_lists["val"])
        bt, bv = read_ids(sbd_lists["train"]), read_ids(sbd_lists["val"])
        if self.split_mode == SEG11VALID:
            train, val = seg11valid_split(pv, bt, self._valid_ids(), self.valid_list)
        else:
            train, val = voc_aug_split(pt, pv, bt, bv, self.split_mode)
        self._check_sizes((len(pt), len(pv), len(bt), len(bv)), (len(train), len(val)))
        sbd_ids = set(bt) | set(bv)
        self._items = {
            "train": [self._item(i, from_sbd=i in sbd_ids) for i in train],
            "val": [self._item(i, from_sbd=False) for i in val],
        }
        return self._items

    def _item(self, image_id: str, from_sbd: bool) -> Item:
        voc_id, image, voc_mask = voc_item(self.voc.root, image_id)
        if not Path(image).is_file():
            image = sbd_item(self.sbd.root, image_id)[1]
        return (voc_id, image, sbd_item(self.sbd.root, image_id)[2] if from_sbd else voc_mask)

    def _valid_ids(self) -> list[str]:
        """The seg11valid ids, from the shipped list or data.seg11valid_list."""
        if not self.valid_list.is_file():
            raise MissingFileError(
                f"voc_aug: the seg11valid list {self.valid_list} is missing. Pass a file of VOC image ids, one per "
                "line (2007_000033 ...), or leave it out for the shipped one: python -m segframe.convert "
                "data=voc_aug data.split_mode=seg11valid data.seg11valid_list=/path/to/seg11valid.txt")
        return read_ids(self.valid_list)

    def _check_sizes(self, lists: tuple[int, ...], got: tuple[int, int]) -> None:
        """With the full datasets, the split sizes must be the published ones; say so if not."""
        expected = PUBLISHED_SPLIT_SIZES[self.split_mode]
        if lists != FULL_LIST_SIZES:
            self.split_check = f"partial lists {lists} (full: {FULL_LIST_SIZES}); published sizes not checked"
        elif got == expected:
            self.split_check = f"matches the published split mode {self.split_mode} sizes {expected}"
        else:
            self.split_check = f"DIFFERS from the published split mode {self.split_mode} sizes: {got} vs {expected}"
            log.warning("voc_aug: train/val sizes %s differ from the published %s for split mode %s; check the "
                        "list files", got, expected, self.split_mode)

    def load(self, item: Item) -> RawSample:
        return load_pair(item, _read_mask)

    def options(self) -> dict[str, Any]:
        options = {"voc_root": str(self.voc.root), "sbd_root": str(self.sbd.root), "split_mode": self.split_mode}
        if self.split_mode == SEG11VALID:  # which ids, not where the list file lies: a changed list is stale
            options["seg11valid_sha256"] = hashlib.sha256("\n".join(self._valid_ids()).encode()).hexdigest()
        return options

    def fingerprint(self) -> dict[str, Any]:
        items = self.splits()
        extra = [self.valid_list] if self.split_mode == SEG11VALID else []
        return {"voc": fingerprint(self.voc.root, {}, [*self.voc.lists().values(), *extra]),
                "sbd": fingerprint(self.sbd.root, {}, self.sbd.lists().values()),
                "files": fingerprint(self.voc.root, items), "split_check": self.split_check}
