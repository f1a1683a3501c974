"""EndoVis 2015 robotic instrument segmentation (MICCAI 2015 EndoVis sub-challenge
"Segmentation_Robotic_Training"): four ex-vivo da Vinci videos whose label videos mark each pixel
background, manipulator or shaft.

The labels are grey videos (0 background, 70 manipulator, 160 shaft) saved with a lossy codec, so
edges and flat areas carry other grey values: each pixel is snapped to the nearest level (the mean
of its three channels). Dataset1 has one label video per instrument (`Left_` / `Right_Instrument_
Segmentation.avi`); their class maps are merged by a pixel-wise maximum (shaft over manipulator),
which is what the seed author's converter (pytorch-segmentation-detection, `utils/endovis_instrument.py`)
computes. `largest_component=True` also does what that converter did next: per label video and
class, only the largest 8-connected region keeps its class and the other fragments become 255
(ignored). Frame i of Video.avi pairs with frame i of the label video(s); videos of one dataset
with different frame counts are refused, naming them. One dataset is held out for val
(`val_dataset`, default 2, the seed converter's `validation_datasets_numbers=[2]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from segframe.core.errors import ConfigError
from segframe.data.sample import IGNORE_INDEX, RawSample, SampleError
from segframe.data.sources.files import fingerprint, require

CLASSES = ("background", "manipulator", "shaft")
PALETTE = [[0, 0, 0], [255, 160, 0], [0, 160, 255]]
LEVELS = (0, 70, 160)  # the label videos' grey level of each class
DATASETS = (1, 2, 3, 4)
TWO_LABELS = ("Left_Instrument_Segmentation.avi", "Right_Instrument_Segmentation.avi")  # Dataset1 only

URL = ("https://endovissub-instrument.grand-challenge.org/ (the Robotic Instruments segmentation training data, "
       "Segmentation_Robotic_Training; downloading it needs a registration with the challenge)")
LAYOUT = """\
  <data.root>  = .../Segmentation_Robotic_Training
    Training/Dataset1/Video.avi  Left_Instrument_Segmentation.avi  Right_Instrument_Segmentation.avi
    Training/Dataset2/Video.avi  Segmentation.avi
    Training/Dataset3/Video.avi  Segmentation.avi
    Training/Dataset4/Video.avi  Segmentation.avi"""

# item: (id, video path, label video paths, frame index)
Item = tuple[str, str, tuple[str, ...], int]
_EIGHT = np.ones((3, 3), dtype=bool)


def label_videos(number: int) -> tuple[str, ...]:
    return TWO_LABELS if number == 1 else ("Segmentation.avi",)


def snap(frame: np.ndarray) -> np.ndarray:
    """A decoded label frame (HxW grey or HxWx3) -> HxW class ids: the nearest of LEVELS (a tie
    goes to the lower class, as argmin over the distances does)."""
    grey = frame.mean(axis=2) if frame.ndim == 3 else frame.astype(np.float32)
    bounds = [(a + b) / 2 for a, b in zip(LEVELS, LEVELS[1:])]
    return sum((grey > b).astype(np.uint8) for b in bounds).astype(np.uint8)


def keep_largest(labels: np.ndarray) -> np.ndarray:
    """Per instrument class, the largest 8-connected region keeps its class, other fragments -> 255."""
    out = labels.copy()
    for cls in range(1, len(CLASSES)):
        regions, count = ndimage.label(labels == cls, structure=_EIGHT)
        if count > 1:
            sizes = np.bincount(regions.ravel())
            sizes[0] = 0
            out[(regions != 0) & (regions != sizes.argmax())] = IGNORE_INDEX
    return out


class _Videos:
    """The videos one (worker) process has open, each read forward from where it stopped. Frames are
    never found by seeking (inexact for some codecs): a jump back reopens the video from its start."""

    def __init__(self) -> None:
        self.open: dict[str, list[Any]] = {}  # path -> [capture, index of the next frame]

    def frame(self, path: str, index: int) -> np.ndarray:
        cap, pos = self.open.get(path, (None, 0))
        if cap is None or index < pos:
            if cap is not None:
                cap.release()
            cap, pos = open_video(path), 0
            self.open[path] = [cap, 0]
        while pos < index:
            if not cap.grab():
                raise SampleError(f"{path}: cannot read frame {pos} (wanted frame {index}); the video ends early "
                                  "or is damaged")
            pos += 1
        ok, frame = cap.read()
        self.open[path] = [cap, index + 1]
        if not ok or frame is None:
            raise SampleError(f"{path}: frame {index} cannot be decoded; the video ends early or is damaged")
        return frame

    def keep(self, paths: set[str]) -> None:
        for path in [p for p in self.open if p not in paths]:
            self.open.pop(path)[0].release()


def open_video(path: str) -> Any:
    """A capture that decodes in the calling thread: conversion workers are processes, and FFmpeg's
    decoding threads left running in a process that then forks (to convert with workers) were seen
    to hang the forked workers' first decode."""
    cap = cv2.VideoCapture(path, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])
    if not cap.isOpened():
        raise SampleError(f"{path}: OpenCV cannot open this video (damaged, or a codec its FFmpeg lacks)")
    return cap


def frame_count(path: str) -> int:
    """Frames in a video: its header's count, or (no count there) the frames it actually has."""
    cap = open_video(path)
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:
            count = 0
            while cap.grab():
                count += 1
        return count
    finally:
        cap.release()


class EndoVis2015Source:
    """Every frame of `Training/Dataset1..4/Video.avi` with its label frame; Dataset `val_dataset` is
    val, the other three train."""

    def __init__(self, root: str, val_dataset: int = 2, largest_component: bool = False):
        self.root, self.largest_component = Path(root), bool(largest_component)
        if val_dataset not in DATASETS:
            raise ConfigError(f"endovis2015: data.val_dataset={val_dataset!r}; expected one of {list(DATASETS)} "
                              "(the dataset held out for val)")
        self.val_dataset = int(val_dataset)
        self._items: dict[str, list[Item]] | None = None
        self._frames: dict[str, int] = {}
        self._videos: _Videos | None = None

    def __getstate__(self) -> dict[str, Any]:  # open captures stay in their process (spawned workers)
        return {**self.__dict__, "_videos": None}

    def _folder(self, number: int) -> Path:
        return self.root / "Training" / f"Dataset{number}"

    def splits(self) -> dict[str, list[Item]]:
        if self._items is None:
            required = [f"Training/Dataset{n}/{name}" for n in DATASETS for name in ("Video.avi", *label_videos(n))]
            require("endovis2015", self.root, required, URL, LAYOUT)
            items: dict[str, list[Item]] = {"train": [], "val": []}
            for n in DATASETS:
                items["val" if n == self.val_dataset else "train"] += self._list(n)
            self._items = items
        return self._items

    def _list(self, number: int) -> list[Item]:
        video = str(self._folder(number) / "Video.avi")
        labels = tuple(str(self._folder(number) / name) for name in label_videos(number))
        counts = {path: frame_count(path) for path in (video, *labels)}
        if len(set(counts.values())) > 1:
            raise SampleError(f"endovis2015: Dataset{number}'s videos have different frame counts ("
                              + ", ".join(f"{p}: {c}" for p, c in counts.items())
                              + "); frame i of Video.avi is labelled by frame i of its segmentation video, so they "
                              "must be equally long: check the download (re-extract it)")
        self._frames[f"Dataset{number}"] = counts[video]
        return [(f"Dataset{number}/frame{i:04d}", video, labels, i) for i in range(counts[video])]

    def load(self, item: Item) -> RawSample:
        sample_id, video, labels, index = item
        if self._videos is None:
            self._videos = _Videos()
        self._videos.keep({video, *labels})  # one dataset's videos open at a time
        image = self._videos.frame(video, index)
        parts = []
        for path in labels:
            part = snap(self._videos.frame(path, index))
            parts.append(keep_largest(part) if self.largest_component else part)
        if len({p.shape for p in parts}) > 1:
            raise SampleError(f"{sample_id}: the label frames differ in size ("
                              + ", ".join(f"{p}: {a.shape[1]}x{a.shape[0]}" for p, a in zip(labels, parts)) + ")")
        mask = np.maximum.reduce(parts) if len(parts) > 1 else parts[0]
        return RawSample(id=sample_id, image=np.ascontiguousarray(image[:, :, ::-1]), mask=mask,
                         source=f"{video} + {' + '.join(labels)} frame {index}")

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root), "val_dataset": self.val_dataset, "largest_component": self.largest_component}

    def fingerprint(self) -> dict[str, Any]:
        splits = self.splits()
        videos = {split: sorted({(it[0].split("/")[0], it[1], label) for it in items for label in it[2]})
                  for split, items in splits.items()}
        return {**fingerprint(self.root, videos), "frames": dict(sorted(self._frames.items()))}
